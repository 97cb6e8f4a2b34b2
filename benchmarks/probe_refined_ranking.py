"""Which cheap signal ranks the gains that f1 and f2 still make over a refined f0? (issue 11)

With the default bundle (v2.20) f0's prediction is refined at half resolution and fused
into f1's and f2's patches. The true gain of a patch is then the change of the set's mean
IoU from the refined f0's labels to the fused f1's (f2's), and BENCHMARKS.md finds that
v2.20's policy tracks it worse than f0's MC entropy. This probe scores, on fresh scans of
both test generators, per-patch signals that the analysis computes anyway or could at a
few full-resolution elementwise passes:

- ``entropy``: f0's MC-dropout entropy (the baseline of issue 11's fourth line);
- ``policy``: the bundle's predicted gains;
- ``refined entropy`` and ``refined 1-max``: the refined probabilities' uncertainty;
- ``relabelled``: the share of pixels whose label the refiner changes;
- ``KL``: KL(refined ‖ MC mean), the refiner's correction;
- ``boundary``: the share of pixels with a 4-neighbour of another refined label.

The last three are ``probe_refiner_gain.refiner_signals``.

For each it prints r with the true gains over all scans pooled and the median lead over the
entropy in drawn sets of four scans (as a test set holds), and the share of sets where the
lead is at least +0.1 for both f1 and f2. Nothing is fitted.

With ``--lines-draws N`` it also asks whether routing by the best of them would route
better: on N drawn sets of four it scores issue 11's lines 1-3 (GFLOPs only, as
``probe_testset_draws`` scores them) for PaSeR routed by the policy's gains and by the
*mix* ``policy_k + β_k (KL − its mean)``, β_k the ratio of the two spreads over the set's
patches (no labels), at the bundle's default λ and over the validation λ grid.

    python benchmarks/probe_refined_ranking.py --sets v1:8831-8850 oof:9631-9650 [--lines-draws 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_testsets import _corr
from common import build_table, make_volumes
from probe_refiner_gain import refiner_signals
from probe_testset_draws import _parse_set, scans_table, table_lines

from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import dataset_iou_gains
from napari_paser.engine.patches import patch_view
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.routing import route
from napari_paser.engine.uncertainty import entropy, mc_predict, slice_seed

SIGNALS = ("entropy", "policy", "refined entropy", "refined 1-max", "relabelled", "KL", "boundary")


@torch.no_grad()
def scan_signals(image: np.ndarray, labels: np.ndarray, bundle) -> dict:
    """Per-patch confusions (as PaSeR composes them) and every signal of one scan."""
    table = build_table([(image, labels)], bundle)
    seg, zs = table.segs[0]
    f0, ps = bundle.f0, seg.patch_size
    out = {s: [] for s in SIGNALS}
    for z in zs:
        x = torch.from_numpy(seg._planes(z, f0.config.planes))[None]  # f0's input, as the engine stacks it
        prob, _ = mc_predict(f0, x, seg.mc_passes, seed=slice_seed(seg.seed, seg.first_slice + z))  # as the engine seeds it
        q = f0.refine(x, prob)[0].double()
        # The refiner's relabelling, KL and boundary share as probe_refiner_gain measures them.
        shared = refiner_signals(prob[0].double().numpy(), q.numpy(), ps)
        maps = {"refined entropy": entropy(q, dim=0), "refined 1-max": 1 - q.max(0).values}
        for name, m in maps.items():
            out[name].append(patch_view(m.numpy(), ps).mean(axis=(-2, -1)))
        for name, key in (("relabelled", "disagreement"), ("KL", "KL"), ("boundary", "boundary share")):
            out[name].append(shared[key])
        out["entropy"].append(seg.patch_entropy(z, 0))
        out["policy"].append(seg.gains(z))
    return {"conf": table.conf, "plain": table.conf_plain, "ent_all": table.ent, "cost": table.cost,
            **{k: np.stack(v) for k, v in out.items()}}


def mixed_gains(scans: list[dict]) -> np.ndarray:
    """The policy's gains plus the refiner's KL, standardised to the gains' spread over the
    set's patches (label-free): (patches, 2, GY, GX) pooled over ``scans``."""
    g = np.concatenate([s["policy"] for s in scans])
    kl = np.concatenate([s["KL"] for s in scans])
    dev = kl - kl.mean()
    return np.stack([g[:, k] + g[:, k].std() / max(kl.std(), 1e-12) * dev for k in range(2)], axis=1)


def routing_lines(scans: list[dict], gains: np.ndarray, costs: np.ndarray, lams: list[float], default: float) -> dict:
    """Issue 11's lines 1-3 on ``scans`` routed by ``gains`` at every λ (GFLOPs only)."""
    routes = {lam: route(gains, lam, costs) for lam in lams}
    return table_lines(scans_table(scans, costs), routes, routes[default])


def set_r(scans: list[dict]) -> np.ndarray:
    """r of every signal with the true gains of f1 and f2 over ``scans`` pooled: (signals, 2)."""
    true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
    r = np.zeros((len(SIGNALS), 2))
    for i, name in enumerate(SIGNALS):
        v = np.concatenate([s[name] for s in scans])
        for k in range(2):
            r[i, k] = _corr(v[:, k] if name == "policy" else v, true[:, k])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", default=None)
    ap.add_argument("--sets", nargs="+", default=["v1:8831-8850", "oof:9631-9650"])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lines-draws", type=int, default=0, help="sets of four to score lines 1-3 on (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle))
    print(f"bundle {bundle.meta.get('name')} {bundle.meta.get('version')}; signals over the refined f0's labels")
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        scans = [scan_signals(img, lab, bundle) for img, lab in make_volumes(seeds, args.slices, distribution=dist)]
        pooled = set_r(scans)
        rng = np.random.default_rng(0)
        draws = np.stack([set_r([scans[i] for i in rng.choice(len(scans), 4, replace=False)]) for _ in range(args.draws)])
        lead = draws - draws[:, :1]  # over the entropy
        print(f"\n{text} ({len(scans)} scans, {time.perf_counter() - t0:.0f} s)")
        print("| signal | pooled r (f1 / f2) | median lead over the entropy, sets of four (f1 / f2) | sets with both leads ≥ 0.1 |")
        print("|---|---|---|---|")
        for i, name in enumerate(SIGNALS):
            both = np.mean((lead[:, i, 0] >= 0.1) & (lead[:, i, 1] >= 0.1)) * 100
            med = np.median(lead[:, i], axis=0)
            print(f"| {name} | {pooled[i, 0]:.3f} / {pooled[i, 1]:.3f} | {med[0]:+.3f} / {med[1]:+.3f} | {both:.1f} % |")
        if args.lines_draws:
            print_lines(scans, bundle, args.lines_draws)


def print_lines(scans: list[dict], bundle, draws: int) -> None:
    """Lines 1-3 (and line 4 for the mix) on drawn sets of four, routed by the policy and by the mix."""
    from napari_paser.train.validation import LAM_GRID

    costs = bundle.costs().double().numpy()
    default = float(bundle.default_lam)
    lams = sorted({float(v) for v in LAM_GRID} | {default})
    rng = np.random.default_rng(1)
    rows = {"policy": [], "policy + KL": []}
    lead4 = []
    for _ in range(draws):
        pick = [scans[i] for i in rng.choice(len(scans), 4, replace=False)]
        mix = mixed_gains(pick)
        rows["policy"].append(routing_lines(pick, np.concatenate([s["policy"] for s in pick]), costs, lams, default))
        rows["policy + KL"].append(routing_lines(pick, mix, costs, lams, default))
        true = dataset_iou_gains(np.concatenate([s["conf"] for s in pick]))
        ent = np.concatenate([s["entropy"] for s in pick])
        lead4.append([_corr(mix[:, k], true[:, k]) - _corr(ent, true[:, k]) for k in range(2)])
    lead4 = np.array(lead4)
    print(f"\nlines 1-3 on {draws} drawn sets of four (GFLOPs only), default λ {default:g}; share of sets meeting each line (median):")
    print("| routing | line 1 | line 2 (margin over f1) | line 3 | line 3's bound |")
    print("|---|---|---|---|---|")
    for name, res in rows.items():
        l1 = np.array([r["line1_iou"] >= 0.99 and r["line1_gflops"] <= 0.25 for r in res])
        m2 = np.array([r["line2_margin"] for r in res])
        l3 = np.array([r["line3"] for r in res])
        b3 = np.array([r["line3_bound"] for r in res])
        print(f"| {name} | {l1.mean() * 100:.1f} % ({np.median([r['line1_iou'] for r in res]):.4f} ×) | {np.mean(m2 > 0) * 100:.1f} % ({np.median(m2):+.4f}) "
              f"| {np.mean(l3 >= 1.3) * 100:.1f} % ({np.median(l3):.3f} ×) | {np.mean(b3 >= 1.3) * 100:.1f} % |")
    both = np.mean((lead4[:, 0] >= 0.1) & (lead4[:, 1] >= 0.1)) * 100
    med = np.median(lead4, axis=0)
    print(f"line 4 for the mix: median lead over the entropy {med[0]:+.3f} / {med[1]:+.3f}; sets with both ≥ 0.1: {both:.1f} %")


if __name__ == "__main__":
    main()
