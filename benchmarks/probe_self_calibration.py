"""Could a scan calibrate its own routing, with f2 as the reference on a few patches?

Out of family, whether f1 beats f0 changes from scan to scan (`probe_gain_predictability.py
--distribution oof`), which no predictor of one patch can see. This probe simulates the
cheapest label-free fix: run f2 on a random ``--sample`` share of each volume's patches
(they keep f2's output, and their cost is charged), measure there how much f1 moves f0's
prediction toward f2's (first-order gain in mean IoU with f2 as the truth,
:func:`napari_paser.engine.metrics.dataset_iou_gains`), and shift the policy's f1 gains
on that volume so that their mean is that measured gain (as fine-tuning re-centres them
on painted labels). Each λ of a grid is then scored against the real labels, on
development volumes (in family 8001-8004, out of family 9201-9204; not test volumes).

    python benchmarks/probe_self_calibration.py [--bundle NAME] [--slices 8]

Prints, per set and sample share, IoU / f2's and GFLOPs / f2-everywhere's per λ and the
best IoU within several budgets. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PatchTable, build_table, make_volumes, patch_confusion_np  # noqa: E402

LAMS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2)
BUDGETS = (0.15, 0.20, 0.25)
SETS = (("in-family development volumes", (8001, 8002, 8003, 8004), "v1"),
        ("out-of-family development volumes", (9201, 9202, 9203, 9204), "oof"))


def f2_referenced(table: PatchTable) -> tuple[np.ndarray, np.ndarray]:
    """Policy gains (N, 2, GY, GX) and per-patch confusions (N, 3, GY, GX, C, C) of
    f0 / f1 / f2 against f2's own prediction, from the table's engine caches."""
    gains, confs = [], []
    for seg, zs in table.segs:
        for z in zs:
            f2 = seg.compose(z, routing=np.full(seg.grid, 2))
            gains.append(seg.gains(z))
            confs.append(np.stack([patch_confusion_np(seg.compose(z, routing=np.full(seg.grid, m)), f2, seg.patch_size) for m in range(3)]))
    return np.stack(gains), np.stack(confs)


def calibrated_routing(table: PatchTable, gains: np.ndarray, to_f2: np.ndarray, lam: float, sample: float, seed: int = 1) -> np.ndarray:
    """Per volume: f2 on a random ``sample`` of the patches, the policy's f1 gains shifted
    to the gain measured there with f2 as the truth, then routed at ``lam``."""
    from napari_paser.engine.metrics import dataset_iou_gains
    from napari_paser.engine.routing import route

    out, start = [], 0
    for _, zs in table.segs:
        g, ref = gains[start : start + len(zs)].copy(), to_f2[start : start + len(zs)]
        start += len(zs)
        probed = np.zeros(g[:, 0].shape, bool)
        if sample > 0:
            k = max(1, int(round(sample * probed.size)))
            probed.ravel()[np.random.default_rng(seed).choice(probed.size, k, replace=False)] = True
            conf = ref.transpose(0, 2, 3, 1, 4, 5)[probed].reshape(k, 3, 1, 1, *ref.shape[-2:])
            measured = dataset_iou_gains(conf)[:, 0, 0, 0].mean() * k  # "if every patch gained like these"
            g[:, 0] += measured - g[:, 0][probed].mean()
        r = route(g, lam, table.costs)
        r[probed] = 2  # f2 ran there already
        out.append(r)
    return np.concatenate(out)


def main() -> None:
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle name or folder (default: the default bundle)")
    p.add_argument("--slices", type=int, default=8, help="slices per volume (the test sets use 8)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    print(f"bundle {bundle.name}; IoU as a share of f2 everywhere's, GFLOPs as a share of its GFLOPs (charged as PaSeR)", flush=True)
    for name, seeds, distribution in SETS:
        table = build_table(make_volumes(seeds, args.slices, distribution=distribution), bundle)
        gains, to_f2 = f2_referenced(table)
        f2 = table.score(table.constant(2), "f2")
        iou = [table.score(table.constant(m), f"f{m}")["mean_iou"] for m in range(3)]
        print(f"{name} {list(seeds)}: f0 {iou[0]:.4f}, f1 {iou[1]:.4f}, f2 {iou[2]:.4f}", flush=True)
        for sample in (0.0, 1 / 32, 1 / 16):
            rows = []
            for lam in LAMS:
                r = table.score(calibrated_routing(table, gains, to_f2, lam, sample), "paser")
                rows.append((lam, r["mean_iou"] / f2["mean_iou"], r["gflops"] / f2["gflops"]))
            best = [max((i for _, i, q in rows if q <= b), default=float("nan")) for b in BUDGETS]
            print(f"  f2 on {sample:.1%} of the patches: " + "  ".join(f"λ {lam:.3f}: {i:.4f} at {q:.3f}" for lam, i, q in rows), flush=True)
            print("    best within " + ", ".join(f"{b:.2f}: {v:.4f}" for b, v in zip(BUDGETS, best)), flush=True)


if __name__ == "__main__":
    main()
