"""How should the dense policy be fitted so its gains track the true ones? (issue 11, line 4)

A quick loop for choosing how the dense policy is fitted, without rerunning the networks
for every candidate: the development volumes (``probe_policy_choice``'s and eight more
out-of-family ones, :data:`SETS`) go through a bundle's f0, f1 and f2 once and are kept
as reward caches, one per set (``checkpoints/dev-caches-wide.pt`` of the run), so a
patch's gain is its first-order change of the *set's* mean IoU, as in the benchmark's
``oracle_gains``. Each candidate, fitted on the run's own reward caches, is scored by the
Pearson r of its predicted patch gains with the true ones, beside f0's mean patch
entropy (issue 11's fourth line asks for r ≥ the entropy's + 0.1).

    python benchmarks/probe_policy_fit.py --run runs/paser-synth-v2.9 --seeds 0 1
    python benchmarks/probe_policy_fit.py --run runs/paser-synth-v2.9 --patch-weight 20
    python benchmarks/probe_f0_feature_caches.py --run runs/paser-synth-v2.9 --data data/synth_v2 --extra-rl data/synth_rl_extra
    python benchmarks/probe_policy_fit.py --run runs/paser-synth-v2.9 --suffix=-f0feat --config f0_features=1 dense_inputs=22
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import make_volumes
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.models import PolicyConfig, PolicyNet
from napari_paser.train.datasets import SliceBank, make_volume
from napari_paser.train.dense_policy import fit_dense_policy
from napari_paser.train.rewards import RewardCache, build_reward_cache, load_reward_caches
from probe_policy_choice import DEVELOPMENT

# probe_policy_choice's development sets and eight more out-of-family volumes: four
# out-of-family scans did not foretell the test set's (probe_results.md).
SETS = {**DEVELOPMENT, "out-of-family more": ("oof", tuple(range(9205, 9213)))}


def development_slices(bundle, slices: int = 8, sets: dict = DEVELOPMENT) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Development sets as (slices with the bundle's widest planes, labels)."""
    planes = max(bundle.f0.config.planes, bundle.f1.config.planes, bundle.f2.config.planes)
    out = {}
    for name, (dist, seeds) in sets.items():
        vols = [make_volume(f"{dist}-{s}", img, lab, bundle.normalization) for s, (img, lab) in zip(seeds, make_volumes(seeds, slices, distribution=dist))]
        out[name] = SliceBank(vols, bundle.patch_size, planes).stacked()
    return out


def development_caches(run: Path, bundle) -> dict[str, RewardCache]:
    """One reward cache per set of :data:`SETS` (built once, then read back), whose
    features also hold f0's (``PolicyConfig.f0_features``): a policy reads its first
    ``dense_inputs`` channels."""
    path = run / "checkpoints" / "dev-caches-wide.pt"
    if not path.exists():
        wide = copy.deepcopy(bundle)
        cfg = wide.policy.config
        wide.policy = PolicyNet(PolicyConfig(**{**cfg.to_dict(), "f0_features": True, "patch_size": tuple(cfg.patch_size)}))
        parts = {name: build_reward_cache(wide, x, y, seed=0).tensors() for name, (x, y) in development_slices(bundle, sets=SETS).items()}
        torch.save(parts, path)
    return {name: RewardCache(*t) for name, t in torch.load(path, weights_only=True).items()}


def _r(pred: torch.Tensor, true: torch.Tensor) -> list[float]:
    """Pearson r per model of (N, 2, GY, GX) predictions with the true gains."""
    return [float(np.corrcoef(pred[:, k].reshape(-1).double(), true[:, k].reshape(-1).double())[0, 1]) for k in range(2)]


def entropy_r(cache: RewardCache, patch_cells: tuple[int, int]) -> list[float]:
    ent = F.avg_pool2d(cache.features[:, 3:4].float(), patch_cells)
    return _r(ent.expand(-1, 2, -1, -1), cache.dataset_gain())


@torch.no_grad()
def policy_r(policies, cache: RewardCache, batch: int = 64) -> list[float]:
    """r of the mean predicted gains of ``policies`` (an ensemble) with the true gains."""
    x = cache.features
    pred = torch.stack([torch.cat([p.eval().gains(x[i : i + batch].float()) for i in range(0, len(x), batch)]) for p in policies]).mean(0)
    return _r(pred, cache.dataset_gain())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--suffix", default="", help="read the caches rewards-rl{SUFFIX}.pt etc. (e.g. -f0feat)")
    p.add_argument("--fit-holdout", action="store_true", help="fit on the held-out RL volumes too (no early stopping)")
    p.add_argument("--patch-weight", type=float, default=0.0, help="weight of the patch-mean error (fit_dense_policy)")
    p.add_argument("--config", nargs="*", default=[], help="PolicyConfig overrides key=value (ints)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = load_bundle(args.run).eval()
    t = time.time()
    dev = development_caches(args.run, base)
    print(f"development caches ready ({time.time() - t:.0f} s)", flush=True)
    cfg = base.policy.config
    cells = (cfg.patch_size[0] // cfg.pool, cfg.patch_size[1] // cfg.pool)
    for name, cache in dev.items():
        rb = policy_r([base.policy], cache)
        re = entropy_r(cache, cells)
        print(f"{name}: bundle's policy r {rb[0]:.3f} / {rb[1]:.3f}, f0 entropy r {re[0]:.3f} / {re[1]:.3f}", flush=True)
    caches = load_reward_caches(args.run / "checkpoints" / f"rewards-rl{args.suffix}.pt")
    holdout = load_reward_caches(args.run / "checkpoints" / f"rewards-rl-holdout{args.suffix}.pt")
    if args.fit_holdout:
        caches, holdout = caches + holdout, None
    overrides = {k: int(v) for k, v in (kv.split("=") for kv in args.config)}
    fitted = []
    for seed in args.seeds:
        t = time.time()
        policy = PolicyNet(PolicyConfig(**{**cfg.to_dict(), **overrides, "patch_size": tuple(cfg.patch_size)}))
        h = fit_dense_policy(policy, caches, holdout, steps=args.steps, batch=16, lr=2e-3, eval_every=250, patch_weight=args.patch_weight, seed=seed)
        fitted.append(policy)
        line = f"seed {seed} {overrides} patch weight {args.patch_weight:g}: held-out RL r {h.get('corr_holdout', [float('nan')] * 2)[0]:.3f} / {h.get('corr_holdout', [float('nan')] * 2)[1]:.3f} (best step {h['best_step']})"
        for name, cache in dev.items():
            r = policy_r([policy], cache)
            line += f" | {name} {r[0]:.3f} / {r[1]:.3f}"
        if len(fitted) > 1:
            line += " | ensemble so far:"
            for name, cache in dev.items():
                r = policy_r(fitted, cache)
                line += f" {name} {r[0]:.3f} / {r[1]:.3f}"
        print(line + f" ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
