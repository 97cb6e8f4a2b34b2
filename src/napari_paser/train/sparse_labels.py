"""Sparse training labels: 255 = unlabelled, checks, held-out pixels, simulated brush strokes.

A user paints a few strokes of pore (0), carbon-binder (1) and nickel (2) into some
slices; every other pixel is 255 (napari's Labels layer paints 1, 2, 3 and shows 0 as
transparent, see :func:`from_napari_layer`). Training ignores the unlabelled pixels,
samples patches where labels are, and scores itself on labelled pixels it did not train
on (:func:`split_held_out`). No torch here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import PaserInputError
from ..io_sources import Volume, as_volume

__all__ = [
    "UNLABELLED",
    "NUM_CLASSES",
    "validate_training_labels",
    "read_labelled_slices",
    "PaintedSlices",
    "labelled_slices",
    "split_held_out",
    "simulate_strokes",
    "from_napari_layer",
    "to_napari_layer",
]

UNLABELLED = 255
"""Label value of pixels nobody painted (ignored by losses and scores)."""
NUM_CLASSES = 3
CLASS_TEXT = "0 (pore), 1 (carbon-binder), 2 (nickel) or 255 (unlabelled)"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def validate_training_labels(labels: ArrayLike, image_shape: tuple[int, ...] | None = None, *, min_classes: int = 2) -> np.ndarray:
    """Check sparse training labels and return them as uint8 (Z, Y, X).

    Parameters
    ----------
    labels : array_like
        Integer class map, values in {0, 1, 2, 255}; (Z, Y, X) or (Y, X).
    image_shape : tuple of int, optional
        Shape of the image the labels belong to; must be equal.
    min_classes : int
        How many different phases must be labelled (a classifier cannot learn from one).

    Returns
    -------
    np.ndarray
        uint8 (Z, Y, X) (a (Y, X) input gets a leading axis of 1).

    Raises
    ------
    PaserInputError
        One line saying what is wrong: dtype, shape, values outside {0, 1, 2, 255},
        no labelled pixel, or fewer than ``min_classes`` phases labelled.
    """
    arr = np.asarray(labels)
    _check_header(arr.dtype, arr.shape, image_shape)
    values = _checked_values(arr)
    out = arr.astype(np.uint8, copy=False)
    if out.ndim == 2:
        out = out[None]
    present = [int(v) for v in values if v != UNLABELLED]
    if not present:
        raise PaserInputError("no labelled pixel: paint some pore (0), carbon-binder (1) and nickel (2) first")
    if len(present) < min_classes:
        from .. import CLASS_NAMES

        raise PaserInputError(
            f"only {CLASS_NAMES[present[0]]} ({present[0]}) is labelled: label at least {min_classes} phases, "
            "or nothing can be learned about the boundaries between them"
        )
    return out


def _check_header(dtype: np.dtype, shape: tuple[int, ...], image_shape: tuple[int, ...] | None) -> None:
    if dtype == bool or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise PaserInputError(f"training labels of dtype {dtype} are not class indices: expected {CLASS_TEXT}")
    if image_shape is not None and tuple(shape) != tuple(image_shape):
        raise PaserInputError(f"training labels of shape {_shape_text(shape)} do not match the image shape {_shape_text(image_shape)}")
    if len(shape) not in (2, 3):
        raise PaserInputError(f"training labels must be a (Z,Y,X) stack or a (Y,X) slice, got shape {_shape_text(shape)}")


def _checked_values(arr: np.ndarray) -> np.ndarray:
    """The distinct values of ``arr``, refusing any outside {0, 1, 2, 255}."""
    values = np.unique(arr)
    bad = values[~np.isin(values, [0, 1, 2, UNLABELLED])]
    if bad.size:
        shown = ", ".join(repr(v.item()) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise PaserInputError(f"training labels contain values outside {{0, 1, 2, 255}}: {shown}; use {CLASS_TEXT}")
    return values


def read_labelled_slices(
    labels: Any, image_shape: tuple[int, ...] | None = None, *, slab: int = 8, min_classes: int = 2
) -> tuple[list[int], np.ndarray]:
    """The slices of a training-label volume that hold a labelled pixel, read a slab at a time.

    A painted stack is mostly 255: only its labelled slices are kept, so memory follows
    them, not the length of the stack.

    Parameters
    ----------
    labels : array_like or Volume
        (Z, Y, X) or (Y, X), values in {0, 1, 2, 255}: an array (numpy, dask, Zarr) or a
        lazily read :class:`~napari_paser.io_sources.Volume`.
    image_shape : tuple of int, optional
        Shape of the image the labels belong to; must be equal.
    slab : int
        Planes read at a time.
    min_classes : int
        How many different phases must be labelled.

    Returns
    -------
    slices : list of int
        Indices of the labelled slices (0 for a (Y, X) input).
    painted : np.ndarray
        Their labels, uint8 (len(slices), Y, X).

    Raises
    ------
    PaserInputError
        As :func:`validate_training_labels`.
    """
    if not isinstance(labels, Volume) and np.ndim(labels) not in (2, 3):
        _check_header(np.asarray(labels).dtype, np.shape(labels), image_shape)  # the labels' own one-line reason
    volume = as_volume(labels)
    _check_header(np.dtype(volume.dtype), volume.input_shape, image_shape)
    slices: list[int] = []
    parts = []
    for z0, block in volume.slabs(slab):
        _checked_values(block)
        keep = np.flatnonzero((block != UNLABELLED).reshape(len(block), -1).any(1))
        slices += [z0 + int(k) for k in keep]
        parts.append(block[keep].astype(np.uint8))
    painted = np.concatenate(parts)
    validate_training_labels(painted, min_classes=min_classes)  # no labelled pixel, one phase only
    return slices, painted


class PaintedSlices(Volume):
    """A (Z, Y, X) or (Y, X) training-label volume that holds only its painted slices.

    What the napari panel hands to fine-tuning: the labels layer's painted slices, copied
    once, and 255 wherever else fine-tuning reads, without a full-size copy.

    Parameters
    ----------
    shape : tuple of int
        The image's shape.
    slices : list of int
        Indices of the painted slices (0 for a (Y, X) image).
    painted : np.ndarray
        Their labels, uint8 (len(slices), Y, X).
    """

    def __init__(self, shape: tuple[int, ...], slices: list[int], painted: np.ndarray):
        self.input_ndim = len(shape)
        self.shape = tuple(int(n) for n in (shape if len(shape) == 3 else (1, *shape)))  # type: ignore[assignment]
        self.dtype = np.dtype(np.uint8)
        self.source = "painted slices"
        self.slices = [int(z) for z in slices]
        self._painted = dict(zip(self.slices, painted))

    def _read(self, z0: int, z1: int) -> np.ndarray:
        out = np.full((z1 - z0, *self.shape[1:]), UNLABELLED, np.uint8)
        for z, lab in self._painted.items():
            if z0 <= z < z1:
                out[z - z0] = lab
        return out


def labelled_slices(labels: np.ndarray) -> list[int]:
    """Indices of the slices of (Z, Y, X) ``labels`` that hold at least one labelled pixel."""
    return [int(z) for z in np.flatnonzero((labels != UNLABELLED).reshape(labels.shape[0], -1).any(1))]


def split_held_out(
    labels: np.ndarray, fraction: float = 0.15, block: int | tuple[int, int] = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split the labelled pixels of (Z, Y, X) ``labels`` into a training and a held-out set, by tiles.

    Whole ``block`` tiles ((rows, columns), or a square side; a patch for fine-tuning, so
    the held-out pixels cost few patch evaluations) go to one side: a held-out pixel next to a training
    pixel of the same stroke would score memorisation, not generalisation. Tiles are
    drawn until about ``fraction`` of the labelled pixels are held out; the training side
    always keeps every phase it had (a tile whose removal would take the last pixels of a
    phase stays in training).

    Returns
    -------
    train, held_out : np.ndarray
        uint8 copies of ``labels`` with the other side's pixels set to 255. With too few
        labelled tiles (fewer than 4) nothing is held out: ``held_out`` is all 255.
    """
    labels = np.asarray(labels, np.uint8)
    z, h, w = labels.shape
    by, bx = (int(block), int(block)) if isinstance(block, (int, np.integer)) else (int(block[0]), int(block[1]))
    gy, gx = -(-h // by), -(-w // bx)
    pad = np.full((z, gy * by, gx * bx), UNLABELLED, np.uint8)
    pad[:, :h, :w] = labels
    tiles = pad.reshape(z, gy, by, gx, bx).transpose(0, 1, 3, 2, 4).reshape(z * gy * gx, -1)
    counts = np.stack([(tiles == c).sum(1) for c in range(NUM_CLASSES)], 1)  # (tiles, classes)
    labelled = np.flatnonzero(counts.sum(1) > 0)
    held = np.zeros(len(tiles), bool)
    if len(labelled) >= 4 and fraction > 0:
        target = fraction * counts.sum()
        remaining = counts.sum(0).astype(np.int64)
        taken = 0
        for t in np.random.default_rng(seed).permutation(labelled):
            if taken >= target:
                break
            if np.any((remaining - counts[t] <= 0) & (remaining > 0)):
                continue  # would remove a phase from training
            held[t] = True
            remaining -= counts[t]
            taken += counts[t].sum()
    mask = np.repeat(held, by * bx).reshape(z, gy, gx, by, bx).transpose(0, 1, 3, 2, 4).reshape(pad.shape)[:, :h, :w]
    train = np.where(mask, UNLABELLED, labels).astype(np.uint8)
    held_out = np.where(mask, labels, UNLABELLED).astype(np.uint8)
    return train, held_out


def simulate_strokes(truth: np.ndarray, fraction: float = 0.15, seed: int = 0, radius: int = 2, length: tuple[int, int] = (4, 24)) -> np.ndarray:
    """Sparse labels as a user would paint them: short brush strokes and dots over ``truth``.

    Strokes (random centres, directions and lengths, a round brush of ``radius``) are
    drawn until about ``fraction`` of the pixels of every slice are covered; covered
    pixels get the true class, the rest 255. Used by the benchmark and the tests.
    """
    truth = np.asarray(truth, np.uint8)
    squeeze = truth.ndim == 2
    vol = truth[None] if squeeze else truth
    rng = np.random.default_rng(seed)
    out = np.full(vol.shape, UNLABELLED, np.uint8)
    _, h, w = vol.shape
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    brush = np.stack([yy[yy**2 + xx**2 <= radius**2], xx[yy**2 + xx**2 <= radius**2]], 1)
    for z in range(vol.shape[0]):
        covered = np.zeros((h, w), bool)
        while covered.mean() < fraction:
            y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
            angle = rng.uniform(0, np.pi)
            n = int(rng.integers(length[0], length[1] + 1)) if rng.random() < 0.8 else 1  # 20 % single dots
            t = np.arange(n) - n / 2
            cy = np.clip(np.round(y0 + t * np.sin(angle)), 0, h - 1).astype(int)
            cx = np.clip(np.round(x0 + t * np.cos(angle)), 0, w - 1).astype(int)
            py = np.clip(cy[:, None] + brush[None, :, 0], 0, h - 1).ravel()
            px = np.clip(cx[:, None] + brush[None, :, 1], 0, w - 1).ravel()
            covered[py, px] = True
        out[z][covered] = vol[z][covered]
    return out[0] if squeeze else out


def from_napari_layer(data: ArrayLike) -> np.ndarray:
    """Labels painted in napari (0 = unpainted, 1 pore, 2 carbon-binder, 3 nickel) -> 255/0/1/2.

    napari draws label 0 as transparent, so a training-labels layer stores class + 1.
    """
    arr = np.asarray(data)
    out = np.full(arr.shape, UNLABELLED, np.uint8)
    for c in range(NUM_CLASSES):
        out[arr == c + 1] = c
    bad = ~np.isin(arr, [0, 1, 2, 3])
    if bad.any():
        v = np.unique(arr[bad])[:5]
        raise PaserInputError(
            f"training labels layer holds values {', '.join(repr(x.item()) for x in v)}: paint 1 (pore), 2 (carbon-binder) or 3 (nickel)"
        )
    return out


def to_napari_layer(labels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`from_napari_layer`: 0/1/2/255 -> 1/2/3/0."""
    labels = np.asarray(labels, np.uint8)
    return np.where(labels == UNLABELLED, 0, labels.astype(np.int32) + 1).astype(np.uint8)
