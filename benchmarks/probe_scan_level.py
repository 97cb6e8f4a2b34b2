"""Which scans gain from f1 at all, and can f0's analysis tell? (issue 11, out of family)

Out of family, f1 everywhere beats f0 everywhere by −0.009 to +0.084 mean IoU per scan
(``probe_results.md``), and which patches f0 can keep depends mostly on the scan. Oracle
routing there beats f1 at f1's cost by keeping whole scans' patches on f0; a policy that
ranks patches within slices cannot. This asks whether a *scan-level* statistic of f0's
analysis, which the engine could measure once per volume, predicts a scan's gain.

For every development volume (``probe_image_residual``'s five sets: in family 8001-8004 and
8501-8504, out of family 9201-9212 and 9301-9308; no test set shares them) it prints the
dataset IoU of f0, f1 and f2 everywhere and, per scan, the means of f0's patch entropy,
the image residual, the bundle's predicted gains of f1 / f2, and the noise of a slice
against its neighbours (RMS of the slice minus the mean of the planes above and below,
over the slice's standard deviation). Then the Pearson r over the scans of each with
the scan's gain of f1 and f2 over f0, over all scans and per family. Last, per set, the
bundle's gains shrunk towards the mean gain of their slice or of their scan (``α`` × the
patch's + (1 − α) × the mean): their r with the true gains, and the best IoU routing by
them reaches within f1 everywhere's GFLOPs and seconds (as ``probe_policy_choice``).

    python benchmarks/probe_scan_level.py paser-synth-v2.16 --threads 2
"""

from __future__ import annotations

import numpy as np
import torch

from common import best_within, build_table, gain_front, make_volumes, oracle_gains
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.registry import resolve_bundle
from napari_paser.train.rewards import iou_from_confusion
from probe_image_residual import FRESH, patch_signals
from probe_policy_choice import development_parser
from probe_policy_fit import SETS

STATS = ("entropy", "residual", "gain f1", "gain f2", "plane noise")


def plane_noise(image: np.ndarray) -> float:
    """Mean over inner slices of RMS(slice − mean of its two neighbours) / std(slice)."""
    img = image.astype(np.float64)
    inner = img[1:-1] - 0.5 * (img[:-2] + img[2:])
    return float(np.mean(np.sqrt((inner**2).mean((1, 2))) / img[1:-1].std((1, 2)).clip(1e-12)))


def shrunk(gains: np.ndarray, groups: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` × each patch's gains + (1 − alpha) × the mean of its group's (N, 2, GY, GX)."""
    out = gains.astype(np.float64).copy()
    for g in np.unique(groups):
        sel = groups == g
        out[sel] = alpha * gains[sel] + (1 - alpha) * gains[sel].mean((0, 2, 3), keepdims=True)
    return out


def main() -> None:
    args = development_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundles[0])).eval()
    rows, routing_rows = [], []
    print("| set | seed | f0 / f1 / f2 everywhere | f1 − f0 | f2 − f0 | " + " | ".join(STATS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(STATS))
    for name, (distribution, seeds) in {**SETS, **FRESH}.items():
        volumes = make_volumes(seeds, args.slices, distribution=distribution)
        table = build_table(volumes, bundle, seed=0)
        signals = patch_signals(table, [bundle])
        volume_of = np.concatenate([np.full(len(zs), k) for k, (_, zs) in enumerate(table.segs)])
        for k, seed in enumerate(seeds):
            sel = volume_of == k
            iou = iou_from_confusion(torch.from_numpy(table.conf[sel]).sum((0, 2, 3))).numpy()
            stats = [signals["entropy"][sel].mean(), signals["residual"][sel].mean(), signals["gains 0"][sel, 0].mean(),
                     signals["gains 0"][sel, 1].mean(), plane_noise(volumes[k][0])]
            rows.append((distribution, iou[1] - iou[0], iou[2] - iou[0], stats))
            print(f"| {name} | {seed} | {iou[0]:.4f} / {iou[1]:.4f} / {iou[2]:.4f} | {iou[1] - iou[0]:+.4f} | {iou[2] - iou[0]:+.4f} | "
                  + " | ".join(f"{v:.5f}" for v in stats) + " |", flush=True)
        # The bundle's gains shrunk towards their slice's or their scan's mean.
        true = oracle_gains(table)
        f1 = table.score(table.constant(1), "f1")
        for level, groups in (("slice", np.arange(len(volume_of))), ("scan", volume_of)):
            for alpha in (1.0, 0.5, 0.25, 0.0):
                if alpha == 1.0 and level == "scan":
                    continue
                g = shrunk(signals["gains 0"], groups, alpha)
                front = gain_front(table, g) + gain_front(table, g, cost="seconds")
                best = best_within(front, f1["gflops"], f1["seconds"])
                r = [float(np.corrcoef(g[:, m].ravel(), true[:, m].ravel())[0, 1]) for m in range(2)]
                routing_rows.append((name, f1["mean_iou"], "none" if alpha == 1.0 else f"{level}, α {alpha}", r, best["mean_iou"] if best else float("nan")))
    print("\nPearson r over the scans of each statistic with the scan's gain of f1 / f2 over f0")
    print("| scans | n | " + " | ".join(STATS) + " |")
    print("|---|---|" + "---|" * len(STATS))
    for label, keep in (("all", lambda d: True), ("out of family", lambda d: d == "oof"), ("in family", lambda d: d == "v1")):
        picked = [r for r in rows if keep(r[0])]
        g = np.array([[r[1], r[2]] for r in picked])
        s = np.array([r[3] for r in picked])
        cells = [f"{np.corrcoef(s[:, j], g[:, 0])[0, 1]:+.3f} / {np.corrcoef(s[:, j], g[:, 1])[0, 1]:+.3f}" for j in range(len(STATS))]
        print(f"| {label} | {len(picked)} | " + " | ".join(cells) + " |")
    print("\nThe bundle's gains shrunk towards the mean of their slice or scan: r with the true gains (f1 / f2) and the best IoU within f1 everywhere's GFLOPs and seconds")
    print("| set | f1 everywhere | shrinkage | r | best within f1's cost |")
    print("|---|---|---|---|---|")
    for name, f1_iou, label, r, best in routing_rows:
        print(f"| {name} | {f1_iou:.4f} | {label} | {r[0]:.3f} / {r[1]:.3f} | {best:.4f} |")


if __name__ == "__main__":
    main()
