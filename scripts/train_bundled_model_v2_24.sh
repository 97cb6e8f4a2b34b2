#!/usr/bin/env bash
# Train paser-synth-v2.24 (CPU, about 15 minutes on 2 cores once the data exist, most of it
# rebuilding the reward caches): paser-synth-v2.23's networks, refiner and policy network,
# all kept, with each slice's level of gains read from the 90th percentile of its refiner
# KL over its cells by a line fitted on the RL volumes (preset v2.24,
# train.dense_policy.fit_slice_level with quantile 0.9).
#
#   bash scripts/train_bundled_model_v2_24.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_24.sh  # leave the shipped bundles alone
#
# Warm-starts from the shipped paser-synth-v2.23. Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.24 v2.24 src/napari_paser/models/paser-synth-v2.23 2.24.0 \
    "PaSeR v2.24: paser-synth-v2.23's networks, refiner and policy network, with each slice's level of gains read from the 90th percentile of its refiner KL over its cells instead of their mean"
