"""Patch grid: pad a slice to whole patches, cut patches out, stitch them back.

Axes follow scikit-image: (row, column) for a slice, (plane, row, column) for a stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["plane_indices", "grid_shape", "pad_to_patches", "patchify", "patch_windows", "halo_pad", "unpatchify", "patch_view"]


def plane_indices(z: int, num_planes: int, planes: int) -> np.ndarray:
    """Indices of the ``planes`` planes centred on plane ``z`` of a stack of ``num_planes``:
    ``z - planes // 2`` to ``z + planes // 2``, the first and last plane repeated past the
    stack's ends."""
    k = int(planes) // 2
    return np.clip(np.arange(int(z) - k, int(z) + k + 1), 0, int(num_planes) - 1)


def grid_shape(shape: Sequence[int], patch_size: tuple[int, int]) -> tuple[int, int]:
    """Number of patch rows and columns that cover a slice of ``shape`` (..., rows, columns)."""
    (h, w), (ph, pw) = shape[-2:], patch_size
    return -(-h // ph), -(-w // pw)


def pad_to_patches(x: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Pad the last two axes at the bottom/right up to whole patches (reflect, else edge).

    Reflection keeps texture statistics at the border plausible for the networks;
    crop back with ``x[..., :rows, :columns]``.
    """
    h, w = x.shape[-2:]
    gy, gx = grid_shape((h, w), patch_size)
    pad_h, pad_w = gy * patch_size[0] - h, gx * patch_size[1] - w
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    lead = x.shape[:-2]
    y = F.pad(x.reshape(-1, 1, h, w), (0, pad_w, 0, pad_h), mode=mode)
    return y.reshape(*lead, h + pad_h, w + pad_w)


def patchify(x: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """(B, C, GY*ph, GX*pw) -> (B*GY*GX, C, ph, pw), patches in row-major grid order."""
    b, c, h, w = x.shape
    ph, pw = patch_size
    gy, gx = h // ph, w // pw
    x = x.reshape(b, c, gy, ph, gx, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * gy * gx, c, ph, pw)


def halo_pad(x: torch.Tensor, halo: int) -> torch.Tensor:
    """Reflect-pad the last two axes by ``halo`` on every side (no copy for ``halo == 0``)."""
    if halo <= 0:
        return x
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    mode = "reflect" if halo < h and halo < w else "replicate"
    y = F.pad(x.reshape(-1, 1, h, w), (halo, halo, halo, halo), mode=mode)
    return y.reshape(*lead, h + 2 * halo, w + 2 * halo)


def patch_windows(x: torch.Tensor, patch_size: tuple[int, int], halo: int = 0) -> torch.Tensor:
    """Like :func:`patchify`, but each patch comes with ``halo`` pixels of context on every side.

    (B, C, GY*ph, GX*pw) -> (B*GY*GX, C, ph + 2*halo, pw + 2*halo), row-major grid order.
    Outside the slice the context is the slice reflected (as :func:`halo_pad`).
    """
    if halo <= 0:
        return patchify(x, patch_size)
    b, c, h, w = x.shape
    ph, pw = patch_size
    xp = halo_pad(x, halo)
    win = xp.unfold(2, ph + 2 * halo, ph).unfold(3, pw + 2 * halo, pw)  # (B, C, GY, GX, wh, ww)
    return win.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, ph + 2 * halo, pw + 2 * halo)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B*GY*GX, C, ph, pw) -> (B, C, GY*ph, GX*pw)."""
    gy, gx = grid
    n, c, ph, pw = patches.shape
    b = n // (gy * gx)
    x = patches.reshape(b, gy, gx, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, gy * ph, gx * pw)


def patch_view(a: np.ndarray, patch_size: tuple[int, int]) -> np.ndarray:
    """NumPy (rows, cols) -> (GY, GX, ph, pw) view of a slice already padded to whole patches."""
    ph, pw = patch_size
    h, w = a.shape[-2:]
    return a.reshape(h // ph, ph, w // pw, pw).swapaxes(1, 2)
