"""Would an f2 that reads neighbouring planes give routing something to gain? (issue 11)

Issue 11's second line asks for a λ at which PaSeR beats f1 everywhere at no more GFLOPs
and seconds. BENCHMARKS.md shows that no policy over the shipped models can: oracle
routing's best within f1's GFLOPs is below f1 in family, because f2 is only 0.0065 above
f1 there. Fine-tuning found that reading the 2 planes above and below a slice lifts a
network more than anything else tried (``probe_results.md``). This probe measures
whether it lifts f2 away from f1 on the synthetic training distribution:

- ``--volumes`` fresh volumes of the training distribution (``v2``, seeds 7701 upwards,
  16 slices; not used by any bundle or test set);
- the shipped f2 trained on them for ``--fit`` seconds as it is (the control: more
  steps on new data alone) and widened to 5 planes (mean init) for as long;
- each f2 put into a copy of the bundle and scored with the benchmark's patch tables on
  the in-family and out-of-family test volumes (as ``bench_testsets.py``): f0, f1 and f2
  everywhere, and oracle routing's best IoU within f1-everywhere's GFLOPs (the bound of
  any policy for issue 11's second line).

    python benchmarks/probe_f2_planes.py [--volumes 12] [--fit 600] [--threads 2]
"""

from __future__ import annotations

import copy
import time

from common import OOF_SEEDS, TEST_SEEDS, best_within, build_table, make_volumes, oracle_front
from probe_context_planes import fit, labelled_stacks, probe_parser, setup, widen


def summary(bundle, volumes) -> dict:
    """f0/f1/f2 everywhere, oracle routing within f1's GFLOPs, f2's GFLOPs over f1's and
    f0's analysis seconds over f1-everywhere's on ``volumes``."""
    table = build_table(volumes, bundle)
    rows = {m: table.score(table.constant(i), m) for i, m in enumerate(("f0", "f1", "f2"))}
    front = oracle_front(table)
    within = best_within(front, rows["f1"]["gflops"])
    return {**{m: rows[m]["mean_iou"] for m in rows}, "oracle_within_f1": within["mean_iou"] if within else float("nan"),
            "f2_gflops_ratio_f1": rows["f2"]["gflops"] / rows["f1"]["gflops"],
            "analysis_over_f1": table.seconds[0].sum() / table.seconds[2][:, 1].sum()}


def training_and_test_sets(volumes: int, normalise) -> tuple[list, dict]:
    """``volumes`` fresh normalised v2 volumes (seeds 7701 upwards) with their labels, and
    the in-family and out-of-family test sets."""
    from napari_paser.train.synth import generate_volume

    t = time.perf_counter()
    train = [generate_volume(7701 + i, 16, (224, 256), distribution="v2")[:2] for i in range(volumes)]
    scans = [(normalise(im), lab) for im, lab in train]
    sets = {"in-family": make_volumes(TEST_SEEDS, 8, distribution="v1"), "out-of-family": make_volumes(OOF_SEEDS, 8, distribution="oof")}
    print(f"{volumes} v2 volumes (seeds 7701-{7700 + volumes}) and the test sets made in {time.perf_counter() - t:.0f} s", flush=True)
    return scans, sets


def probe_setup(doc: str, fit_s: float):
    """Options (``--volumes``, ``--planes`` and :func:`probe_parser`'s), the bundle, the
    training volumes and the test sets of a plane probe."""
    p = probe_parser(doc, fit=fit_s)
    p.add_argument("--volumes", type=int, default=12)
    p.add_argument("--planes", type=int, default=5)
    args = p.parse_args()
    bundle, normalise = setup(args)
    print(f"bundle {bundle.name}", flush=True)
    scans, sets = training_and_test_sets(args.volumes, normalise)
    return args, bundle, scans, sets


def trained_copy(model, scans: list, planes: int, crop, fit_s: float):
    """A copy of ``model`` widened to ``planes`` (mean init) and trained for ``fit_s``
    seconds on random ``crop`` crops of ``scans``; in eval mode."""
    model = widen(model, planes, "mean")  # a copy, as shipped for 1 plane
    # One group: batches mix the volumes, as the bundle's own training does.
    pairs = [pair for scan, lab in scans for pair in labelled_stacks(scan, lab, planes, model.config.halo)]
    t = time.perf_counter()
    steps = fit(model, [pairs], crop, fit_s, batch_norm="batch")
    print(f"{planes} plane(s): {steps} steps in {time.perf_counter() - t:.0f} s", flush=True)
    return model.eval()


def main() -> None:
    args, bundle, scans, sets = probe_setup(__doc__, 600.0)
    variants = {"shipped f2": bundle.f2}
    for planes in (1, args.planes):
        print("f2, ", end="")
        model = trained_copy(bundle.f2, scans, planes, tuple(bundle.patch_size), args.fit)
        variants[f"f2 + {args.fit:.0f} s, {planes} plane{'s' if planes > 1 else ''}"] = model
    print("set | f2 | f0 / f1 / f2 everywhere | f2 - f1 | oracle routing's best within f1's GFLOPs (- f1) | f2 GFLOPs / f1's", flush=True)
    for name, volumes in sets.items():
        for label, f2 in variants.items():
            b = copy.deepcopy(bundle)
            b.f2 = copy.deepcopy(f2).eval()
            s = summary(b, volumes)
            print(f"{name} | {label} | {s['f0']:.4f} / {s['f1']:.4f} / {s['f2']:.4f} | {s['f2'] - s['f1']:+.4f} | "
                  f"{s['oracle_within_f1']:.4f} ({s['oracle_within_f1'] - s['f1']:+.4f}) | {s['f2_gflops_ratio_f1']:.2f}", flush=True)


if __name__ == "__main__":
    main()
