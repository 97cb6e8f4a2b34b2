"""Could one rule on f0's entropy meet issue 11's default-λ line on both test sets?

Issue 11's first line asks PaSeR at its default λ for ≥ 0.99 × f2-everywhere's mean IoU
at ≤ 25 % of its GFLOPs and ≤ 33 % of its seconds, on the in-family and on the
out-of-family test set. The IDK cascade's fronts in BENCHMARKS.md pass it on each set,
but with thresholds searched on that set itself. This probe asks whether a single rule
that does not know the scan can: every pair of thresholds (a0, a2) on f0's mean patch
entropy (keep a patch on f0 at ≤ a0 nats, send it to f2 above a2, f1 in between), on a
grid of 0.02 nats, scored on the in-family validation volumes and on both test sets with
the same patch tables as ``bench_testsets.py`` (8 slices per volume, one torch thread).
For each set it also prints the best pair searched on that set alone, and PaSeR's own
routing at a few λ.

    python benchmarks/probe_entropy_rules.py [--threads 1]

About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OOF_SEEDS, TEST_SEEDS, VAL_SEEDS, build_table, make_volumes  # noqa: E402

SETS = {"validation (in-family)": (VAL_SEEDS, "v1"), "in-family test": (TEST_SEEDS, "v1"), "out-of-family test": (OOF_SEEDS, "oof")}
IOU_RATIO, GFLOPS_SHARE, SECONDS_SHARE = 0.99, 0.25, 0.33


def entropy_rule(entropy: np.ndarray, a0: float, a2: float) -> np.ndarray:
    """Routing (f0 / f1 / f2 = 0 / 1 / 2) of patches by f0's mean entropy."""
    return np.where(entropy <= a0, 0, np.where(entropy > a2, 2, 1)).astype(np.uint8)


def shares(table, f2: dict, routing: np.ndarray) -> tuple[float, float, float]:
    """IoU, GFLOPs and seconds of ``routing`` (charged like PaSeR) as shares of ``f2``,
    f2 everywhere's score on the same table."""
    s = table.score(routing, "paser")
    return s["mean_iou"] / f2["mean_iou"], s["gflops"] / f2["gflops"], s["seconds_ratio_f2"]


def passes(row: tuple[float, float, float]) -> bool:
    return row[0] >= IOU_RATIO and row[1] <= GFLOPS_SHARE and row[2] <= SECONDS_SHARE


def main(argv=None) -> None:
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="bundle name or folder (default: the default bundle)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    tables = {name: build_table(make_volumes(seeds, 8, distribution=dist), bundle, seed=args.seed) for name, (seeds, dist) in SETS.items()}
    grid = np.round(np.arange(0.0, 1.2, 0.02), 2)
    pairs = [(a0, a2) for a0 in grid for a2 in grid if a2 >= a0]
    f2 = {name: t.score(t.constant(2), "f2") for name, t in tables.items()}
    rows = {pair: {name: shares(t, f2[name], entropy_rule(t.ent[:, 0], *pair)) for name, t in tables.items()} for pair in pairs}
    print(f"bundle {bundle.meta.get('name', args.bundle)}; {len(pairs)} threshold pairs; tables and sweep in {time.perf_counter() - t0:.0f} s")
    print(f"line: IoU ≥ {IOU_RATIO} x f2's at ≤ {GFLOPS_SHARE} x its GFLOPs and ≤ {SECONDS_SHARE} x its seconds")
    fmt = lambda r: f"{r[0]:.4f} at {r[1]:.3f} GFLOPs, {r[2]:.3f} s"  # noqa: E731
    for name, t in tables.items():
        e = t.ent[:, 0]
        ok = [(pair, r[name]) for pair, r in rows.items() if passes(r[name])]
        print(f"{name}: f0 entropy mean {e.mean():.3f} (sd {e.std():.3f}); pairs that pass on this set alone: {len(ok)}")
        if ok:
            (a0, a2), r = max(ok, key=lambda kv: kv[1][0])
            frac = np.bincount(entropy_rule(e, a0, a2).ravel(), minlength=3) / e.size
            print(f"  best: a0 {a0:.2f}, a2 {a2:.2f}: {fmt(r)}; routed f0 / f1 / f2 {frac[0]:.1%} / {frac[1]:.1%} / {frac[2]:.1%}")
        for lam in (0.0, 0.01, 0.025, 0.05):
            print(f"  PaSeR at λ {lam}: {fmt(shares(t, f2[name], t.paser(lam)))}")
    test_sets = [n for n in SETS if "test" in n]
    both = [(pair, r) for pair, r in rows.items() if all(passes(r[n]) for n in test_sets)]
    print(f"pairs that pass on both test sets: {len(both)}")
    chosen = [(pair, r) for pair, r in rows.items() if passes(r["validation (in-family)"])]
    print(f"pairs that pass on the validation volumes: {len(chosen)}; the 5 cheapest there, on the test sets:")
    for (a0, a2), r in sorted(chosen, key=lambda kv: kv[1]["validation (in-family)"][1])[:5]:
        print(f"  a0 {a0:.2f}, a2 {a2:.2f}: " + "; ".join(f"{n} {fmt(r[n])}" for n in test_sets))
    best_oof = max(chosen, key=lambda kv: kv[1]["out-of-family test"][0], default=None)
    if best_oof:
        (a0, a2), r = best_oof
        print(f"  best of them out of family: a0 {a0:.2f}, a2 {a2:.2f}: " + "; ".join(f"{n} {fmt(r[n])}" for n in test_sets))


if __name__ == "__main__":
    main()
