"""Does a full-resolution refiner of f0 tell which patches f1 and f2 improve? (issue 11, line 4)

In family f1's gain over f0 is boundary placement spread over every patch
(probe_results.md), and f0 computes at a quarter of the resolution, so its output alone
ranks the gains only a little better than its entropy. A refiner
(``napari_paser.engine.models.Refiner``: three small convolutions on the slice and f0's
MC-mean probabilities, trained with f0 frozen as ``probe_f0_refiner`` trains it) reads
the image at full resolution and moves f0 most of the way towards f1. Where it changes
f0's labels, f1 probably does too. For every refiner of ``--refiners`` (stem:width[:planes]) this
probe scores, per patch:

- "disagreement": the share of pixels whose refined label differs from f0's;
- "expected gain": the first-order change of the mean IoU from f0's labels to the refined
  ones, expected under the refined probabilities q: sum over t of q_t (W[t, b] - W[t, a])
  with a f0's label, b the refined one and W the ``dataset_iou_weights`` of the slice's
  confusion that q implies for f0's labels;
- "KL": KL(q || f0's probabilities), a soft disagreement;
- "boundary share": the share of pixels of the refined labels with a 4-neighbour of
  another phase (in family f1's gain over f0 is boundary placement);

and, unless ``--gain-steps 0``, a "gain map": a network of the refiner's kind with a third
convolution that regresses each pixel's first-order gain of f1 and f2 over f0 (the
metric's own signal, summed over a patch it is the patch's gain), trained on the same
volumes. Each is compared with f0's entropy and the bundle's policy by Pearson r with the
true gains of f1 / f2 (as PaSeR composes them) on fresh scans of the test generators,
pooled and over drawn sets of four as ``probe_testset_draws``; "policy + X" adds the two
standardised over the set's patches (no fit). Each refiner's MFLOPs and milliseconds per
slice (one thread, channels-last) are printed: what it would add to f0's analysis.

    python benchmarks/probe_refiner_gain.py paser-synth-v2.16 --sets v1:8601-8620 oof:9401-9420 --workers 2 --threads 2
    python benchmarks/probe_refiner_gain.py paser-synth-v2.16 --sets v1:8601-8620 oof:9401-9420 --workers 2 --threads 2 \
        --train v2:7801-7808 v1:7851-7854 v2:7701-7716 v1:7855-7862 --refiners 2:32 2:16 2:8 4:32 4:16 --gain-steps 0

With ``--route-val`` it also asks whether the better ranking routes better: it fits one
fixed mix of the policy's gains and the first refiner's ``--route-signal`` on those
volumes (:func:`mixed_gains`), picks the mix's λ and the policy's by the bundle's rule on
them, routes the fresh scans with the engine's argmax rule (the refiner's FLOPs charged to
f0's analysis) and scores issue 11's lines 1-3 on drawn sets of four, counting GFLOPs, as
``probe_testset_draws`` does:

    python benchmarks/probe_refiner_gain.py paser-synth-v2.16 --sets v1:8601-8620 oof:9401-9420 --workers 2 --threads 2 \
        --train v2:7801-7808 v1:7851-7854 v2:7701-7716 v1:7855-7862 --gain-steps 0 --route-val v2:7731-7738 v1:7873-7876

With ``--distil`` the first refiner is also trained twice more, on f1's and on f2's labels
(as PaSeR composes them) instead of the truth, and the expected gain is taken from f0's
labels to each distilled refiner's labels (a guess at f_k's), under the first refiner's
probabilities; so is the share of pixels those labels change. The same two signals with
f1's and f2's own labels bound what any such guess could reach:

    python benchmarks/probe_refiner_gain.py paser-synth-v2.16 --sets v1:8601-8660 oof:9401-9460 --workers 2 --threads 2 \
        --train v2:7801-7808 v1:7851-7854 v2:7701-7716 v1:7855-7862 --gain-steps 0 --distil

The refiners and the gain map train on ``--train`` volumes (by default the 12 of
``probe_f0_refiner``; 16 slices each, made once and kept in ``--cache``), none of which a
test, development or probe set uses (``v2`` 7701-7800 are the fresh volumes of
``probe_f2_planes``).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench_testsets import _corr
from common import build_table
from napari_paser.engine.bundle import load_bundle, save_bundle
from napari_paser.engine.metrics import dataset_iou_gains, dataset_iou_weights
from napari_paser.engine.models import centre_planes
from napari_paser.engine.patches import patch_view
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.routing import route
from napari_paser.engine.uncertainty import mc_predict, slice_seed
from napari_paser.train.validation import LAM_GRID, choose_default_lam
from probe_f0_refiner import TRAIN, cached_volumes, f0_outputs, f0_with_refiner, parse_variant, refiner_costs, train_refiner
from probe_patch_texture import boundary_mask
from probe_testset_draws import _parse_set, _volume, scans_table, set_lines

ENTROPY, POLICY, GAIN_MAP = "f0 entropy", "policy", "gain map"
NOT_PREDICTORS = ("conf", "plain", "ent_all", "cost", "routes")


class GainMap(nn.Module):
    """Per-pixel first-order mean-IoU gain of f1 and f2 over f0, read from the slice and
    f0's MC-mean probabilities (a :class:`Refiner`'s body with two outputs); its patch
    means predict the patch gains, which are sums of pixel gains."""

    def __init__(self, width: int, stem: int = 2, num_classes: int = 3, outputs: int = 2):
        super().__init__()
        self.stem = stem
        inputs = (1 + num_classes) * stem**2
        self.body = nn.Sequential(nn.Conv2d(inputs, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, outputs * stem**2, 1))

    def forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image.to(prob.dtype), prob.clamp_min(1e-4).log()], dim=1)
        return F.pixel_shuffle(self.body(F.pixel_unshuffle(x, self.stem)), self.stem)


def with_refiner(bundle, refiner, stem: int, width: int, planes: int, name: str, version: str):
    """A copy of ``bundle``, called ``name``, whose f0 refines its MC mean with ``refiner``
    (f0's weights, the other networks, the policy and f0's fusion weights unchanged)."""
    f0 = f0_with_refiner(bundle.f0, width, stem, planes, refiner)
    meta = {**bundle.meta, "name": name, "version": version,
            "notes": f"{bundle.name} with a {stem}:{width} refiner on f0, trained by benchmarks/probe_refiner_gain.py (not shipped)"}
    return dataclasses.replace(bundle, f0=f0, meta=meta, path=None)


def gain_targets(image: np.ndarray, labels: np.ndarray, bundle, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one labelled volume: the slices (Z, 1, H, W) and f0's MC-mean probabilities
    (Z, C, H, W) as the engine computes them, and the labels of f0 / f1 / f2 everywhere as
    PaSeR composes them (Z, 3, H, W)."""
    seg = PaserSegmenter(bundle, seed=0, device=device)
    seg.set_volume(image)
    for method in ("f0", "f1", "f2"):
        seg.result(method=method)
    f0 = bundle.f0
    h, w = labels.shape[1:]
    xs, probs, preds = [], [], []
    with torch.inference_mode():
        for z in range(seg.num_slices):
            x = torch.from_numpy(seg._planes(z, f0.config.planes))[None].to(device)
            prob, _ = mc_predict(f0, x, seg.mc_passes, seed=slice_seed(seg.seed, seg.first_slice + z))
            xs.append(seg._input(z)[None, :h, :w])
            probs.append(prob[0, :, :h, :w].cpu().numpy())
            preds.append(np.stack([seg.compose(z, routing=np.full(seg.grid, m)) for m in range(3)]))
    return np.stack(xs), np.stack(probs), np.stack(preds)


def train_gain_map(data, width: int, steps: int, stem: int = 2, seed: int = 0, crop: int = 64, batch: int = 16,
                   device: str = "cpu") -> GainMap:
    """MSE of the per-pixel gains on random crops; the gains are W[t, f_k] - W[t, f0] with W
    the ``dataset_iou_weights`` of f0's confusion over the training volumes, scaled to unit
    spread."""
    x = np.concatenate([d[0] for d in data])
    prob = np.concatenate([d[1] for d in data])
    preds = np.concatenate([d[2] for d in data]).astype(np.int64)
    truth = np.concatenate([d[3] for d in data]).astype(np.int64)
    c = prob.shape[1]
    w = dataset_iou_weights(np.bincount(truth.ravel() * c + preds[:, 0].ravel(), minlength=c * c).reshape(c, c))
    gains = np.stack([w[truth, preds[:, k]] - w[truth, preds[:, 0]] for k in (1, 2)], 1).astype(np.float32)
    scale = float(gains.std())
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, prob, target = torch.from_numpy(x), torch.from_numpy(prob), torch.from_numpy(gains / scale)
    model = GainMap(width, stem).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    h, w_ = target.shape[-2:]
    for _ in range(steps):
        i = torch.randint(0, len(target), (batch,), generator=g)
        r = int(torch.randint(0, h - crop + 1, (1,), generator=g)) // stem * stem
        cc = int(torch.randint(0, w_ - crop + 1, (1,), generator=g)) // stem * stem
        win = (i, slice(None), slice(r, r + crop), slice(cc, cc + crop))
        loss = F.mse_loss(model(x[win].to(device), prob[win].to(device)), target[win].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def expected_gain_map(a: np.ndarray, b: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """Per pixel (rows, columns), the first-order change of the mean IoU from labels ``a``
    to labels ``b``, expected under the refined probabilities ``refined`` (C, rows,
    columns): sum over t of q_t (W[t, b] - W[t, a]), W the ``dataset_iou_weights`` of the
    confusion q implies for ``a`` in the slice."""
    c = refined.shape[0]
    q = np.moveaxis(refined, 0, -1).reshape(-1, c)
    w = dataset_iou_weights(q.T @ np.eye(c)[a.ravel()])
    return (q * (w[:, b.ravel()].T - w[:, a.ravel()].T)).sum(1).reshape(a.shape)


def refiner_signals(prob: np.ndarray, refined: np.ndarray, patch_size) -> dict[str, np.ndarray]:
    """Patch means (GY, GX) of each refiner signal for one slice, from f0's probabilities
    ``prob`` and the refined ones ``refined`` (C, rows, columns)."""
    a, b = prob.argmax(0), refined.argmax(0)
    kl = (refined * (np.log(refined.clip(1e-6)) - np.log(prob.clip(1e-6)))).sum(0)
    maps = {"disagreement": (a != b).astype(np.float64), "expected gain": expected_gain_map(a, b, refined), "KL": kl,
            "boundary share": boundary_mask(b).astype(np.float64)}
    return {k: patch_view(v, patch_size).mean((-2, -1)) for k, v in maps.items()}


def label_signals(prob: np.ndarray, refined: np.ndarray, labels: list[np.ndarray], patch_size) -> tuple[np.ndarray, np.ndarray]:
    """Patch means (2, GY, GX) for f1 and f2 of the expected gain of going from f0's labels
    to ``labels[k]`` (f_k's labels, or a distilled refiner's guess at them) under the
    refined probabilities, and of the share of pixels those labels change."""
    a = prob.argmax(0)
    gain = [patch_view(expected_gain_map(a, b, refined), patch_size).mean((-2, -1)) for b in labels]
    changed = [patch_view((a != b).astype(np.float64), patch_size).mean((-2, -1)) for b in labels]
    return np.stack(gain), np.stack(changed)


def scan_predictors(image: np.ndarray, labels: np.ndarray, bundle, refiners: dict, gain_map, device: str = "cpu",
                    distilled: list | None = None) -> dict:
    """Per-patch confusions (S, 3, GY, GX, C, C) as the benchmark's table holds them and
    each predictor: (S, GY, GX), or (S, 2, GY, GX) for those that predict f1's and f2's
    gains apart (the policy, the gain map, the label signals).

    With ``distilled`` (two refiners trained on f1's and f2's labels), the expected gain and
    the changed share of their labels, under the first refiner's probabilities; and, as
    the bound of such a guess, the same with f1's and f2's own labels."""
    table = build_table([(image, labels)], bundle, device=device)
    seg, zs = table.segs[0]
    f0 = bundle.f0
    h, w = labels.shape[1:]
    out: dict[str, list] = {}
    with torch.inference_mode():
        for z in zs:
            x = torch.from_numpy(seg._planes(z, f0.config.planes))[None].to(device)
            prob, _ = mc_predict(f0, x, seg.mc_passes, seed=slice_seed(seg.seed, seg.first_slice + z))
            centre = torch.from_numpy(seg._input(z))[None, None].to(device)
            f0_prob = prob[0, :, :h, :w].cpu().numpy()
            refined = {variant: torch.softmax(refiner(centre_planes(x, refiner.planes), prob), 1)[0, :, :h, :w].cpu().numpy()
                       for variant, refiner in refiners.items()}
            for variant, q in refined.items():
                for k, v in refiner_signals(f0_prob, q, seg.patch_size).items():
                    out.setdefault(f"refiner {variant} {k}", []).append(v)
            if distilled:
                first = next(iter(refined.values()))
                guesses = [m(centre_planes(x, m.planes), prob)[0, :, :h, :w].argmax(0).cpu().numpy() for m in distilled]
                own = [seg.compose(z, routing=np.full(seg.grid, k))[:h, :w] for k in (1, 2)]
                for name, labels_k in (("distilled", guesses), ("own labels (bound)", own)):
                    gain, changed = label_signals(f0_prob, first, labels_k, seg.patch_size)
                    out.setdefault(f"{name} expected gain", []).append(gain)
                    out.setdefault(f"{name} changed share", []).append(changed)
            if gain_map is not None:
                gm = gain_map(centre, prob)[0, :, :h, :w].cpu().numpy()
                out.setdefault(GAIN_MAP, []).append(np.stack([patch_view(m, seg.patch_size).mean((-2, -1)) for m in gm]))
    extra = {"plain": table.conf_plain, "ent_all": table.ent, "cost": table.cost}
    return {"conf": table.conf, POLICY: np.stack([seg.gains(z) for z in zs]), ENTROPY: table.ent[:, 0],
            **{k: np.stack(v) for k, v in out.items()}, **extra}


def set_correlations(scans: list[dict]) -> dict[str, list[float]]:
    """r with the true gains of f1 and f2, on a set of scans pooled, of every predictor
    and of the policy plus each (both standardised over the set's patches)."""
    true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
    cat = {k: np.concatenate([s[k] for s in scans]) for k in scans[0] if k not in NOT_PREDICTORS}

    def z(v: np.ndarray) -> np.ndarray:
        return (v - v.mean()) / v.std()

    out: dict[str, list[float]] = {}
    for k in range(2):
        values = {name: v[:, k] if v.ndim == 4 else v for name, v in cat.items()}
        values.update({f"policy + {name}": z(values[POLICY]) + z(v) for name, v in list(values.items()) if name not in (ENTROPY, POLICY)})
        for name, v in values.items():
            out.setdefault(name, []).append(_corr(v, true[:, k]))
    return out


def mixed_gains(scans: list[dict], signal: str) -> tuple[np.ndarray, float]:
    """The policy plus ``signal`` at the same standing, as one fixed rule: per model k,
    ``beta_k`` is the ratio of the spreads of the policy's gains and of the signal over
    the patches of ``scans``, and the signal enters less its mean there, so the gains
    keep the policy's mean. Returns ``beta`` (2,) and that mean."""
    pol = np.concatenate([s[POLICY] for s in scans])
    sig = np.concatenate([s[signal] for s in scans])
    return pol.transpose(1, 0, 2, 3).reshape(2, -1).std(1) / sig.std(), float(sig.mean())


def with_routes(scan: dict, gains: np.ndarray, costs: np.ndarray, lams, refiner_flops: int) -> dict:
    """``scan`` routed by ``gains`` (S, 2, GY, GX) at each of ``lams`` (the engine's argmax
    rule), with ``refiner_flops`` added to every slice's f0 analysis."""
    cost = dataclasses.replace(scan["cost"], f0_encode=scan["cost"].f0_encode + refiner_flops)
    return {**scan, "cost": cost, "routes": {float(lam): route(gains, float(lam), costs) for lam in lams}}


def chosen_lam(scans: list[dict], costs: np.ndarray) -> float:
    """The bundle's rule for its default λ (``train.validation.choose_default_lam``: the
    smallest λ with IoU ≥ 0.99 × f2's at GFLOPs ≤ 0.6 × 0.25 × f2's) on routed ``scans``."""
    table = scans_table(scans, costs)
    f2 = table.score(table.constant(2), "f2")
    curve = []
    for lam in scans[0]["routes"]:
        r = table.score(np.concatenate([s["routes"][lam] for s in scans]), "paser")
        curve.append({"lam": lam, "iou_ratio": r["mean_iou"] / f2["mean_iou"], "flops_ratio": r["gflops"] / f2["gflops"]})
    return choose_default_lam(sorted(curve, key=lambda c: c["lam"]), 0.99, 0.25, margin=0.6)[0]


def routing_lines(fresh: list[dict], val: list[dict], bundle, signal: str, refiner_flops: int, draws: int) -> None:
    """Lines 1-3 (GFLOPs) on ``draws`` sets of four fresh scans, routed by the policy at
    the bundle's default λ and at the λ its rule picks on ``val``, and by the policy plus
    ``signal`` (:func:`mixed_gains` fitted on ``val``, the refiner charged) at the λ the
    same rule picks for it on ``val``."""
    costs = bundle.costs().double().numpy()
    lams = sorted({float(v) for v in LAM_GRID} | {float(bundle.default_lam)})
    beta, mean = mixed_gains(val, signal)

    def mix(s: dict) -> np.ndarray:
        return s[POLICY] + beta[None, :, None, None] * (s[signal] - mean)[:, None]

    rows = {}
    for name, gains, flops in ((POLICY, lambda s: s[POLICY], 0), (f"policy + {signal}", mix, refiner_flops)):
        routed_val = [with_routes(s, gains(s), costs, lams, flops) for s in val]
        routed = [with_routes(s, gains(s), costs, lams, flops) for s in fresh]
        lam = chosen_lam(routed_val, costs)
        chosen = [(f"{name}, λ {lam} chosen on val", lam)]
        for label, at in ([(f"{name}, the bundle's λ {float(bundle.default_lam)}", float(bundle.default_lam))] if name == POLICY else []) + chosen:
            rng = np.random.default_rng(1)
            rows[label] = [set_lines([routed[i] for i in rng.choice(len(routed), 4, replace=False)], costs, at) for _ in range(draws)]
    print(f"\nlines 1-3 (GFLOPs) on {draws} sets of four; mix: policy + {np.round(beta, 6).tolist()} × ({signal} − {mean:.3e})")
    print("| routing | line 1 met | line 1: IoU / f2's, GFLOPs / f2's (median) | line 2 met (GFLOPs) | margin over f1 (median) | line 3 met | line 3 (median) | bound ≥ 1.3 |\n|---|---|---|---|---|---|---|---|")
    for label, sets in rows.items():
        c = {k: np.array([r[k] for r in sets]) for k in sets[0]}
        line1 = (c["line1_iou"] >= 0.99) & (c["line1_gflops"] <= 0.25)
        print(f"| {label} | {100 * line1.mean():.1f} % | {np.median(c['line1_iou']):.4f}, {np.median(c['line1_gflops']):.3f} | "
              f"{100 * (c['line2_margin'] > 0).mean():.1f} % | {np.median(c['line2_margin']):+.4f} | {100 * (c['line3'] >= 1.3).mean():.1f} % | "
              f"{np.median(c['line3']):.3f} | {100 * (c['line3_bound'] >= 1.3).mean():.1f} % |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--sets", nargs="*", default=[], help="fresh scans to score, as generator:first-last seeds, e.g. oof:9401-9420")
    p.add_argument("--refiners", nargs="+", default=["2:32"], help="refiners as stem:width[:planes] (stem 1 full resolution, 2 half; planes of the stack read, 1 unless given)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0, help="seed of the refiners' initialisation and crops")
    p.add_argument("--gain-map", default="2:32", help="stem:width of the gain map")
    p.add_argument("--gain-steps", type=int, default=3000, help="0: no gain map")
    p.add_argument("--cache", type=Path, default=Path("runs/probe_f0_refiner"), help="where the training volumes are kept")
    p.add_argument("--train", nargs="+", default=TRAIN,
                   help="training volumes (generator:first-last, 16 slices each) of the refiner and the gain map")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the networks run (the refiners train on the CPU)")
    p.add_argument("--route-val", nargs="+", help="volumes (generator:first-last, 16 slices) on which to fit the mix of the policy "
                   "and the first refiner's --route-signal and choose its λ; then lines 1-3 are scored with it on the fresh scans")
    p.add_argument("--route-signal", default="expected gain", choices=["expected gain", "KL", "disagreement"])
    p.add_argument("--lines-draws", type=int, default=100)
    p.add_argument("--save", type=Path, help="write the bundle with the first refiner on f0 to this (new) folder, "
                   "for the development-set probes (probe_f0_fusion, probe_f0_headroom)")
    p.add_argument("--distil", action="store_true", help="also train the first refiner on f1's and on f2's labels and score "
                   "the expected gain of those guessed labels (and, as its bound, of f1's and f2's own)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    t0 = time.perf_counter()
    volumes = cached_volumes(args.cache, args.train, args.workers)
    outputs = f0_outputs(bundle, volumes)
    print(f"{len(volumes)} training volumes and f0's output on them ({time.perf_counter() - t0:.0f} s)", flush=True)
    shapes = {variant: parse_variant(variant) for variant in args.refiners}  # stem, width, planes
    first = args.refiners[0]
    refiners = {}
    for variant, (stem, width, planes) in shapes.items():
        t0 = time.perf_counter()
        refiners[variant] = train_refiner(outputs, width, args.steps, stem, seed=args.seed, planes=planes)
        flops, seconds = refiner_costs(refiners[variant], 1)
        print(f"refiner {variant} trained {args.steps} steps ({time.perf_counter() - t0:.0f} s): {flops / 1e6:.1f} MFLOPs and "
              f"{seconds * 1e3:.2f} ms (one thread, channels-last) per 224 × 256 slice", flush=True)
        refiners[variant].to(args.device)
        if variant == first:
            first_flops = flops
    gain_map, distilled, data = None, None, None
    if args.gain_steps or args.distil:
        t0 = time.perf_counter()
        data = [(*gain_targets(image, labels, bundle, args.device), labels) for image, labels in volumes]
        print(f"f0, f1 and f2 everywhere on the training volumes ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.distil:
        # The same refiner, trained on f1's (f2's) labels as PaSeR composes them instead of the truth.
        t0 = time.perf_counter()
        stem, width, planes = shapes[first]
        distilled = []
        for k in (1, 2):
            targets = [(x, prob, torch.from_numpy(np.ascontiguousarray(d[2][:, k]))) for (x, prob, _), d in zip(outputs, data)]
            distilled.append(train_refiner(targets, width, args.steps, stem, planes=planes).to(args.device))
        print(f"refiners {first} distilled from f1's and f2's labels, {args.steps} steps each "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    del outputs
    if args.save:
        refined = with_refiner(bundle, refiners[first].cpu(), *shapes[first], args.save.name, f"{bundle.meta.get('version', '0')}+refiner")
        save_bundle(refined, args.save)
        print(f"wrote {args.save}: {bundle.name} with refiner {first} on f0", flush=True)
    if args.gain_steps:
        t0 = time.perf_counter()
        stem, width = (int(v) for v in args.gain_map.split(":"))
        gain_map = train_gain_map(data, width, args.gain_steps, stem, device=args.device)
        print(f"gain map {args.gain_map} trained {args.gain_steps} steps ({time.perf_counter() - t0:.0f} s)", flush=True)
    del data
    val = None
    if args.route_val:
        t0 = time.perf_counter()
        val = [scan_predictors(image, labels, bundle, refiners, gain_map, args.device, distilled) for image, labels in cached_volumes(args.cache, args.route_val, args.workers)]
        print(f"{len(val)} volumes for the mix and its λ ({time.perf_counter() - t0:.0f} s)", flush=True)
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            scans = [scan_predictors(image, labels, bundle, refiners, gain_map, args.device, distilled)
                     for image, labels in pool.map(_volume, [(s, 8, dist) for s in seeds])]
        pooled = set_correlations(scans)
        rng = np.random.default_rng(0)
        drawn = [set_correlations([scans[i] for i in rng.choice(len(scans), 4, replace=False)]) for _ in range(args.draws)]
        print(f"\n{text}: {len(scans)} scans ({time.perf_counter() - t0:.0f} s); r with the true gains of f1 / f2")
        print("| predictor | all scans pooled | median lead over f0's entropy in sets of four | sets with both leads ≥ 0.1 |\n|---|---|---|---|")
        for name in pooled:
            lead = np.array([[d[name][k] - d[ENTROPY][k] for k in range(2)] for d in drawn])
            med = np.median(lead, 0)
            print(f"| {name} | {pooled[name][0]:.3f} / {pooled[name][1]:.3f} | {med[0]:+.3f} / {med[1]:+.3f} | {100 * (lead >= 0.1).all(1).mean():.1f} % |")
        if val is not None:
            routing_lines(scans, val, bundle, f"refiner {first} {args.route_signal}", first_flops, args.lines_draws)


if __name__ == "__main__":
    main()
