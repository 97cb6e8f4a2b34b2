"""Does weighting f0's uncertainty the way the mean IoU weighs pixels rank the gains better?

f0's patch entropy counts every uncertain pixel alike; the true gain of a patch is the
first-order change of the set's *mean IoU*, in which a pixel of a class with a small
union (carbon-binder) weighs more. This probe scores a parameter-free predictor that
reads only f0's MC-mean probabilities p: for each pixel predicted as class a, the
expected gain of fixing it, sum over t of p_t (W[t, t] - W[t, a]), where W is
`dataset_iou_weights` of the confusion f0's own probabilities imply (over the scan, or
over the slice as the engine could compute it). Patch means of that map are compared
with f0's entropy and the bundle's policy, by Pearson r with the true gains of f1 / f2,
over fresh scans of the test generators pooled and over drawn sets of four (as
``probe_testset_draws``); "policy + expected gain" adds the two standardised over the
pooled patches (no fit).

    python benchmarks/probe_expected_iou_gain.py paser-synth-v2.16 --sets v1:8601-8620 oof:9401-9420 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from bench_testsets import _corr
from common import build_table
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import dataset_iou_gains, dataset_iou_weights
from napari_paser.engine.registry import resolve_bundle
from probe_testset_draws import _parse_set, _volume

PREDICTORS = ("f0 entropy", "expected gain (scan)", "expected gain (slice)", "policy", "policy + expected gain")


def expected_iou_gain(prob: np.ndarray, per_slice: bool) -> np.ndarray:
    """Patch means (S, GY, GX) of the expected first-order IoU gain of fixing each pixel,
    from f0's probabilities ``prob`` (S, GY, GX, C, ph, pw) alone."""
    p = np.moveaxis(prob / prob.sum(3, keepdims=True).clip(1e-6), 3, -1)  # (S, GY, GX, ph, pw, C)
    c = p.shape[-1]
    onehot = np.eye(c)[p.argmax(-1)]

    def fix_gain(pt: np.ndarray, pred: np.ndarray) -> np.ndarray:
        w = dataset_iou_weights(pt.reshape(-1, c).T @ pred.reshape(-1, c))
        return np.diag(w)[None, :] - w  # (truth t, prediction a): W[t, t] - W[t, a]

    whole = fix_gain(p, onehot)
    out = np.empty(p.shape[:3])
    for s in range(p.shape[0]):
        fix = fix_gain(p[s], onehot[s]) if per_slice else whole
        out[s] = np.einsum("...t,ta,...a->...", p[s], fix, onehot[s]).mean((-2, -1))
    return out


def scan_predictors(image: np.ndarray, labels: np.ndarray, bundle) -> dict:
    """Per-patch confusions (S, 3, GY, GX, C, C), as the benchmark's table holds them, and
    each predictor (S, [2,] GY, GX)."""
    if not any(bundle.fusion):
        raise SystemExit("the engine keeps f0's probabilities only for a bundle that fuses f0 in")
    table = build_table([(image, labels)], bundle)
    seg, zs = table.segs[0]
    prob = np.stack([seg._f0prob[z] for z in zs]).astype(np.float32) / 255.0  # as the engine keeps them: (S, GY, GX, C, ph, pw)
    return {"conf": table.conf, "policy": np.stack([seg.gains(z) for z in zs]), "f0 entropy": table.ent[:, 0],
            "expected gain (scan)": expected_iou_gain(prob, per_slice=False), "expected gain (slice)": expected_iou_gain(prob, per_slice=True)}


def set_correlations(scans: list[dict]) -> dict[str, list[float]]:
    """r of every predictor with the true gains of f1 and f2 on a set of scans pooled."""
    true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
    cat = {k: np.concatenate([s[k] for s in scans]) for k in PREDICTORS[:4]}
    e = cat["expected gain (slice)"]
    out = {}
    for k in range(2):
        pol = cat["policy"][:, k]
        mix = (pol - pol.mean()) / pol.std() + (e - e.mean()) / e.std()
        for name, v in (*((n, cat[n]) for n in PREDICTORS[:3]), ("policy", pol), ("policy + expected gain", mix)):
            out.setdefault(name, []).append(_corr(v, true[:, k]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--sets", nargs="+", required=True, help="generator:first-last seeds, e.g. oof:9401-9420")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            scans = [scan_predictors(image, labels, bundle) for image, labels in pool.map(_volume, [(s, 8, dist) for s in seeds])]
        pooled = set_correlations(scans)
        rng = np.random.default_rng(0)
        drawn = [set_correlations([scans[i] for i in rng.choice(len(scans), 4, replace=False)]) for _ in range(args.draws)]
        print(f"\n{text}: {len(scans)} scans ({time.perf_counter() - t0:.0f} s); r with the true gains of f1 / f2")
        print("| predictor | all scans pooled | median lead over f0's entropy in sets of four | sets with both leads ≥ 0.1 |\n|---|---|---|---|")
        for name in PREDICTORS:
            lead = np.array([[d[name][k] - d["f0 entropy"][k] for k in range(2)] for d in drawn])
            med = np.median(lead, 0)
            print(f"| {name} | {pooled[name][0]:.3f} / {pooled[name][1]:.3f} | {med[0]:+.3f} / {med[1]:+.3f} | {100 * (lead >= 0.1).all(1).mean():.1f} % |")


if __name__ == "__main__":
    main()
