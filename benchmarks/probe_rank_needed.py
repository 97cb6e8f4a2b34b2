"""How well must a policy rank the gains for routing to beat f1 at f1's cost? (issue 11)

Oracle routing (``common.oracle_front``) knows every patch's true first-order gain in
the set's mean IoU. A real policy predicts it with some error. This probe routes with
the true gains plus independent Gaussian noise sized so that the noisy gains correlate
with the true ones at a chosen Pearson r, over the same λ sweep (λ times each patch's
GFLOPs, as ``oracle_front``), charged like PaSeR, and prints the best IoU within f1
everywhere's GFLOPs and seconds for each r (mean and range over ``--draws`` noise
draws) beside the bundle's own policy and f0's entropy.
``--analysis-share`` repeats the bound with f0's analysis and the policy charged at
those fractions of their measured seconds and FLOPs: what a cheaper analysis would buy.
Development volumes of ``probe_policy_choice`` (no test set shares them).

    python benchmarks/probe_rank_needed.py paser-synth-v2.9 runs/paser-synth-v2.13 --threads 2 --analysis-share 1 0.5 0.25 0.1
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from bench_testsets import _lam_grid, gain_correlations
from common import best_within, gain_front, oracle_gains
from probe_policy_choice import development_parser, development_tables

RANKS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def noisy_gains(true: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """``true`` plus independent noise per model so that each model's noisy gains have
    Pearson r ≈ ``r`` with its true ones."""
    if r >= 1.0:
        return true.copy()
    sd = true.std(axis=(0, 2, 3), keepdims=True) * np.sqrt(1.0 / r**2 - 1.0)
    return true + sd * rng.standard_normal(true.shape)


def main() -> None:
    p = development_parser(__doc__)
    p.add_argument("--draws", type=int, default=5, help="noise draws per r")
    p.add_argument("--analysis-share", type=float, nargs="+", default=[1.0],
                   help="fractions of f0's analysis and the policy's measured cost to charge")
    args = p.parse_args()
    for name, bundle, table in development_tables(args):
        f1 = table.score(table.constant(1), "f1")
        budget = (f1["gflops"], f1["seconds"])
        sweep = [table.score(table.paser(float(x)), "paser") for x in _lam_grid()]
        policy = best_within(sweep, *budget)
        r = gain_correlations(table)
        true = oracle_gains(table)
        entropy = np.repeat(table.ent[:, :1], 2, axis=1)  # one ranking for both models
        print(f"{name}, {bundle.name}: f1 everywhere {f1['mean_iou']:.4f}; best within f1's GFLOPs and seconds: "
              f"policy {policy['mean_iou'] if policy else float('nan'):.4f} (r {r['f1']['policy']:.3f} / {r['f2']['policy']:.3f}), "
              f"f0 entropy as the gain of both {_best(table, entropy, budget):.4f} "
              f"(r {r['f1']['f0_entropy']:.3f} / {r['f2']['f0_entropy']:.3f})", flush=True)
        t_f0, t_policy, t_patch = table.seconds
        print(f"  f0's analysis and the policy cost {(t_f0.sum() + t_policy.sum()) / t_patch[:, 1].sum():.3f} × f1 everywhere's "
              f"seconds and {table.n * table.cost.slice_flops(0, 0) / 1e9 / f1['gflops']:.3f} × its GFLOPs", flush=True)
        for share in args.analysis_share:
            charged = with_analysis_share(table, share)
            for rank in RANKS:
                rng = np.random.default_rng(0)
                best = [_best(charged, noisy_gains(true, rank, rng), budget) for _ in range(1 if rank >= 1 else args.draws)]
                print(f"  analysis × {share:g}, r {rank:.2f}: best within f1's cost {np.mean(best):.4f} "
                      f"(range {min(best):.4f}-{max(best):.4f}); above f1 in {sum(b > f1['mean_iou'] for b in best)} of {len(best)}",
                      flush=True)


def with_analysis_share(table, share: float):
    """A shallow copy of ``table`` that charges f0's analysis and the policy at ``share``
    of their measured seconds and FLOPs (the patches as measured)."""
    if share == 1.0:
        return table
    out = copy.copy(table)
    t_f0, t_policy, t_patch = table.seconds
    out.seconds = (t_f0 * share, t_policy * share, t_patch)
    cm = table.cost
    out.cost = dataclasses.replace(cm, f0_encode=round(cm.f0_encode * share), f0_decode=round(cm.f0_decode * share),
                                   policy=round(cm.policy * share), f0_refine=round(cm.f0_refine * share))
    return out


def _best(table, gains: np.ndarray, budget: tuple[float, float]) -> float:
    point = best_within(gain_front(table, gains, points=160), *budget)
    return point["mean_iou"] if point else float("nan")


if __name__ == "__main__":
    main()
