#!/usr/bin/env bash
# Train the paser-synth-v2.13 bundle: v2.9's networks and policy with a refiner on f0's
# prediction (preset v2.13: 3 000 steps on the pre-training volumes, f0 frozen; the
# default λ chosen again on the validation split). About 35 minutes on 2 cores, most of
# it making the v2 training data. SKIP_COPY=1 leaves the shipped bundles alone.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/train_v2_bundle.sh paser-synth-v2.13 v2.13 src/napari_paser/models/paser-synth-v2.9 2.13.0 \
    "PaSeR v2.13: paser-synth-v2.9's networks and routing policy, with f0's prediction refined at half resolution by a tiny convolutional network that reads the slice and f0's MC-dropout mean (two 3x3 convolutions of width 32 on 2x2 pixel blocks) and places phase boundaries at the pixel"
