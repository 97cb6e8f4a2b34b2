#!/usr/bin/env bash
# Train paser-synth-v2.20 (CPU, about 13 minutes on 2 cores once the data exist: the refiner
# 3, the training stages 9):
# paser-synth-v2.16's networks with f0's prediction refined at half resolution by a tiny
# convolutional network that reads the slice and the two planes on each side of it, the
# refined f0 fused into f1's and f2's patches, and the dense routing policy and residual
# prior fitted again, as v2.16's, to the gains over the refined f0 (preset v2.20).
#
#   bash scripts/train_bundled_model_v2_20.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_20.sh  # leave the shipped bundles alone
#
# The refiner is trained first, 6 000 steps with v2.16's f0 frozen, on 36 fresh 16-slice
# volumes (v2 7701-7716 and 7801-7808, v1 7851-7862; no test, development or training set
# uses them) by benchmarks/probe_refiner_gain.py, which writes v2.16 with it to
# runs/paser-synth-v2.16-refined5p (kept: rerunning starts from it). The fusion weights are
# what benchmarks/probe_f0_fusion.py chose on that bundle. Rerunning resumes at the last
# checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
REFINED=runs/paser-synth-v2.16-refined5p
if [ ! -f "$REFINED/manifest.json" ]; then
    python benchmarks/probe_refiner_gain.py paser-synth-v2.16 --refiners 2:32:5 --steps 6000 --gain-steps 0 --workers 2 \
        --threads "${THREADS:-2}" --train v2:7801-7808 v1:7851-7854 v2:7701-7716 v1:7855-7862 --save "$REFINED"
fi
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.20 v2.20 "$REFINED" 2.20.0 \
    "PaSeR v2.20: paser-synth-v2.16's networks with f0's MC-mean prediction refined at half resolution by a Refiner of width 32 that reads the slice and the two planes on each side of it (trained with f0 frozen on 36 fresh volumes), the refined f0 fused into f1's and f2's patches at 0.35 / 0.45, and v2.16's dense routing policy and image-residual prior fitted again to the gains over the refined f0"
