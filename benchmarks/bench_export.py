"""Memory of exporting a phase volume from napari, by the number of planes.

Run ``python benchmarks/bench_export.py [--planes 96 384] [--side 1024] [--masks]``.
For each stack size a fresh process fills a Zarr store with (planes, side, side) uint8
phase labels, as the widget's results of a stack too big for memory are kept, then
exports it with :func:`napari_paser.napari_ui._export.export_phases` (the code behind
the widget's *Export…* and *File > Save Layers*). It prints the child's peak RSS
(``ru_maxrss``) before and after the export, the export's seconds, and the growth of the
peak from the smallest to the largest stack. Everything printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, zarr
from napari_paser.napari_ui._export import export_phases

folder, planes, side, masks = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
store = zarr.open_array(str(folder / "phases.zarr"), mode="w", shape=(planes, side, side), chunks=(1, side, side), dtype="uint8")
rng = np.random.default_rng(0)
for z in range(planes):
    store[z] = rng.integers(0, 3, (side, side), dtype=np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
written = export_phases(folder / "phases.tif", store, scale=(1.0, 0.5, 0.5), provenance={"bench": True}, masks=masks)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"planes": planes, "before_mb": before, "after_mb": after, "seconds": seconds, "files": len(written)}))
"""


def measure(planes: int, side: int, masks: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="paser-bench-export-") as folder:
        out = subprocess.run([sys.executable, "-c", CHILD, folder, str(planes), str(side), "1" if masks else "0"],
                             check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, nargs="+", default=[96, 384])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--masks", action="store_true", help="also write the three per-phase masks")
    args = parser.parse_args(argv)
    rows = [measure(n, args.side, args.masks) for n in sorted(args.planes)]
    print(f"export of (planes, {args.side}, {args.side}) uint8 labels from a Zarr store{' with masks' if args.masks else ''}")
    print("| planes | labels MB | peak RSS before export MB | after MB | export s |")
    print("|---|---|---|---|---|")
    for r in rows:
        mb = r["planes"] * args.side * args.side / 2**20
        print(f"| {r['planes']} | {mb:.0f} | {r['before_mb']:.1f} | {r['after_mb']:.1f} | {r['seconds']:.1f} |")
    growth = (rows[-1]["after_mb"] - rows[-1]["before_mb"]) - (rows[0]["after_mb"] - rows[0]["before_mb"])
    print(f"growth of the export's peak from {rows[0]['planes']} to {rows[-1]['planes']} planes: {growth:+.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
