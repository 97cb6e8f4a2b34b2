#!/usr/bin/env bash
# The extra policy volumes of the v2.6-v2.8 bundles (train --extra-rl) in
# data/synth_rl_extra (git-ignored), or in the folder given as the first argument: 24 of
# the wide v2 distribution and 6 of v1, the mix of the training data; no network was
# trained on them. About 25 s a volume; finished volumes are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_RL=${1:-data/synth_rl_extra}
napari-paser synth --out "$EXTRA_RL" --volumes 15 --slices 16 --seed 4040 --distribution v2 --name rla --resume
napari-paser synth --out "$EXTRA_RL" --volumes 9 --slices 16 --seed 4242 --distribution v2 --name rlb --resume
napari-paser synth --out "$EXTRA_RL" --volumes 6 --slices 16 --seed 4141 --distribution v1 --name rlv1_ --resume
