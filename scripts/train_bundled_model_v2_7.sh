#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.7/ (CPU, about 40 minutes on 2 cores
# once the data exist): paser-synth-v2.6's f1 and f2 unchanged, its f0 widened to read the
# 2 planes above and below each slice and trained on for 6 000 steps, and the routing
# policy re-fitted to the new f0 on v2.6's 40 RL volumes (preset v2.7).
#
#   bash scripts/train_bundled_model_v2_7.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_7.sh  # leave the shipped bundle alone
#
# Finished volumes are kept and rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_RL=data/synth_rl_extra
bash scripts/synth_rl_extra_data.sh "$EXTRA_RL"
EXTRA_RL=$EXTRA_RL exec bash scripts/train_v2_bundle.sh paser-synth-v2.7 v2.7 src/napari_paser/models/paser-synth-v2.6 2.7.0 \
    "PaSeR v2.7: paser-synth-v2.6's f1 and f2 with an f0 that reads the 2 planes above and below its slice (widened from v2.6's f0 and trained on), and the routing policy re-fitted to it"
