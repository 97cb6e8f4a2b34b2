#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.2/ (CPU, about an hour on 2 cores):
# paser-synth-v2.1 with its cheap networks trained longer. f2 is kept, f1 continues for
# 15 000 steps and f0 for 12 000 from v2.1's weights (warm start), and the regression
# policy is re-fitted to the new f0 features and f1 gains (preset v2.2).
#
#   bash scripts/train_bundled_model_v2_2.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_2.sh  # leave the shipped bundle alone
#
# v2.1 no longer ships: its run folder (scripts/train_bundled_model_v2_1.sh) is the warm
# start, or set V2_1_BUNDLE to another copy. Makes the v2 training data first
# (scripts/synth_v2_data.sh; finished volumes are kept). Rerunning resumes at the last
# checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/train_v2_bundle.sh paser-synth-v2.2 v2.2 "${V2_1_BUNDLE:-runs/paser-synth-v2.1}" 2.2.0 \
    "PaSeR v2.2: paser-synth-v2.1 with f1 trained eight times and f0 four times longer on the wide v2 synthetic distribution (f2 kept), and the regression policy re-fitted"
