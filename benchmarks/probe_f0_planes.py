"""Would an f0 that reads neighbouring planes lift the bound of routing at f1's cost? (issue 11)

``probe_f2_planes.py`` found that oracle routing's best IoU within f1-everywhere's GFLOPs
stays below f1 even with an f2 that reads 5 planes: f2 costs 9.3 × f1 per patch, so it
is only paid for by patches kept on f0, and f0 is 0.062 below f1. Reading the planes
around a slice costs f0 almost nothing (its space-to-depth stem folds them into the first
convolution), so this probe asks whether they lift f0 on the patches it keeps:

- ``--volumes`` fresh volumes of the training distribution (``v2``, seeds 7701 upwards,
  as ``probe_f2_planes``);
- the shipped f0 trained on them for ``--fit`` seconds as it is (the control: more steps
  on new data alone) and widened to 5 planes (mean init) for as long, both with their
  dropout on (as f0 is trained for MC inference), on crops of 112 × 128;
- the shipped f2 widened to 5 planes and trained for as long (``probe_f2_planes``' best);
- each put into a copy of the bundle and scored with the benchmark's patch tables on the
  in-family and out-of-family test volumes: f0, f1 and f2 everywhere, f0's analysis
  seconds beside f1-everywhere's, and oracle routing's best IoU within f1-everywhere's
  GFLOPs (the bound of any policy for issue 11's second line).

    python benchmarks/probe_f0_planes.py [--volumes 12] [--fit 450] [--threads 2]
"""

from __future__ import annotations

import copy
import time

from common import OOF_SEEDS, TEST_SEEDS, build_table, make_volumes, oracle_front
from probe_context_planes import fit, labelled_stacks, probe_parser, setup, widen

F0_CROP = (112, 128)  # f0 reads whole slices; its crops must be multiples of stem × 2**depth


def summary(bundle, volumes) -> dict:
    """f0/f1/f2 everywhere, oracle routing within f1's GFLOPs and seconds on ``volumes``."""
    table = build_table(volumes, bundle)
    rows = {m: table.score(table.constant(i), m) for i, m in enumerate(("f0", "f1", "f2"))}
    front = oracle_front(table)
    within = max((p for p in front if p["gflops"] <= rows["f1"]["gflops"]), key=lambda p: p["mean_iou"], default=None)
    analysis, f1_seconds = table.seconds[0].sum(), table.seconds[2][:, 1].sum()
    return {**{m: rows[m]["mean_iou"] for m in rows}, "oracle_within_f1": within["mean_iou"] if within else float("nan"),
            "analysis_over_f1": analysis / f1_seconds}


def main() -> None:
    from napari_paser.train.synth import generate_volume

    p = probe_parser(__doc__, fit=450.0)
    p.add_argument("--volumes", type=int, default=12)
    p.add_argument("--planes", type=int, default=5)
    args = p.parse_args()
    bundle, normalise = setup(args)
    ps = tuple(bundle.patch_size)
    t = time.perf_counter()
    train = [generate_volume(7701 + i, 16, (224, 256), distribution="v2")[:2] for i in range(args.volumes)]
    scans = [(normalise(im), lab) for im, lab in train]
    sets = {"in-family": make_volumes(TEST_SEEDS, 8, distribution="v1"), "out-of-family": make_volumes(OOF_SEEDS, 8, distribution="oof")}
    print(f"bundle {bundle.name}; {args.volumes} v2 volumes (seeds 7701-{7700 + args.volumes}) and the test sets made in {time.perf_counter() - t:.0f} s", flush=True)

    def trained(model, planes: int, crop) -> object:
        model = widen(model, planes, "mean")  # a copy, as shipped for 1 plane
        # One group: batches mix the volumes, as the bundle's own training does.
        pairs = [pair for scan, lab in scans for pair in labelled_stacks(scan, lab, planes, model.config.halo)]
        t = time.perf_counter()
        steps = fit(model, [pairs], crop, args.fit, batch_norm="batch")
        print(f"{'f0' if model.config.dropout else 'f2'} with {planes} plane(s): {steps} steps in {time.perf_counter() - t:.0f} s", flush=True)
        return model.eval()

    f0_flat, f0_wide = trained(bundle.f0, 1, F0_CROP), trained(bundle.f0, args.planes, F0_CROP)
    f2_wide = trained(bundle.f2, args.planes, ps)
    variants = {
        "shipped": {},
        f"f0 + {args.fit:.0f} s, 1 plane": {"f0": f0_flat},
        f"f0 + {args.fit:.0f} s, {args.planes} planes": {"f0": f0_wide},
        f"f0 and f2 + {args.fit:.0f} s, {args.planes} planes": {"f0": f0_wide, "f2": f2_wide},
    }
    print("set | variant | f0 / f1 / f2 everywhere | f1 - f0 | oracle routing's best within f1's GFLOPs (- f1) | f0 analysis s / f1-everywhere s", flush=True)
    for name, volumes in sets.items():
        for label, swap in variants.items():
            b = copy.deepcopy(bundle)
            for k, model in swap.items():
                setattr(b, k, copy.deepcopy(model).eval())
            s = summary(b, volumes)
            print(f"{name} | {label} | {s['f0']:.4f} / {s['f1']:.4f} / {s['f2']:.4f} | {s['f1'] - s['f0']:+.4f} | "
                  f"{s['oracle_within_f1']:.4f} ({s['oracle_within_f1'] - s['f1']:+.4f}) | {s['analysis_over_f1']:.3f}", flush=True)


if __name__ == "__main__":
    main()
