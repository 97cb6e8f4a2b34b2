#!/usr/bin/env bash
# The extra policy volumes of the v2.6-v2.8, v2.16 and v2.18 bundles (train --extra-rl) in
# data/synth_rl_extra (git-ignored), or in the folder given as the first argument: 24 of
# the wide v2 distribution and 6 of v1, the mix of the training data; no network was
# trained on them. About 25 s a volume on one core; the three sets are made at once, each
# with WORKERS (default 1) processes; finished volumes are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_RL=${1:-data/synth_rl_extra}
W=${WORKERS:-1}
pids=()
napari-paser synth --out "$EXTRA_RL" --volumes 15 --slices 16 --seed 4040 --distribution v2 --name rla --resume --workers "$W" & pids+=($!)
napari-paser synth --out "$EXTRA_RL" --volumes 9 --slices 16 --seed 4242 --distribution v2 --name rlb --resume --workers "$W" & pids+=($!)
napari-paser synth --out "$EXTRA_RL" --volumes 6 --slices 16 --seed 4141 --distribution v1 --name rlv1_ --resume --workers "$W" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
