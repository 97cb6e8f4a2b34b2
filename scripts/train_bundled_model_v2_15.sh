#!/usr/bin/env bash
# Train paser-synth-v2.15 (CPU, about 25 minutes on 2 cores once the data exist):
# paser-synth-v2.9's networks with a dense routing policy that also reads how much f0's
# MC-dropout passes disagree (preset v2.15), fitted as v2.9's on the gains of 4x4-pixel
# cells and early-stopped on the held-out RL volumes.
#
#   bash scripts/train_bundled_model_v2_15.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_15.sh  # leave the shipped bundles alone
#
# The reward caches are rebuilt (they hold the policy's new input). Rerunning resumes at
# the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.15 v2.15 src/napari_paser/models/paser-synth-v2.9 2.15.0 \
    "PaSeR v2.15: paser-synth-v2.9's networks (f0 reads the 2 planes above and below its slice) with a dense routing policy that also reads how much f0's MC-dropout passes disagree, besides their mean probabilities and entropy and the image's local mean and spread: a small convolutional network predicts the gain of every 4x4-pixel cell, and a patch's gain is the mean of its cells'"
