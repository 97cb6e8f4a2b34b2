#!/usr/bin/env bash
# Train one bundle of the v2 family on the v2 training data and copy it into the package.
# The per-bundle scripts (train_bundled_model_v2*.sh) call this with their own arguments.
#
#   bash scripts/train_v2_bundle.sh NAME PRESET WARM_START VERSION DESCRIPTION
#
# NAME: bundle name (runs/NAME, src/napari_paser/models/NAME); PRESET: training preset;
# WARM_START: the bundle whose fitting weights every network starts from; VERSION: the
# shipped version number. SKIP_COPY=1 leaves the shipped bundle alone; THREADS (default
# 2) sets torch threads; EXTRA_PRETRAIN=DIR adds that folder's volumes to pre-training only
# (train --extra-pretrain); EXTRA_RL=DIR adds that folder's volumes to the policy's split
# only (train --extra-rl); TEACHER=BUNDLE is the bundle whose f1 teaches f1 (train --teacher);
# DEVICE (default cpu) is where the networks train and run.
# Makes the v2 training data first (scripts/synth_v2_data.sh, WORKERS processes per set;
# finished volumes are kept). Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=$1
PRESET=$2
WARM_START=$3
VERSION=$4
DESCRIPTION=$5

DATA=data/synth_v2
RUN=runs/$NAME

bash scripts/synth_v2_data.sh "$DATA"

# Same data, seed and split for every v2 bundle, so the validation volumes stay unseen by every network.
napari-paser train --data "$DATA" --out "$RUN" --preset "$PRESET" --seed 0 --name "$NAME" \
    --warm-start "$WARM_START" --description "$DESCRIPTION" --threads "${THREADS:-2}" --device "${DEVICE:-cpu}" --no-progress \
    ${EXTRA_PRETRAIN:+--extra-pretrain "$EXTRA_PRETRAIN"} ${EXTRA_RL:+--extra-rl "$EXTRA_RL"} ${TEACHER:+--teacher "$TEACHER"}

if [ -z "${SKIP_COPY:-}" ]; then
    bash scripts/ship_bundle.sh "$RUN" "src/napari_paser/models/$NAME" "$VERSION"
fi
