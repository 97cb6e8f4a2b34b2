#!/usr/bin/env bash
# PaSeR v2.11: v2.10's networks with f2 trained on as a specialist (preset v2.11): 1 000
# steps with every patch's loss weighted by f1's cross entropy on it squared, so f2's lead
# over f1 gathers where f1 fails; the reward caches rebuilt and the dense policy re-fitted.
# Starts from the v2.10 run (scripts/train_bundled_model_v2_10.sh makes it).
# SKIP_COPY=1 leaves the shipped bundles alone.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_RL=data/synth_rl_extra exec bash scripts/train_v2_bundle.sh paser-synth-v2.11 v2.11 runs/paser-synth-v2.10 2.11.0 \
    "PaSeR v2.11: paser-synth-v2.10's f0, f1 and dense routing policy design with its 5-plane f2 trained on as a specialist (each patch's loss weighted by f1's cross entropy on it squared), the policy re-fitted to its gains"
