#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.8/ (CPU, about 45 minutes on 2 cores
# once the data exist): paser-synth-v2.7's networks with the routing policy fitted in
# closed form (preset v2.8: ridge regression of the gains on the patch means of the
# policy's inputs, penalty chosen on the held-out RL volumes).
#
#   bash scripts/train_bundled_model_v2_8.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_8.sh  # leave the shipped bundle alone
#
# Trains v2.7 first (runs/paser-synth-v2.7, not shipped) if that run is missing. Its
# reward caches are those of this run: same networks, RL volumes, seed and copies, so
# they are copied instead of recomputed. Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f runs/paser-synth-v2.7/manifest.json ]; then
    SKIP_COPY=1 bash scripts/train_bundled_model_v2_7.sh
fi
mkdir -p runs/paser-synth-v2.8/checkpoints
for f in rewards-rl.pt rewards-rl-holdout.pt; do
    [ -f "runs/paser-synth-v2.8/checkpoints/$f" ] || cp "runs/paser-synth-v2.7/checkpoints/$f" runs/paser-synth-v2.8/checkpoints/
done
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.8 v2.8 runs/paser-synth-v2.7 2.8.0 \
    "PaSeR v2.8: paser-synth-v2.7's networks (f0 reads the 2 planes above and below its slice) with a routing policy fitted in closed form: a ridge regression of each patch's gains on the patch means of f0's probabilities and entropy and the image's mean and local spread"
