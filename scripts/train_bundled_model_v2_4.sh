#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.4/ (CPU, about 10 minutes on 2 cores):
# paser-synth-v2.2's networks unchanged (warm start, no steps) with the entropy policy:
# each model's gain is linear in f0's patch entropy, fitted by least squares on the RL
# split's cached rewards (preset v2.4). The default λ is re-chosen on the validation split.
#
#   bash scripts/train_bundled_model_v2_4.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_4.sh  # leave the shipped bundle alone
#
# Makes the v2 training data first (scripts/synth_v2_data.sh; finished volumes are
# kept). Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=data/synth_v2
RUN=runs/paser-synth-v2.4
DEST=src/napari_paser/models/paser-synth-v2.4
THREADS=${THREADS:-2}

bash scripts/synth_v2_data.sh "$DATA"

# Same data, seed and split as v2 to v2.2, so the validation volumes stay unseen by every network.
napari-paser train --data "$DATA" --out "$RUN" --preset v2.4 --seed 0 --name paser-synth-v2.4 \
    --warm-start src/napari_paser/models/paser-synth-v2.2 \
    --description "PaSeR v2.4: paser-synth-v2.2's networks routed by the entropy policy (each model's gain linear in f0's patch entropy, fitted by least squares), which predicts the gains of held-out patches better than v2.2's residual policy" \
    --threads "$THREADS" --no-progress

if [ -z "${SKIP_COPY:-}" ]; then
    bash scripts/ship_bundle.sh "$RUN" "$DEST" 2.4.0
fi
