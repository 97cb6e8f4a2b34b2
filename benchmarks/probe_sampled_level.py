"""Would f1 run on a few sample patches tell each slice its level of gains? (issue 11, line 4)

Line 4 pools the patches of four scans, so the policy's r rests on its level of gains per
scan as much as on its ranking within a scan ("Does the policy know which slices gain?",
benchmarks/probe_results.md). v2.24 reads each slice's level from its refiner KL. f1 is
what knows f1's gains: at the default λ PaSeR runs it on every patch anyway. This probe
asks whether the share of pixels that f1 and f2 (fused, as PaSeR composes them) relabel
against the refined f0, on a few sample patches of a slice (their output could be kept),
gives a level that tracks which slices and scans gain:

1. over fresh scans of each test generator, r of each scan's mean relabelled share with
   its mean true gain (beside the policy's mean gain and f0's mean entropy);
2. each slice's level from the relabelled share of 1, 2, 4 or all 16 of its patches
   (spread evenly), under the policy's ranking within the slice, the level's weight
   chosen on the other generator's scans (and, as a bound, on the scans scored): the
   share of drawn sets of four scans that meet line 4 (both models lead f0's entropy by
   0.1), against the shipped policy's;
3. on the benchmark's two test sets (BENCHMARKS.md), how far a level could lift line 4
   at all: r of the policy's ranking within each scan (or slice) with the *true* mean gain
   of that scan (or slice) as its level. Nothing is fitted on them; it reads the truth, so
   it is a bound on any level, not a router.

    python benchmarks/probe_sampled_level.py paser-synth-v2.24 --cache runs/chcache --workers 2

About 30 s a scan on one core (most of it making the scan); cached per scan in ``--cache``.
"""

from __future__ import annotations

import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench_testsets import _corr
from common import build_table, make_volumes, scan_probe_parser
from napari_paser.engine.metrics import dataset_iou_gains
from napari_paser.engine.patches import patch_view
from probe_testset_draws import _parse_set

TEST_SETS = {"v1": list(range(9001, 9005)), "oof": list(range(9101, 9105))}  # bench_testsets' seeds
SAMPLES = {16: (slice(None), slice(None)), 4: (slice(0, None, 2), slice(0, None, 2)), 2: ([1, 2], [1, 2]), 1: ([1], [1])}
WEIGHTS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)


def scan_record(job: tuple) -> dict:
    """Per-patch confusions (S, 3, GY, GX, C, C), f0's entropy, the policy's gains and the
    share of pixels f1 / f2 relabel against the refined f0 (S, 2, GY, GX) of one scan."""
    seed, dist, slices, bundle_name, cache, threads = job
    import torch

    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle

    torch.set_num_threads(threads)
    bundle = load_bundle(resolve_bundle(bundle_name))
    path = Path(cache) / f"{dist}_{seed}_{slices}_{bundle.name}-{bundle.meta.get('version')}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    ((image, labels),) = make_volumes([seed], slices, distribution=dist)
    table = build_table([(image, labels)], bundle)
    seg, zs = table.segs[0]
    relabelled = []
    for z in zs:
        f0 = seg.compose(z, routing=np.zeros(seg.grid, np.uint8))
        relabelled.append([patch_view(seg.compose(z, routing=np.full(seg.grid, m, np.uint8)) != f0, seg.patch_size).mean(axis=(-2, -1))
                           for m in (1, 2)])
    record = {"conf": table.conf, "entropy": table.ent[:, 0], "policy": np.stack([seg.gains(z) for z in zs]).astype(np.float64),
              "relabelled": np.asarray(relabelled, dtype=np.float64)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(record))
    return record


def sampled_level(scan: dict, samples: int, weight: float) -> np.ndarray:
    """The policy's gains with each slice's mean replaced by ``weight`` times the relabelled
    share of its ``samples`` sample patches (S, 2, GY, GX)."""
    rows, cols = SAMPLES[samples]
    policy = scan["policy"]
    level = scan["relabelled"][:, :, rows][:, :, :, cols].mean(axis=(2, 3))
    return policy - policy.mean(axis=(2, 3), keepdims=True) + weight * level[:, :, None, None]


def set_leads(scans: list[dict], predict) -> np.ndarray:
    """Lead (2 models) of ``predict(scan)`` over f0's entropy in r with the set's true gains."""
    true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
    pred = np.concatenate([predict(s) for s in scans])
    ent = np.concatenate([s["entropy"] for s in scans])
    return np.array([_corr(pred[:, k], true[:, k]) - _corr(ent, true[:, k]) for k in range(2)])


def meet_share(scans: list[dict], draws: list[np.ndarray], predict) -> tuple[float, np.ndarray]:
    """Share of drawn sets meeting line 4 for both models, and the median lead."""
    leads = np.array([set_leads([scans[i] for i in d], predict) for d in draws])
    return float(np.mean((leads >= 0.1).all(axis=1))), np.median(leads, axis=0)


def scan_means(scans: list[dict]) -> dict[str, np.ndarray]:
    """Per scan (n, 2): the mean true gain (on the pooled scans' IoU), relabelled share, policy gain; f0's entropy (n,)."""
    true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
    bounds = np.cumsum([0] + [len(s["conf"]) for s in scans])
    return {"true": np.array([true[a:b].mean(axis=(0, 2, 3)) for a, b in zip(bounds[:-1], bounds[1:])]),
            "relabelled": np.array([s["relabelled"].mean(axis=(0, 2, 3)) for s in scans]),
            "policy": np.array([s["policy"].mean(axis=(0, 2, 3)) for s in scans]),
            "entropy": np.array([s["entropy"].mean() for s in scans])}


def true_level_bound(scans: list[dict], base: np.ndarray, per: str) -> list[tuple[float, float]]:
    """Best r (and its scale) of ``base`` (N, 2, GY, GX), centred within each scan or slice
    (``per``), plus that scan's or slice's true mean gain times a scale."""
    true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
    owner = np.concatenate([np.full(len(s["conf"]), i) for i, s in enumerate(scans)])
    out = []
    for k in range(2):
        b, t = base[:, k], true[:, k]
        if per == "scan":
            within, level = b.copy(), np.zeros_like(t)
            for i in range(len(scans)):
                within[owner == i] -= b[owner == i].mean()
                level[owner == i] = t[owner == i].mean()
        else:
            within = b - b.mean(axis=(1, 2), keepdims=True)
            level = np.broadcast_to(t.mean(axis=(1, 2), keepdims=True), t.shape)
        within = within / (within.std() + 1e-12) * (t - level).std()  # the ranking in the truth's units
        rs = {scale: _corr(within + scale * level, t) for scale in (0.25, 0.5, 1, 2, 4, 8)}
        best = max(rs, key=lambda s: rs[s])
        out.append((rs[best], best))
    return out


def main() -> None:
    ap = scan_probe_parser(__doc__, ["v1:8831-8850", "oof:9631-9650"], threads=1, bundle="paser-synth-v2.24")
    ap.add_argument("--cache", type=Path, required=True, help="folder of per-scan records")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--draws", type=int, default=500, help="sets of four scans drawn per generator")
    args = ap.parse_args()

    def records(dist: str, seeds: list[int]) -> list[dict]:
        jobs = [(s, dist, args.slices, args.bundle, str(args.cache), args.threads) for s in seeds]
        with ProcessPoolExecutor(args.workers) as pool:
            return list(pool.map(scan_record, jobs))

    t0 = time.perf_counter()
    fresh = {}
    for text in args.sets:
        dist, seeds = _parse_set(text)
        fresh[dist] = records(dist, seeds)
    tests = {dist: records(dist, seeds) for dist, seeds in TEST_SETS.items()}
    print(f"{sum(map(len, fresh.values()))} fresh and {sum(map(len, tests.values()))} test scans in {time.perf_counter() - t0:.0f} s\n")

    print("r over the fresh scans of each scan's mean with its mean true gain (f1 / f2)\n")
    print("| scans | relabelled share | policy's gain | f0's entropy |\n|---|---|---|---|")
    for dist, scans in fresh.items():
        m = scan_means(scans)
        cells = [" / ".join(f"{_corr(m[name][:, k], m['true'][:, k]):+.2f}" for k in range(2)) for name in ("relabelled", "policy")]
        ent = " / ".join(f"{_corr(m['entropy'], m['true'][:, k]):+.2f}" for k in range(2))
        print(f"| {dist} ({len(scans)}) | {cells[0]} | {cells[1]} | {ent} |")

    rng = np.random.default_rng(0)
    draws = {d: [rng.choice(len(s), 4, replace=False) for _ in range(args.draws)] for d, s in fresh.items()}
    print(f"\nSets of four fresh scans ({args.draws} draws per generator) meeting line 4 for both models; median lead (f1 / f2)\n")
    print("| slice level | in family: weight from oof | bound (best weight) | out of family: weight from v1 | bound |\n|---|---|---|---|---|")
    dists = list(fresh)
    share, lead = {}, {}
    for d in dists:
        share[("policy", d)], lead[("policy", d)] = meet_share(fresh[d], draws[d], lambda s: s["policy"])
    row = " | ".join(f"{share[('policy', d)]:.1%}, {lead[('policy', d)][0]:+.3f} / {lead[('policy', d)][1]:+.3f} | -" for d in dists)
    print(f"| the shipped policy (refiner KL) | {row} |")
    for n in SAMPLES:
        scores = {(d, w): meet_share(fresh[d], draws[d], lambda s, n=n, w=w: sampled_level(s, n, w)) for d in dists for w in WEIGHTS}
        cells = []
        for d in dists:
            other = [o for o in dists if o != d] or [d]
            fitted = max(WEIGHTS, key=lambda w: scores[(other[0], w)][0])
            best = max(WEIGHTS, key=lambda w: scores[(d, w)][0])
            (s1, l1), s2 = scores[(d, fitted)], scores[(d, best)][0]
            cells.append(f"{s1:.1%}, {l1[0]:+.3f} / {l1[1]:+.3f} (w {fitted}) | {s2:.1%} (w {best})")
        print(f"| relabelled share of {n} patches | " + " | ".join(cells) + " |")

    print("\nThe benchmark's test sets: r with the true gains (f1 / f2), and with the true level of each scan or slice under a ranking\n")
    print("| set | policy | f0's entropy | line 4 asks | policy's ranking, true scan level | true slice level "
          "| entropy's ranking, true scan level | true slice level |\n|---|---|---|---|---|---|---|---|")
    for dist, scans in tests.items():
        true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
        policy = np.concatenate([s["policy"] for s in scans])
        ent = np.concatenate([s["entropy"] for s in scans])
        rp = [_corr(policy[:, k], true[:, k]) for k in range(2)]
        re = [_corr(ent, true[:, k]) for k in range(2)]
        bounds = [true_level_bound(scans, base, per) for base in (policy, np.stack([ent, ent], axis=1)) for per in ("scan", "slice")]
        cells = [" / ".join(f"{r:.3f} (×{s:g})" for r, s in b) for b in bounds]
        print(f"| {dist} {TEST_SETS[dist][0]}-{TEST_SETS[dist][-1]} | {rp[0]:.3f} / {rp[1]:.3f} | {re[0]:.3f} / {re[1]:.3f} "
              f"| {re[0] + 0.1:.3f} / {re[1] + 0.1:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
