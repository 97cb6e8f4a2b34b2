"""Would f0's MC-dropout mean in closed form keep issue 11's lines at less of its seconds?

f0's dropout sits only before its linear 1x1 head (``mc_scope="head"``), so each logit
is a sum of independently dropped terms: its mean and the variance of every gap between
two classes' logits have a closed form, and the mean softmax follows from them by the
probit approximation (:meth:`napari_paser.engine.models.UNet.mc_head_moments`). This
probe compares, on development volumes of both families (never the test sets):

1. how close each estimate of the MC mean is to 200 sampled passes (mean absolute
   difference of the probabilities, argmax agreement, r of the patch entropies);
2. the bundle as shipped (5 sampled passes) against the same bundle with the closed
   form, nothing refitted, and against ``--candidate`` bundles (e.g. v2.27: the refiner
   trained on for the closed form and the slice level fitted again): f0's analysis in
   seconds as a share of f2's, f0's IoU, PaSeR at the default λ, the best λ within f1
   everywhere's GFLOPs and seconds, the IoU-matched IDK cascade (line 3) and the gains'
   correlations (line 4).

    python benchmarks/probe_mc_moments.py            # about 8 minutes on 2 cores
    python benchmarks/probe_mc_moments.py --candidate runs/paser-synth-v2.27 --skip-estimates
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import numpy as np
import torch

from bench_testsets import _routing_lines, gain_correlations
from common import VAL_SEEDS, build_table, make_volumes, tune_idk
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import entropy, slice_seed

SETS = {"in family (v1 8001-8004)": ("v1", (8001, 8002, 8003, 8004)), "out of family (oof 9201-9204)": ("oof", (9201, 9202, 9203, 9204))}


def with_moments(bundle):
    """A copy of ``bundle`` whose f0 computes its MC mean in closed form."""
    other = copy.deepcopy(bundle)
    other.f0.config = replace(other.f0.config, mc_estimate="moments")
    return other


@torch.inference_mode()
def estimate_errors(bundle, volumes, passes: int = 200) -> dict:
    """Each estimate of the MC mean against ``passes`` sampled passes, on every slice."""
    from napari_paser.engine.pipeline import PaserSegmenter

    moments = with_moments(bundle)
    rows: dict[str, list] = {"5 passes": [], "20 passes": [], "closed form": []}
    ents: dict[str, list] = {k: [] for k in ["reference", *rows]}
    for image, _ in volumes:
        seg = PaserSegmenter(bundle)
        seg.set_volume(image)
        for z in range(seg.num_slices):
            x = seg._analysis_input(z)[2]
            feats = bundle.f0.encode(x)[-1]
            ref = _sampled(bundle.f0, feats, passes, slice_seed(1, z))
            ents["reference"].append(_patch_means(entropy(ref, 1)[0]))
            for name, folded in (("5 passes", _sampled(bundle.f0, feats, 5, slice_seed(0, z))),
                                 ("20 passes", _sampled(bundle.f0, feats, 20, slice_seed(0, z))),
                                 ("closed form", moments.f0.mc_head_moments(feats))):
                rows[name].append([float((folded - ref).abs().mean()), float((folded.argmax(1) == ref.argmax(1)).float().mean())])
                ents[name].append(_patch_means(entropy(folded, 1)[0]))
    ref_ent = np.concatenate(ents["reference"])
    return {name: {"mean_abs_prob": float(np.mean([r[0] for r in v])), "argmax_agree": float(np.mean([r[1] for r in v])),
                   "entropy_r": float(np.corrcoef(np.concatenate(ents[name]), ref_ent)[0, 1]),
                   "mean_entropy": float(np.concatenate(ents[name]).mean()), "reference_entropy": float(ref_ent.mean())}
            for name, v in rows.items()}


def _sampled(f0, feats: torch.Tensor, passes: int, seed: int) -> torch.Tensor:
    logits = f0.mc_head_logits(feats, passes, torch.Generator().manual_seed(seed))
    _, k, h, w = logits.shape
    c = f0.config.num_classes
    return logits.reshape(passes, 1, c, k // c, h, w).softmax(2).mean(0)


def _patch_means(ent_folded: torch.Tensor) -> np.ndarray:
    """Mean entropy of every 56 x 64 patch from the folded grid (sub-pixels, rows / 4, columns / 4)."""
    e = ent_folded.mean(0).numpy()
    gy, gx = e.shape[0] // 14, e.shape[1] // 16
    return e.reshape(gy, 14, gx, 16).mean((1, 3)).ravel()


def lines(bundle, volumes, val, rounds: int) -> dict:
    """Issue 11's lines on ``volumes`` (cropped patches), the IDK tuned on ``val``."""
    table = build_table(volumes, bundle, timing_rounds=rounds)
    thresholds = tune_idk(build_table(val, bundle, with_ce=True))["thresholds"]
    truths = [labels for _, labels in volumes]
    out = _routing_lines(table, bundle.default_lam, thresholds, seed=0, fast=False)
    t_f0, t_policy, _ = table.seconds
    f2 = table.compute_seconds(table.constant(2), "f2")
    out["analysis_share"] = float((t_f0.sum() + t_policy.sum()) / f2)
    out["gains"] = gain_correlations(table, truths)
    return out


def report(name: str, res: dict) -> None:
    rows = res["rows"]
    f1, paser, matched = rows["f1"], rows["paser"], rows["idk-matched"]
    best = res["best_within_f1_cost"]
    g = res["gains"]
    print(f"  {name}: analysis {res['analysis_share']:.3f} x f2's s; f0 {rows['f0']['mean_iou']:.4f}, f1 {f1['mean_iou']:.4f} "
          f"({f1['gflops'] / rows['f2']['gflops']:.3f} x GFLOPs, {f1['seconds_ratio_f2']:.3f} x s), f2 {rows['f2']['mean_iou']:.4f}")
    print(f"    line 1: PaSeR {paser['mean_iou']:.4f} ({paser['mean_iou'] / rows['f2']['mean_iou']:.4f} x f2) at "
          f"{paser['gflops'] / rows['f2']['gflops']:.3f} x GFLOPs, {paser['seconds_ratio_f2']:.3f} x s")
    if best:
        print(f"    line 2: best within f1's cost λ {best['lam']:g}: {best['mean_iou']:.4f} at {best['seconds_ratio_f2']:.3f} x s "
              f"({'beats' if best['mean_iou'] > f1['mean_iou'] else 'below'} f1)")
    print(f"    line 3: IDK-matched {matched['gflops'] / paser['gflops']:.3f} x PaSeR's GFLOPs")
    print(f"    line 4: r policy {g['f1']['policy']:.3f} / {g['f2']['policy']:.3f} vs entropy "
          f"{g['f1']['f0_entropy']:.3f} / {g['f2']['f0_entropy']:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="paser-synth-v2.24")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="timed runs whose median gives the seconds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--candidate", nargs="*", default=[], help="more bundles (names or folders) to score as they are")
    p.add_argument("--skip-estimates", action="store_true", help="leave out the comparison with 200 sampled passes")
    p.add_argument("--candidates-only", action="store_true", help="score only the --candidate bundles")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle))
    val = make_volumes(VAL_SEEDS, args.slices)
    for set_name, (dist, seeds) in SETS.items():
        t0 = time.perf_counter()
        volumes = make_volumes(seeds, args.slices, distribution=dist)
        print(f"{set_name}, {args.bundle}, {args.threads} thread(s):")
        if not args.skip_estimates:
            for name, res in estimate_errors(bundle, volumes).items():
                print(f"  {name}: |p - 200 passes| {res['mean_abs_prob']:.4f}, argmax agrees {res['argmax_agree']:.4f}, "
                      f"patch entropy r {res['entropy_r']:.4f} (mean {res['mean_entropy']:.4f} vs {res['reference_entropy']:.4f})")
        variants = [] if args.candidates_only else [("5 sampled passes (as shipped)", bundle), ("closed form", with_moments(bundle))]
        variants += [(name, load_bundle(resolve_bundle(name))) for name in args.candidate]
        for name, b in variants:
            report(name, lines(b, volumes, val, args.rounds))
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
