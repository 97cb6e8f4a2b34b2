#!/usr/bin/env bash
# Reproduce src/napari_paser/models/paser-synth-v2.6/ (CPU, 11 minutes on 2 cores
# once the data exist): paser-synth-v2.5's f0, f1 and f2 unchanged, with a new routing
# policy (preset v2.6). v2.5's policy had memorised its 10 RL volumes. This one reads f0's
# output statistics but not its feature maps, is fitted on 30 fresh volumes beside them
# (data/synth_rl_extra: 24 of the wide v2 distribution and 6 of v1, the mix of the
# training data; about 25 s a volume to simulate, no network has seen them), and stops
# early on a fifth of the 40 held out of the fit. The validation volumes are v2.5's.
#
#   bash scripts/train_bundled_model_v2_6.sh              # train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_6.sh  # leave the shipped bundle alone
#
# Finished volumes are kept and rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_RL=data/synth_rl_extra
bash scripts/synth_rl_extra_data.sh "$EXTRA_RL"
EXTRA_RL=$EXTRA_RL exec bash scripts/train_v2_bundle.sh paser-synth-v2.6 v2.6 src/napari_paser/models/paser-synth-v2.5 2.6.0 \
    "PaSeR v2.6: paser-synth-v2.5's f0, f1 and f2 with a routing policy that generalises: it reads f0's output statistics, not its feature maps, is fitted on 40 RL volumes instead of 10, and stops early on held-out ones"
