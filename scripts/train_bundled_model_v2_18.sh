#!/usr/bin/env bash
# Train paser-synth-v2.18: paser-synth-v2.16's networks and dense policy network, with f0
# fused into f1 / f2 at 0.30 / 0.25 (as 2.16.1 ships them) before the reward caches are
# built, so the policy and the image-residual prior are fitted again, as v2.16's, to the
# gains of the fused patches that routing realises (preset v2.18). Same data as v2.16.
#
#   bash scripts/train_bundled_model_v2_18.sh              # CPU: about 25 min on 2 cores once the data exist
#   DEVICE=cuda WORKERS=16 THREADS=16 SKIP_COPY=1 bash scripts/train_bundled_model_v2_18.sh  # a GPU machine
#
# The data (78 volumes of 16 slices, about 1.6 s a slice on one core) are made first,
# the RL sets at once, then the two v2 sets, with WORKERS processes each. Rerunning
# resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
export WORKERS=${WORKERS:-1}  # also for the v2 data, which train_v2_bundle.sh makes first
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
DEVICE=${DEVICE:-cpu} EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.18 v2.18 src/napari_paser/models/paser-synth-v2.16 2.18.0 \
    "PaSeR v2.18: paser-synth-v2.16's networks (f0 reads the 2 planes above and below its slice) and dense routing policy network (a small convolutional network predicts the gain of every 4x4-pixel cell from f0's mean probabilities and entropy and the image's local mean and spread) plus the excess of the image residual over its training mean, at three times the network's standing; a patch that f1 or f2 segments takes the argmax of 0.70 x f1's (0.75 x f2's) probabilities plus 0.30 (0.25) x f0's MC mean, and the policy and the prior are fitted to the gains of these fused patches"
