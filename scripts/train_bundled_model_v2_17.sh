#!/usr/bin/env bash
# Train paser-synth-v2.17: paser-synth-v2.16's networks and policy network, the policy
# fitted again on five times the RL volumes (scripts/synth_rl_large_data.sh) and the
# image-residual prior calibrated again (preset v2.17).
#
#   DEVICE=cuda WORKERS=16 THREADS=16 bash scripts/train_bundled_model_v2_17.sh  # a GPU machine
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_17.sh   # CPU; leave the shipped bundles alone
#
# The reward caches run f1 and f2 on over 3 000 slices: hours on 2 CPU cores, under a
# minute on one H200. The data (2 528 slices, about 1.6 s each on one core) are made
# first, the RL sets at once, then the two v2 sets, with WORKERS processes each.
# Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
export WORKERS=${WORKERS:-2}  # also for the v2 data, which train_v2_bundle.sh makes first
bash scripts/synth_rl_large_data.sh data/synth_rl_large
DEVICE=${DEVICE:-cpu} EXTRA_RL=data/synth_rl_large exec bash scripts/train_v2_bundle.sh paser-synth-v2.17 v2.17 src/napari_paser/models/paser-synth-v2.16 2.17.0 \
    "PaSeR v2.17: paser-synth-v2.16's networks (f0 reads the 2 planes above and below its slice) and dense routing policy network (a small convolutional network predicts the gain of every 4x4-pixel cell from f0's mean probabilities and entropy and the image's local mean and spread), fitted again on five times the RL volumes, plus the excess of the image residual over its training mean, at three times the network's standing"
