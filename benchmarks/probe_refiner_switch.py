"""Can a scan check, without labels, whether f0's refiner helps it, using f1 as the reference? (issue 11)

A refiner trained on in-family volumes brings f0 to within 0.003 of f1 in family, and
hardly closer out of family, where its analysis is not paid back (probe_results.md). The
networks' own confidence does not tell the two apart, and image statistics only in part.
f1 does: PaSeR runs it on most patches anyway. On a few *sample patches* of a scan, the
share of f0's disagreement with f1 that the refiner removes,

    closed = 1 - #(refined f0 != f1) / #(plain f0 != f1),

is large where the refiner has learnt the scan's boundaries and small where it has not.
A *switched* bundle would use the refined bundle (``refined``: networks, refiner, policy,
fusion and default λ) on a scan whose ``closed`` reaches a threshold, and the plain
bundle (``plain``) on every other scan. The threshold is chosen on the development sets
(``--dev``; none of them is a test or fresh scan), for each number of sample patches:
midway between the least ``closed`` of an in-family scan and the largest of an
out-of-family one. The sample patches are spread evenly over the scan (``--rule
spread``) or are those where the plain policy predicts f1's largest gain (``top``).

For every fresh scan this probe segments the scan with both bundles through the engine,
keeps what ``probe_testset_draws`` keeps (per-patch confusions, the policy's gains, the
entropies, PaSeR's routing at every λ of the validation grid) and the per-patch counts of
f0's (plain and refined) disagreement with f1's own labels, in ``runs/probe_refiner_switch``
so that a second run only simulates. Then it draws sets of four scans per generator and
scores issue 11's lines on each, as ``probe_testset_draws`` does (lines 1-3 count
GFLOPs), for the plain bundle, the refined one, a perfect switch (refined on every
in-family scan, plain on every other) and the switched one.

The switched bundle pays, on every scan, the refiner on its sample patches (each read with
an 8-pixel halo) and f1 on them; f1's output is then kept there (PaSeR's routes send the
sample patches to f1 at least). The IDK cascade and the oracle get the switch for free,
which can only make line 3 harder.

``--kept`` also scores a third way to use the refiner: the plain bundle unchanged, with
f0 refined only on the patches it keeps on f0 (the refiner on each such patch with its
halo; f1 and f2 fused with the plain f0). It is scored from the same records.

    python benchmarks/probe_refiner_switch.py paser-synth-v2.16 runs/paser-synth-v2.20 --sets v1:8661-8700 oof:9461-9500 --workers 2 --threads 2
    python benchmarks/probe_refiner_switch.py paser-synth-v2.16 runs/paser-synth-v2.20 --sets v1:8661-8700 oof:9461-9500 --workers 2 --threads 2 --rule top --switched-only
    python benchmarks/probe_refiner_switch.py paser-synth-v2.16 runs/paser-synth-v2.20 --sets v1:8661-8700 oof:9461-9500 --workers 2 --threads 2 --samples 0 --switched-only --kept
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import PatchTable, build_table
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.registry import resolve_bundle
from napari_paser.train.synth import GENERATOR_VERSION
from probe_testset_draws import _parse_set, _volume, set_correlations, table_arrays, table_lines

CACHE = Path(__file__).resolve().parents[1] / "runs" / "probe_refiner_switch"
CHECK_HALO = 8  # pixels around a sample patch that the refiner reads for the check


def crop_factor(patch_size: tuple[int, int], halo: int = CHECK_HALO) -> float:
    """The refiner's FLOPs on one sample patch read with ``halo`` over the patch's share
    of the slice's (1.6 for 56 x 64 patches and 8 pixels)."""
    ph, pw = patch_size
    return (ph + 2 * halo) * (pw + 2 * halo) / (ph * pw)


def scan_record(image: np.ndarray, labels: np.ndarray, bundle, lams: list[float]) -> dict:
    """One scan segmented by ``bundle`` through the engine: what ``probe_testset_draws``
    keeps (routes stacked per λ, the cost model as numbers), and f0's and f1's own labels
    (S, H, W) for the disagreement counts."""
    table = build_table([(image, labels)], bundle)
    arrays = table_arrays(table, lams)
    seg, zs = table.segs[0]
    ones, zeros = np.ones(seg.grid, np.uint8), np.zeros(seg.grid, np.uint8)
    cm = table.cost
    return {
        "conf": arrays["conf"], "conf_plain": arrays["plain"], "gains": arrays["gains"], "ent_all": arrays["ent_all"],
        "routes": np.stack(list(arrays["routes"].values())),
        "f0_labels": np.stack([seg.compose(z, routing=zeros) for z in zs]),
        "f1_labels": np.stack([seg.compose(z, routing=ones, fused=False) for z in zs]),
        "f0_mc": cm.f0_mc, "policy": cm.policy, "patch": np.asarray(cm.patch, float), "f0_refine": cm.f0_refine,
        "default_lam": float(bundle.default_lam),
    }


def disagreement(a: np.ndarray, b: np.ndarray, patch_size) -> np.ndarray:
    """Pixels per patch (S, GY, GX) where labels ``a`` and ``b`` (S, H, W) differ."""
    s, h, w = a.shape
    ph, pw = patch_size
    return (a != b).reshape(s, h // ph, ph, w // pw, pw).sum((2, 4))


def segment_scan(image, labels, bundles: dict, lams: list[float], path: Path) -> None:
    """Segment one scan with both bundles and keep its record at ``path``."""
    rec = {mode: scan_record(image, labels, b, lams) for mode, b in bundles.items()}
    ps = bundles["plain"].patch_size
    out = {"dis_plain": disagreement(rec["plain"]["f0_labels"], rec["plain"]["f1_labels"], ps),
           "dis_refined": disagreement(rec["refined"]["f0_labels"], rec["plain"]["f1_labels"], ps),
           "lams": np.asarray(lams)}
    for mode, r in rec.items():
        for k, v in r.items():
            if k not in ("f0_labels", "f1_labels"):
                out[f"{mode}_{k}"] = v
    np.savez_compressed(path, **out)


def load_scan(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def sample_mask(shape: tuple[int, int, int], k: int) -> np.ndarray:
    """``k`` sample patches spread evenly over a scan's (S, GY, GX) patches (all if k = 0):
    every n/k-th in plane-row-column order, offset to the middle of each stride."""
    n = int(np.prod(shape))
    mask = np.zeros(n, bool)
    if k <= 0 or k >= n:
        mask[:] = True
    else:
        mask[((np.arange(k) + 0.5) * n / k).astype(int)] = True
    return mask.reshape(shape)


def top_gain_mask(scan: dict, k: int) -> np.ndarray:
    """The ``k`` patches of a scan where the plain bundle's policy predicts f1's largest
    gain: PaSeR sends them to f1 at almost every λ, so f1's output is there anyway."""
    gains = scan["plain_gains"][:, 0]
    mask = np.zeros(gains.size, bool)
    mask[np.argsort(-gains.ravel(), kind="stable")[:k]] = True
    return mask.reshape(gains.shape)


def check_mask(scan: dict, k: int, rule: str) -> np.ndarray:
    """The check's sample patches of ``scan`` by ``rule`` (``spread`` or ``top``)."""
    return sample_mask(scan["dis_plain"].shape, k) if rule == "spread" or k == 0 else top_gain_mask(scan, k)


def closed_share(scan: dict, mask: np.ndarray) -> float:
    """Share of plain f0's disagreement with f1 on the ``mask`` patches that the refiner removes."""
    plain = scan["dis_plain"][mask].sum()
    return float(1.0 - scan["dis_refined"][mask].sum() / plain) if plain else 1.0


@dataclass
class SwitchedTable(PatchTable):
    """A pooled table of scans segmented in different modes: f0's analysis is charged per
    slice (``analysis``, FLOPs) and PaSeR also pays the refiner on the check's sample
    patches (``check``, FLOPs per slice); f1 on them is in PaSeR's routes."""

    analysis: np.ndarray | None = None
    check: np.ndarray | None = None

    def flops(self, routing: np.ndarray, kind: str) -> float:
        base = super().flops(routing, kind)
        if kind in ("f1", "f2") or not self.runs_f0(routing, kind):
            return base
        extra = self.analysis.sum() - self.n * self.cost.f0_mc
        if kind == "paser" and self.check is not None:
            extra += self.check.sum()
        return base + extra / 1e9


@dataclass
class CostFields:
    """The parts of :class:`~napari_paser.engine.flops.CostModel` that the tables charge."""

    f0_mc: float
    policy: float
    patch: np.ndarray


def set_table(scans: list[dict], modes: list[str], switched: bool, samples: list[np.ndarray],
              factor: float) -> tuple[SwitchedTable, dict, np.ndarray]:
    """The pooled table of ``scans`` each in its mode, PaSeR's routes per λ, and the
    per-slice default λ route; ``switched``: PaSeR pays the check on ``samples`` (the
    refiner's crops cost ``factor`` times their patches' share of a slice)."""
    plain = scans[0]
    cost = CostFields(float(plain["plain_f0_mc"]), float(plain["plain_policy"]), plain["plain_patch"])
    conf = np.concatenate([s[f"{m}_conf"] for s, m in zip(scans, modes)])
    # f1 / f2 everywhere: the networks' own outputs, the same in both modes
    conf_plain = np.concatenate([s["plain_conf_plain"] for s in scans])
    ent = np.concatenate([s[f"{m}_ent_all"] for s, m in zip(scans, modes)])
    analysis = np.concatenate([np.full(len(s[f"{m}_conf"]), float(s[f"{m}_f0_mc"])) for s, m in zip(scans, modes)])
    check = sample = None
    if switched:
        check = np.concatenate([np.full(len(s["plain_conf"]), float(s["refined_f0_refine"]) * factor * smp.sum() / smp.size)
                                for s, smp in zip(scans, samples)])
        sample = np.concatenate(samples)
    table = SwitchedTable(conf=conf, conf_plain=conf_plain, ent=ent, cost=cost, costs=np.zeros(3), analysis=analysis, check=check)
    lams = scans[0]["lams"]
    routes = {float(lam): np.concatenate([s[f"{m}_routes"][i] for s, m in zip(scans, modes)]) for i, lam in enumerate(lams)}
    default = np.concatenate([s[f"{m}_routes"][list(lams).index(float(s[f"{m}_default_lam"]))] for s, m in zip(scans, modes)])
    if switched:  # f1 has run on the check's patches: PaSeR keeps its output there
        routes = {lam: np.maximum(r, sample) for lam, r in routes.items()}
        default = np.maximum(default, sample)
    return table, routes, default


def kept_scan(scan: dict) -> dict:
    """``scan`` with a third mode, ``kept``: the plain bundle (its policy, routes, fusion
    and default λ) whose f0 is refined only on the patches kept on f0. There f0's labels
    are the refined ones; f1 and f2 stay fused with the plain f0."""
    kept = {f"kept_{k[len('plain_'):]}": v for k, v in scan.items() if k.startswith("plain_")}
    kept["kept_conf"] = scan["plain_conf"].copy()
    kept["kept_conf"][:, 0] = scan["refined_conf"][:, 0]
    return scan | kept


def set_lines(scans: list[dict], modes: list[str], switched: bool, samples: list[np.ndarray], factor: float) -> dict:
    """Issue 11's four lines on one set (lines 1-3 GFLOPs only, as probe_testset_draws)."""
    if "kept" in modes:
        if set(modes) != {"kept"} or switched:
            raise ValueError("the kept mode is scored on its own, never switched")
        scans = [kept_scan(s) for s in scans]
    table, routes, default = set_table(scans, modes, switched, samples, factor)
    if "kept" in modes:  # the refiner on each patch kept on f0: one crop with its halo
        gy, gx = table.conf.shape[2:4]
        table.kept_flops = float(scans[0]["refined_f0_refine"]) * factor / (gy * gx)
    lines = table_lines(table, routes, default)
    r = set_correlations([{"conf": s[f"{m}_conf"], "gains": s[f"{m}_gains"], "ent": s[f"{m}_ent_all"][:, 0]} for s, m in zip(scans, modes)])
    lead = r[:, 0] - r[:, 1]
    return {"line1": lines["line1_iou"] >= 0.99 and lines["line1_gflops"] <= 0.25, "line2": lines["line2_margin"] > 0,
            "line3": lines["line3"] >= 1.3, "line3_bound": lines["line3_bound"] >= 1.3,
            "line4": bool((lead >= 0.1).all()), "mixed": len(set(modes)) > 1, "margin2": lines["line2_margin"]}


def segment_set(dist: str, seeds: list[int], bundles: dict, lams: list[float], slices: int, workers: int, text: str) -> list[dict]:
    """The records of one set of scans, segmenting those not yet in :data:`CACHE`."""
    # The generator's version in the name: a record of a volume it no longer makes is not reused.
    paths = [CACHE / f"{dist}_{seed}_{slices}_g{GENERATOR_VERSION}.npz" for seed in seeds]
    todo = [(seed, path) for seed, path in zip(seeds, paths) if not path.exists()]
    t0 = time.perf_counter()
    if todo:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for (seed, path), (image, labels) in zip(todo, pool.map(_volume, [(s, slices, dist) for s, _ in todo])):
                segment_scan(image, labels, bundles, lams, path)
    print(f"{text}: {len(todo)} of {len(seeds)} scans segmented in {time.perf_counter() - t0:.0f} s", flush=True)
    return [load_scan(path) for path in paths]


def choose_threshold(dev: dict[str, list[dict]], k: int = 0, rule: str = "spread") -> float:
    """Midway between the least ``closed`` (on ``k`` patches by ``rule``) of an in-family
    development scan and the largest of an out-of-family one (``oof`` sets)."""
    closed = {text: [closed_share(s, check_mask(s, k, rule)) for s in scans] for text, scans in dev.items()}
    inside = min(c for text, v in closed.items() if not text.startswith("oof") for c in v)
    outside = max(c for text, v in closed.items() if text.startswith("oof") for c in v)
    return 0.5 * (inside + outside)


def _lines_job(args):
    return set_lines(*args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plain", help="the bundle without a refiner (e.g. paser-synth-v2.16)")
    p.add_argument("refined", help="the same networks with the refiner (e.g. runs/paser-synth-v2.20)")
    p.add_argument("--sets", nargs="+", required=True, help="generator:first-last seeds; the first is the in-family one")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--samples", type=int, nargs="+", default=[0, 32, 16, 8], help="sample patches per scan for the check (0: all)")
    p.add_argument("--dev", nargs="*", default=["v1:8001-8004", "v1:8501-8504", "oof:9201-9212", "oof:9301-9308"],
                   help="development sets (generator:first-last) that choose the threshold; the v1 / v2 ones are in family")
    p.add_argument("--threshold", type=float, default=None,
                   help="share of the disagreement the refiner must remove; default: chosen on --dev (see choose_threshold)")
    p.add_argument("--rule", choices=("spread", "top"), default="spread",
                   help="sample patches spread over the scan, or where the plain policy predicts f1's largest gain")
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--switched-only", action="store_true", help="score only the switched bundles")
    p.add_argument("--kept", action="store_true",
                   help="also score the plain bundle with f0 refined only on the patches it keeps on f0 (kept_scan)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_paser.train.validation import LAM_GRID

    bundles = {"plain": load_bundle(resolve_bundle(args.plain)).eval(), "refined": load_bundle(resolve_bundle(args.refined)).eval()}
    lams = sorted({float(v) for v in LAM_GRID} | {float(b.default_lam) for b in bundles.values()})
    CACHE.mkdir(parents=True, exist_ok=True)
    families: dict[str, list[dict]] = {}
    for text in args.sets:
        dist, seeds = _parse_set(text)
        families[text] = segment_set(dist, seeds, bundles, lams, args.slices, args.workers, text)
    dev: dict[str, list[dict]] = {}
    for text in args.dev:
        dist, span = text.split(":")
        lo, hi = (int(v) for v in span.split("-"))
        dev[text] = segment_set(dist, list(range(lo, hi + 1)), bundles, lams, args.slices, args.workers, text)
    for text, scans in dev.items():
        closed = np.array([closed_share(s, check_mask(s, 0, args.rule)) for s in scans])
        print(f"development {text}: closed on all patches, per scan: " + " ".join(f"{c:.3f}" for c in closed))
    if args.threshold is None and not dev:
        raise SystemExit("give --threshold, or --dev sets to choose it on")
    # one threshold per sample count, chosen on the development sets with the same sampling
    thresholds = {k: args.threshold if args.threshold is not None else choose_threshold(dev, k, args.rule) for k in args.samples}
    in_family = args.sets[0]
    factor = crop_factor(bundles["plain"].patch_size)
    rng = np.random.default_rng(0)
    for k in args.samples:
        print(f"\n## check on {'all' if k == 0 else k} sample patches per scan ({args.rule}), threshold {thresholds[k]:.3f}")
        for text, scans in families.items():
            closed = np.array([closed_share(s, check_mask(s, k, args.rule)) for s in scans])
            print(f"{text}: closed 5 / 50 / 95 % {np.percentile(closed, 5):.3f} / {np.median(closed):.3f} / {np.percentile(closed, 95):.3f}; "
                  f"refined on {100 * (closed >= thresholds[k]).mean():.0f} % of the scans", flush=True)
    for text, scans in families.items():
        draws = [rng.choice(len(scans), 4, replace=False) for _ in range(args.draws)]
        fixed = {} if args.switched_only else {"plain": None, "refined": None, "perfect switch": None}
        if args.kept:
            fixed["refined f0 on kept patches only"] = None
        variants = fixed | {f"switched, {k} samples ({args.rule})": k for k in args.samples if k > 0}
        print(f"\n## {text}: share of {args.draws} sets of four meeting each line (lines 1-3 GFLOPs only)")
        print("| bundle | line 1 | line 2 (median margin) | line 3 | line 3's bound | line 4 | lines met |")
        print("|---|---|---|---|---|---|---|")
        for name, k in variants.items():
            t0 = time.perf_counter()
            if k is None:
                mode = {"plain": "plain", "refined": "refined", "refined f0 on kept patches only": "kept"}.get(
                    name, "refined" if text == in_family else "plain")
                modes = [mode] * len(scans)
                samples = [None] * len(scans)
            else:
                samples = [check_mask(s, k, args.rule) for s in scans]
                modes = ["refined" if closed_share(s, m) >= thresholds[k] else "plain" for s, m in zip(scans, samples)]
            jobs = [([scans[i] for i in d], [modes[i] for i in d], k is not None, [samples[i] for i in d], factor) for d in draws]
            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows = list(pool.map(_lines_job, jobs, chunksize=max(1, len(jobs) // (4 * args.workers))))
            share = {key: np.mean([r[key] for r in rows]) for key in ("line1", "line2", "line3", "line3_bound", "line4")}
            margin = np.median([r["margin2"] for r in rows])
            met = share["line1"] + share["line2"] + share["line3"] + share["line4"]
            mixed = np.array([r["mixed"] for r in rows])
            line4 = np.array([r["line4"] for r in rows])
            split = (f"; line 4 on sets of one mode {100 * line4[~mixed].mean():.1f} % ({(~mixed).sum()}), on mixed sets "
                     f"{100 * line4[mixed].mean():.1f} % ({mixed.sum()})" if mixed.any() and (~mixed).any() else "")
            print(f"| {name} | {100 * share['line1']:.1f} % | {100 * share['line2']:.1f} % ({margin:+.4f}) | {100 * share['line3']:.1f} % | "
                  f"{100 * share['line3_bound']:.1f} % | {100 * share['line4']:.1f} % | {met:.2f} |  ({time.perf_counter() - t0:.0f} s{split})", flush=True)


if __name__ == "__main__":
    main()
