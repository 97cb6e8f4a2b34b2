"""How predictable are the per-patch gains of f1 and f2 from what the policy sees?

The routing policy only sees f0's MC-dropout output (mean softmax, entropy) and the image.
This probe measures, on held-out synthetic volumes, the correlation between each patch's
true first-order gain in dataset mean IoU (``napari_paser.engine.metrics.dataset_iou_gains``; uses the labels)
and three predictors:

- the bundled policy's predicted gains (trained by REINFORCE on per-patch IoU, paper Eq. 4);
- the mean f0 entropy of the patch (what the IDK cascade thresholds);
- the same policy network trained by plain regression on those true gains of fresh
  training volumes (the best this network and these inputs can do without REINFORCE noise).

    python benchmarks/probe_gain_predictability.py [--steps 1500] [--threads 1]

Prints the correlations (Pearson, over all test patches) for f1 and f2.
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

from common import TEST_SEEDS, make_volumes  # noqa: E402
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


def main(argv=None) -> None:
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="bundle name or folder (default: the default bundle)")
    p.add_argument("--steps", type=int, default=1500, help="regression steps (batch 32)")
    p.add_argument("--slices", type=int, default=16, help="slices per volume")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    train = reward_cache(bundle, make_volumes(TRAIN_SEEDS, args.slices), args.seed)
    test = reward_cache(bundle, make_volumes(TEST_SEEDS, args.slices), args.seed)
    # Gains of one patch are ~1/patches of an IoU change: scale to "as if every patch
    # were like this one" so the regression works at the scale of IoU differences.
    y_train = dataset_iou_gains(train.conf.numpy())
    y_train = torch.from_numpy(y_train * y_train[:, 0].size).float()
    y_test = dataset_iou_gains(test.conf.numpy())
    features = test.features.float()
    ph, pw = bundle.patch_size
    entropy = torch.nn.functional.avg_pool2d(features[:, 3:4], (ph, pw))[:, 0].numpy()
    fitted = regress(bundle.policy, train.features.float(), y_train, args.steps, args.seed)
    rows = {
        "bundled policy (REINFORCE on per-patch IoU)": predicted_gains(bundle.policy, features),
        "mean f0 entropy of the patch (IDK's signal)": np.stack([entropy, entropy], 1),
        f"policy net regressed on the true gains ({args.steps} steps)": predicted_gains(fitted, features),
    }
    print(f"{len(test)} test slices x {y_test.shape[2] * y_test.shape[3]} patches; train {len(train)} slices "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'predictor':58s}  corr f1   corr f2")
    for name, pred in rows.items():
        print(f"{name:58s}  {corr(pred[:, 0], y_test[:, 0]):7.3f}  {corr(pred[:, 1], y_test[:, 1]):7.3f}")


if __name__ == "__main__":
    main()
