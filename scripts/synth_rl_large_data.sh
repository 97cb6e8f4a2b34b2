#!/usr/bin/env bash
# The policy volumes of paser-synth-v2.17 (train --extra-rl) in data/synth_rl_large
# (git-ignored), or in the folder given as the first argument: v2.16's 30 extra RL
# volumes (the same files as scripts/synth_rl_extra_data.sh writes) and 160 fresh ones of
# 8 slices, 120 from the wide v2 distribution and 40 from v1's generator. No network was
# trained on any of them. About 1.6 s a slice on one core. The five sets are made at
# once, each with WORKERS (default 2) processes; finished volumes are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/synth_rl_large}
W=${WORKERS:-2}
pids=()
WORKERS=$W bash scripts/synth_rl_extra_data.sh "$OUT" & pids+=($!)
napari-paser synth --out "$OUT" --volumes 120 --slices 8 --seed 4343 --distribution v2 --name rlc --resume --workers "$W" & pids+=($!)
napari-paser synth --out "$OUT" --volumes 40 --slices 8 --seed 4444 --distribution v1 --name rlv1c_ --resume --workers "$W" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
