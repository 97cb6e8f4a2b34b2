#!/usr/bin/env bash
# Reproduce the bundle paser-synth-v2 (CPU, about an hour on 2 cores), which v2.1 starts
# from; it no longer ships with the package. Data and run folders are under data/ and
# runs/ (both git-ignored).
#
#   bash scripts/train_bundled_model_v2.sh              # synth data, train, copy into the package
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2.sh  # keep it in runs/paser-synth-v2 only
#
# Rerunning resumes: finished volumes are kept and training continues at its last
# checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=data/synth_v2
RUN=runs/paser-synth-v2
DEST=src/napari_paser/models/paser-synth-v2
THREADS=${THREADS:-2}

# 1. Training data: 48 volumes (scripts/synth_v2_data.sh says which).
bash scripts/synth_v2_data.sh "$DATA"

# 2. The v2 networks and schedule; f2 starts from the v1 bundle's f2 (same weights
#    shape: the halo does not change them), everything else from scratch.
napari-paser train --data "$DATA" --out "$RUN" --preset v2 --seed 0 --name paser-synth-v2 \
    --warm-start src/napari_paser/models/paser-synth-quick \
    --description "PaSeR v2 (f0 space-to-depth with head MC dropout, f1/f2 with an 8-pixel halo, policy on f0 features, dataset-IoU rewards) trained on the wide v2 synthetic distribution" \
    --threads "$THREADS" --no-progress

# 3. Ship only the manifest (as version 2.0.0: the second generation of the bundle) and
#    the weights.
if [ -z "${SKIP_COPY:-}" ]; then
    bash scripts/ship_bundle.sh "$RUN" "$DEST" 2.0.0
fi
