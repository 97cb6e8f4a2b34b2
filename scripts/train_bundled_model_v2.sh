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
exec bash scripts/train_v2_bundle.sh paser-synth-v2 v2 src/napari_paser/models/paser-synth-quick 2.0.0 \
    "PaSeR v2 (f0 space-to-depth with head MC dropout, f1/f2 with an 8-pixel halo, policy on f0 features, dataset-IoU rewards) trained on the wide v2 synthetic distribution"
