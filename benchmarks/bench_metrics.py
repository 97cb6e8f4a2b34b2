"""How much the segmentation changes the microstructure metrics, on the held-out volumes.

Run ``python benchmarks/bench_metrics.py [--bundle NAME|DIR] [--slices 8]`` (one command;
rerun it after the bundled model changes). For each synthetic test volume (seeds
9001-9004, 8 slices of 224×256 by default: the test set of ``benchmarks/common.py`` and
BENCHMARKS.md), it computes porosity, the pore tortuosity factor along axis 0
(TauFactor) and nickel's specific surface area (marching cubes) from

- the ground-truth labels,
- PaSeR at the bundle's default λ,
- f2 on every patch,

and the relative error of both segmentations against the truth. It also runs the
``--band`` of ``napari-paser metrics`` (PaSeR at λ = 0, default, 0.1, 0.3, 1, f2 everywhere
and four single-pass MC-dropout samples of f0) and reports whether each metric's band contains the
ground-truth value. It prints the results and writes them as a markdown section to
``benchmarks/metrics_results.md`` (replaced on every run).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEST_SEEDS = (9001, 9002, 9003, 9004)  # the held-out seeds of benchmarks/common.py
KEYS = (("porosity", "volume_fraction.pore"), ("τ (pore, axis 0)", "tortuosity_factor.pore"),
        ("SSA nickel (1/µm)", "specific_surface_area.nickel"))


def direct_taufactor(mask: np.ndarray) -> float:
    """τ along axis 0 from ``taufactor.Solver`` itself (no napari-paser code in between)."""
    import contextlib
    import io

    import taufactor

    with contextlib.redirect_stdout(io.StringIO()):
        return float(taufactor.Solver(mask.astype(np.uint8), device="cpu").solve(verbose=False)[0])


def rel_err(value: float, truth: float) -> float:
    return (value - truth) / truth


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="bundle name or folder (default: the default bundle)")
    ap.add_argument("--slices", type=int, default=8, help="slices per test volume (default 8, as in BENCHMARKS.md)")
    ap.add_argument("--size", type=int, nargs=2, default=(224, 256), metavar=("Y", "X"), help="slice size (default 224 256)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(TEST_SEEDS))
    ap.add_argument("--distribution", help="synthetic parameter distribution (default: generate_volume's, as benchmarks/common.py)")
    ap.add_argument("--band-mc", type=int, default=4, help="f0 MC-dropout samples in the band (default 4)")
    ap.add_argument("--out", default=str(HERE / "metrics_results.md"), help="markdown file to write (replaced)")
    args = ap.parse_args(argv)

    import inspect

    import torch

    from common import generator_record
    from napari_paser.cli.segment import load_bundle_arg
    from napari_paser.engine.metrics_band import DEFAULT_BAND_LAMS, PhaseEnvelope, band_steps
    from napari_paser.engine.metrics_report import metric_ranges
    from napari_paser.engine.microstructure import compute_metrics
    from napari_paser.engine.pipeline import PaserSegmenter
    from napari_paser.train.synth import generate_volume
    from report import generator_note

    distribution = args.distribution or inspect.signature(generate_volume).parameters.get("distribution").default
    t_start = time.perf_counter()
    bundle = load_bundle_arg(args.bundle)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python", "benchmarks/bench_metrics.py", *map(shlex.quote, given)])
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        extra = {"distribution": args.distribution} if args.distribution else {}
        image, truth, info = generate_volume(seed, args.slices, tuple(args.size), **extra)
        voxel = tuple(info["voxel_size_um"])
        kw = dict(voxel_size=voxel)
        seg = PaserSegmenter(bundle)
        seg.set_volume(image)
        paser = seg.result()
        f2 = seg.result(method="f2")
        m_true = compute_metrics(truth, 0, **kw)
        if not rows:  # acceptance check: the wrapper against TauFactor called directly
            direct_tau = direct_taufactor(truth == 0)
        m_paser = compute_metrics(paser.labels, 0, require_all_phases=False, **kw)
        m_f2 = compute_metrics(f2.labels, 0, require_all_phases=False, **kw)
        envelope = PhaseEnvelope()  # the main segmentation joins the band, as in `napari-paser metrics`
        gen = band_steps(image, bundle, 0, lams=DEFAULT_BAND_LAMS, mc_samples=args.band_mc, labels=paser.labels, envelope=envelope, **kw)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                band = stop.value
                break
        members = [m_paser] + [b.metrics for b in band]
        ranges = metric_ranges(members, envelope)
        spread = metric_ranges(members)  # without the voxel-wise envelope
        row = {"seed": seed, "lam": paser.lam, "gflops_ratio": paser.gflops_total / f2.gflops_total,
               "seconds": time.perf_counter() - t0, "conv": all(r.converged for m in (m_true, m_paser, m_f2) for r in m.tortuosity.values())}
        for name, key in KEYS:
            row[key] = dict(truth=m_true.values[key], paser=m_paser.values[key], f2=m_f2.values[key], band=ranges[key],
                            spread=spread[key])
        rows.append(row)
        print(f"seed {seed}: " + "  ".join(
            f"{name} truth {row[key]['truth']:.4g} paser {row[key]['paser']:.4g} f2 {row[key]['f2']:.4g} "
            f"band [{row[key]['band'][0]:.4g}, {row[key]['band'][1]:.4g}]" for name, key in KEYS) + f"  ({row['seconds']:.0f} s)", flush=True)
    total = time.perf_counter() - t_start

    lines = [
        "## Microstructure metrics: PaSeR vs f2 everywhere vs ground truth",
        "",
        f"Regenerate with `{command}` (replaces this file; {total:.0f} s here with "
        f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}).",
        "",
        f"Bundle `{bundle.name}` (version {bundle.meta.get('version', '')}), default λ = {bundle.default_lam:g}. "
        f"Test volumes: synthetic seeds {', '.join(map(str, args.seeds))} (distribution `{distribution}`), {args.slices} slices of {args.size[0]}×{args.size[1]}"
        f"{generator_note(generator_record(), args.slices)}, metrics over the whole volume, voxel size from the generator. τ: TauFactor, pore phase, flux along axis 0 "
        f"({args.slices} planes). SSA: nickel surface area per unit sample volume, marching cubes. "
        f"Band: PaSeR at λ ∈ {{0, default, 0.1, 0.3, 1}}, f2 everywhere and {args.band_mc} single-pass f0 MC-dropout samples "
        "(the defaults of `napari-paser metrics --band`); the volume fractions' ranges also span the voxel-wise envelope of "
        "the deterministic members (a phase's voxels in all of them to its voxels in any of them).",
        "",
        "Relative error against the ground truth ((segmentation − truth) / truth), per volume:",
        "",
        "| seed | PaSeR GFLOPs / f2's | " + " | ".join(f"{n}: truth | PaSeR | f2" for n, _ in KEYS) + " |",
        "|---|---|" + "---|---|---|" * len(KEYS),
    ]
    for r in rows:
        cells = []
        for _, key in KEYS:
            v = r[key]
            cells.append(f"{v['truth']:.4g} | {rel_err(v['paser'], v['truth']):+.2%} | {rel_err(v['f2'], v['truth']):+.2%}")
        lines.append(f"| {r['seed']} | {r['gflops_ratio']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Mean absolute relative error over the volumes:", "", "| metric | PaSeR (default λ) | f2 everywhere |", "|---|---|---|"]
    for name, key in KEYS:
        ep = np.mean([abs(rel_err(r[key]["paser"], r[key]["truth"])) for r in rows])
        ef = np.mean([abs(rel_err(r[key]["f2"], r[key]["truth"])) for r in rows])
        lines.append(f"| {name} | {ep:.2%} | {ef:.2%} |")
    lines += ["", "Band ranges ([min, max] over the band) and whether they contain the ground truth:", "",
              "| seed | " + " | ".join(f"{n} band | contains truth" for n, _ in KEYS) + " |", "|---|" + "---|---|" * len(KEYS)]
    hits = {key: 0 for _, key in KEYS}
    for r in rows:
        cells = []
        for _, key in KEYS:
            lo, hi = r[key]["band"]
            inside = lo <= r[key]["truth"] <= hi
            hits[key] += inside
            cells.append(f"[{lo:.4g}, {hi:.4g}] | {'yes' if inside else 'no'}")
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    first = rows[0]["tortuosity_factor.pore"]["truth"]
    lines += ["", f"τ of seed {rows[0]['seed']}'s ground truth along axis 0: {first:.5g} from `napari-paser metrics`, "
              f"{direct_tau:.5g} from `taufactor.Solver` run directly on the same mask ({rel_err(first, direct_tau):+.3%})."]
    lines += ["", "Ground truth inside the band: " + ", ".join(f"{n} {hits[k]}/{len(rows)}" for n, k in KEYS) + "."]
    key = "volume_fraction.pore"
    spread_hits = sum(r[key]["spread"][0] <= r[key]["truth"] <= r[key]["spread"][1] for r in rows)
    lines += ["", "Porosity's range from the members' values alone (no envelope): "
              + ", ".join(f"{r['seed']} [{r[key]['spread'][0]:.4g}, {r[key]['spread'][1]:.4g}]" for r in rows)
              + f"; it contains the truth {spread_hits}/{len(rows)}: every member shares the networks' bias."]
    if not all(r["conv"] for r in rows):
        lines += ["", "Note: at least one TauFactor solve did not converge within its iteration limit."]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.out} in {total:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
