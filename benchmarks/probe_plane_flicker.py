"""Does f0 disagreeing with its neighbouring planes tell which patches gain, beyond its entropy?

A scan's structures run on through many planes; the errors that noise causes do not. Where
f0's refined prediction of plane z differs from what it predicts on the planes either side,
it may be wrong where its entropy does not say so, and that is where f1 and f2 could gain.
f0 reads five planes, so its predictions are already smoothed along the plane axis; this
probe measures what inconsistency is left and whether it ranks the gains within a scan,
where v2.24's policy leads the entropy by only +0.004 to +0.040
("Would weighting the gains by each scan's own class balance…", benchmarks/probe_results.md).

Signals per patch, from f0's refined probabilities p(z) (what PaSeR keeps and fuses):

- ``isolated``: share of pixels whose f0 label differs from the labels of both neighbouring
  planes (from the one neighbour at the first and last planes);
- ``changed``: share of pixels whose label differs from either neighbour's;
- ``prob jump``: mean L1 distance of p(z) from the mean of its neighbours' p.

For each, the r with the true gains within each scan alone (medians over the scans), the
partial r given f0's entropy (what it adds), and the r on sets of four scans of
entropy + the signal, both standardised within the set, with weights fitted on the other
batch of scans (never on the scans scored).

    python benchmarks/probe_plane_flicker.py paser-synth-v2.24 --sets v1:8831-8850 oof:9631-9650 --cache runs/gwcache

The scans' true gains come from the cache of ``probe_gain_weights.py`` (about 15 minutes to
build for 40 scans; the same ``--cache``); this probe reruns only f0 (a minute or two).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench_testsets import _corr
from common import make_volumes, scan_probe_parser, scan_probe_start
from napari_paser.engine.metrics import dataset_iou_gains
from napari_paser.engine.pipeline import PaserSegmenter
from probe_gain_weights import scan_table
from probe_testset_draws import _parse_set

SIGNALS = ("entropy", "policy", "isolated", "changed", "prob jump")


def plane_signals(seed: int, dist: str, slices: int, bundle) -> dict[str, np.ndarray]:
    """The three plane-consistency signals (N, GY, GX) of one fresh scan, from f0 alone."""
    ((image, _),) = make_volumes([seed], slices, distribution=dist)
    seg = PaserSegmenter(bundle, seed=0)
    seg.set_volume(image)
    if not any(bundle.fusion):
        raise SystemExit("this probe reads f0's probabilities as a fusing bundle keeps them")
    seg.result(method="f0")
    # (N, GY, GX, C, ph, pw) refined probabilities and (N, GY, GX, ph, pw) labels
    prob = np.stack([seg._f0prob[z] for z in range(seg.num_slices)]).astype(np.float32) / 255.0
    labels = prob.argmax(axis=3)
    n = len(prob)
    below = [max(z - 1, 0) if z > 0 else 1 for z in range(n)]
    above = [min(z + 1, n - 1) if z < n - 1 else n - 2 for z in range(n)]
    differs_below = labels != labels[below]
    differs_above = labels != labels[above]
    jump = np.abs(prob - 0.5 * (prob[below] + prob[above])).sum(axis=3)
    return {
        "isolated": (differs_below & differs_above).mean(axis=(-2, -1)),
        "changed": (differs_below | differs_above).mean(axis=(-2, -1)),
        "prob jump": jump.mean(axis=(-2, -1)),
    }


def standardise(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / (v.std() + 1e-12)


def partial_r(signal: np.ndarray, truth: np.ndarray, control: np.ndarray) -> float:
    """r of ``signal`` with ``truth`` once both are regressed on ``control``."""
    def resid(v: np.ndarray) -> np.ndarray:
        a = np.stack([np.ones_like(control), control], axis=1)
        return v - a @ np.linalg.lstsq(a, v, rcond=None)[0]
    return _corr(resid(signal.ravel().astype(float)), resid(truth.ravel().astype(float)))


def fit_mix(scans: list[dict], name: str, k: int) -> float:
    """Weight w of the standardised signal in entropy + w * signal that maximises the mean
    within-scan r with model k's gains over ``scans`` (a grid; the other batch's weight)."""
    grid = np.linspace(-2, 2, 81)
    scores = [np.nanmean([_corr(standardise(s["entropy"]) + w * standardise(s[name]), s["gains"][:, k]) for s in scans])
              for w in grid]
    return float(grid[int(np.nanargmax(scores))])


def main() -> None:
    ap = scan_probe_parser(__doc__, ["v1:8831-8850", "oof:9631-9650"], bundle="paser-synth-v2.24")
    ap.add_argument("--draws", type=int, default=1000, help="sets of four scans drawn per batch")
    ap.add_argument("--cache", type=Path, required=True, help="probe_gain_weights.py's cache of the scans' tables")
    args = ap.parse_args()
    bundle = scan_probe_start(args)
    batches = {}
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        scans = []
        for s in seeds:
            table = scan_table(s, dist, args.slices, bundle, args.cache)
            scan = {"entropy": table["entropy"], "policy": table["policy"], "conf": table["conf"],
                    "gains": dataset_iou_gains(table["conf"])}
            scan.update(plane_signals(s, dist, args.slices, bundle))
            scans.append(scan)
        batches[text] = scans
        print(f"{text}: {len(scans)} scans in {time.perf_counter() - t0:.0f} s")

    print(f"\nbundle {bundle.meta.get('name')} {bundle.meta.get('version')}\n")
    print("Within each scan alone (medians over the scans): r with the true gains; partial r given the entropy\n")
    print("| scans | model | " + " | ".join(SIGNALS) + " | " + " | ".join(f"{s} given entropy" for s in SIGNALS[2:]) + " |")
    print("|---|---|" + "---|" * (len(SIGNALS) + len(SIGNALS) - 2))
    for text, scans in batches.items():
        for k in range(2):
            r = [np.nanmedian([_corr(s[name] if name != "policy" else s["policy"][:, k], s["gains"][:, k]) for s in scans])
                 for name in SIGNALS]
            pr = [np.nanmedian([partial_r(s[name], s["gains"][:, k], s["entropy"].ravel()) for s in scans]) for name in SIGNALS[2:]]
            print(f"| {text} | f{k + 1} | " + " | ".join(f"{v:.3f}" for v in r) + " | " + " | ".join(f"{v:+.3f}" for v in pr) + " |")

    print("\nentropy + w · signal (standardised within each scan; w fitted on the other batch): "
          "within-scan medians and sets of four (medians over draws)\n")
    print("| scans | model | signal | w | within a scan: mix / entropy | sets of four: mix / entropy / policy |")
    print("|---|---|---|---|---|---|")
    names = list(batches)
    rng = np.random.default_rng(0)
    for i, text in enumerate(names):
        scans, other = batches[text], batches[names[1 - i]] if len(names) == 2 else batches[text]
        draws = [rng.choice(len(scans), 4, replace=False) for _ in range(args.draws)]
        for k in range(2):
            for name in SIGNALS[2:]:
                w = fit_mix(other, name, k)
                mix = [standardise(s["entropy"]) + w * standardise(s[name]) for s in scans]
                within = (np.nanmedian([_corr(m, s["gains"][:, k]) for m, s in zip(mix, scans)]),
                          np.nanmedian([_corr(s["entropy"], s["gains"][:, k]) for s in scans]))
                sets = []
                for d in draws:
                    chosen = [scans[j] for j in d]
                    truth = dataset_iou_gains(np.concatenate([s["conf"] for s in chosen]))[:, k]
                    # pooled over the set: the mix is standardised per scan, as a router would
                    # without labels; the entropy and the policy keep their own scale
                    sets.append([_corr(np.concatenate([mix[j] for j in d]), truth),
                                 _corr(np.concatenate([s["entropy"] for s in chosen]), truth),
                                 _corr(np.concatenate([s["policy"][:, k] for s in chosen]), truth)])
                m = np.nanmedian(np.array(sets), axis=0)
                print(f"| {text} | f{k + 1} | {name} | {w:+.2f} | {within[0]:.3f} / {within[1]:.3f} | "
                      f"{m[0]:.3f} / {m[1]:.3f} / {m[2]:.3f} |")


if __name__ == "__main__":
    main()
