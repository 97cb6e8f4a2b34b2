#!/usr/bin/env bash
# Train paser-synth-v2.29 (CPU, about 19 minutes on 2 cores once the data exist: 18.8 in its manifest):
# paser-synth-v2.28's networks with the dense policy network fitted again on the inputs it
# reads now (f0's MC-dropout mean in closed form, the KL of v2.28's refiner), tied and
# levelled as v2.24's; the reward caches rebuilt (preset v2.29).
#
#   SKIP_COPY=1 bash scripts/train_bundled_model_v2_29.sh  # leave the shipped bundles alone
#   bash scripts/train_bundled_model_v2_29.sh              # train, copy the bundle
#
# Rerunning resumes at the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/synth_rl_extra_data.sh data/synth_rl_extra
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.29 v2.29 src/napari_paser/models/paser-synth-v2.28 2.29.0 \
    "PaSeR v2.29: paser-synth-v2.28's networks with the dense policy network fitted again on the closed-form mean's inputs, tied and levelled as v2.24's"
