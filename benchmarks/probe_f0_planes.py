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

from probe_f2_planes import probe_setup, summary, trained_copy

F0_CROP = (112, 128)  # f0 reads whole slices; its crops must be multiples of stem × 2**depth


def main() -> None:
    args, bundle, scans, sets = probe_setup(__doc__, 450.0)
    print("f0, ", end="")
    f0_flat = trained_copy(bundle.f0, scans, 1, F0_CROP, args.fit)
    print("f0, ", end="")
    f0_wide = trained_copy(bundle.f0, scans, args.planes, F0_CROP, args.fit)
    print("f2, ", end="")
    f2_wide = trained_copy(bundle.f2, scans, args.planes, tuple(bundle.patch_size), args.fit)
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
