"""How often would a test set of four scans meet issue 11's lines 1-4?

Issue 11's fourth line asks, on each test set, for a Pearson r of the policy's predicted
patch gains with the true ones at least 0.1 above that of f0's patch entropy. Each test
set holds four scans, and the pooled r rests mostly on which scans gain at all
(probe_results.md). This probe segments many fresh scans of a test set's generator (seeds
no test, development or training set uses), keeps each scan's per-patch confusions of
f0 / f1 / f2 (as PaSeR composes them), the policy's gains and f0's entropy, and then draws
many sets of four scans from them. For each drawn set it measures what the benchmark
measures on a test set: the true gains as the first-order change of *that set's* mean
IoU, r of the policy and of the entropy, and the lead. It prints the share of drawn sets
that meet the line, the spread of the lead, and the same over all scans pooled.

With ``--lines-draws N`` it also scores lines 1-3 on N drawn sets, counting GFLOPs only
(the scans are segmented wherever ``--device`` says, so their seconds are not the
benchmark's): PaSeR at the bundle's default λ against f2 everywhere (line 1), the best
λ of the validation grid within f1 everywhere's GFLOPs (line 2), and the GFLOPs of the
IoU-matched IDK cascade over PaSeR's and over oracle routing's (line 3 and its bound), as
``bench_testsets`` does on a test set.

    python benchmarks/probe_testset_draws.py paser-synth-v2.16 --sets v1:8601-8660 oof:9401-9460 --workers 2
    python benchmarks/probe_testset_draws.py paser-synth-v2.16 --sets v1:8601-8800 oof:9401-9600 --workers 16 --device cuda
    python benchmarks/probe_testset_draws.py paser-synth-v2.16 runs/paser-synth-v2.18 --sets oof:9401-9440 --workers 2
    python benchmarks/probe_testset_draws.py paser-synth-v2.16 --sets v1:8801-8830 oof:9601-9630 --depth 24 --lines-draws 300

Given several bundles, it segments the same scans with each and draws the same sets, and
prints how often each later bundle's r is above the first's.

Nothing here is tuned: it measures the shipped bundle on scans of the test generators.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench_testsets import _corr
from common import PatchTable, build_table, cheapest_reaching, idk_grid, make_volumes, match_idk, oracle_front
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import dataset_iou_gains
from napari_paser.engine.registry import resolve_bundle

# Seeds the project's test, validation, development and probe sets already use with these
# generators (benchmarks/common.py and the probes), which a fresh scan must avoid
# (v1 7851-7876: the training and mixing volumes of probe_f0_refiner and probe_refiner_gain).
USED = {"v1": set(range(6001, 6013)) | set(range(7001, 7004)) | set(range(7851, 7877)) | set(range(8001, 8005))
        | set(range(8501, 8505)) | set(range(9001, 9005)),
        "oof": set(range(9101, 9105)) | set(range(9201, 9213)) | set(range(9301, 9309))}


def _parse_set(text: str) -> tuple[str, list[int]]:
    dist, span = text.split(":")
    lo, hi = (int(v) for v in span.split("-"))
    seeds = list(range(lo, hi + 1))
    clash = sorted(set(seeds) & USED.get(dist, set()))
    if clash:
        raise SystemExit(f"{text}: seeds {clash} belong to a set the project already uses")
    return dist, seeds


def _volume(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One labelled scan as the benchmark makes its test volumes (picklable for a pool):
    ``(seed, slices, generator)``, or ``(seed, slices, generator, depth)`` to cut it from a
    volume ``depth`` slices deep (``generate_volume``'s Notes; 0: the generator's default)."""
    seed, slices, dist, depth = (*args, 0)[:4]
    return make_volumes([seed], slices, distribution=dist, depth=depth or None)[0]


def scan_arrays(image: np.ndarray, labels: np.ndarray, bundle, device: str, lams) -> dict:
    """One scan as the benchmark's table holds it (:func:`common.build_table`): per-patch
    confusions of f0 / f1 / f2 as PaSeR composes them and, for a bundle that fuses f0 in,
    as the networks return them (S, 3, GY, GX, C, C), the policy's gains (S, 2, GY, GX),
    the patch entropy of each model (S, 3, GY, GX), PaSeR's routing at each of ``lams``
    (S, GY, GX) and the cost model. The segmenter is dropped: memory stays per patch."""
    return table_arrays(build_table([(image, labels)], bundle, device=device), lams)


def table_arrays(table: PatchTable, lams) -> dict:
    """What :func:`scan_arrays` keeps of a one-scan ``table`` (its segmenter still cached)."""
    seg, zs = table.segs[0]
    return {"conf": table.conf, "plain": table.conf_plain, "gains": np.stack([seg.gains(z) for z in zs]),
            "ent_all": table.ent, "ent": table.ent[:, 0], "cost": table.cost,
            "routes": {float(lam): np.stack([seg.routing(float(lam), z) for z in zs]) for lam in lams}}


def set_correlations(scans: list[dict]) -> np.ndarray:
    """r of the policy and of the entropy with the true gains of f1 and f2 over a set of
    scans pooled, the gains taken on the set's own mean IoU: (2 models, 2 predictors)."""
    conf = np.concatenate([s["conf"] for s in scans])
    true = dataset_iou_gains(conf)
    pred = np.concatenate([s["gains"] for s in scans])
    ent = np.concatenate([s["ent"] for s in scans])
    return np.array([[_corr(pred[:, k], true[:, k]), _corr(ent, true[:, k])] for k in range(2)])


def draw_sets(scans: list[dict], size: int, draws: int, seed: int = 0) -> np.ndarray:
    """r of every drawn set of ``size`` distinct scans: (draws, 2 models, 2 predictors)."""
    rng = np.random.default_rng(seed)
    return np.stack([set_correlations([scans[i] for i in rng.choice(len(scans), size, replace=False)]) for _ in range(draws)])


def scans_table(scans: list[dict], costs: np.ndarray) -> PatchTable:
    """The per-patch table of ``scans`` (:func:`scan_arrays`) pooled, without segmenters."""
    plain = None if scans[0]["plain"] is None else np.concatenate([s["plain"] for s in scans])
    return PatchTable(conf=np.concatenate([s["conf"] for s in scans]), ent=np.concatenate([s["ent_all"] for s in scans]),
                      cost=scans[0]["cost"], costs=costs, conf_plain=plain)


def set_lines(scans: list[dict], costs: np.ndarray, default_lam: float) -> dict:
    """Lines 1-3 of issue 11 on one set of scans, counting GFLOPs (see the module doc);
    ``costs`` are the bundle's model costs and ``default_lam`` its default λ."""
    route = {lam: np.concatenate([s["routes"][lam] for s in scans]) for lam in scans[0]["routes"]}
    return table_lines(scans_table(scans, costs), route, route[default_lam])


def table_lines(table: PatchTable, routes: dict, default: np.ndarray) -> dict:
    """Lines 1-3 on ``table``: PaSeR's ``routes`` per λ, ``default`` its route at the
    default λ (see :func:`set_lines`). Also, for each λ of ``routes`` in order, whether
    line 1 holds (``sweep_line1``) and line 3's ratio (``sweep_line3``), and line 3's best
    where line 1 holds (``line3_best_within_line1``)."""
    f1, f2 = table.score(table.constant(1), "f1"), table.score(table.constant(2), "f2")
    paser = table.score(default, "paser")
    sweep = [table.score(r, "paser") for r in routes.values()]
    within_f1 = [p for p in sweep if p["gflops"] <= f1["gflops"]]
    best = max((p["mean_iou"] for p in within_f1), default=float("nan"))
    grid = idk_grid(table)
    match = match_idk(grid, paser["mean_iou"])
    matched = table.score(table.idk(match["a0"], match["a1"]), "idk")
    oracle = cheapest_reaching(oracle_front(table), paser["mean_iou"])
    # Lines 1 and 3 at every λ of the sweep: would another default λ meet both?
    sweep_line1 = [p["mean_iou"] >= 0.99 * f2["mean_iou"] and p["gflops"] <= 0.25 * f2["gflops"] for p in sweep]
    sweep_line3 = [match_idk(grid, p["mean_iou"])["gflops"] / p["gflops"] for p in sweep]
    line3_best = max((r for r, ok in zip(sweep_line3, sweep_line1) if ok), default=float("nan"))
    return {"line1_iou": paser["mean_iou"] / f2["mean_iou"], "line1_gflops": paser["gflops"] / f2["gflops"],
            "line2_margin": best - f1["mean_iou"], "line3": matched["gflops"] / paser["gflops"], "line3_best_within_line1": line3_best,
            "sweep_line1": sweep_line1, "sweep_line3": sweep_line3,
            "line3_bound": matched["gflops"] / oracle["gflops"] if oracle else float("nan"),
            "line3_cascade_within_0.001": float(match["match"].startswith("within"))}


def _set_lines_job(args: tuple) -> dict:
    return set_lines(*args)


def summarise_lines(scans: list[dict], bundle, size: int, draws: int, workers: int = 1, seed: int = 1) -> dict:
    """Lines 1-3 over ``draws`` sets of ``size`` distinct scans (``workers`` processes)."""
    rng = np.random.default_rng(seed)
    costs, lam = bundle.costs().double().numpy(), float(bundle.default_lam)
    jobs = [([scans[i] for i in rng.choice(len(scans), size, replace=False)], costs, lam) for _ in range(draws)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(_set_lines_job, jobs, chunksize=max(1, draws // (4 * workers))))
    cols = {k: np.array([r[k] for r in rows]) for k in rows[0] if not k.startswith("sweep_")}  # the per-λ lists aside
    met = {"line 1 (IoU and GFLOPs)": (cols["line1_iou"] >= 0.99) & (cols["line1_gflops"] <= 0.25),
           "line 2 (GFLOPs only)": cols["line2_margin"] > 0, "line 3": cols["line3"] >= 1.3, "line 3's bound": cols["line3_bound"] >= 1.3}
    matched = cols.pop("line3_cascade_within_0.001")
    out = {"draws": draws, "percentiles_5_50_95": {k: np.nanpercentile(v, [5, 50, 95]).tolist() for k, v in cols.items()},
           "share_meeting": {k: float(v.mean()) for k, v in met.items()}, "share_cascade_matched_within_0.001": float(matched.mean())}
    for k, v in out["percentiles_5_50_95"].items():
        print(f"  sets of {size} ({draws} draws), {k}: 5 / 50 / 95 % {v[0]:.4f} / {v[1]:.4f} / {v[2]:.4f}")
    print("  share of the sets meeting " + "; ".join(f"{k} {100 * v:.1f} %" for k, v in out["share_meeting"].items())
          + f"; the cascade matched PaSeR's IoU within 0.001 in {100 * out['share_cascade_matched_within_0.001']:.1f} %")
    return out


def summarise(name: str, scans: list[dict], size: int, draws: int) -> tuple[dict, np.ndarray]:
    """Line 4 over all scans pooled and over ``draws`` sets of ``size``; also returns the
    policy's r in every drawn set (draws, 2 models), for comparing bundles set by set."""
    pooled = set_correlations(scans)
    r = draw_sets(scans, size, draws)
    lead = r[:, :, 0] - r[:, :, 1]
    out = {"scans": len(scans), "pooled": {"policy": pooled[:, 0].tolist(), "f0_entropy": pooled[:, 1].tolist()},
           "draws": draws, "set_size": size,
           "lead_percentiles_5_50_95": np.percentile(lead, [5, 50, 95], axis=0).T.tolist(),
           "share_meeting": (lead >= 0.1).mean(0).tolist(), "share_meeting_both": float((lead >= 0.1).all(1).mean())}
    print(f"\n{name}: {len(scans)} fresh scans")
    print(f"  all scans pooled: r policy {pooled[0, 0]:.3f} / {pooled[1, 0]:.3f}, f0 entropy {pooled[0, 1]:.3f} / {pooled[1, 1]:.3f} (f1 / f2)")
    for k, model in enumerate(("f1", "f2")):
        p5, p50, p95 = out["lead_percentiles_5_50_95"][k]
        print(f"  sets of {size} ({draws} draws), {model}: lead of the policy over the entropy 5 / 50 / 95 % "
              f"{p5:+.3f} / {p50:+.3f} / {p95:+.3f}; ≥ 0.1 in {100 * out['share_meeting'][k]:.1f} % of the sets")
    print(f"  both f1 and f2 ≥ 0.1 (line 4 on that set): {100 * out['share_meeting_both']:.1f} % of the sets")
    return out, r[:, :, 0]


def compare(first: str, r_first: np.ndarray, other: str, r_other: np.ndarray) -> dict:
    """How another bundle's r compares with the first's on the same drawn sets."""
    diff = r_other - r_first
    out = {"against": first, "median_difference": np.median(diff, 0).tolist(), "share_higher": (diff > 0).mean(0).tolist()}
    print(f"  {other} against {first} on the same sets: r higher in {100 * out['share_higher'][0]:.1f} % / "
          f"{100 * out['share_higher'][1]:.1f} % of them (f1 / f2), median difference "
          f"{out['median_difference'][0]:+.3f} / {out['median_difference'][1]:+.3f}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", help="bundle names or folders; several are measured on the same scans and sets")
    p.add_argument("--sets", nargs="+", required=True, help="generator:first-last seeds, e.g. oof:9401-9460")
    p.add_argument("--slices", type=int, default=8, help="slices per scan (the test sets have 8)")
    p.add_argument("--depth", type=int, default=0,
                   help="make each scan this many slices deep and keep its middle --slices (0: as the test sets)")
    p.add_argument("--set-size", type=int, default=4, help="scans per drawn set (the test sets have 4)")
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--lines-draws", type=int, default=0, help="also score lines 1-3 (GFLOPs) on this many drawn sets")
    p.add_argument("--workers", type=int, default=1, help="processes that simulate the scans")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, help="write the summary as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_paser.train.validation import LAM_GRID

    bundles = {}
    for ref in args.bundles:
        bundle = load_bundle(resolve_bundle(ref)).eval()
        bundles[f"{bundle.name} {bundle.meta.get('version')}"] = bundle
    if len(bundles) < len(args.bundles):
        raise SystemExit("two of the bundles have the same name and version")
    lams = {label: sorted({float(v) for v in LAM_GRID} | {float(b.default_lam)}) for label, b in bundles.items()}
    summary = {"bundles": list(bundles), "sets": {}}
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        scans = {label: [] for label in bundles}
        # spawn: the scans are simulated beside a parent that may hold CUDA
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for image, labels in pool.map(_volume, [(s, args.slices, dist, args.depth) for s in seeds]):
                for label, bundle in bundles.items():
                    scans[label].append(scan_arrays(image, labels, bundle, args.device, lams[label]))
        print(f"{text}: {len(seeds)} scans segmented in {time.perf_counter() - t0:.0f} s")
        summary["sets"][text] = {}
        first = None
        for label, bundle in bundles.items():
            res, r = summarise(f"{dist} seeds {seeds[0]}-{seeds[-1]}, {label}", scans[label], args.set_size, args.draws)
            if first is None:
                first = (label, r)
            else:
                res["compared"] = compare(first[0], first[1], label, r)
            if args.lines_draws:
                t0 = time.perf_counter()
                res["lines"] = summarise_lines(scans[label], bundle, args.set_size, args.lines_draws, args.workers)
                print(f"  lines 1-3 on {args.lines_draws} sets in {time.perf_counter() - t0:.0f} s")
            summary["sets"][text][label] = res
            if args.out:  # after every result, so a run cut short keeps what it measured
                args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
