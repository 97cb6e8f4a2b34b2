#!/usr/bin/env bash
# Train paser-synth-v2.26 (CPU, about 35 minutes on 2 cores for f1 once the data and the
# v2.25 run exist): v2.25's f1 (width 48 on 4x4 pixel blocks) trained on for 4 000 more
# steps at half the learning rate, half on the labels and half on v2.24's f1 as a teacher;
# the reward caches rebuilt and the dense policy fitted, tied and levelled as v2.24's
# (preset v2.26). Starts from runs/paser-synth-v2.25-f1: v2.24 with the f1 of the v2.25
# run (scripts/train_bundled_model_v2_25.sh), written here if it is missing.
#
#   bash scripts/train_bundled_model_v2_26.sh
#   python benchmarks/probe_f1_candidate.py runs/paser-synth-v2.26/checkpoints/models.pt
#
# The bundle stays in runs/paser-synth-v2.26 unless SHIP=1 copies it into the package.
# Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SHIP:-}" ]; then export SKIP_COPY=1; fi
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
if [ ! -f runs/paser-synth-v2.25-f1/manifest.json ]; then
    python benchmarks/probe_f1_candidate.py runs/paser-synth-v2.25/checkpoints/models.pt --rounds 1 --save runs/paser-synth-v2.25-f1
fi
EXTRA_RL=data/synth_rl_extra TEACHER=paser-synth-v2.24 exec bash scripts/train_v2_bundle.sh paser-synth-v2.26 v2.26 runs/paser-synth-v2.25-f1 2.26.0 \
    "PaSeR v2.26: paser-synth-v2.24's f0, refiner and f2 with v2.25's f1 (width 48 on 4x4 pixel blocks) trained on with v2.24's f1 as a teacher; the routing policy fitted again"
