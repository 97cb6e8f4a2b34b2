"""Peak memory of the whole-stack jobs by the number of planes: export, finetune, metrics, tortuosity, band.

Run ``python benchmarks/bench_memory.py JOB [--planes N1 N2 ...]``. For each stack size
the job runs in a fresh process on a (planes, 1024, 1024) stack written for it, and the
child prints its own peak RSS (``ru_maxrss``); the table gives it with the wall seconds,
and the last line the growth of the peak from the smallest to the largest stack (the
project's rule: memory must not grow with the number of slices). Everything printed is
measured in this run.

Jobs:

- ``export [--masks]``: phase labels in a Zarr store (as the widget keeps the results of a
  stack too big for memory) written by ``napari_ui._export.export_phases``, the code
  behind the widget's *Export…* and *File > Save Layers*;
- ``finetune [--budget S]``: ``napari-paser finetune`` on a uint16 TIFF scan (the bundled
  sample stack tiled and shifted per plane, as ``bench_streaming.py`` makes them) with
  strokes on three slices of a labels TIFF;
- ``metrics``: ``napari-paser metrics --no-tortuosity`` on a uint8 label TIFF (the
  sample's labels tiled the same way);
- ``tortuosity [--tau-width W] [--axis A] [--iter-limit N]``: ``napari-paser metrics`` with
  the pore tortuosity along ``A`` on the same labels (surfaces by face counting, the
  faster estimator), solved whole or in columns ``W`` voxels across. TauFactor's memory
  does not depend on its iterations, so ``N`` (default 100) only bounds the time; the τ
  printed is then not converged;
- ``band [--workers N]``: ``napari-paser metrics --no-tortuosity --band SCAN`` with the
  default band (5 λ, f2 everywhere, 4 f0 MC samples), labels and scan as above; with
  ``--workers N`` the band's slabs run on a local dask cluster of N one-thread processes
  (the peak RSS is then the driver's alone, not its workers').
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

PAINTED = (0.25, 0.5, 0.75)  # where in the stack the painted slices of `finetune` lie

CLI_CHILD = (
    "import resource, sys\n"
    "from napari_paser.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(rc)\n"
)

EXPORT_CHILD = (
    "import resource, sys\n"
    "import zarr\n"
    "from napari_paser.napari_ui._export import export_phases\n"
    "store, out, masks = sys.argv[1], sys.argv[2], sys.argv[3] == '1'\n"
    "export_phases(out, zarr.open_array(store, mode='r'), scale=(1.0, 0.5, 0.5), provenance={'bench': True}, masks=masks)\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


def truth_planes() -> np.ndarray:
    from napari_paser import io

    truth, _ = io.read_stack(ROOT / "sample_data" / "electrode_labels.tif")
    return truth


def write_labels(path: Path, planes: int, truth: np.ndarray, painted: set[int] | None = None) -> Path:
    """The sample's truth tiled like the scan: on every plane, or (``painted``) as strokes
    (every 4th pixel of every 8th row) on those planes and 255 elsewhere."""
    from napari_paser.io_writers import TiffSliceWriter
    from napari_paser.train.sparse_labels import UNLABELLED

    rows = np.zeros((SIDE, SIDE), bool)
    rows[::8, ::4] = True
    with TiffSliceWriter(path, (planes, SIDE, SIDE), np.uint8) as w:
        for z in range(planes):
            if painted is None:
                w.write(plane(truth, z))
                continue
            lab = np.full((SIDE, SIDE), UNLABELLED, np.uint8)
            if z in painted:
                lab[rows] = plane(truth, z)[rows]
            w.write(lab)
    return path


def write_store(path: Path, planes: int) -> Path:
    import zarr

    store = zarr.open_array(str(path), mode="w", shape=(planes, SIDE, SIDE), chunks=(1, SIDE, SIDE), dtype="uint8")
    rng = np.random.default_rng(0)
    for z in range(planes):
        store[z] = rng.integers(0, 3, (SIDE, SIDE), dtype=np.uint8)
    return path


def run_child(code: str, args: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of ``code`` run with ``args`` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def measure(job: str, planes: int, work: Path, args: argparse.Namespace) -> tuple[float, float]:
    if job == "export":
        store = write_store(work / f"phases{planes}.zarr", planes)
        return run_child(EXPORT_CHILD, [str(store), str(work / f"export{planes}.tif"), "1" if args.masks else "0"])
    if job == "finetune":
        scan = write_stack(work / f"scan{planes}.tif", planes, sample_planes())
        painted = {int(f * (planes - 1)) for f in PAINTED}
        labels = write_labels(work / f"strokes{planes}.tif", planes, truth_planes(), painted)
        return run_child(CLI_CHILD, ["finetune", str(scan), "--labels", str(labels), "--out", str(work / f"ft{planes}"),
                                     "--budget", str(args.budget), "--threads", "1", "--quiet"])
    labels = write_labels(work / f"labels{planes}.tif", planes, truth_planes())
    if job == "band":
        scan = write_stack(work / f"scan{planes}.tif", planes, sample_planes())
        workers = ["--workers", str(args.workers)] if args.workers else []
        return run_child(CLI_CHILD, ["metrics", str(labels), "--no-tortuosity", "--band", str(scan), "--quiet", *workers])
    if job == "metrics":
        return run_child(CLI_CHILD, ["metrics", str(labels), "--no-tortuosity", "--quiet"])
    width = ["--tau-width", str(args.tau_width)] if args.tau_width else []
    return run_child(CLI_CHILD, ["metrics", str(labels), "--axis", str(args.axis), "--surface-method", "faces",
                                 "--tau-iter-limit", str(args.iter_limit), "--quiet", *width])


DEFAULT_PLANES = {"export": [96, 384], "finetune": [64, 256], "metrics": [64, 256], "tortuosity": [32, 64], "band": [4, 8]}
WHAT = {
    "export": "export of uint8 labels from a Zarr store{masks}",
    "finetune": "napari-paser finetune, uint16 scan, 3 painted slices, --budget {budget:g} --threads 1",
    "metrics": "napari-paser metrics --no-tortuosity, uint8 labels",
    "band": "napari-paser metrics --no-tortuosity --band SCAN (default band){workers}, uint8 labels, uint16 scan",
    "tortuosity": "napari-paser metrics --axis {axis} --surface-method faces --tau-iter-limit {iter_limit}{width}, uint8 labels",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=sorted(WHAT))
    parser.add_argument("--planes", type=int, nargs="+", help="stack sizes (default: export 96 384, the others 64 256)")
    parser.add_argument("--masks", action="store_true", help="export: also the three per-phase masks")
    parser.add_argument("--budget", type=float, default=10.0, help="finetune: budget in seconds (default 10)")
    parser.add_argument("--tau-width", type=int, help="tortuosity: columns this many voxels across (default: metrics' choice)")
    parser.add_argument("--axis", type=int, default=0, help="tortuosity: flux axis (default 0)")
    parser.add_argument("--iter-limit", type=int, default=100, help="tortuosity: TauFactor iterations per solve (default 100)")
    parser.add_argument("--workers", type=int, help="band: slabs on a local dask cluster of this many processes")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stacks are written (default: a temporary folder)")
    args = parser.parse_args(argv)
    rows = []
    for n in sorted(args.planes or DEFAULT_PLANES[args.job]):
        work = Path(tempfile.mkdtemp(prefix=f"paser-bench-{args.job}-", dir=args.workdir))
        try:
            rows.append((n, *measure(args.job, n, work, args)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    width = f" --tau-width {args.tau_width}" if args.tau_width else ""
    what = WHAT[args.job].format(masks=" with masks" if args.masks else "", budget=args.budget, axis=args.axis,
                                 iter_limit=args.iter_limit, width=width,
                                 workers=f" --workers {args.workers}" if args.workers else "")
    print(what + f", (planes, {SIDE}, {SIDE})")
    print("| planes | peak RSS MB | wall s |")
    print("|---|---|---|")
    for n, peak, seconds in rows:
        print(f"| {n} | {peak:.1f} | {seconds:.1f} |")
    print(f"growth of the peak from {rows[0][0]} to {rows[-1][0]} planes: {rows[-1][1] - rows[0][1]:+.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
