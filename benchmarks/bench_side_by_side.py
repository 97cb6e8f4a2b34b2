"""What running slices and batches side by side buys with every core (``engine.side_by_side``).

On each of the benchmark's two test sets, f0's whole analysis (``method="f0"``), f1
everywhere and f2 everywhere (each after an untimed analysis, so that f0 is fused in as
in PaSeR) run through fresh engines three ways: one torch thread; every core, one slice
or batch at a time with torch's intra-op threads (``side_by_side=False``, the engine
before this option); and every core, several at once with one thread each (the
default). The three take turns, in rotated order, for ``--rounds`` rounds; the printed
seconds are medians of the wall time of each run, with the speed-up over one thread and
each model's seconds as a share of f2 everywhere's, as BENCHMARKS.md reports them. Last,
whether the labels of the three are the same.

    python benchmarks/bench_side_by_side.py            # every core (os.cpu_count())
    python benchmarks/bench_side_by_side.py --rounds 7 --cores 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from bench_testsets import SETS
from common import make_volumes
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle

MODES = {"1 thread": (1, False), "all cores, one at a time": (None, False), "all cores, side by side": (None, True)}
METHODS = ("f0", "f1", "f2")


def time_method(bundle, volumes, method: str, threads: int, side_by_side: bool) -> tuple[float, list[np.ndarray]]:
    """Wall seconds of ``method`` on every volume through fresh engines, and its labels."""
    torch.set_num_threads(threads)
    seconds, labels = 0.0, []
    for image, _ in volumes:
        seg = PaserSegmenter(bundle, side_by_side=side_by_side, blend_borders=True)
        seg.set_volume(image)
        if method != "f0":
            seg.result(method="f0")  # untimed: f1 and f2 fuse f0 in, as PaSeR's patches do
        start = time.perf_counter()
        labels.append(seg.result(method=method).labels)
        seconds += time.perf_counter() - start
    return seconds, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="bundle name or folder (default: the default bundle)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads for 'all cores' (default: os.cpu_count())")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    bundle = load_bundle(resolve_bundle(args.bundle))
    print(f"bundle {bundle.name}; {platform.processor() or platform.machine()}, {args.cores} cores; "
          f"medians of {args.rounds} rotated rounds; blended borders (the default output)")
    for set_name, (distribution, seeds) in SETS.items():
        volumes = make_volumes(seeds, 8, distribution=distribution)
        runs = [(mode, method) for mode in MODES for method in METHODS]
        seconds: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        labels: dict[tuple[str, str], list[np.ndarray]] = {}
        for r in range(args.rounds):
            shift = r % len(runs)
            for mode, method in runs[shift:] + runs[:shift]:
                threads, side = MODES[mode]
                s, labels[(mode, method)] = time_method(bundle, volumes, method, threads or args.cores, side)
                seconds[(mode, method)].append(s)
        med = {run: float(np.median(v)) for run, v in seconds.items()}
        print(f"\n{set_name} ({len(volumes)} volumes x 8 slices of 224 x 256)")
        print(f"| {'way':<26} | {'f0 analysis s':>13} | {'f1 s':>6} | {'f2 s':>6} | {'speed-up f0 / f1 / f2':>23} | {'f0 / f2':>7} | {'f1 / f2':>7} |")
        print("|" + "---|" * 7)
        for mode in MODES:
            t = [med[(mode, m)] for m in METHODS]
            up = " / ".join(f"{med[('1 thread', m)] / med[(mode, m)]:.2f}" for m in METHODS)
            print(f"| {mode:<26} | {t[0]:13.3f} | {t[1]:6.3f} | {t[2]:6.3f} | {up:>23} | {t[0] / t[2]:7.3f} | {t[1] / t[2]:7.3f} |")
        same = all(all(np.array_equal(a, b) for a, b in zip(labels[("1 thread", m)], labels[(mode, m)])) for mode in MODES for m in METHODS)
        print(f"labels of the three ways the same: {same}")


if __name__ == "__main__":
    main()
