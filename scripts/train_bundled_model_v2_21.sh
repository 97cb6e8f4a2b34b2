#!/usr/bin/env bash
# Train paser-synth-v2.21 (CPU, about 9 minutes on 2 cores once the data exist):
# paser-synth-v2.20's networks and refiner, all kept, with the dense routing policy's network
# also reading how far the refiner moved f0's prediction (KL of the refined from the MC
# mean, engine.uncertainty.refiner_correction), fitted as v2.20's to the gains over the
# refined f0, without v2.16's image-residual prior (preset v2.21).
#
#   bash scripts/train_bundled_model_v2_21.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_21.sh  # leave the shipped bundles alone
#
# Warm-starts from the shipped paser-synth-v2.20 (its policy does not fit the new input
# and starts afresh). Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.21 v2.21 src/napari_paser/models/paser-synth-v2.20 2.21.0 \
    "PaSeR v2.21: paser-synth-v2.20's networks and refiner, with the dense routing policy's network also reading how far the refiner moved f0's prediction (KL of the refined from the MC-mean probabilities), fitted to the gains over the refined f0, without v2.16's image-residual prior"
