"""Memory of ``napari-paser finetune`` by the number of planes of the scan.

Run ``python benchmarks/bench_finetune_memory.py [--planes 32 256] [--budget 10]``. For
each stack size it writes a (planes, 1024, 1024) uint16 TIFF scan (the bundled sample
stack tiled and shifted per plane, as ``bench_streaming.py`` makes them) and a labels
TIFF with strokes on three slices only, then runs ``napari-paser finetune`` on them in
a fresh process with a fixed budget and prints the child's peak RSS (``ru_maxrss``) and
wall seconds, and the growth of the peak from the smallest to the largest stack.
Everything printed is measured in this run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_streaming import ROOT, SIDE, plane, sample_planes, write_stack

PAINTED = (0.25, 0.5, 0.75)  # where in the stack the three painted slices lie


def write_labels(path: Path, planes: int, truth: np.ndarray) -> Path:
    """Strokes (every 4th pixel of every 8th row) of the sample's truth on three slices."""
    from napari_paser.io_writers import TiffSliceWriter
    from napari_paser.train.sparse_labels import UNLABELLED

    painted = {int(f * (planes - 1)) for f in PAINTED}
    rows = np.zeros((SIDE, SIDE), bool)
    rows[::8, ::4] = True
    with TiffSliceWriter(path, (planes, SIDE, SIDE), np.uint8) as w:
        for z in range(planes):
            lab = np.full((SIDE, SIDE), UNLABELLED, np.uint8)
            if z in painted:
                lab[rows] = plane(truth, z)[rows]
            w.write(lab)
    return path


CHILD = (
    "import resource, sys\n"
    "from napari_paser.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def run_finetune(image: Path, labels: Path, out: Path, budget: float) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of ``finetune`` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "finetune", str(image), "--labels", str(labels), "--out", str(out),
                           "--budget", str(budget), "--threads", "1", "--quiet"], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return int(done.stdout.strip().splitlines()[-1]) / 1024, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--budget", type=float, default=10.0, help="fine-tuning budget in seconds (default 10)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    from napari_paser import io

    samples = sample_planes()
    truth, _ = io.read_stack(ROOT / "sample_data" / "electrode_labels.tif")
    work = Path(tempfile.mkdtemp(prefix="paser-bench-ft-", dir=args.workdir))
    rows = []
    try:
        for n in sorted(args.planes):
            image = write_stack(work / f"scan{n}.tif", n, samples)
            labels = write_labels(work / f"strokes{n}.tif", n, truth)
            peak, seconds = run_finetune(image, labels, work / f"ft{n}", args.budget)
            rows.append((n, image.stat().st_size / 2**20, peak, seconds))
            image.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.sort()
    print(f"napari-paser finetune, (planes, {SIDE}, {SIDE}) uint16 scan, 3 painted slices, --budget {args.budget:g} --threads 1")
    print("| planes | scan MB | peak RSS MB | wall s |")
    print("|---|---|---|---|")
    for n, mb, peak, seconds in rows:
        print(f"| {n} | {mb:.0f} | {peak:.1f} | {seconds:.1f} |")
    print(f"growth of the peak from {rows[0][0]} to {rows[-1][0]} planes: {rows[-1][2] - rows[0][2]:+.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
