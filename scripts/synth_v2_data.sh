#!/usr/bin/env bash
# The training data of the v2 bundles (paser-synth-v2, v2.1, v2.2) in data/synth_v2
# (git-ignored), or in the folder given as the first argument. Finished volumes are
# kept, so rerunning only makes what is missing. WORKERS (default 1) processes make each
# of the two sets, both at once; the files are the same for any number.
#
# 48 volumes in all: 40 x 16 slices of 224x256 from the wide v2 distribution (four
# microstructure families, every CT knob drawn per volume, uint8 / uint16 / float32
# files), base seed 2026; plus 8 volumes of the first generator (v1's own training
# volumes 0-7, base seed 1000), so the family of the in-family test keeps its share of
# the data. The test sets use other seeds and distributions (benchmarks/common.py): v1
# seeds 9001-9004 (in-family), oof seeds 9101-9104.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${1:-data/synth_v2}
W=${WORKERS:-1}  # processes per set; the two sets are made at once
napari-paser synth --out "$DATA" --volumes 40 --slices 16 --seed 2026 --distribution v2 --resume --workers "$W" &
wide=$!
napari-paser synth --out "$DATA" --volumes 8 --slices 16 --seed 1000 --distribution v1 --name v1_ --resume --workers "$W" &
first=$!
wait "$wide"
wait "$first"
