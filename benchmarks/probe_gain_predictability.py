"""How predictable are the per-patch gains of f1 and f2 from what the policy sees?

The routing policy only sees f0's MC-dropout output (mean softmax, entropy) and the image.
This probe measures, on held-out synthetic volumes, the correlation between each patch's
true first-order gain in dataset mean IoU (``napari_paser.engine.metrics.dataset_iou_gains``; uses the labels)
and three predictors:

- the bundled policy's predicted gains (REINFORCE or regression, as the bundle was trained);
- the mean f0 entropy of the patch (what the IDK cascade thresholds);
- the same policy network trained by plain regression on those true gains of fresh
  training volumes (the best this network and these inputs can do without REINFORCE noise).

Then, per test volume: f0's mean entropy, the mean true gain of f1 and f2 (about the
IoU change of sending the whole volume to that model) and the correlations inside the
volume. A gain that changes sign from one volume to the next is a property of the scan
that f0's output on one patch cannot see; the last line correlates within volumes only
(each volume's mean removed), which sets that part aside.

    python benchmarks/probe_gain_predictability.py [--distribution v1|oof] [--steps 1500] [--threads 1]

Prints the correlations (Pearson, over all test patches) for f1 and f2. ``--distribution
oof`` scores the out-of-family test volumes (the regression still learns on in-family
volumes: nothing is fitted on that set).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OOF_SEEDS, TEST_SEEDS, make_volumes  # noqa: E402
from napari_paser.engine.metrics import dataset_iou_gains  # noqa: E402

TRAIN_SEEDS = (6001, 6002, 6003)  # fresh volumes, disjoint from the test and training seeds


def reward_cache(bundle, volumes, seed: int):
    """Policy features and per-patch confusions of f0/f1/f2 on labelled volumes."""
    from napari_paser.train.datasets import SliceBank, make_volume
    from napari_paser.train.rewards import build_reward_cache

    vols = [make_volume(f"v{i}", img, lab, bundle.normalization) for i, (img, lab) in enumerate(volumes)]
    x, y = SliceBank(vols, bundle.patch_size).stacked()
    return build_reward_cache(bundle, x, y, seed=seed)


def regress(policy: torch.nn.Module, features: torch.Tensor, target: torch.Tensor, steps: int, seed: int) -> torch.nn.Module:
    """Fit ``policy.gains`` to ``target`` by mean squared error (flips as augmentation)."""
    torch.manual_seed(seed)
    policy = copy.deepcopy(policy)
    for m in policy.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    opt = torch.optim.Adam(policy.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    policy.train()
    for _ in range(steps):
        idx = torch.randint(0, len(features), (32,), generator=g)
        x, y = features[idx], target[idx]
        if bool(torch.rand(1, generator=g) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        loss = ((policy.gains(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


@torch.no_grad()
def predicted_gains(policy: torch.nn.Module, features: torch.Tensor) -> np.ndarray:
    return torch.cat([policy.gains(features[i : i + 32]) for i in range(0, len(features), 32)]).numpy()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def within_volume(a: np.ndarray, volumes: int) -> np.ndarray:
    """``a`` (slices, ...) with each volume's mean removed (volumes are equal runs of slices)."""
    parts = np.split(a, volumes)
    return np.concatenate([x - x.mean() for x in parts])


def main(argv=None) -> None:
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="bundle name or folder (default: the default bundle)")
    p.add_argument("--steps", type=int, default=1500, help="regression steps (batch 32)")
    p.add_argument("--slices", type=int, default=16, help="slices per volume")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distribution", choices=("v1", "oof"), default="v1",
                   help="test volumes: in-family (v1, seeds 9001-9004) or out-of-family (oof, seeds 9101-9104)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    train = reward_cache(bundle, make_volumes(TRAIN_SEEDS, args.slices), args.seed)
    test_seeds = TEST_SEEDS if args.distribution == "v1" else OOF_SEEDS
    test = reward_cache(bundle, make_volumes(test_seeds, args.slices, distribution=args.distribution), args.seed)
    # Gains of one patch are ~1/patches of an IoU change: scale to "as if every patch
    # were like this one" so the regression works at the scale of IoU differences.
    y_train = dataset_iou_gains(train.conf.numpy())
    y_train = torch.from_numpy(y_train * y_train[:, 0].size).float()
    y_test = dataset_iou_gains(test.conf.numpy())
    features = test.features.float()
    ph, pw = bundle.patch_size
    # v2 policy features arrive pooled by the policy's ``pool`` already.
    pool = bundle.policy.config.pool if bundle.policy.config.features == "v2" else 1
    entropy = torch.nn.functional.avg_pool2d(features[:, 3:4], (ph // pool, pw // pool))[:, 0].numpy()
    fitted = regress(bundle.policy, train.features.float(), y_train, args.steps, args.seed)
    rows = {
        "bundled policy (as shipped)": predicted_gains(bundle.policy, features),
        "mean f0 entropy of the patch (IDK's signal)": np.stack([entropy, entropy], 1),
        f"policy net regressed on the true gains ({args.steps} steps)": predicted_gains(fitted, features),
    }
    print(f"{len(test)} {args.distribution} test slices x {y_test.shape[2] * y_test.shape[3]} patches; train {len(train)} slices "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'predictor':58s}  corr f1   corr f2   within volumes f1 / f2")
    n_vol = len(test_seeds)
    yw = within_volume(y_test, n_vol)
    for name, pred in rows.items():
        pred_w = within_volume(pred, n_vol)
        print(f"{name:58s}  {corr(pred[:, 0], y_test[:, 0]):7.3f}  {corr(pred[:, 1], y_test[:, 1]):7.3f}"
              f"   {corr(pred_w[:, 0], yw[:, 0]):.3f} / {corr(pred_w[:, 1], yw[:, 1]):.3f}")
    # Gains on the scale of the whole set: the mean over a volume's patches is about the
    # change of the set's IoU if that volume went to the model (times the volume count).
    y_set = y_test * y_test[:, 0].size
    print("per volume: f0 mean entropy; mean true gain of f1 / f2; corr of entropy with the gains of f1 / f2 inside the volume")
    for seed, e, y in zip(test_seeds, np.split(entropy, n_vol), np.split(y_set, n_vol)):
        print(f"  volume {seed}: entropy {e.mean():.3f}; gain {y[:, 0].mean():+.4f} / {y[:, 1].mean():+.4f}; "
              f"corr {corr(e, y[:, 0]):.3f} / {corr(e, y[:, 1]):.3f}")


if __name__ == "__main__":
    main()
