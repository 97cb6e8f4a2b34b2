"""Entry point of the ``napari-paser`` command.

Every subcommand lives in its own module of this package with two functions:
``add_parser(subparsers)`` declares its arguments (cheaply: no torch import) and
``run(args) -> int`` does the work. Input errors are printed as one line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .. import __version__
from ..errors import PaserInputError

SUBCOMMANDS = ("synth", "segment", "evaluate", "metrics", "train", "finetune", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-paser",
        description="PaSeR phase segmentation of battery-electrode micro-CT (pore / carbon-binder / nickel).",
    )
    parser.add_argument("--version", action="version", version=f"napari-paser {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__package__}.{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (PaserInputError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError) as err:
        print(f"napari-paser {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-paser {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
