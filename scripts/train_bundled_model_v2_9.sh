#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.9/ (CPU, about 20 minutes on 2 cores
# once the data and runs/paser-synth-v2.7 exist): paser-synth-v2.7's networks with a
# dense routing policy (preset v2.9: a small convolutional network predicts the gain of
# every 4x4-pixel cell from f0's probabilities and entropy and the image's local mean
# and spread, early-stopped on the held-out RL volumes).
#
#   bash scripts/train_bundled_model_v2_9.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_9.sh  # leave the shipped bundle alone
#
# Trains v2.7 first (runs/paser-synth-v2.7, not shipped) if that run is missing. The
# reward caches are rebuilt: a dense policy's hold the confusion of every cell. Rerunning
# resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f runs/paser-synth-v2.7/manifest.json ]; then
    SKIP_COPY=1 bash scripts/train_bundled_model_v2_7.sh
fi
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.9 v2.9 runs/paser-synth-v2.7 2.9.0 \
    "PaSeR v2.9: paser-synth-v2.7's networks (f0 reads the 2 planes above and below its slice) with a dense routing policy: a small convolutional network predicts the gain of every 4x4-pixel cell from f0's probabilities and entropy and the image's local mean and spread, and a patch's gain is the mean of its cells'"
