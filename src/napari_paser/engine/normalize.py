"""Input validation and robust per-volume intensity normalisation (no torch).

Micro-CT stacks arrive as uint8, uint16 or float with arbitrary offsets and a few hot
or dead voxels. The networks expect values roughly in [0, 1], so every volume is mapped
by its own robust percentiles (from the bundle) and clipped to a small margin: the
same mapping is used for training and inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import PaserInputError

__all__ = [
    "CLIP_MARGIN",
    "Normalizer",
    "robust_range",
    "normalize_volume",
    "validate_image",
    "validate_labels",
]

CLIP_MARGIN = 0.05
"""Normalised values are clipped to ``[-CLIP_MARGIN, 1 + CLIP_MARGIN]``."""

# Percentiles of very large volumes are estimated from a regular subsample of about
# this many voxels: exact enough for a contrast range, and fast on any stack size.
_MAX_PERCENTILE_SAMPLES = 4_000_000


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def validate_image(image: ArrayLike, patch_size: tuple[int, int] | None = None) -> np.ndarray:
    """Check that ``image`` is a usable grayscale (Z,Y,X) stack or (Y,X) slice.

    Parameters
    ----------
    image : array_like
        The pixels, any real dtype.
    patch_size : tuple of int, optional
        (rows, columns) of a patch; the image must be at least one patch in Y and X.

    Returns
    -------
    np.ndarray
        ``image`` as an array (not copied when already one).

    Raises
    ------
    PaserInputError
        With a one-line reason: RGB/RGBA or 4-D data, bool or complex dtype, NaN or
        infinite values, an empty or constant image, or a slice smaller than a patch.
    """
    arr = np.asarray(image)
    shape = arr.shape
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.complexfloating) or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise PaserInputError(f"image dtype {arr.dtype} is not supported: expected integer or float grayscale pixels")
    if arr.ndim >= 3 and shape[-1] in (3, 4) and (arr.ndim == 4 or min(shape[-3:-1]) > 4):
        raise PaserInputError(
            f"image of shape {_shape_text(shape)} looks like RGB/RGBA colour data: convert it to one grayscale channel"
        )
    if arr.ndim not in (2, 3):
        raise PaserInputError(f"expected a (Z,Y,X) stack or a (Y,X) slice, got a {arr.ndim}-D array of shape {_shape_text(shape)}")
    if arr.size == 0:
        raise PaserInputError(f"image of shape {_shape_text(shape)} is empty")
    if patch_size is not None:
        ph, pw = patch_size
        if shape[-2] < ph or shape[-1] < pw:
            raise PaserInputError(
                f"slices of {shape[-2]}x{shape[-1]} pixels are smaller than one {ph}x{pw} patch"
            )
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise PaserInputError("image contains NaN or infinite values")
    if arr.min() == arr.max():
        raise PaserInputError(f"image is constant (every pixel is {arr.flat[0].item()!r}): nothing to segment")
    return arr


def validate_labels(labels: ArrayLike, shape: tuple[int, ...] | None = None, num_classes: int = 3) -> np.ndarray:
    """Check ground-truth labels: class indices 0..num_classes-1, same shape as the image.

    Returns
    -------
    np.ndarray of uint8

    Raises
    ------
    PaserInputError
        For a wrong dtype or shape, or values outside ``{0, ..., num_classes-1}``.
    """
    arr = np.asarray(labels)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise PaserInputError(f"labels dtype {arr.dtype} is not supported: expected integer class indices")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise PaserInputError(f"labels of shape {_shape_text(arr.shape)} do not match the image shape {_shape_text(shape)}")
    allowed = np.arange(num_classes)
    values = np.unique(arr)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        shown = ", ".join(repr(v.item()) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise PaserInputError(f"labels contain values outside {{{', '.join(map(str, allowed))}}}: {shown}")
    return arr.astype(np.uint8, copy=False)


def robust_range(volume: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> tuple[float, float]:
    """Intensities at the two percentiles of the whole volume (falls back to min/max).

    A volume whose percentiles coincide (e.g. mostly background) would divide by zero,
    so its full range is used instead.
    """
    flat = np.asarray(volume).reshape(-1)
    step = max(1, -(-flat.size // _MAX_PERCENTILE_SAMPLES))
    sample = flat[::step]
    lo, hi = (float(v) for v in np.percentile(sample, [low_percentile, high_percentile]))
    if not hi > lo:
        lo, hi = float(flat.min()), float(flat.max())
    if not hi > lo:
        raise PaserInputError("image is constant: nothing to segment")
    return lo, hi


@dataclass(frozen=True)
class Normalizer:
    """Affine map of one volume's robust range onto [0, 1], clipped to a small margin.

    Attributes
    ----------
    low, high : float
        Intensities mapped to 0 and 1.
    margin : float
        Output is clipped to ``[-margin, 1 + margin]``.
    """

    low: float
    high: float
    margin: float = CLIP_MARGIN

    @classmethod
    def fit(cls, volume: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> "Normalizer":
        return cls(*robust_range(volume, low_percentile, high_percentile))

    def __call__(self, data: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of ``data`` (a slice or the whole volume)."""
        out = np.asarray(data, dtype=np.float32) - np.float32(self.low)
        out *= np.float32(1.0 / (self.high - self.low))
        return np.clip(out, -self.margin, 1.0 + self.margin, out=out)


def normalize_volume(volume: ArrayLike, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Float32 volume normalised by its own robust percentiles (see :class:`Normalizer`)."""
    volume = np.asarray(volume)
    return Normalizer.fit(volume, low_percentile, high_percentile)(volume)
