#!/usr/bin/env bash
# Train paser-synth-v2.23 (CPU, about 7 minutes on 2 cores once the data exist):
# paser-synth-v2.22's networks and refiner, all kept, its dense routing policy fitted and
# tied again as v2.22's, and each slice's level of gains then read from the slice's mean
# refiner KL by a line fitted on the RL volumes (preset v2.23, train.dense_policy.fit_slice_level).
#
#   bash scripts/train_bundled_model_v2_23.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_23.sh  # leave the shipped bundles alone
#
# Warm-starts from the shipped paser-synth-v2.22. Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.23 v2.23 src/napari_paser/models/paser-synth-v2.22 2.23.0 \
    "PaSeR v2.23: paser-synth-v2.22's networks, refiner and policy network, with each slice's level of gains read from its mean refiner KL (the network's level, learnt from volumes of many scanners, does not carry over between scans of one)"
