#!/usr/bin/env bash
# Copy a training run's bundle into the package: only its manifest (with the shipped
# version number) and its weights.
#
#   bash scripts/ship_bundle.sh RUN_DIR DEST_DIR VERSION
set -euo pipefail
RUN=$1
DEST=$2
VERSION=$3
mkdir -p "$DEST"
python - "$RUN/manifest.json" "$DEST/manifest.json" "$VERSION" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["version"] = sys.argv[3]
open(sys.argv[2], "w").write(json.dumps(m, indent=2) + "\n")
PY
cp "$RUN/weights.safetensors" "$DEST/"
echo "copied bundle to $DEST"
