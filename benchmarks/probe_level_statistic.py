"""Which statistic of a slice's refiner KL should set its level of gains? (issue 11, line 4)

v2.23 gives each slice's gains the level of a line in the slice's mean refiner KL,
fitted on the RL slices (``train.dense_policy.fit_slice_level``), and keeps the policy
network's ranking within the slice. The mean mixes how much of the slice is boundary with
how far the refiner moves each boundary. This probe fits the same line in other label-free
statistics of the slice's pooled inputs (and in two pairs of them, least squares on both)
and prints, per statistic:

- the r of the slices' statistic with their mean true gain (f1 / f2) over the RL slices
  it is fitted on and over the held-out RL slices;
- per set of fresh scans: the r over the scans of their mean statistic with their mean
  true gain, the pooled r of the policy with that level, and the share of sets of four
  scans meeting line 4 (``probe_slice_level.pooled_and_line4``).

The ranking within slices is always ``--policy``'s network (default: the shipped v2.23), so
only the level differs between rows. The RL slices are the run's reward caches; the fresh
scans are those ``probe_refined_ranking.py`` cached (with ``--base``) and the policy input
``probe_policy_refit.py`` cached. Nothing is fitted on the fresh scans.

    python benchmarks/probe_level_statistic.py runs/paser-synth-v2.23 --cache runs/rrcache \\
        --sets v1:8831-8850 oof:9631-9650 v1:8851-8870 oof:9651-9670
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch

from common import make_volumes
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.registry import resolve_bundle
from napari_paser.train.rewards import load_reward_caches
from probe_policy_refit import scan_features
from probe_refined_ranking import cached
from probe_slice_level import corr, fresh_scans, gains, level_probe_arguments, pooled_and_line4
from probe_testset_draws import _parse_set

PAIRS = {"KL mean + KL sd": ["KL mean", "KL sd"], "KL mean + KL q90": ["KL mean", "KL q90"]}


def kl_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """Label-free statistics (slices,) of each slice's policy input (slices, 7, GY, GX):
    of the refiner's KL (channel 6) over the slice's cells, and f0's mean entropy (channel 3)."""
    f = features.double()
    kl, ent = f[:, 6].flatten(1), f[:, 3].flatten(1)
    out = {
        "KL mean": kl.mean(1),
        "log KL mean": kl.mean(1).clamp_min(1e-6).log(),
        "sqrt KL mean": kl.clamp_min(0).sqrt().mean(1),
        "KL q50": kl.quantile(0.5, 1),
        "KL q75": kl.quantile(0.75, 1),
        "KL q90": kl.quantile(0.9, 1),
        "KL q97": kl.quantile(0.97, 1),
        "KL sd": kl.std(1),
        "KL share > 0.1": (kl > 0.1).double().mean(1),
        "KL / entropy": kl.mean(1) / ent.mean(1),
        "entropy mean": ent.mean(1),
    }
    return {name: v.numpy() for name, v in out.items()}


def design(stats: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.c_[np.stack([stats[n] for n in names], 1), np.ones(len(stats[names[0]]))]


def fit_levels(stats: dict[str, np.ndarray], level: np.ndarray) -> dict[str, tuple[list[str], np.ndarray]]:
    """Least-squares lines of the slices' mean gains (slices, 2) on each statistic and pair."""
    rules = {name: [name] for name in stats} | PAIRS
    return {name: (cols, np.linalg.lstsq(design(stats, cols), level, rcond=None)[0]) for name, cols in rules.items()}


def rl_split(run, name: str, chunk: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`kl_statistics` of the slices of the run's reward caches ``name`` and their mean true gains."""
    caches = load_reward_caches(run / "checkpoints" / name)
    parts = [kl_statistics(c.features[i : i + chunk].float()) for c in caches for i in range(0, len(c), chunk)]
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return stats, np.concatenate([c.dataset_gain().mean((2, 3)).double().numpy() for c in caches])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    level_probe_arguments(ap)
    ap.add_argument("--policy", default="paser-synth-v2.23", help="the bundle whose policy network ranks within slices")
    ap.add_argument("--draws", type=int, default=1000, help="sets of four scans drawn per set for line 4")
    args = ap.parse_args()
    bundle = load_bundle(resolve_bundle(args.policy))
    base = load_bundle(resolve_bundle(args.base))
    policy = bundle.policy.eval()
    x_fit, y_fit = rl_split(args.run, "rewards-rl.pt")
    x_held, y_held = rl_split(args.run, "rewards-rl-holdout.pt")
    levels = fit_levels(x_fit, y_fit)
    rows = {}
    for name, (cols, w) in levels.items():
        fit, held = design(x_fit, cols) @ w, design(x_held, cols) @ w
        rows[name] = [f"{corr(fit[:, 0], y_fit[:, 0]):+.3f} / {corr(fit[:, 1], y_fit[:, 1]):+.3f}",
                      f"{corr(held[:, 0], y_held[:, 0]):+.3f} / {corr(held[:, 1], y_held[:, 1]):+.3f}"]
    for text in args.sets:
        dist, seeds = _parse_set(text)
        stem = f"{text.replace(':', '_')}_{args.slices}_{base.name}-{base.meta.get('version')}"
        volumes = functools.partial(make_volumes, seeds, args.slices, distribution=dist)
        cached(args.cache / f"{stem}_features_{bundle.name}-{bundle.meta.get('version')}.pkl", lambda: scan_features(volumes(), bundle))
        scans, features, true_levels = fresh_scans(args.cache, text, args.slices, base, bundle)
        means = {name: [] for name in levels}
        for scan, feats in zip(scans, features, strict=True):
            pred = gains(policy, feats)
            stats = kl_statistics(feats.float())
            for name, (cols, w) in levels.items():
                level = design(stats, cols) @ w
                means[name].append(level.mean(0))
                scan[name] = pred - pred.mean((2, 3), keepdims=True) + level[:, :, None, None]
        for name, row in zip(levels, pooled_and_line4(scans, list(levels), args.draws)):
            m = np.array(means[name])
            rows[name] += [f"{corr(m[:, 0], true_levels[:, 0]):+.2f} / {corr(m[:, 1], true_levels[:, 1]):+.2f}",
                           f"{row[0]:.3f} / {row[1]:.3f}; {100 * row[2]:.1f} %"]
    print(f"policy network {bundle.name} {bundle.meta.get('version')}; {len(y_fit)} RL slices fitted, {len(y_held)} held out ({args.run})")
    print("| slice level from a line in | r fit | r held-out RL | "
          + " | ".join(f"{t}: r over scans | {t}: pooled r; line 4" for t in args.sets) + " |")
    print("|---|---|---|" + "---|---|" * len(args.sets))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
