#!/usr/bin/env bash
# Train paser-synth-v2.10 (CPU, about 40 minutes on 2 cores once the data exist): the
# shipped paser-synth-v2.9 with f2 widened to read the 2 planes above and below its
# slice and trained on for 1 500 steps of the pre-training volumes (preset v2.10); f0 and
# f1 kept, the reward caches rebuilt for the new f2 and the dense policy re-fitted.
#
#   bash scripts/train_bundled_model_v2_10.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_10.sh  # leave the shipped bundles alone
#
# Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.10 v2.10 src/napari_paser/models/paser-synth-v2.9 2.10.0 \
    "PaSeR v2.10: paser-synth-v2.9's f0, f1 and dense routing policy design with an f2 that reads the 2 planes above and below its slice (widened from v2.9's f2 and trained on), the policy re-fitted to its gains"
