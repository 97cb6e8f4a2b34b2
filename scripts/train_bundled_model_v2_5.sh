#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.5/ (CPU, 25 minutes on 2 cores
# once the data exist): paser-synth-v2.2 with f1 continued for 8 000 steps on more
# training volumes. Beside v2.2's 31 pre-training volumes, f1 sees 36 more of the wide v2
# distribution (data/synth_v2_extra, base seed 3030; about 24 s a volume to simulate); the
# RL and validation volumes are v2.2's. f0 and f2 are kept, and the regression policy is
# re-fitted to the new f1's gains (preset v2.5).
# paser-synth-v2.2 no longer ships: train it first (scripts/train_bundled_model_v2_2.sh,
# into runs/paser-synth-v2.2) or point V2_2_BUNDLE at a copy.
#
#   bash scripts/train_bundled_model_v2_5.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_5.sh  # leave the shipped bundle alone
#
# Finished volumes are kept and rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA=data/synth_v2_extra
napari-paser synth --out "$EXTRA" --volumes 36 --slices 16 --seed 3030 --distribution v2 --name extra --resume
EXTRA_PRETRAIN=$EXTRA exec bash scripts/train_v2_bundle.sh paser-synth-v2.5 v2.5 "${V2_2_BUNDLE:-runs/paser-synth-v2.2}" 2.5.0 \
    "PaSeR v2.5: paser-synth-v2.2 with f1 continued for 8 000 steps on 36 more volumes of the wide v2 synthetic distribution (f0 and f2 kept), and the regression policy re-fitted"
