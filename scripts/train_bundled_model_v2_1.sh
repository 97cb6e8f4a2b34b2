#!/usr/bin/env bash
# Reproduce the bundle src/napari_paser/models/paser-synth-v2.1/ (CPU, about an
# hour on 2 cores): the v2 bundle's data and networks trained longer. f2, f1 and f0
# continue from paser-synth-v2 (warm start), and a smaller policy with a linear skip
# learns its gains by regression (preset v2.1).
#
#   bash scripts/train_bundled_model_v2_1.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_1.sh  # leave the shipped bundle alone
#
# Makes the v2 training data first (scripts/synth_v2_data.sh; finished volumes are
# kept). Needs the v2 bundle it starts from, which no longer ships:
# `SKIP_COPY=1 bash scripts/train_bundled_model_v2.sh` leaves it in runs/paser-synth-v2
# (or set V2_BUNDLE to a copy of it). Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/train_v2_bundle.sh paser-synth-v2.1 v2.1 "${V2_BUNDLE:-runs/paser-synth-v2}" 2.1.0 \
    "PaSeR v2.1: the v2 networks trained longer on the wide v2 synthetic distribution (f2, f1 and f0 continued from paser-synth-v2), with a smaller policy that learns per-patch dataset-IoU gains by regression"
