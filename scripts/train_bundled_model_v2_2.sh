#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.2/ (CPU, about an hour on 2 cores):
# paser-synth-v2.1 with its cheap networks trained longer. f2 is kept, f1 continues for
# 15 000 steps and f0 for 12 000 from v2.1's weights (warm start), and the regression
# policy is re-fitted to the new f0 features and f1 gains (preset v2.2).
#
#   bash scripts/train_bundled_model_v2_2.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_2.sh  # leave the shipped bundle alone
#
# Makes the v2 training data first (scripts/synth_v2_data.sh; finished volumes are
# kept). Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=data/synth_v2
RUN=runs/paser-synth-v2.2
DEST=src/napari_paser/models/paser-synth-v2.2
THREADS=${THREADS:-2}

bash scripts/synth_v2_data.sh "$DATA"

# Same data, seed and split as v2 and v2.1, so the validation volumes stay unseen by every network.
napari-paser train --data "$DATA" --out "$RUN" --preset v2.2 --seed 0 --name paser-synth-v2.2 \
    --warm-start src/napari_paser/models/paser-synth-v2.1 \
    --description "PaSeR v2.2: paser-synth-v2.1 with f1 trained eight times and f0 four times longer on the wide v2 synthetic distribution (f2 kept), and the regression policy re-fitted" \
    --threads "$THREADS" --no-progress

if [ -z "${SKIP_COPY:-}" ]; then
    bash scripts/ship_bundle.sh "$RUN" "$DEST" 2.2.0
fi
