#!/usr/bin/env bash
# Train paser-synth-v2.22 (CPU, about 7 minutes on 2 cores once the data exist):
# paser-synth-v2.21's networks and refiner, all kept, and its dense routing policy fitted
# again as v2.21's, with its f2 gains then tied to its f1 gains if on the held-out RL
# volumes it cannot tell where f2 beats f1 (preset v2.22, train.dense_policy.tie_f2_gains).
#
#   bash scripts/train_bundled_model_v2_22.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_22.sh  # leave the shipped bundles alone
#
# Warm-starts from the shipped paser-synth-v2.21. Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.22 v2.22 src/napari_paser/models/paser-synth-v2.21 2.22.0 \
    "PaSeR v2.22: paser-synth-v2.21's networks and refiner, with the dense routing policy fitted again as v2.21's and its f2 gains tied to its f1 gains (it cannot tell where f2 beats f1 on held-out volumes)"
