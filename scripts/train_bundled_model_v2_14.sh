#!/usr/bin/env bash
# Train the paser-synth-v2.14 bundle: v2.13's networks and f0 refiner with the dense
# routing policy re-fitted to the gains over the refined f0 (preset v2.14; the reward
# caches are rebuilt). Needs the v2.13 run (scripts/train_bundled_model_v2_13.sh); makes
# the extra RL volumes first (scripts/synth_rl_extra_data.sh). SKIP_COPY=1 leaves the
# shipped bundles alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.14 v2.14 runs/paser-synth-v2.13 2.14.0 \
    "PaSeR v2.14: paser-synth-v2.13's networks (v2.9's, with f0's prediction refined at half resolution by a tiny convolutional network) with the dense routing policy re-fitted to the gains over the refined f0"
