#!/usr/bin/env bash
# Train paser-synth-v2.27 (CPU, about 25 minutes on 2 cores once the data exist):
# paser-synth-v2.24's networks and policy network, all kept, with f0's MC-dropout mean in
# closed form instead of 5 sampled passes (UNet.mc_head_moments); the refiner trained on
# for 1 500 steps on the closed-form means, the reward caches rebuilt and each slice's
# level of gains fitted again (preset v2.27).
#
#   bash scripts/train_bundled_model_v2_27.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_27.sh  # leave the shipped bundles alone
#
# Warm-starts from the shipped paser-synth-v2.24. Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.27 v2.27 src/napari_paser/models/paser-synth-v2.24 2.27.0 \
    "PaSeR v2.27: paser-synth-v2.24's networks and policy network with f0's MC-dropout mean in closed form, its refiner trained on for it and each slice's level of gains fitted again"
