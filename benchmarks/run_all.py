"""Run the whole benchmark suite and write BENCHMARKS.md, figures/*.png and results.json.

    python benchmarks/run_all.py [--out DIR] [--fast] [--bundle NAME|DIR] [--seed 0]
    napari-paser benchmark ...            # the same

Parts: ``synth`` (Tables 1-3, λ sweep, MC-dropout passes; bench_paser.py), ``testsets``
(in-family and out-of-family test sets, fronts, gain predictability, the reference
bundle; bench_testsets.py) and ``digits`` (complementary models on scikit-learn's
digits; bench_digits.py). Every number in the
report is what this one run measured; wall-clock ratios are taken within the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PARTS = ("synth", "testsets", "digits")


def load_bundle_any(name: str | None, log):
    from napari_paser.engine.bundle import Bundle, default_model_configs, load_bundle
    from napari_paser.engine.registry import resolve_bundle

    try:
        folder = resolve_bundle(name)
        b = load_bundle(folder)
        return b, {"name": b.name, "path": str(folder), "version": str(b.meta.get("version", "")), "trained": True}
    except (FileNotFoundError, Exception) as err:  # no bundled model yet: random weights
        if name not in (None, "", "random"):
            raise
        log(f"no trained bundle ({err}); using the quick architecture with RANDOM weights: numbers are meaningless")
        b = Bundle.from_configs(default_model_configs("quick"), seed=0, meta={"name": "random-quick", "version": "0"}).eval()
        return b, {"name": b.name, "path": None, "version": "0", "trained": False}


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def _figure_dir(out: Path, fast: bool) -> Path:
    """benchmarks/figures inside a repository checkout, else figures/ beside BENCHMARKS.md."""
    return (out / "benchmarks" / "figures") if (out / "benchmarks").is_dir() and not fast else out / "figures"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for BENCHMARKS.md and figures (default: the repository root; with --fast a temporary folder)")
    p.add_argument("--fast", action="store_true", help="smoke run (tiny data, few steps)")
    p.add_argument("--bundle", help="bundle name or folder (default: the default bundle; random weights if none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default="paser-synth-quick",
                   help="bundle the test sets also run for comparison (default: the v1 bundle paser-synth-quick; 'none' to skip)")
    p.add_argument("--only", help="comma-separated parts: " + ",".join(PARTS))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on the shared 2-core machine 2 threads beside other jobs thrash; "
                        "the digits networks trained 25x faster with 1)")
    p.add_argument("--render", action="store_true",
                   help="measure nothing: rewrite BENCHMARKS.md and the figures from the last run's benchmarks/results.json")
    args = p.parse_args(argv)
    if args.render:
        import report

        out = Path(args.out) if args.out else HERE.parent
        fig_dir = _figure_dir(out, fast=False)
        results = json.loads((HERE / "results.json").read_text())
        report.figures(results, fig_dir)
        (out / "BENCHMARKS.md").write_text(report.markdown(results, fig_dir, out))
        print(f"rendered {out / 'BENCHMARKS.md'} from {HERE / 'results.json'} ({results['started']})", file=sys.stderr)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    if args.out:
        out = Path(args.out)
    else:
        import tempfile

        out = HERE.parent if not args.fast else Path(tempfile.gettempdir()) / "napari-paser-benchmark-fast"
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = _figure_dir(out, args.fast)
    fig_dir.mkdir(parents=True, exist_ok=True)
    parts = PARTS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    from common import environment

    results = {"command": " ".join(["python benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])]),
               "fast": args.fast, "seed": args.seed, "environment": environment(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if "synth" in parts or "testsets" in parts:
        bundle, binfo = load_bundle_any(args.bundle, log)
        results["bundle"] = binfo | {"default_lam": bundle.default_lam, "mc_passes": bundle.mc_passes, "mc_estimate": bundle.f0.config.mc_estimate,
                                     "parameters": bundle.parameter_counts(), "costs": [float(c) for c in bundle.costs()]}
    if "synth" in parts:
        import bench_paser

        ts = time.perf_counter()
        results["synth"] = bench_paser.run(bundle, args.fast, args.seed, log)
        results["synth"]["wall_seconds"] = time.perf_counter() - ts
    if "testsets" in parts:
        import bench_testsets

        reference = None
        if args.reference and args.reference != "none":
            reference, rinfo = load_bundle_any(args.reference, log)
            results["reference"] = rinfo | {"default_lam": reference.default_lam}
        ts = time.perf_counter()
        results["testsets"] = bench_testsets.run(bundle, reference, args.fast, args.seed, log)
        results["testsets"]["wall_seconds"] = time.perf_counter() - ts
    if "digits" in parts:
        import bench_digits

        ts = time.perf_counter()
        results["digits"] = bench_digits.run(args.fast, args.seed, log)
        results["digits"]["wall_seconds"] = time.perf_counter() - ts
    results["wall_seconds"] = time.perf_counter() - t0
    import report

    report.figures(results, fig_dir)
    md = report.markdown(results, fig_dir, out)
    name = "BENCHMARKS.md" if not args.fast else "BENCHMARKS-fast.md"
    (out / name).write_text(md)
    (fig_dir.parent / ("results.json" if not args.fast else "results-fast.json")).write_text(json.dumps(_jsonable(results), indent=1))
    log(f"wrote {out / name} and figures in {fig_dir} ({results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
