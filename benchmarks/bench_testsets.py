"""Generalization and routing on two test sets: in-family and out-of-family.

Called by ``run_all.py`` (``run(bundle, reference, fast, seed, log) -> dict``). For each
test set it measures, in one run and on the same slices:

- every monolith (f0, f1, f2 everywhere), PaSeR at the bundle's default λ, the IDK
  cascade (thresholds tuned on in-family validation volumes: nothing is tuned on the
  out-of-family set), the IoU-matched IDK cascade, RandPol and oracle routing (knows the
  truth: the upper bound of any patch policy over these models);
- PaSeR's λ sweep as IoU–GFLOPs and IoU–seconds fronts beside those baselines;
- how well the policy's predicted gains track the true per-patch gains (the first-order
  change of the volume's IoU), against f0's patch entropy as a predictor; the split-half
  ceiling of any router's r, and how well the models' own expectations of their gains
  track them (:mod:`gain_bounds`);
- whether the borders between patches show, routed to one model or to different ones
  (:mod:`seams`);
- issue 11's lines again with the patches blended across their borders (what
  ``segment`` gives by default), every routing scored exactly so (:mod:`blend_scoring`),
  for a bundle whose f1 and f2 read a halo;
- the same slices with a reference bundle (v1): f2 everywhere and PaSeR;
- seconds measured twice: with one torch thread (the tables) and with every core.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from common import (
    OOF_SEEDS,
    TEST_SEEDS,
    TIMING_ROUNDS,
    VAL_SEEDS,
    Timer,
    best_within,
    blended_table,
    build_table,
    cheapest_reaching,
    generator_record,
    idk_grid,
    make_volumes,
    match_idk,
    oracle_front,
    oracle_gains,
    oracle_within,
    pareto,
    tune_idk,
)
from gain_bounds import gain_bounds, slice_halves
from napari_paser.engine.bundle import blend_width
from seams import seam_report

SETS = {"in-family": ("v1", TEST_SEEDS), "out-of-family": ("oof", OOF_SEEDS)}
RAND_MIXES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def _lam_grid() -> np.ndarray:
    from napari_paser.train.validation import LAM_GRID

    return LAM_GRID


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def scan_spread(pred: np.ndarray, ent: np.ndarray, true: np.ndarray, scans: np.ndarray,
                draws: int = 2000, seed: int = 0) -> dict:
    """How much the policy's lead over f0's entropy rests on which scans a set holds.

    Parameters
    ----------
    pred, ent, true : ndarray (N, GY, GX)
        Predicted gains, f0's patch entropy and true gains of one model, per slice.
    scans : ndarray (N,)
        Which scan each slice comes from.
    draws : int
        Bootstrap draws: each draws as many scans as the set has, with replacement, and
        measures r (policy) − r (entropy) on their patches pooled, as the set's r is.
    seed : int
        Seeds the draws.

    Returns
    -------
    dict
        ``per_scan``: r of the policy and of the entropy within each scan;
        ``lead_interval``: the 2.5 and 97.5 percentiles of the lead over the draws;
        ``share_of_draws_meeting``: the share of draws whose lead is at least 0.1.
    """
    ids = np.unique(scans)
    rows = [np.flatnonzero(scans == i) for i in ids]
    per_scan = [{"policy": _corr(pred[r], true[r]), "f0_entropy": _corr(ent[r], true[r])} for r in rows]
    rng = np.random.default_rng(seed)
    leads = []
    for _ in range(draws):
        pick = np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
        leads.append(_corr(pred[pick], true[pick]) - _corr(ent[pick], true[pick]))
    leads = np.asarray(leads)
    leads = leads[np.isfinite(leads)]
    return {"per_scan": per_scan, "lead_interval": [float(np.percentile(leads, 2.5)), float(np.percentile(leads, 97.5))],
            "share_of_draws_meeting": float(np.mean(leads >= 0.1)), "draws": int(leads.size)}


def gain_correlations(table, truths) -> dict:
    """Pearson r of each predictor with the true per-patch gains of f1 and f2 over f0,
    pooled over the set's patches, how it spreads over its scans (:func:`scan_spread`),
    and the bounds of :mod:`gain_bounds` (``truths``: each volume's labels, in ``table``'s order)."""
    true = oracle_gains(table)  # (N, 2, GY, GX)
    per_slice = [slice_halves(seg, z, truth[z]) for (seg, zs), truth in zip(table.segs, truths, strict=True) for z in zs]
    bounds = gain_bounds(*(np.stack([h[key] for h in per_slice]) for key in ("halves", "expected", "expected_f2")))
    np.testing.assert_allclose(bounds["true"], true, rtol=1e-9, atol=1e-15)  # the halves add up to the table's patches
    pred = np.concatenate([np.stack([seg.gains(z) for z in zs]) for seg, zs in table.segs])
    ent = table.ent[:, 0]
    scans = np.concatenate([np.full(len(zs), i) for i, (_, zs) in enumerate(table.segs)])
    out = {}
    for k, name in ((0, "f1"), (1, "f2")):
        out[name] = {"policy": _corr(pred[:, k], true[:, k]), "f0_entropy": _corr(ent, true[:, k]),
                     "scans": scan_spread(pred[:, k], ent, true[:, k], scans),
                     "split_half_ceiling": float(bounds["ceiling"][0, k]), "self_assessed": float(bounds["self_assessed_r"][k]),
                     "f2_posterior": float(bounds["posterior_r"][k])}
    out["patches"] = int(true[:, 0].size)
    return out


def _timing_rounds(fast: bool) -> int:
    """Runs of the networks whose median gives the test tables their seconds (one when smoke-testing)."""
    return 1 if fast else TIMING_ROUNDS


def _seconds_all_cores(volumes, bundle, seed: int, routings: dict, rounds: int) -> dict:
    """The same routings timed with every core (a fresh table: patches rerun)."""
    threads = torch.get_num_threads()
    cores = os.cpu_count() or threads
    torch.set_num_threads(cores)
    try:
        tab = build_table(volumes, bundle, seed=seed, timing_rounds=rounds)
    finally:
        torch.set_num_threads(threads)
    f2 = tab.compute_seconds(tab.constant(2), "f2")
    out: dict = {"threads": cores, "side_by_side": all(seg.side_by_side for seg, _ in tab.segs)}
    for name, (routing, kind) in routings.items():
        s = tab.compute_seconds(routing, kind)
        out[name] = {"seconds": s, "seconds_ratio_f2": s / f2}
    return out


def _routing_lines(tt, lam: float, thresholds, seed: int, fast: bool) -> dict:
    """Every routing's row, PaSeR's λ sweep beside the baselines' fronts, and the bounds of
    issue 11's lines, as ``tt`` scores routings (cropped or blended patches)."""
    rows = {m: tt.score(tt.constant(i), m) for i, m in enumerate(("f0", "f1", "f2"))}
    if tt.conf_plain is not None:  # what fusing f0 into f1 gives without routing
        rows["f1+f0"] = tt.score(tt.constant(1), "f1+f0")
    rows["paser"] = tt.score(tt.paser(lam), "paser")
    rows["idk"] = tt.score(tt.idk(*thresholds), "idk")
    grid = idk_grid(tt, steps=21 if fast else 61)
    matched = match_idk(grid, rows["paser"]["mean_iou"])
    rows["idk-matched"] = {**tt.score(tt.idk(matched["a0"], matched["a1"]), "idk"), "match": matched["match"]}
    rows["random"] = tt.score(tt.random((1, 1, 1), seed), "random")
    front = oracle_front(tt)
    at = cheapest_reaching(front, rows["paser"]["mean_iou"])
    rows["oracle"] = at if at is not None else max(front, key=lambda p: p["mean_iou"])
    sweep = {"paser": [{"lam": float(lm), **tt.score(tt.paser(float(lm)), "paser")} for lm in _lam_grid()]}
    sweep["idk_front"] = pareto(grid)
    sweep["idk_front_seconds"] = pareto(grid, x="seconds_ratio_f2")
    sweep["random"] = [{"q": q, **tt.score(tt.random((1 - q, q / 2, q / 2), seed), "random")} for q in RAND_MIXES]
    sweep["oracle"] = front
    f1 = rows["f1"]
    best_under_f1 = best_within(sweep["paser"], f1["gflops"], f1["seconds"])
    return {
        "rows": rows,
        "idk_matched": {k: matched[k] for k in ("a0", "a1", "match")},
        "sweep": sweep,
        "beats_f1": best_under_f1 if best_under_f1 and best_under_f1["mean_iou"] > f1["mean_iou"] else None,
        "best_within_f1_cost": best_under_f1,
        "oracle_within_f1_gflops": best_within(front, f1["gflops"]),
        # Line 2 counts seconds too, and on a CPU they bind before the FLOPs do.
        "oracle_within_f1_cost": oracle_within(tt, f1["gflops"], f1["seconds"], front),
        # The bound of issue 11's first line: no policy over these networks does better there.
        "oracle_within_quarter_f2_gflops": best_within(front, 0.25 * rows["f2"]["gflops"]),
    }


def _compose_seconds(tables, lam: float) -> dict:
    """Seconds per slice to compose PaSeR's routing at ``lam`` from each table's caches
    (``{"cropped": table, "blended": table}``)."""
    out = {}
    for name, table in tables.items():
        t0 = time.perf_counter()
        for seg, zs in table.segs:
            for z in zs:
                seg.compose(z, lam)
        out[name] = (time.perf_counter() - t0) / table.n
    return out


def _evaluate_set(name, volumes, bundle, reference, thresholds, seed, fast, log, t) -> dict:
    rounds = _timing_rounds(fast)  # seconds: the median of rotated runs of the networks
    tt = build_table(volumes, bundle, seed=seed, timing_rounds=rounds)
    lam = float(bundle.default_lam)
    lines = _routing_lines(tt, lam, thresholds, seed, fast)
    log(f"[testsets] {name}: table, baselines and sweeps ({t.lap(name + ' table'):.0f} s)")
    # With a halo, the same slices through engines that blend the patches across their
    # borders (segment's default): every routing scored so, with their seconds.
    truths = [labels for _, labels in volumes]
    bt = blended_table(tt, truths, timing_rounds=rounds) if blend_width(bundle) > 0 else None
    res = {
        "lam": lam,
        **lines,
        "gain_correlation": gain_correlations(tt, truths),
        "seams": seam_report(tt, truths, lam, blend_table=bt),
        # Issue 11's first aim: f0's whole analysis (MC passes, refiner, labels and the
        # policy) is what PaSeR pays on a slice that keeps every patch on f0.
        "analysis": tt.score(tt.constant(0), "paser"),
    }
    if bt is not None:
        res["blended"] = {**_routing_lines(bt, lam, thresholds, seed, fast), "width": blend_width(bundle),
                          "compose_seconds": _compose_seconds({"cropped": tt, "blended": bt}, lam)}
        log(f"[testsets] {name}: correlations, seams, every routing blended ({t.lap(name + ' blended'):.0f} s)")
    matched = lines["idk_matched"]
    routings = {"paser": (tt.paser(lam), "paser"), "f0": (tt.constant(0), "f0"), "f1": (tt.constant(1), "f1"),
                "idk-matched": (tt.idk(matched["a0"], matched["a1"]), "idk"), "analysis": (tt.constant(0), "paser")}
    res["all_cores"] = _seconds_all_cores(volumes, bundle, seed, routings, rounds)
    log(f"[testsets] {name}: all-core seconds ({t.lap(name + ' sweep'):.0f} s)")
    if reference is not None:
        rt = build_table(volumes, reference, seed=seed)
        res["reference"] = {"f2": rt.score(rt.constant(2), "f2"), "paser": rt.score(rt.paser(float(reference.default_lam)), "paser"),
                            "f0": rt.score(rt.constant(0), "f0"), "f1": rt.score(rt.constant(1), "f1"),
                            "lam": float(reference.default_lam)}
        log(f"[testsets] {name}: reference bundle ({t.lap(name + ' reference'):.0f} s)")
    return res


def run(bundle, reference, fast: bool, seed: int, log) -> dict:
    t = Timer()
    n, slices = (1, 3) if fast else (4, 8)
    val = make_volumes(VAL_SEEDS[:1 if fast else 2], slices)
    vt = build_table(val, bundle, seed=seed, with_ce=True)
    tuned = tune_idk(vt)
    log(f"[testsets] IDK thresholds on in-family validation {tuned['thresholds']} ({t.lap('idk'):.0f} s)")
    res = {"idk_tuning": tuned, "timing_rounds": _timing_rounds(fast), "sets": {}}
    for name, (dist, seeds) in SETS.items():
        vols = make_volumes(seeds[:n], slices, distribution=dist)
        log(f"[testsets] {name}: {n} volumes x {slices} slices ({t.lap(name + ' data'):.0f} s)")
        res["sets"][name] = {"distribution": dist, "seeds": list(seeds[:n]), "slices_per_volume": slices, "generator": generator_record(),
                             **_evaluate_set(name, vols, bundle, reference, tuned["thresholds"], seed, fast, log, t)}
    res["seconds"] = t.parts
    return res
