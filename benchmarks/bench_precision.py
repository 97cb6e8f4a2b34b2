"""What ``segment --precision bf16`` buys and costs: f1 / f2 patches under bf16 autocast
against fp32, on the benchmark's two test sets, measured side by side in one run.

For f1 everywhere, f2 everywhere and PaSeR at the bundle's default λ, each test volume is
segmented by the engine in fp32 and in bf16 (f0's analysis runs in fp32 either way), in
alternating order, twice each, keeping the faster of the two runs. Printed per set and
method: the dataset-level mean IoU of both (as BENCHMARKS.md scores it), the share of
pixels whose label differs, and the compute seconds the engine charges (its
``compute_seconds``) with their ratio. bf16 is only fast where it is native: a GPU, or a
CPU with AVX-512 BF16 or AMX (``segment`` refuses it elsewhere); the script says which.

Last, why f0's analysis stays fp32: per set, its seconds with the analysis under bf16
autocast too, and the share of patches whose routing that changes at the default λ and
at λ = 0.002 (where PaSeR sends most patches to f2).

    python benchmarks/bench_precision.py --threads 2
    python benchmarks/bench_precision.py --threads 1
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench_testsets import SETS
from common import make_volumes, scan_probe_parser, scan_probe_start
from napari_paser.engine.metrics import confusion_matrix, mean_iou
from napari_paser.engine.pipeline import PaserSegmenter, segment
from napari_paser.engine.precision import bf16_is_fast

METHODS = ("f1", "f2", "paser")


def run_method(volumes, bundle, method: str, precision: str) -> tuple[list[np.ndarray], float]:
    """Labels of every volume and the compute seconds they took in all."""
    labels, seconds = [], 0.0
    for image, _ in volumes:
        result = segment(image, bundle, method=method, precision=precision)
        labels.append(result.labels)
        seconds += result.compute_seconds
    return labels, seconds


def analysis_under_bf16(volumes, bundle, lams: tuple[float, ...]) -> tuple[float, float, list[float]]:
    """Seconds of f0's analysis of every slice in fp32 and under bf16 autocast, and the
    share of patches routed alike at each of ``lams``."""
    seconds = {False: 0.0, True: 0.0}
    routes: dict[bool, list[list[np.ndarray]]] = {False: [], True: []}
    for image, _ in volumes:
        for bf16 in (False, True):
            seg = PaserSegmenter(bundle)
            seg.set_volume(image)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for z in range(seg.num_slices):
                    seg.analyse(z)
            seconds[bf16] += time.perf_counter() - t
            routes[bf16].append([np.stack([seg.routing(lam, z) for z in range(seg.num_slices)]) for lam in lams])
    alike = [float(np.mean(np.concatenate([(a[i] == b[i]).ravel() for a, b in zip(routes[False], routes[True])])))
             for i in range(len(lams))]
    return seconds[False], seconds[True], alike


def main() -> None:
    ap = scan_probe_parser(__doc__, [])
    ap.add_argument("--repeats", type=int, default=2, help="runs of each precision, the faster kept")
    args = ap.parse_args()
    bundle = scan_probe_start(args)
    print(f"bundle {bundle.name}, {args.threads} torch thread(s); native bf16 here: {bf16_is_fast('cpu')}")
    if not bf16_is_fast("cpu"):
        print("this CPU emulates bf16: the seconds below say what segment --precision bf16 would cost here")
    t0 = time.perf_counter()
    for name, (distribution, seeds) in SETS.items():
        volumes = make_volumes(seeds, args.slices, distribution=distribution)
        truth = [labels for _, labels in volumes]
        print(f"\n{name}: {len(volumes)} volumes x {args.slices} slices")
        print(f"{'method':<7} {'IoU fp32':>9} {'IoU bf16':>9} {'differ':>8} {'s fp32':>8} {'s bf16':>8} {'bf16/fp32':>9}")
        for method in METHODS:
            best: dict[str, tuple[list[np.ndarray], float]] = {}
            for _ in range(args.repeats):
                for precision in ("fp32", "bf16") if _ % 2 == 0 else ("bf16", "fp32"):
                    labels, seconds = run_method(volumes, bundle, method, precision)
                    if precision not in best or seconds < best[precision][1]:
                        best[precision] = (labels, seconds)
            iou = {p: mean_iou(sum(confusion_matrix(lab, gt) for lab, gt in zip(best[p][0], truth)))
                   for p in best}
            differ = np.mean(np.concatenate([(a != b).ravel() for a, b in zip(best["fp32"][0], best["bf16"][0])]))
            s32, s16 = best["fp32"][1], best["bf16"][1]
            print(f"{method:<7} {iou['fp32']:>9.4f} {iou['bf16']:>9.4f} {differ:>8.3%} {s32:>8.2f} {s16:>8.2f} {s16 / s32:>9.3f}")
        lams = (float(bundle.default_lam), 0.002)
        a32, a16, alike = analysis_under_bf16(volumes, bundle, lams)
        print(f"f0's analysis under bf16 too: {a32:.2f} s -> {a16:.2f} s ({a16 / a32:.3f}); patches routed otherwise: "
              + ", ".join(f"{1 - share:.2%} at λ = {lam:g}" for lam, share in zip(lams, alike)))
    print(f"\n{time.perf_counter() - t0:.0f} s in all (torch {torch.__version__})")


if __name__ == "__main__":
    main()
