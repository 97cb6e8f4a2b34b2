"""Why does the refiner check's level move with the scan's length, and does a ratio of its counts not? (issue 11)

``probe_refiner_switch`` checks a scan by how much of plain f0's disagreement with f1
the refiner removes, ``closed = 1 - #(refined f0 != f1) / #(plain f0 != f1)``. Its level
fell from 0.30 to 0.20 (median, in family) when the same seeds were made with 32 slices
instead of 8, far more than the refiner's real benefit changed. Among the pixels where
plain and refined f0 differ and one of them agrees with f1, the refiner sides with f1 on

    sides = A / (A + B),   A = #(refined = f1 != plain),  B = #(plain = f1 != refined),

a ratio that leaves out the pixels where f1 is wrong against both (``closed`` is
(A - B) / #(plain f0 != f1)). This probe makes each seed with several slice counts and
prints, per generator and length, both statistics, the share of f0's IoU gap to f1 that
the refiner closes against the labels (what the check stands for), and how alike
neighbouring planes of the labels are (the generator's property that the 5-plane refiner
reads). Only f0 (plain and refined) and f1 run, so it is quick:

    python benchmarks/probe_check_level.py paser-synth-v2.16 runs/paser-synth-v2.20 --sets v1:8701-8712 oof:9501-9512 --slices 8 16 32 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import mean_iou
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle
from probe_testset_draws import _parse_set, _volume

_BUNDLES: dict = {}


def model_labels(bundle, image: np.ndarray, method: str) -> np.ndarray:
    """(S, H, W) labels of ``method`` (``f0`` or ``f1`` everywhere) through the engine."""
    seg = PaserSegmenter(bundle, seed=0)
    seg.set_volume(image)
    return seg.result(method=method).labels


def plane_agreement(labels: np.ndarray, step: int) -> float:
    """Share of voxels whose label equals the one ``step`` planes further on."""
    return float((labels[step:] == labels[:-step]).mean())


def scan_check(job: tuple[str, str, str, int, int, int]) -> dict:
    """Both check statistics, the true share of the IoU gap closed and the planes' likeness of one scan."""
    plain_ref, refined_ref, dist, seed, slices, threads = job
    torch.set_num_threads(threads)
    for ref in (plain_ref, refined_ref):
        if ref not in _BUNDLES:
            _BUNDLES[ref] = load_bundle(resolve_bundle(ref)).eval()
    plain, refined = _BUNDLES[plain_ref], _BUNDLES[refined_ref]
    image, labels = _volume((seed, slices, dist))
    p0, r0, f1 = model_labels(plain, image, "f0"), model_labels(refined, image, "f0"), model_labels(plain, image, "f1")
    dis_plain = int((p0 != f1).sum())
    a = int(((r0 == f1) & (p0 != f1)).sum())
    b = int(((p0 == f1) & (r0 != f1)).sum())
    iou = {name: mean_iou(pred, labels) for name, pred in (("plain", p0), ("refined", r0), ("f1", f1))}
    return {
        "dist": dist, "slices": slices,
        "closed": 1.0 - (dis_plain - a + b) / dis_plain if dis_plain else 1.0,
        "sides": a / (a + b) if a + b else 0.5,
        "gap_closed": (iou["refined"] - iou["plain"]) / (iou["f1"] - iou["plain"]) if iou["f1"] != iou["plain"] else float("nan"),
        "agree1": plane_agreement(labels, 1), "agree2": plane_agreement(labels, 2),
    }


def spread(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.min():.3f} / {np.median(v):.3f} / {v.max():.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plain", help="the bundle without a refiner (e.g. paser-synth-v2.16)")
    p.add_argument("refined", help="the same networks with the refiner (e.g. runs/paser-synth-v2.20)")
    p.add_argument("--sets", nargs="+", required=True, help="generator:first-last seeds")
    p.add_argument("--slices", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = p.parse_args()
    jobs = [(args.plain, args.refined, dist, seed, n, args.threads)
            for text in args.sets for dist, seeds in [_parse_set(text)] for n in args.slices for seed in seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(scan_check, jobs))
    print(f"{len(rows)} scans in {time.perf_counter() - t0:.0f} s\n")
    print("| generator | slices | scans | closed: min / median / max | sides | IoU gap to f1 the refiner closes | label agreement, next plane | two planes on |")
    print("|---|---|---|---|---|---|---|---|")
    for text in args.sets:
        dist = text.split(":")[0]
        for n in args.slices:
            group = [r for r in rows if r["dist"] == dist and r["slices"] == n]
            cells = [spread([r[k] for r in group]) for k in ("closed", "sides", "gap_closed", "agree1", "agree2")]
            print(f"| {dist} | {n} | {len(group)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
