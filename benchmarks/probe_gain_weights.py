"""Does the class weighting of the true gains decide how well a policy can rank them?

Line 4 of issue 11 scores predicted gains against each patch's first-order change of the
*set's* mean IoU: a patch's changed pixels weighted per class by the set's pooled
confusion (:func:`~napari_paser.engine.metrics.dataset_iou_weights`). A policy learns gains
weighted by its training volumes' confusions, and an out-of-family set has other class
fractions and IoUs (carbon-binder 0.42 against 0.60). If those weights moved the ranking, a
policy that predicts per-class changes and weighs them by the scan's estimated confusion
could rank better. This probe measures how much they move it, on fresh scans (never the
benchmark's test seeds):

- for sets of four scans drawn from each batch, r between the set's true gains and the
  same confusion changes weighted by each scan's own confusion, or by the whole batch's;
- r of f0's patch entropy and of the bundle's predicted gains with each of the three;
- then the same two r within each scan alone (its own weights), medians over the scans:
  what a set of four adds over that is how well each signal tells which scans gain.

    python benchmarks/probe_gain_weights.py paser-synth-v2.24 --sets v1:8831-8850 oof:9631-9650 --cache runs/gwcache

About 15 minutes on 2 cores for 40 scans of 8 slices (each scan runs f0, f1 and f2 on
every patch once); a few seconds with the cache.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np

from bench_testsets import _corr
from common import build_table, make_volumes, scan_probe_parser, scan_probe_start
from napari_paser.engine.metrics import dataset_iou_gains, dataset_iou_weights
from probe_testset_draws import _parse_set

WEIGHTINGS = ("set", "each scan", "batch")


def scan_table(seed: int, dist: str, slices: int, bundle, cache: Path | None) -> dict:
    """Per-patch confusions (N, 3, GY, GX, C, C), f0's patch entropy and the policy's gains of one fresh scan."""
    path = cache and cache / f"{dist}_{seed}_{slices}_{bundle.name}-{bundle.meta.get('version')}.pkl"
    if path and path.exists():
        return pickle.loads(path.read_bytes())
    ((image, labels),) = make_volumes([seed], slices, distribution=dist)
    table = build_table([(image, labels)], bundle)
    seg, zs = table.segs[0]
    scan = {"conf": table.conf, "entropy": table.ent[:, 0], "policy": np.stack([seg.gains(z) for z in zs])}
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(scan))
    return scan


def weighted_gains(conf: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The change (N, 2, GY, GX) of each patch's confusion from f0 to f1 / f2, weighted per cell."""
    return np.einsum("ngyxtp,tp->ngyx", (conf[:, 1:] - conf[:, :1]).astype(np.float64), weights)


def draw_rows(scans: list[dict], draws: int, seed: int = 0) -> np.ndarray:
    """(draws, 2 models, 2 + 2 * len(WEIGHTINGS)): r of the set's gains with the other two
    weightings, then r of the entropy and of the policy with each weighting's gains."""
    rng = np.random.default_rng(seed)
    batch = dataset_iou_weights(np.concatenate([s["conf"] for s in scans])[:, 0].sum((0, 1, 2)))
    rows = np.zeros((draws, 2, 2 + 2 * len(WEIGHTINGS)))
    for d in range(draws):
        chosen = [scans[i] for i in rng.choice(len(scans), 4, replace=False)]
        conf = np.concatenate([s["conf"] for s in chosen])
        gains = {
            "set": dataset_iou_gains(conf),
            "each scan": np.concatenate([dataset_iou_gains(s["conf"]) for s in chosen]),
            "batch": weighted_gains(conf, batch),
        }
        entropy = np.concatenate([s["entropy"] for s in chosen])
        policy = np.concatenate([s["policy"] for s in chosen])
        for k in range(2):
            truth = gains["set"][:, k]
            rows[d, k, :2] = [_corr(gains["each scan"][:, k], truth), _corr(gains["batch"][:, k], truth)]
            for j, name in enumerate(WEIGHTINGS):
                rows[d, k, 2 + 2 * j : 4 + 2 * j] = [_corr(entropy, gains[name][:, k]), _corr(policy[:, k], gains[name][:, k])]
    return rows


def within_scan_rows(scans: list[dict]) -> np.ndarray:
    """(scans, 2 models, 2): r of the entropy and of the policy with each scan's own gains."""
    rows = np.zeros((len(scans), 2, 2))
    for i, scan in enumerate(scans):
        gains = dataset_iou_gains(scan["conf"])
        for k in range(2):
            rows[i, k] = [_corr(scan["entropy"], gains[:, k]), _corr(scan["policy"][:, k], gains[:, k])]
    return rows


def main() -> None:
    ap = scan_probe_parser(__doc__, ["v1:8831-8850", "oof:9631-9650"], bundle="paser-synth-v2.24")
    ap.add_argument("--draws", type=int, default=1000, help="sets of four scans drawn per batch")
    ap.add_argument("--cache", type=Path, help="keep each scan's table here and reuse it")
    args = ap.parse_args()
    bundle = scan_probe_start(args)
    print(f"bundle {bundle.meta.get('name')} {bundle.meta.get('version')}; medians over {args.draws} sets of four")
    print("| scans | model | r(set's gains, each scan's weights) | r(set's, the batch's) | "
          + " | ".join(f"entropy / policy with the {w} weights" for w in WEIGHTINGS) + " |")
    print("|---|---|---|---|" + "---|" * len(WEIGHTINGS))
    within = {}
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        scans = [scan_table(s, dist, args.slices, bundle, args.cache) for s in seeds]
        med = np.nanmedian(draw_rows(scans, args.draws), axis=0)
        for k in range(2):
            pairs = " | ".join(f"{med[k, 2 + 2 * j]:.3f} / {med[k, 3 + 2 * j]:.3f}" for j in range(len(WEIGHTINGS)))
            print(f"| {text} ({time.perf_counter() - t0:.0f} s) | f{k + 1} | {med[k, 0]:.3f} | {med[k, 1]:.3f} | {pairs} |")
        within[text] = within_scan_rows(scans)
    print("\nWithin each scan alone (medians over the scans):\n")
    print("| scans | model | entropy's r | policy's r | policy's lead | scans where it leads |")
    print("|---|---|---|---|---|---|")
    for text, rows in within.items():
        for k in range(2):
            lead = rows[:, k, 1] - rows[:, k, 0]
            print(f"| {text} | f{k + 1} | {np.nanmedian(rows[:, k, 0]):.3f} | {np.nanmedian(rows[:, k, 1]):.3f} | "
                  f"{np.nanmedian(lead):+.3f} | {np.mean(lead > 0):.0%} |")


if __name__ == "__main__":
    main()
