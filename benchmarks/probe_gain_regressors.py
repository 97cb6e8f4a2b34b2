"""How well could any mix of the analysis' signals rank the gains over the refined f0? (issue 11)

``probe_refined_ranking`` scores each signal alone. This probe fits ridge regressions of
the true per-patch gains of f1 and f2 on several signals at once, on the scans that probe
kept (its ``--cache``), and scores them as line 4 does: the lead of their r over f0's
entropy in sets of four scans. Six sets of inputs:

- ``analysis``: what f0's analysis knows before any patch model runs: f0's entropy, both
  of the policy's gains, the refiner's KL and relabelled share, the refined labels'
  boundary share, the refined entropy and 1 − max, and the refined labels' class shares;
- ``look-ahead``: the same plus what f1 and f2 return: their patch entropies, the share
  of pixels each relabels, and their labels' class shares. No router that decides before
  running them has this;
- ``their entropies``: the analysis plus f1's and f2's patch entropies only;
- ``predicted entropies``: the analysis plus f1's and f2's patch entropies as a ridge
  regression on the analysis' signals predicts them (cross-fitted within the family):
  what a head distilled from f1 and f2, reading those signals, could add (within a
  family only);
- ``with the image``: the analysis plus six statistics of the scan itself that f0's
  analysis could compute for almost nothing, each a patch mean of the normalised scan:
  the plane noise (the slice against the mean of the two planes on each side), the
  change between the planes above and below, the same as plane noise on 5 × 5 means
  (structure that changes along the planes), the in-plane gradient, the local variance
  and the intensity (the scans are made again from the cache's name);
- ``standardised per scan``: the analysis' signals, each standardised over the scan's
  own patches. A fit that fails across families only because the signals' levels shift
  with the scanner would transfer this way.

Each is fitted in two ways. **Within a family**: five folds by scan, so that each scan is
predicted by a fit that never saw it. This is generous, since no bundle is fitted on the
scans of the family it is tested on. **Across families**: fitted on all the scans of one
family and scored on the other's. The targets are the true gains at the fitted family's
pooled IoU weights. Scoring uses each drawn set's own weights, as the benchmark does.

    python benchmarks/probe_gain_regressors.py runs/rrcache/v1_8831-8850_8_paser-synth-v2.21-2.21.0.pkl \\
        runs/rrcache/oof_9631-9650_8_paser-synth-v2.21-2.21.0.pkl
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench_testsets import _corr
from common import make_volumes
from napari_paser.engine.metrics import dataset_iou_gains
from napari_paser.engine.normalize import normalize_volume
from napari_paser.engine.patches import patch_view

FOLDS = 5
INPUTS = ("analysis", "look-ahead", "their entropies", "predicted entropies", "with the image", "standardised per scan")
IMAGE_STATISTICS = ("plane noise", "plane change", "plane structure", "gradient", "local variance", "intensity")


def inputs(scan: dict, which: str) -> np.ndarray:
    """(patches, signals) of one cached scan for the input set ``which`` (:data:`INPUTS`);
    class shares come from the predicted labels (the confusions' column sums), which need
    no truth."""
    shares = scan["conf"].sum(-2).astype(np.float64)
    shares /= shares.sum(-1, keepdims=True)  # (slices, 3 models, GY, GX, classes)
    cols = [scan["entropy"], scan["policy"][:, 0], scan["policy"][:, 1], scan["KL"], scan["relabelled"], scan["boundary"],
            scan["refined entropy"], scan["refined 1-max"]] + [shares[:, 0, ..., c] for c in range(3)]
    if which == "look-ahead":
        cols += [scan["ent_all"][:, 1], scan["ent_all"][:, 2], scan["f_k relabels"][:, 0], scan["f_k relabels"][:, 1]]
        cols += [shares[:, m, ..., c] for m in (1, 2) for c in range(3)]
    elif which == "their entropies":
        cols += [scan["ent_all"][:, 1], scan["ent_all"][:, 2]]
    elif which == "predicted entropies":
        cols += [scan["predicted entropies"][:, 0], scan["predicted entropies"][:, 1]]
    elif which == "with the image":
        cols += [scan[name] for name in IMAGE_STATISTICS]
    x = np.stack([c.reshape(-1) for c in cols], axis=1)
    if which == "standardised per scan":
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    return x


def add_image_statistics(scans: list[dict], cache: Path) -> None:
    """Store :data:`IMAGE_STATISTICS` (slices, GY, GX) in each scan, made again from the
    volumes the cache's name gives (``DIST_LO-HI_SLICES_...``, as probe_refined_ranking
    names it), normalised as the engine does, and kept beside the cache (``.image.npz``)."""
    kept = cache.with_suffix(".image.npz")
    if not kept.exists():
        dist, span, slices = cache.name.split("_")[:3]
        lo, hi = (int(v) for v in span.split("-"))
        stats = {name: [] for name in IMAGE_STATISTICS}
        for scan, (image, labels) in zip(scans, make_volumes(range(lo, hi + 1), int(slices), distribution=dist), strict=True):
            grid = scan["entropy"].shape[-2:]
            patch = (image.shape[1] // grid[0], image.shape[2] // grid[1])
            truth = np.stack([[patch_view(plane == c, patch).sum(axis=(-2, -1)) for c in range(3)] for plane in labels])
            if not np.array_equal(truth, np.moveaxis(scan["conf"][:, 0].sum(-1), -1, 1)):  # (slices, classes, GY, GX)
                raise SystemExit(f"{cache.name}: the scans made again are not the cached ones")
            v = normalize_volume(image).astype(np.float64)
            local_mean = ndimage.uniform_filter(v, size=(1, 5, 5))
            near = np.pad(v, ((2, 2), (0, 0), (0, 0)), mode="edge")  # the planes on each side, as the engine stacks them
            neighbours = (near[:-4] + near[1:-3] + near[3:-1] + near[4:]) / 4
            maps = {"plane noise": (v - neighbours) ** 2, "plane change": np.abs(near[3:-1] - near[1:-3]),
                    "plane structure": (local_mean - ndimage.uniform_filter(neighbours, size=(1, 5, 5))) ** 2,
                    "gradient": np.hypot(*np.gradient(v, axis=(1, 2))),
                    "local variance": ndimage.uniform_filter(v * v, size=(1, 5, 5)) - local_mean**2, "intensity": v}
            for name, m in maps.items():
                stats[name].append(np.stack([patch_view(plane, patch).mean(axis=(-2, -1)) for plane in m]))
            stats["plane noise"][-1] = np.sqrt(stats["plane noise"][-1])  # an RMS, as probe_f2_choice.plane_noise
        np.savez(kept, **{name: np.stack(v) for name, v in stats.items()})
    with np.load(kept) as stats:
        for i, scan in enumerate(scans):
            scan.update({name: stats[name][i] for name in IMAGE_STATISTICS})


def predict_entropies(scans: list[dict]) -> None:
    """Store in each scan f1's and f2's patch entropies (patches, 2) as a ridge regression
    on the analysis' signals predicts them, fitted on the other folds of ``scans``."""
    x = [inputs(s, "analysis") for s in scans]
    entropies = [np.stack([s["ent_all"][:, m].reshape(-1) for m in (1, 2)], axis=1) for s in scans]

    def fit_folds(rows):
        models = ridges(np.concatenate([x[i] for i in rows]), np.concatenate([entropies[i] for i in rows]))
        return lambda i: predict(models, x[i])

    for scan, predicted in zip(scans, cross_fit(len(scans), fit_folds)):
        scan["predicted entropies"] = predicted


def targets(scans: list[dict]) -> list[np.ndarray]:
    """Per scan, the true gains (patches, 2) at the pooled IoU weights of ``scans``."""
    gains = dataset_iou_gains(np.concatenate([s["conf"] for s in scans])) * 1e4
    ends = np.cumsum([0] + [len(s["conf"]) for s in scans])
    return [np.stack([gains[a:b, k].reshape(-1) for k in range(2)], axis=1) for a, b in zip(ends[:-1], ends[1:])]


def ridges(x: np.ndarray, y: np.ndarray) -> list:
    """One ridge regression (standardised inputs, its penalty chosen by leave-one-out) per
    column of ``y``."""
    return [make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12))).fit(x, y[:, k]) for k in range(y.shape[1])]


def predict(models: list, x: np.ndarray) -> np.ndarray:
    return np.stack([m.predict(x) for m in models], axis=1)


def fit(scans: list[dict], which: str) -> list:
    """One ridge regression per model (f1, f2) of the gains on all of ``scans``."""
    return ridges(np.concatenate([inputs(s, which) for s in scans]), np.concatenate(targets(scans)))


def cross_fit(count: int, fit_folds) -> list[np.ndarray]:
    """Each of ``count`` scans predicted by ``fit_folds(rows)`` (which fits on the scans
    ``rows`` and returns a predictor of scan ``i``) fitted on the folds it is not in."""
    fold = np.arange(count) % FOLDS
    out = [None] * count
    for f in range(FOLDS):
        predictor = fit_folds(np.flatnonzero(fold != f))
        for i in np.flatnonzero(fold == f):
            out[i] = predictor(i)
    return out


def cross_fitted(scans: list[dict], which: str) -> list[np.ndarray]:
    """Each scan's predicted gains from a fit on the other folds of the same family."""
    def fit_folds(rows):
        models = fit([scans[i] for i in rows], which)
        return lambda i: predict(models, inputs(scans[i], which))

    return cross_fit(len(scans), fit_folds)


def line_four(scans: list[dict], predicted: list[np.ndarray], draws: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Median lead over f0's entropy (f1, f2) in drawn sets of four, and the share of sets
    where both leads are at least 0.1."""
    rng = np.random.default_rng(seed)
    leads = []
    for _ in range(draws):
        pick = rng.choice(len(scans), 4, replace=False)
        true = dataset_iou_gains(np.concatenate([scans[i]["conf"] for i in pick]))
        ent = np.concatenate([scans[i]["entropy"].reshape(-1) for i in pick])
        pred = np.concatenate([predicted[i] for i in pick])
        leads.append([_corr(pred[:, k], true[:, k].reshape(-1)) - _corr(ent, true[:, k].reshape(-1)) for k in range(2)])
    leads = np.array(leads)
    return np.median(leads, axis=0), float(np.mean((leads >= 0.1).all(axis=1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("caches", nargs=2, type=Path, help="probe_refined_ranking's cached scans of two families")
    ap.add_argument("--draws", type=int, default=1000)
    args = ap.parse_args()
    families = {path.name.split("_")[0]: pickle.loads(path.read_bytes()) for path in args.caches}
    for path, scans in zip(args.caches, families.values()):
        predict_entropies(scans)
        add_image_statistics(scans, path)
        ent = np.concatenate([s["entropy"].reshape(-1) for s in scans])
        for m in (1, 2):
            true = np.concatenate([s["ent_all"][:, m].reshape(-1) for s in scans])
            print(f"f{m}'s patch entropy: r with f0's {_corr(ent, true):.3f}, "
                  f"with its cross-fitted prediction from the analysis {_corr(np.concatenate([s['predicted entropies'][:, m - 1] for s in scans]), true):.3f}")
    print("| fitted on | scored on | inputs | median lead over the entropy (f1 / f2) | sets meeting line 4 |")
    print("|---|---|---|---|---|")
    for fitted_on, fit_scans in families.items():
        for scored_on, scans in families.items():
            policy = [s["policy"].transpose(0, 2, 3, 1).reshape(-1, 2) for s in scans]
            if fitted_on == scored_on:
                med, share = line_four(scans, policy, args.draws)
                print(f"| (the bundle's policy) | {scored_on} | - | {med[0]:+.3f} / {med[1]:+.3f} | {share * 100:.1f} % |")
            for which in INPUTS:
                if which == "predicted entropies" and fitted_on != scored_on:
                    continue  # those predictions are fitted on the scored family's own scans
                if fitted_on == scored_on:
                    predicted, how = cross_fitted(scans, which), f"{fitted_on}, other folds"
                else:
                    models = fit(fit_scans, which)
                    predicted, how = [predict(models, inputs(s, which)) for s in scans], fitted_on
                med, share = line_four(scans, predicted, args.draws)
                print(f"| {how} | {scored_on} | {which} | {med[0]:+.3f} / {med[1]:+.3f} | {share * 100:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
