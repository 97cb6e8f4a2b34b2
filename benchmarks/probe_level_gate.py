"""Would a slice level from all of the policy's inputs carry over where the RL slices reach? (issue 11, line 4)

``probe_slice_level.py`` found that a line of a slice's mean gain in all seven of the
policy's slice means (f0's class shares, its entropy, the image's mean and spread, the
refiner's KL), fitted on the RL slices, ranks the in-family scans' gains far better than the
KL's line that v2.23 ships, and the out-of-family ones far worse: out of family it
extrapolates. This probe asks whether that line, trusted only where a slice's means lie
among the RL slices' and the KL's line elsewhere, keeps the first without the second.

Label-free rules for a slice's level, each under the policy's ranking within the slice:

- ``KL`` and ``all seven``: the least-squares lines (``probe_slice_level.fit_lines``);
- ``all seven, clipped``: each mean clipped to the RL slices' range first;
- ``all seven within the range``: the seven-input line where each of the slice's means
  lies within the RL slices' range, else the KL's line;
- ``all seven within reach (q)``: the seven-input line where the slice's Mahalanobis
  distance from the RL slices' means (their covariance) is at most the q-quantile of the
  held-out RL slices' distances, else the KL's line.

For each rule it prints the r with the held-out RL slices' mean gains, then on the fresh
scans the share of slices within reach, the pooled r, and the share of sets of four scans
meeting line 4 (``probe_slice_level.pooled_and_line4``). Nothing is fitted on the fresh scans.

    python benchmarks/probe_level_gate.py runs/paser-synth-v2.23 --base paser-synth-v2.20 --cache runs/rrcache
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import numpy as np

from common import make_volumes
from probe_policy_refit import scan_features
from probe_refined_ranking import cached
from probe_slice_level import (
    corr,
    fit_lines,
    gains,
    level_probe_arguments,
    line_level,
    load_level_probe,
    pooled_and_line4,
    print_level_table,
    slice_means,
)
from probe_testset_draws import _parse_set

ALL, KL = list(range(7)), [6]
QUANTILES = (0.9, 0.99)


def mahalanobis(x_fit: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Squared Mahalanobis distance of rows from ``x_fit``'s mean under its covariance."""
    mu = x_fit.mean(0)
    inverse = np.linalg.inv(np.cov(x_fit, rowvar=False) + 1e-9 * np.eye(x_fit.shape[1]))
    return lambda x: np.einsum("ij,jk,ik->i", x - mu, inverse, x - mu)


def level_rules(x_fit: np.ndarray, y_fit: np.ndarray, x_held: np.ndarray) -> tuple[dict[str, Callable], Callable, dict[float, float]]:
    """The rules of the module docstring, each a function of slice means (slices, 7) giving
    levels (slices, 2), the distance they gate by and its reach per quantile."""
    lines = fit_lines(x_fit, y_fit, {"KL": KL, "all seven": ALL})
    kl, every = (functools.partial(line_level, lines[n]) for n in ("KL", "all seven"))
    lo, hi = x_fit.min(0), x_fit.max(0)
    distance = mahalanobis(x_fit)
    held = distance(x_held)
    rules: dict[str, Callable] = {"KL": kl, "all seven": every, "all seven, clipped": lambda x: every(np.clip(x, lo, hi)),
                                  "all seven within the range, else KL": lambda x: np.where(((x >= lo) & (x <= hi)).all(1)[:, None], every(x), kl(x))}
    reach = {q: float(np.quantile(held, q)) for q in QUANTILES}
    for q, r in reach.items():
        rules[f"all seven within reach ({q:g})"] = lambda x, r=r: np.where((distance(x) <= r)[:, None], every(x), kl(x))
    return rules, distance, reach


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    level_probe_arguments(ap)
    ap.add_argument("--draws", type=int, default=1000, help="sets of four scans drawn per generator for line 4")
    args = ap.parse_args()
    bundle, base, rl = load_level_probe(args)
    policy = bundle.policy.eval()
    (_, x_fit, y_fit), (_, x_held, y_held) = rl["fit"], rl["held"]
    rules, distance, reach = level_rules(x_fit, y_fit, x_held)
    print(f"{bundle.name}; {len(x_fit)} RL slices fitted, {len(x_held)} held out; reach (squared distance) "
          + ", ".join(f"{q:g}: {v:.1f}" for q, v in reach.items()))
    held_r = {name: [corr(rule(x_held)[:, k], y_held[:, k]) for k in range(2)] for name, rule in rules.items()}
    pooled: dict[str, list] = {name: [] for name in rules}
    for text in args.sets:
        dist, seeds = _parse_set(text)
        stem = f"{text.replace(':', '_')}_{args.slices}_{base.name}-{base.meta.get('version')}"
        scans = cached(args.cache / f"{stem}.pkl", None)
        volumes = functools.partial(make_volumes, seeds, args.slices, distribution=dist)
        features = cached(args.cache / f"{stem}_features_{bundle.name}-{bundle.meta.get('version')}.pkl",
                          lambda: scan_features(volumes(), bundle))
        d2 = []
        for scan, feats in zip(scans, features, strict=True):
            pred = gains(policy, feats)
            x = slice_means(feats)
            d2.append(distance(x))
            for name, rule in rules.items():
                scan[name] = pred - pred.mean((2, 3), keepdims=True) + rule(x)[:, :, None, None]
        d2 = np.concatenate(d2)
        print(f"\n{text} ({len(scans)} scans): squared distance median {np.median(d2):.1f}, slices within reach "
              + ", ".join(f"{q:g}: {100 * np.mean(d2 <= v):.1f} %" for q, v in reach.items()))
        for name, row in zip(rules, pooled_and_line4(scans, list(rules), args.draws)):
            pooled[name].append(row)
    print_level_table("slice level", held_r, pooled, args.sets)


if __name__ == "__main__":
    main()
