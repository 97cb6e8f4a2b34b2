"""``napari-paser benchmark``: run the benchmark suite and write BENCHMARKS.md + figures.

A thin wrapper around ``benchmarks/run_all.py`` of a source checkout (the suite is
scripts, not part of the wheel). It needs the ``benchmark`` extra (scikit-learn, for the
digits experiment): ``pip install -e .[benchmark]``.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from ..errors import PaserInputError
from .segment import bundle_help

HELP = "run the benchmark suite (tables, figures) and write BENCHMARKS.md"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("benchmark", help=HELP, description=HELP + ". Needs a source checkout and the benchmark extra.")
    p.add_argument("--out", metavar="DIR", help="folder for BENCHMARKS.md, figures/ and results.json (default: the checkout root)")
    p.add_argument("--fast", action="store_true", help="smoke run: tiny data and few training steps (minutes)")
    p.add_argument("--bundle", metavar="NAME|DIR", help=bundle_help("bundle to benchmark"))
    p.add_argument("--seed", type=int, default=0, help="base seed of the suite (default 0)")
    p.add_argument("--only", metavar="PARTS", help="comma-separated parts to run (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(func=run)
    return p


def find_suite() -> Path:
    """``benchmarks/run_all.py`` of the checkout this package is installed from."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "benchmarks" / "run_all.py"
        if candidate.is_file():
            return candidate
    raise PaserInputError("the benchmark suite (benchmarks/run_all.py) is only in a source checkout; install with pip install -e .")


def run(args: argparse.Namespace) -> int:
    script = find_suite()
    argv = [str(script)]
    if args.out:
        argv += ["--out", args.out]
    if args.fast:
        argv.append("--fast")
    if args.bundle:
        argv += ["--bundle", args.bundle]
    if args.only:
        argv += ["--only", args.only]
    argv += ["--seed", str(args.seed), "--threads", str(args.threads)]
    saved = sys.argv
    sys.argv = argv
    try:
        namespace = runpy.run_path(str(script), run_name="napari_paser_benchmark")
        return int(namespace["main"](argv[1:]) or 0)
    finally:
        sys.argv = saved
