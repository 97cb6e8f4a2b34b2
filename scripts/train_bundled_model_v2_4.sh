#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.4/ (CPU, about an hour on 2 cores):
# paser-synth-v2.2 with f2 trained longer. f2 continues for 3 000 steps from v2.2's
# weights (warm start), f0 and f1 are kept, and the regression policy is re-fitted to
# the new f2 gains (preset v2.4).
#
#   bash scripts/train_bundled_model_v2_4.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_4.sh  # leave the shipped bundle alone
#
# Makes the v2 training data first (scripts/synth_v2_data.sh; finished volumes are
# kept). Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/train_v2_bundle.sh paser-synth-v2.4 v2.4 src/napari_paser/models/paser-synth-v2.2 2.4.0 \
    "PaSeR v2.4: paser-synth-v2.2 with f2 trained 3000 steps longer on the wide v2 synthetic distribution (f0 and f1 kept), and the regression policy re-fitted"
