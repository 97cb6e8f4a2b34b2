#!/usr/bin/env bash
# Reproduce the bundled model src/napari_paser/models/paser-synth-quick/ (CPU, ~30 min on
# 2 cores). Data and run folders are under data/ and runs/ (both git-ignored).
#
#   bash scripts/train_bundled_model.sh            # synth data, train, copy the bundle
#   SKIP_COPY=1 bash scripts/train_bundled_model.sh  # leave the shipped bundle alone
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=data/synth_train
RUN=runs/paser-synth-quick
DEST=src/napari_paser/models/paser-synth-quick

# 1. Training data: 16 volumes x 16 slices of 224x256, parameters drawn per volume
#    from base seed 1000 (held-out test volumes use other seeds, e.g. 2000).
if [ ! -f "$DATA/vol15_labels.tif" ]; then
    napari-paser synth --out "$DATA" --volumes 16 --slices 16 --seed 1000
fi

# 2. Train all four stages with the quick preset (resumes if interrupted: rerun this).
napari-paser train --data "$DATA" --out "$RUN" --preset quick --seed 0 --name paser-synth-quick \
    --description "PaSeR (f0 38k, f1 0.42M, f2 4.3M parameters) trained on synthetic battery-electrode micro-CT with the quick preset" \
    --threads 1 --no-progress

# 3. Ship only the manifest and the weights.
if [ -z "${SKIP_COPY:-}" ]; then
    mkdir -p "$DEST"
    cp "$RUN/manifest.json" "$RUN/weights.safetensors" "$DEST/"
    echo "copied bundle to $DEST"
fi

# 4. Optional (EVAL=1): score it on held-out volumes of unseen seeds, clean and with 1 %
#    salt-and-pepper noise (half the noisy pixels at the stack's minimum, half at its
#    maximum), which f0 and the policy never saw in training.
if [ -n "${EVAL:-}" ]; then
    TEST=data/synth_test
    if [ ! -f "$TEST/vol1_labels.tif" ]; then
        napari-paser synth --out "$TEST" --volumes 2 --slices 24 --seed 2000
    fi
    for k in 0 1; do
        python - "$TEST/vol${k}_image.tif" "$TEST/vol${k}_sp_image.tif" <<'PY'
import sys
import numpy as np
import tifffile
img = tifffile.imread(sys.argv[1])
rng = np.random.default_rng(12345)
u = rng.random(img.shape)
noisy = img.copy()
noisy[u < 0.005] = img.min()
noisy[(u >= 0.005) & (u < 0.01)] = img.max()
tifffile.imwrite(sys.argv[2], noisy)
PY
        for variant in "" "_sp"; do
            napari-paser evaluate --bundle "$RUN" --images "$TEST/vol${k}${variant}_image.tif" \
                --labels "$TEST/vol${k}_labels.tif" --methods paser,f0,f1,f2,random --quiet \
                --json "$RUN/eval_vol${k}${variant}.json" --overwrite
        done
    done
fi
