#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.6/ (CPU, about 10 minutes on 2 cores
# once the data exist): paser-synth-v2.5's f0, f1 and f2 unchanged, with a new routing
# policy (preset v2.6). The policy reads f0's output statistics but not its feature maps,
# and its regression stops early on 2 of the 10 RL volumes held out of the fit; v2.5's
# policy had memorised its RL volumes. The RL and validation volumes are v2.5's.
#
#   bash scripts/train_bundled_model_v2_6.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_6.sh  # leave the shipped bundle alone
#
# Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/train_v2_bundle.sh paser-synth-v2.6 v2.6 src/napari_paser/models/paser-synth-v2.5 2.6.0 \
    "PaSeR v2.6: paser-synth-v2.5's f0, f1 and f2 with a routing policy that generalises: it reads f0's output statistics, not its feature maps, and its regression stops early on held-out RL volumes"
