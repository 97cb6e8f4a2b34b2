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

from common import make_volumes  # noqa: E402

LAMS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2)
BUDGETS = (0.15, 0.20, 0.25)
SETS = (("in-family development volumes", (8001, 8002, 8003, 8004), "v1"),
        ("out-of-family development volumes", (9201, 9202, 9203, 9204), "oof"))


@torch.no_grad()
def volume_tables(bundle, seed: int, distribution: str, slices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Policy gains (N, 2, GY, GX) and per-patch confusions of f0/f1/f2 against the truth and against f2."""
    from napari_paser.engine.uncertainty import analyse_slices, slice_seed
    from napari_paser.train.datasets import SliceBank, make_volume
    from napari_paser.train.rewards import patch_confusion, predict_patches

    ps = bundle.patch_size
    image, labels = make_volumes((seed,), slices, distribution=distribution)[0]
    x, y = SliceBank([make_volume(str(seed), image, labels, bundle.normalization)], ps).stacked()
    x = x.float()
    outs = [analyse_slices(bundle.f0, bundle.policy.config, x[i : i + 1], bundle.mc_passes, slice_seed(0, i)) for i in range(len(x))]
    features = torch.cat([o[2] for o in outs])
    gains = torch.cat([bundle.policy.gains(features[i : i + 8]) for i in range(0, len(features), 8)]).numpy()
    preds = [torch.cat([o[0] for o in outs]).argmax(1), predict_patches(bundle.f1, x, ps), predict_patches(bundle.f2, x, ps)]
    to_truth = torch.stack([patch_confusion(p, y, ps) for p in preds], 1).numpy()
    to_f2 = torch.stack([patch_confusion(p, preds[2], ps) for p in preds], 1).numpy()
    return gains, to_truth, to_f2


def sweep(bundle, volumes, sample: float, seed: int = 1) -> list[tuple[float, float, float]]:
    """(λ, mean IoU, GFLOPs / f2-everywhere's) of self-calibrated routing over all volumes."""
    from napari_paser.engine.metrics import dataset_iou_gains, mean_iou
    from napari_paser.engine.routing import route

    flops = bundle.meta["flops"]
    costs = bundle.costs().numpy()
    rows = []
    for lam in LAMS:
        confs, n1, n2, slices = [], 0, 0, 0
        for gains, to_truth, to_f2 in volumes:
            g = gains.copy()
            probed = np.zeros(g[:, 0].shape, bool)
            if sample > 0:
                k = max(1, int(round(sample * probed.size)))
                probed.ravel()[np.random.default_rng(seed).choice(probed.size, k, replace=False)] = True
                conf = to_f2.transpose(0, 2, 3, 1, 4, 5)[probed].reshape(k, 3, 1, 1, 3, 3)
                measured = dataset_iou_gains(conf)[:, 0, 0, 0].mean() * k  # "if every patch gained like these"
                g[:, 0] += measured - g[:, 0][probed].mean()
            r = route(g, lam, costs)
            r[probed] = 2  # f2 ran there already
            confs.append(np.take_along_axis(to_truth, r[:, None, :, :, None, None], 1)[:, 0])
            n1, n2, slices = n1 + int((r == 1).sum()), n2 + int((r == 2).sum()), slices + len(r)
        gflops = slices * flops["f0_mc_analysis"] + n1 * flops["patch"][1] + n2 * flops["patch"][2]
        rows.append((lam, mean_iou(np.concatenate(confs).sum((0, 1, 2))), gflops / (slices * flops["f2_everywhere_per_slice"])))
    return rows


def main() -> None:
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.metrics import mean_iou
    from napari_paser.engine.registry import resolve_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle name or folder (default: the default bundle)")
    p.add_argument("--slices", type=int, default=8, help="slices per volume (the test sets use 8)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    print(f"bundle {bundle.name}; IoU as a share of f2 everywhere's, GFLOPs as a share of its GFLOPs", flush=True)
    for name, seeds, distribution in SETS:
        volumes = [volume_tables(bundle, s, distribution, args.slices) for s in seeds]
        pooled = np.concatenate([v[1] for v in volumes]).sum((0, 2, 3))
        iou = [mean_iou(pooled[m]) for m in range(3)]
        print(f"{name} {list(seeds)}: f0 {iou[0]:.4f}, f1 {iou[1]:.4f}, f2 {iou[2]:.4f}", flush=True)
        for sample in (0.0, 1 / 32, 1 / 16):
            rows = sweep(bundle, volumes, sample)
            best = [max((r[1] for r in rows if r[2] <= b), default=float("nan")) / iou[2] for b in BUDGETS]
            print(f"  f2 on {sample:.1%} of the patches: " + "  ".join(f"λ {lam:.3f}: {i / iou[2]:.4f} at {q:.3f}" for lam, i, q in rows), flush=True)
            print("    best within " + ", ".join(f"{b:.2f}: {v:.4f}" for b, v in zip(BUDGETS, best)), flush=True)


if __name__ == "__main__":
    main()
