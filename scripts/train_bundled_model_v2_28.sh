#!/usr/bin/env bash
# Train paser-synth-v2.28 (CPU, about 20 minutes on 2 cores once the data exist):
# paser-synth-v2.24's networks and policy network with f0's MC-dropout mean in closed form
# (UNet.mc_head_moments) and a refiner trained for it, as v2.20's was for 5 sampled passes
# (6 000 steps on 36 fresh volumes, benchmarks/probe_refiner_gain.py); the reward caches
# rebuilt and each slice's level of gains fitted again (preset v2.28).
#
#   bash scripts/train_bundled_model_v2_28.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_28.sh  # leave the shipped bundles alone
#
# Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
if [ ! -f runs/v2.24-moments/manifest.json ]; then  # v2.24 with f0's MC mean in closed form
    python -c "
from dataclasses import replace
from napari_paser.engine import load_bundle, resolve_bundle
from napari_paser.engine.bundle import save_bundle
b = load_bundle(resolve_bundle('paser-synth-v2.24'))
b.f0.config = replace(b.f0.config, mc_estimate='moments')
save_bundle(b, 'runs/v2.24-moments')"
fi
if [ ! -f runs/v2.24-moments-refiner/manifest.json ]; then  # its refiner trained on the closed-form means
    python benchmarks/probe_refiner_gain.py runs/v2.24-moments --train v2:7801-7808 v1:7851-7854 v2:7701-7716 v1:7855-7862 \
        --refiners 2:32:5 --steps 6000 --gain-steps 0 --threads "${THREADS:-2}" --save runs/v2.24-moments-refiner
fi
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.28 v2.28 runs/v2.24-moments-refiner 2.28.0 \
    "PaSeR v2.28: paser-synth-v2.24's networks and policy network with f0's MC-dropout mean in closed form and a refiner trained for it, each slice's level of gains fitted again"
