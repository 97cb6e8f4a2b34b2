#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.3/ (CPU, about 35 minutes on 2 cores):
# paser-synth-v2.2 with f1 distilled from f2. f1 continues for 1200 steps with half of
# its loss the KL divergence to f2's softened output on the same patches; f0 and f2 are
# kept (warm start) and the regression policy is re-fitted to f1's new gains (preset v2.3).
#
#   bash scripts/train_bundled_model_v2_3.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_3.sh  # leave the shipped bundle alone
#
# Makes the v2 training data first (scripts/synth_v2_data.sh; finished volumes are
# kept). Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=data/synth_v2
RUN=runs/paser-synth-v2.3
DEST=src/napari_paser/models/paser-synth-v2.3
THREADS=${THREADS:-2}

bash scripts/synth_v2_data.sh "$DATA"

# Same data, seed and split as v2-v2.2, so the validation volumes stay unseen by every network.
napari-paser train --data "$DATA" --out "$RUN" --preset v2.3 --seed 0 --name paser-synth-v2.3 \
    --warm-start src/napari_paser/models/paser-synth-v2.2 \
    --description "PaSeR v2.3: paser-synth-v2.2 with f1 distilled from f2 (1200 steps, half cross entropy, half KL to f2 at temperature 2), f0 and f2 kept, and the regression policy re-fitted" \
    --threads "$THREADS" --no-progress

if [ -z "${SKIP_COPY:-}" ]; then
    bash scripts/ship_bundle.sh "$RUN" "$DEST" 2.3.0
fi
