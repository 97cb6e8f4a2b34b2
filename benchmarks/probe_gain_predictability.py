"""How predictable are the per-patch gains of f1 and f2 from what the policy sees?

The routing policy only sees f0's MC-dropout output (mean softmax, entropy) and the image.
This probe measures, on held-out synthetic volumes, the correlation between each patch's
true first-order gain in dataset mean IoU (``napari_paser.engine.metrics.dataset_iou_gains``; uses the labels)
and three predictors:

- the bundled policy's predicted gains (REINFORCE or regression, as the bundle was trained);
- the mean f0 entropy of the patch (what the IDK cascade thresholds);
- the same policy network trained by plain regression on those true gains of fresh
  training volumes (the best this network and these inputs can do without REINFORCE noise);
- two classical regressors on hand-made statistics of every patch of f0's output (entropy
  mean, spread, tail and quantiles; class probabilities and argmax shares; image and
  local-contrast means; f0's own features), fitted on the true gains of more fresh
  volumes: a ridge regression on the patch statistics, and gradient-boosted trees that
  also see the neighbouring patches, the slice and the volume. If neither beats the
  entropy alone, the information is not in f0's output, whatever the network.

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
FEATURE_SEEDS = tuple(range(6001, 6013))  # the classical regressors learn on these (a superset)


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


def patch_statistics(features: np.ndarray, grid: tuple[int, int], context: bool) -> np.ndarray:
    """Hand-made statistics of each patch of the policy's input, (N * GY * GX, F).

    ``features`` (N, 22, rows, columns) are v2 policy features (f0's mean softmax, its
    entropy, the image, its local standard deviation, f0's 16 finest feature maps),
    pooled cells. ``context`` appends the mean entropy of the 8 neighbouring patches and
    the means of the first 16 statistics over the slice and over the volume (all slices
    of ``features``).
    """
    n, c, rows, cols = features.shape
    gy, gx = grid
    cells = features.reshape(n, c, gy, rows // gy, gx, cols // gx).transpose(0, 2, 4, 1, 3, 5).reshape(n, gy, gx, c, -1)
    prob, ent, image, local_sd = cells[..., 0:3, :], cells[..., 3, :], cells[..., 4, :], cells[..., 5, :]
    argmax = prob.argmax(-2)
    stats = [ent.mean(-1), ent.std(-1), ent.max(-1), np.quantile(ent, 0.9, axis=-1), (ent > 0.5).mean(-1), (ent > 0.8).mean(-1),
             *prob.mean(-1).transpose(3, 0, 1, 2), 1 - prob.max(-2).mean(-1), *[(argmax == k).mean(-1) for k in range(3)],
             image.mean(-1), image.std(-1), local_sd.mean(-1), *cells[..., 6:, :].mean(-1).transpose(3, 0, 1, 2)]
    f = np.stack(stats, -1)
    if context:
        e = np.pad(f[..., 0], ((0, 0), (1, 1), (1, 1)), mode="edge")
        ring = sum(e[:, 1 + dy : 1 + dy + gy, 1 + dx : 1 + dx + gx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx) / 8
        per_slice = np.broadcast_to(f[..., :16].mean((1, 2), keepdims=True), f[..., :16].shape)
        per_volume = np.broadcast_to(f[..., :16].mean((0, 1, 2), keepdims=True), f[..., :16].shape)
        f = np.concatenate([f, ring[..., None], per_slice, per_volume], -1)
    return f.reshape(-1, f.shape[-1])


def classical_predictors(train_caches, test_features: np.ndarray, test_volumes: int, grid: tuple[int, int], seed: int) -> dict:
    """Ridge and gradient-boosted trees fitted on the true gains of ``train_caches``
    (one reward cache per volume; gains per volume, scaled as for the network)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def stack_statistics(volumes, context):
        return np.concatenate([patch_statistics(f, grid, context) for f in volumes])

    train_feats = [c.features.float().numpy() for c in train_caches]
    y = []
    for c in train_caches:
        g = dataset_iou_gains(c.conf.numpy())
        y.append((g * g[:, 0].size).transpose(0, 2, 3, 1).reshape(-1, 2))
    y = np.concatenate(y)
    test_parts = np.split(test_features, test_volumes)
    out = {}
    for name, context, make in (
        ("ridge on patch statistics of f0's output", False,
         lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))),
        ("boosted trees on them + neighbours, slice, volume", True,
         lambda: HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40, random_state=seed)),
    ):
        x_train, x_test = stack_statistics(train_feats, context), stack_statistics(test_parts, context)
        pred = np.stack([make().fit(x_train, y[:, k]).predict(x_test) for k in range(2)], 1)
        n = len(test_features)
        out[f"{name} ({len(train_caches)} volumes)"] = pred.reshape(n, *grid, 2).transpose(0, 3, 1, 2)
    return out


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
    per_volume = [reward_cache(bundle, make_volumes([s], args.slices), args.seed) for s in FEATURE_SEEDS]
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
    grid = (y_test.shape[2], y_test.shape[3])
    rows.update(classical_predictors(per_volume, features.numpy(), len(test_seeds), grid, args.seed))
    print(f"{len(test)} {args.distribution} test slices x {y_test.shape[2] * y_test.shape[3]} patches; train {len(train)} slices "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'predictor':66s}  corr f1   corr f2   within volumes f1 / f2")
    n_vol = len(test_seeds)
    yw = within_volume(y_test, n_vol)
    for name, pred in rows.items():
        pred_w = within_volume(pred, n_vol)
        print(f"{name:66s}  {corr(pred[:, 0], y_test[:, 0]):7.3f}  {corr(pred[:, 1], y_test[:, 1]):7.3f}"
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
