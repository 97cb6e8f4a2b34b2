"""Memory and speed of streaming ``segment`` on stacks of 1024x1024 uint16 slices.

Run ``python benchmarks/bench_streaming.py [--slices 8 96] [--big-planes 6000]
[--big-slabs 2] [--lam L] [--json OUT.json]``. Everything printed is measured in this run:

1. **growth** — ``napari-paser segment IN.tif -o OUT.tif`` in a fresh process for each
   stack size in ``--slices``; prints the child's peak RSS (``ru_maxrss``), wall seconds
   and seconds per megavoxel, and the growth of the peak from the smallest to the
   largest stack (the acceptance line asks for at most 150 MB from 8 to 96 slices);
2. **beyond RAM** (``--big-planes`` > 0) — a memory-mapped-size TIFF stack whose float32
   copy would not fit in this machine's RAM: the statistics pass reads all of it, then
   ``--big-slabs`` slabs are segmented into an OME-Zarr store (the full stack would take
   hours on two cores). Prints peak RSS, seconds of each pass and seconds per megavoxel,
   and the machine's RAM and swap.

The slices are the bundled sample stack tiled to 1024x1024 (shifted per plane), so the
routing sees electrode-like images. Temporary files go to ``--workdir`` (default: a new
folder under the system temp dir, deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIDE = 1024


def sample_planes() -> np.ndarray:
    from napari_paser import io

    image, _ = io.read_stack(ROOT / "sample_data" / "electrode_image.tif")
    return image


def plane(samples: np.ndarray, z: int) -> np.ndarray:
    """A 1024x1024 uint16 plane: sample slice z tiled and shifted, so planes differ."""
    s = samples[z % len(samples)]
    reps = (-(-SIDE // s.shape[0]), -(-SIDE // s.shape[1]))
    return np.roll(np.tile(s, reps)[:SIDE, :SIDE], (7 * z, 13 * z), axis=(0, 1))


def write_stack(path: Path, planes: int, samples: np.ndarray) -> Path:
    from napari_paser.io_writers import TiffSliceWriter

    w = TiffSliceWriter(path, (planes, SIDE, SIDE), np.uint16, voxel_size=(1.0, 1.0, 1.0))
    for z in range(planes):
        w.write(plane(samples, z))
    return w.close()


def peak_rss_of(cmd: list[str]) -> tuple[float, float, str]:
    """Peak RSS (MB) and wall seconds of ``cmd`` run in a fresh wrapper process."""
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "print(json.dumps([p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, dt, p.stdout[-2000:], p.stderr[-2000:]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, json.dumps(cmd)], capture_output=True, text=True, check=True)
    rc, maxrss_kb, seconds, stdout, stderr = json.loads(out.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr}")
    return maxrss_kb / 1024.0, seconds, stdout.strip()


def growth(workdir: Path, sizes: list[int], lam: float | None, samples: np.ndarray, precision: str = "fp32",
           blend_borders: bool | None = None) -> dict:
    rows = []
    for n in sizes:
        src = write_stack(workdir / f"stack_{n}.tif", n, samples)
        out = workdir / f"labels_{n}.tif"
        cmd = [sys.executable, "-m", "napari_paser.cli.main", "segment", str(src), "-o", str(out), "--quiet", "--overwrite",
               "--report", str(workdir / f"report_{n}.json"), "--precision", precision]
        if lam is not None:
            cmd += ["--lam", str(lam)]
        if blend_borders is not None:  # else segment's default
            cmd.append("--blend-borders" if blend_borders else "--no-blend-borders")
        rss, seconds, _ = peak_rss_of(cmd)
        report = json.loads((workdir / f"report_{n}.json").read_text())
        mvox = n * SIDE * SIDE / 1e6
        rows.append({"slices": n, "peak_rss_mb": rss, "seconds": seconds, "seconds_per_megavoxel": seconds / mvox,
                     "slab": report["slab"], "lam": report["lam"], "route_fraction": report["route_fraction"], "precision": precision,
                     "blended_borders_px": report["bundle"].get("blended_borders_px", 0)})
        print(f"  {n:4d} slices: peak RSS {rss:7.1f} MB, {seconds:7.1f} s ({seconds / mvox:.3f} s/MVx), slab {report['slab']}, "
              f"λ={report['lam']}, routing {report['route_fraction']}", flush=True)
        src.unlink()
        out.unlink()
    return {"rows": rows, "growth_mb": rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]}


BIG_CHILD = """
import json, resource, sys, time
from napari_paser.engine.streaming import stream_segment, default_slab
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.patches import grid_shape
from napari_paser.engine.bundle import load_bundle
from napari_paser.io_sources import open_volume
from napari_paser.io_writers import OmeZarrOutput

src, out, slabs, lam = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lam = None if lam == "none" else float(lam)
vol = open_volume(src)
path = resolve_bundle()
bundle = load_bundle(path)
slab = default_slab(vol.shape, bundle.patch_size)
store = OmeZarrOutput(out)
store.prepare(shape=vol.shape, grid=grid_shape(vol.shape[1:], bundle.patch_size), slab=slab, run_key={"bench": 1}, overwrite=True)
marks = {}
def progress(done, total):
    marks.setdefault("stats_done", None)
    if done >= vol.shape[0] and "t_stats" not in marks:
        marks["t_stats"] = time.perf_counter()
t0 = time.perf_counter()
summary = stream_segment(vol, str(path), lam=lam, slab=slab, zarr_output=store, todo=list(range(slabs)), progress=progress, bundle=bundle)
t1 = time.perf_counter()
print(json.dumps({"slab": slab, "stats_seconds": marks["t_stats"] - t0, "segment_seconds": t1 - marks["t_stats"],
                  "planes_segmented": slabs * slab, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "lam": summary.report["lam"]}))
"""


def meminfo() -> dict[str, int]:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    return info


def beyond_ram(workdir: Path, planes: int, slabs: int, lam: float | None, samples: np.ndarray) -> dict:
    mem = meminfo()
    src = workdir / "big.tif"
    t0 = time.perf_counter()
    write_stack(src, planes, samples)
    write_s = time.perf_counter() - t0
    voxels = planes * SIDE * SIDE
    print(f"  stack {planes}x{SIDE}x{SIDE} uint16: {src.stat().st_size / 2**30:.2f} GiB on disk, {4 * voxels / 2**30:.2f} GiB as float32, "
          f"RAM {mem['MemTotal'] / 2**30:.2f} GiB, swap {mem['SwapTotal'] / 2**30:.2f} GiB (written in {write_s:.0f} s)", flush=True)
    out = subprocess.run([sys.executable, "-c", BIG_CHILD, str(src), str(workdir / "big.zarr"), str(slabs), "none" if lam is None else str(lam)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mvox = r["planes_segmented"] * SIDE * SIDE / 1e6
    r.update(planes=planes, file_gib=src.stat().st_size / 2**30, float32_gib=4 * voxels / 2**30, ram_gib=mem["MemTotal"] / 2**30,
             swap_gib=mem["SwapTotal"] / 2**30, seconds_per_megavoxel=r["segment_seconds"] / mvox,
             stats_seconds_per_megavoxel=r["stats_seconds"] / (voxels / 1e6))
    shutil.rmtree(workdir / "big.zarr", ignore_errors=True)
    print(f"  statistics pass over all {planes} planes: {r['stats_seconds']:.1f} s; segmented {r['planes_segmented']} planes "
          f"(slab {r['slab']}) in {r['segment_seconds']:.1f} s = {r['seconds_per_megavoxel']:.3f} s/MVx; peak RSS {r['maxrss_mb']:.1f} MB",
          flush=True)
    src.unlink()
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, nargs="*", default=[8, 96], help="stack sizes of the growth measurement (none: skip it)")
    ap.add_argument("--big-planes", type=int, default=0, help="planes of the beyond-RAM stack (0: skip; 6000 = 12 GiB uint16)")
    ap.add_argument("--big-slabs", type=int, default=2, help="slabs of the beyond-RAM stack to segment")
    ap.add_argument("--lam", type=float, help="λ (default: the bundle's)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="of the growth runs' f1/f2 patches (segment --precision)")
    ap.add_argument("--blend-borders", action=argparse.BooleanOptionalAction, default=None,
                    help="whether the growth runs blend their patches' borders (segment --blend-borders / --no-blend-borders; "
                         "default: segment's)")
    ap.add_argument("--workdir", type=Path, help="folder for the temporary stacks")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="paser-bench-streaming-"))
    workdir.mkdir(parents=True, exist_ok=True)
    samples = sample_planes()
    results: dict = {"cpu_count": os.cpu_count()}
    try:
        if args.slices:
            print(f"growth of segment's peak RSS, {SIDE}x{SIDE} uint16 slices:", flush=True)
            results["growth"] = growth(workdir, sorted(args.slices), args.lam, samples, args.precision, args.blend_borders)
            g = results["growth"]
            print(f"  growth {g['rows'][0]['slices']} -> {g['rows'][-1]['slices']} slices: {g['growth_mb']:+.1f} MB", flush=True)
        if args.big_planes > 0:
            print("beyond RAM:", flush=True)
            results["beyond_ram"] = beyond_ram(workdir, args.big_planes, args.big_slabs, args.lam, samples)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
