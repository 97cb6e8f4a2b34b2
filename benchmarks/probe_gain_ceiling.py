"""How well could any policy track the per-patch gains at all? (issue 11, line 4)

Issue 11's fourth line asks that a policy's predicted gains correlate with the true
per-patch gains at least 0.1 better than f0's entropy does. This probe prints the two
bounds of :mod:`gain_bounds` beside that target: the split-half ceiling of any router's r
(checkerboards of 1 × 1 pixels, the bound, and of 2, 4 and 8 pixels, which show how loose
it is), the r of the models' self-assessed gains and of the gains expected under f2's
posterior (both known once the models have run). Beside them
it prints r of f0's entropy and of the bundle's policy with the same gains, for the
benchmark's test sets (``--test-sets``) and for fresh scans of either generator
(``--sets``), pooled over the set's patches as BENCHMARKS.md pools them.

    python benchmarks/probe_gain_ceiling.py paser-synth-v2.21 --test-sets --sets v1:8831-8850 oof:9631-9650
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench_testsets import SETS, _corr
from common import make_volumes, scan_probe_parser, scan_probe_start
from gain_bounds import gain_bounds, slice_halves
from napari_paser.engine.pipeline import PaserSegmenter
from probe_refined_ranking import cached
from probe_testset_draws import _parse_set

BLOCKS = (1, 2, 4, 8)


def scan_bounds(image: np.ndarray, truth: np.ndarray, bundle) -> dict:
    """:func:`gain_bounds.slice_halves` of every slice of one scan, stacked, with f0's
    patch entropy and the policy's predicted gains (slices, 2, GY, GX) as the engine computes them."""
    seg = PaserSegmenter(bundle)
    seg.set_volume(image)
    per_slice = [slice_halves(seg, z, truth[z], BLOCKS) for z in range(seg.num_slices)]
    return {**{key: np.stack([s[key] for s in per_slice]) for key in ("halves", "expected", "expected_f2")},
            "entropy": np.stack([seg.patch_entropy(z, 0) for z in range(seg.num_slices)]),
            "policy": np.stack([seg.gains(z) for z in range(seg.num_slices)])}


def ceilings(scans: list[dict]) -> dict:
    """r of the entropy, the policy and the self-assessed gains with the true gains (each
    (2,) for f1 / f2), and the split-half values per block size (blocks, 2), over ``scans`` pooled."""
    b = gain_bounds(*(np.concatenate([s[key] for s in scans]) for key in ("halves", "expected", "expected_f2")))
    true = b["true"]
    ent = np.concatenate([s["entropy"] for s in scans])
    pol = np.concatenate([s["policy"] for s in scans])
    return {"entropy": np.array([_corr(ent, true[:, k]) for k in range(2)]),
            "policy": np.array([_corr(pol[:, k], true[:, k]) for k in range(2)]),
            "self-assessed": b["self_assessed_r"], "posterior": b["posterior_r"], "ceiling": b["ceiling"]}


def print_set(name: str, scans: list[dict]) -> None:
    c = ceilings(scans)
    both = lambda v: f"{v[0]:.3f} / {v[1]:.3f}"  # noqa: E731
    print(f"\n### {name} ({len(scans)} scans, {sum(len(s['entropy']) for s in scans)} slices)\n")
    print("| signal (f1 / f2) | r with the true gains |")
    print("|---|---|")
    print(f"| f0's entropy | {both(c['entropy'])} |")
    print(f"| the bundle's policy | {both(c['policy'])} |")
    print(f"| line 4's target (entropy + 0.1) | {both(c['entropy'] + 0.1)} |")
    print(f"| the fused f_k's self-assessed gain (known once f_k has run) | {both(c['self-assessed'])} |")
    print(f"| the gain expected under the fused f2's posterior (known once f2 has run) | {both(c['posterior'])} |")
    for b, v in zip(BLOCKS, c["ceiling"]):
        kind = "ceiling of any policy" if b == 1 else "split-half estimate"
        print(f"| {kind}, {b} × {b} checkerboard | {both(v)} |")


def main() -> None:
    ap = scan_probe_parser(__doc__, [], threads=1)
    ap.add_argument("--test-sets", action="store_true", help="also the benchmark's in- and out-of-family test sets")
    ap.add_argument("--cache", type=Path, default=None, help="keep each set's halves here and read them back")
    args = ap.parse_args()
    bundle = scan_probe_start(args)
    sets = [(f"{name} test set", dist, list(seeds)) for name, (dist, seeds) in SETS.items()] if args.test_sets else []
    sets += [(f"fresh {text}", *_parse_set(text)) for text in args.sets]
    print(f"bundle {bundle.name} {bundle.meta.get('version')}; {args.slices} slices per scan; threads {args.threads}")
    for name, dist, seeds in sets:
        t0 = time.perf_counter()
        path = args.cache / f"ceiling_{dist}_{seeds[0]}-{seeds[-1]}_{args.slices}_{bundle.name}-{bundle.meta.get('version')}.pkl" if args.cache else None
        scans = cached(path, lambda: [scan_bounds(image, truth, bundle)
                                      for image, truth in make_volumes(seeds, args.slices, distribution=dist)])
        print_set(name, scans)
        print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
