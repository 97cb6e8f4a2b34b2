"""What the scripts that make the docs pictures share: napari on the bundled sample stack
with the PaSeR widget, and a screenshot written only if it shows something, atomically."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs"


def picture_parser(doc: str, picture: str, size: tuple[int, int], bundle_help: str) -> argparse.ArgumentParser:
    """The options every picture script has: --bundle, --out, --size, --overwrite."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--bundle", default=None, help=f"{bundle_help} (default: the bundled default)")
    parser.add_argument("--out", type=Path, default=DOCS / picture, help="PNG to write")
    parser.add_argument("--size", type=int, nargs=2, default=size, metavar=("W", "H"), help="window size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing picture")
    return parser


def open_sample(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any] | None:
    """:func:`sample_viewer` for a picture script's options, unless ``--out`` may not be replaced."""
    if refuse_overwrite(args.out, args.overwrite):
        return None
    return sample_viewer(args.size, args.bundle)


def refuse_overwrite(out: Path, overwrite: bool) -> bool:
    """True (and says so) if ``out`` exists and may not be replaced."""
    if out.exists() and not overwrite:
        print(f"{out} exists: pass --overwrite to replace it", file=sys.stderr)
        return True
    return False


def sample_viewer(size: tuple[int, int], bundle: str | None) -> tuple[Any, Any, Any, Any, Any] | None:
    """(viewer, image layer, ground-truth layer, widget's dock, PaSeR widget) on the
    sample stack, the widget on ``bundle`` (None: the bundled default); None on failure."""
    import napari

    from napari_paser.engine.registry import resolve_bundle

    try:
        folder = resolve_bundle(bundle)
    except FileNotFoundError as err:
        print(f"no bundle: {err}", file=sys.stderr)
        return None
    viewer = napari.Viewer(show=True, title="napari-paser")
    viewer.window._qt_window.resize(*size)
    image, truth = viewer.open_sample("napari-paser", "electrode")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-paser", "PaSeR segmentation")
    if not widget.add_bundle_folder(folder):
        return None
    return viewer, image, truth, dock, widget


def settle(turns: int = 20, pause: float = 0.05) -> None:
    """Let Qt lay out and paint what changed."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    for _ in range(turns):
        app.processEvents()
        time.sleep(pause)


def write_shot(viewer: Any, out: Path) -> tuple[int, int] | None:
    """Screenshot the window into ``out`` (width, height), or None if it looks blank."""
    shot = np.asarray(viewer.screenshot(path=None, canvas_only=False, flash=False))
    rgb = shot[..., :3]
    if rgb.std() < 5 or len(np.unique(rgb.reshape(-1, 3), axis=0)) < 50:
        print("the screenshot looks blank: is a (virtual) display with OpenGL available?", file=sys.stderr)
        return None
    import imageio.v3 as iio

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    iio.imwrite(tmp, shot)
    tmp.replace(out)  # atomic: never a half-written picture
    return shot.shape[1], shot.shape[0]
