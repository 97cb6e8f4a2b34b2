"""The paper authors' PNG folder layout, as an import and export format.

``<root>/<split>_images/NAME.png`` (8-bit grayscale image) and ``<root>/<split>_label/NAME.png``
(8-bit label: 0 pore, 255 carbon-binder, anything strictly between -> nickel; we write
128) for the splits ``train``, ``validation`` and ``test``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import imageio.v3 as iio
import numpy as np

from ..errors import PaserInputError

SPLITS = ("train", "validation", "test")
_LABEL_TO_PNG = np.array([0, 255, 128], np.uint8)  # pore, carbon, nickel


def _folders(root: Path, split: str) -> tuple[Path, Path]:
    if split not in SPLITS:
        raise PaserInputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return root / f"{split}_images", root / f"{split}_label"


def image_to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit copy of a stack: uint8 unchanged; else the 0.1-99.9 percentile range -> 0-255.

    One mapping per stack (not per slice), so slices of a volume stay comparable.
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, [0.1, 99.9]) if a.size else (0.0, 1.0)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((a - lo) * scale), 0, 255).astype(np.uint8)


def write_paper_layout(
    root: str | Path,
    volumes: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    *,
    prefix: str = "vol",
) -> list[Path]:
    """Write volumes as one PNG pair per slice in the authors' layout.

    Parameters
    ----------
    root
        Output folder.
    volumes
        ``{split: [(image, labels), ...]}``; each image/labels is (Z,Y,X) or (Y,X);
        images of any dtype (see :func:`image_to_uint8`), labels with values 0, 1, 2.
    prefix
        File names are ``{prefix}{K:03d}_z{z:04d}.png``, K counting over all splits.

    Returns
    -------
    list of Path
        The image files written (labels share their names).
    """
    root = Path(root)
    written: list[Path] = []
    k = 0
    for split, pairs in volumes.items():
        img_dir, lab_dir = _folders(root, split)
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        for image, labels in pairs:
            img8 = image_to_uint8(image)
            lab = np.asarray(labels)
            if img8.ndim == 2:
                img8, lab = img8[None], lab[None]
            if img8.shape != lab.shape or img8.ndim != 3:
                raise PaserInputError(f"image {img8.shape} and labels {lab.shape} must be equal (Z,Y,X)")
            if lab.size and (lab.min() < 0 or lab.max() > 2):
                raise PaserInputError("labels must be 0 (pore), 1 (carbon-binder) or 2 (nickel)")
            lab_png = _LABEL_TO_PNG[lab.astype(np.intp)]
            for z in range(img8.shape[0]):
                name = f"{prefix}{k:03d}_z{z:04d}.png"
                iio.imwrite(img_dir / name, img8[z])
                iio.imwrite(lab_dir / name, lab_png[z])
                written.append(img_dir / name)
            k += 1
    return written


def read_paper_layout(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one split of the authors' layout.

    Parameters
    ----------
    root
        Folder holding ``<split>_images/`` and ``<split>_label/``.
    split
        ``train``, ``validation`` or ``test``.

    Returns
    -------
    images : np.ndarray
        float32 (N, Y, X) in [0, 1] (8-bit value / 255).
    labels : np.ndarray
        uint8 (N, Y, X): 0 pore, 1 carbon-binder, 2 nickel.
    names : list of str
        File names, sorted.

    Raises
    ------
    PaserInputError
        Missing folders, images without labels, or images of different sizes.
    """
    img_dir, lab_dir = _folders(Path(root), split)
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise PaserInputError(f"missing folder {d}")
    names = sorted(p.name for p in img_dir.glob("*.png"))
    if not names:
        raise PaserInputError(f"no PNG images in {img_dir}")
    missing = [n for n in names if not (lab_dir / n).is_file()]
    if missing:
        raise PaserInputError(f"{len(missing)} images in {img_dir} have no label, e.g. {missing[0]}")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for n in names:
        img, lab = _gray(iio.imread(img_dir / n)), _gray(iio.imread(lab_dir / n))
        if img.shape != lab.shape or (images and img.shape != images[0].shape):
            raise PaserInputError(f"{n}: image {img.shape} / label {lab.shape} differ from the others")
        images.append(img)
        labels.append(lab)
    img_arr = np.stack(images).astype(np.float32) / 255.0
    raw = np.stack(labels)
    lab_arr = np.full(raw.shape, 2, np.uint8)  # strictly between 0 and 255 -> nickel
    lab_arr[raw == 0] = 0
    lab_arr[raw == 255] = 1
    return img_arr, lab_arr, names


def _gray(a: np.ndarray) -> np.ndarray:
    """8-bit grayscale from a PNG read as gray, gray+alpha, RGB or RGBA."""
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[..., 0]  # the authors' PNGs are gray; take one channel of RGB copies
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.integer):  # 16-bit PNG: rescale to the 8-bit range
        a = a.astype(np.float64) / np.iinfo(a.dtype).max
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
