#!/usr/bin/env bash
# Train paser-synth-v2.16 (CPU, about 25 minutes on 2 cores once the data exist):
# paser-synth-v2.9's networks and dense routing policy, fitted again as v2.9's on the gains
# of 4x4-pixel cells and early-stopped on the held-out RL volumes; a prior calibrated on
# the same reward caches adds to a patch's gains the excess of its image residual (how far
# the slice departs from what f0's labels predict, where f0 is unsure) over the training
# patches' mean (preset v2.16).
#
#   bash scripts/train_bundled_model_v2_16.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_16.sh  # leave the shipped bundles alone
#
# The reward caches are rebuilt (they hold the policy's new input). Rerunning resumes at
# the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.16 v2.16 src/napari_paser/models/paser-synth-v2.9 2.16.0 \
    "PaSeR v2.16: paser-synth-v2.9's networks (f0 reads the 2 planes above and below its slice) with v2.9's dense routing policy (a small convolutional network predicts the gain of every 4x4-pixel cell from f0's mean probabilities and entropy and the image's local mean and spread; a patch's gain is the mean of its cells') plus the excess of the image residual (how far the slice departs from what f0's labels predict, where f0 is unsure) over its training mean, at three times the network's standing"
