"""Can a router tell where f2 beats f1? (issue 11, lines 2 and 3)

PaSeR's λ sweep in BENCHMARKS.md is flat between 0.12 and 0.30 × f2-everywhere's GFLOPs
while the IDK cascade and oracle routing keep climbing: the patches the policy sends to
f2 gain no more than random ones. Between f1 and f2 a router decides on the difference
of their gains over f0, ``g2 - g1``. This probe measures, on the development volumes
(in family 8001-8004, out of family 9201-9204, 8 slices each; no test volume), the
Pearson r of the true per-patch ``g2 - g1`` (first-order change of the dataset's mean
IoU, as the benchmark's oracle) with what a router could read:

- the bundle's policy (its predicted f2 gain minus its predicted f1 gain);
- the mean patch entropy of f0 (what PaSeR's policy reads), of f1 (what the IDK cascade
  reads before it escalates to f2) and of f2;
- the noise of the slice against its neighbours: the RMS of the centre plane minus the
  mean of the 2 planes above and below (label-free, from the image alone).

With ``--fit S`` it does the same for f2 widened to read 5 planes (mean init, as
fine-tuning widens it) and trained ``S`` seconds on the bundle's own pre-training
volumes (``--data``, the files its manifest lists), put into a copy of the bundle: does
an f2 that sees the neighbouring planes pull away from f1 where a router can see it?

    python benchmarks/probe_f2_choice.py [--bundle NAME] [--fit 1500] [--data data/synth_v2] [--threads 2]
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from bench_testsets import _corr, oracle_gains
from common import best_within, build_table, make_volumes, oracle_front
from napari_paser.engine.patches import patch_view, plane_indices
from probe_context_planes import fit, labelled_stacks, probe_parser, setup, widen
from probe_policy_choice import DEVELOPMENT


def plane_noise(image: np.ndarray, normalise, patch_size) -> np.ndarray:
    """(Z, GY, GX) patch means of (centre plane - mean of its 4 neighbours)², square-rooted
    (slices of whole patches, as the development volumes)."""
    scan = normalise(image)
    out = []
    for z in range(len(scan)):
        p = scan[plane_indices(z, len(scan), 5)]
        d2 = (p[2] - (p.sum(0) - p[2]) / 4) ** 2
        out.append(np.sqrt(patch_view(d2, patch_size).mean(axis=(-2, -1))))
    return np.stack(out)


def diagnostics(bundle, volumes, normalise) -> dict:
    """Models everywhere, oracle routing within f1's GFLOPs and the r of each signal with
    the true ``g2 - g1`` (and with ``g2``) on ``volumes``."""
    table = build_table(volumes, bundle)
    rows = {m: table.score(table.constant(i), m) for i, m in enumerate(("f0", "f1", "f2"))}
    within = best_within(oracle_front(table), rows["f1"]["gflops"])
    true = oracle_gains(table)  # (N, 2, GY, GX): gains of f1 and f2 over f0
    pred = np.concatenate([np.stack([seg.gains(z) for z in zs]) for seg, zs in table.segs])
    noise = np.concatenate([plane_noise(image, normalise, bundle.patch_size) for image, _ in volumes])
    diff = true[:, 1] - true[:, 0]
    signals = {"policy": pred[:, 1] - pred[:, 0], "f0 entropy": table.ent[:, 0], "f1 entropy": table.ent[:, 1],
               "f2 entropy": table.ent[:, 2], "plane noise": noise}
    return {
        **{m: rows[m]["mean_iou"] for m in rows},
        "oracle_within_f1": within["mean_iou"],
        "r_diff": {k: _corr(v, diff) for k, v in signals.items()},
        "r_f2": {k: _corr(v, true[:, 1]) for k, v in signals.items() if k != "policy"} | {"policy": _corr(pred[:, 1], true[:, 1])},
    }


def pretraining_pairs(bundle, data: Path, normalise, planes: int, halo: int) -> list:
    """(planes, labels) pairs of every slice of the bundle's pre-training volumes."""
    import tifffile

    names = bundle.manifest()["training"]["data"]["pretrain"]
    pairs = []
    for name in names:
        image = tifffile.imread(data / f"{name}.tif")
        labels = tifffile.imread(data / f"{name.removesuffix('_image')}_labels.tif")
        pairs += labelled_stacks(normalise(image), labels, planes, halo)
    print(f"{len(names)} pre-training volumes, {len(pairs)} slices", flush=True)
    return pairs


def report(label: str, name: str, d: dict) -> None:
    r = d["r_diff"]
    print(f"{name} | {label} | {d['f0']:.4f} / {d['f1']:.4f} / {d['f2']:.4f} | {d['f2'] - d['f1']:+.4f} | "
          f"{d['oracle_within_f1']:.4f} ({d['oracle_within_f1'] - d['f1']:+.4f}) | "
          + " / ".join(f"{r[k]:+.3f}" for k in ("policy", "f0 entropy", "f1 entropy", "f2 entropy", "plane noise"))
          + " | " + " / ".join(f"{d['r_f2'][k]:+.3f}" for k in ("policy", "f0 entropy", "plane noise")), flush=True)


def main() -> None:
    p = probe_parser(__doc__, fit=0.0)
    p.add_argument("--data", type=Path, default=Path("data/synth_v2"))
    args = p.parse_args()
    bundle, normalise = setup(args)
    t0 = time.perf_counter()
    sets = {name: make_volumes(seeds, 8, distribution=dist) for name, (dist, seeds) in DEVELOPMENT.items()}
    header = ("set | f2 | f0 / f1 / f2 everywhere | f2 - f1 | oracle within f1's GFLOPs (- f1) | r with true g2 - g1: "
              "policy / f0 entropy / f1 entropy / f2 entropy / plane noise | r with true g2: policy / f0 entropy / plane noise")
    print(header, flush=True)
    results = {}

    def score(label: str, b) -> None:
        for name, volumes in sets.items():
            results[f"{name}, {label}"] = d = diagnostics(b, volumes, normalise)
            report(label, name, d)

    score("shipped f2", bundle)
    if args.fit > 0:
        f2 = widen(bundle.f2, 5, "mean")
        pairs = pretraining_pairs(bundle, args.data, normalise, 5, f2.config.halo)
        t = time.perf_counter()
        steps = fit(f2, [pairs], tuple(bundle.patch_size), args.fit, batch_norm="batch")
        print(f"f2 widened to 5 planes: {steps} steps in {time.perf_counter() - t:.0f} s", flush=True)
        widened = copy.deepcopy(bundle)
        widened.f2 = f2.eval()
        print(header, flush=True)
        score(f"f2, 5 planes, + {args.fit:.0f} s", widened)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
