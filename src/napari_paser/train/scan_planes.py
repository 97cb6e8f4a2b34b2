"""The planes of a scan that fine-tuning reads: normalised, padded, read when first used.

Adapting a bundle to a scan needs the painted slices with their neighbouring planes and
a few evenly spaced slices (batch-norm statistics, the compute shares behind λ), never
the whole stack at once. :class:`ScanPlanes` reads a plane of a lazily read
:class:`~napari_paser.io_sources.Volume` when it is asked for and keeps only the planes
it was told to keep (those every training step reads), so memory follows the painted
slices, not the length of the stack. The normaliser is fitted as
``segment`` fits it on a stack read slab by slab (the same strided sample the in-memory
engine takes), so the adapted networks see the intensities they will segment.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from ..engine.normalize import validate_image
from ..engine.patches import pad_to_patches, plane_indices
from ..engine.streaming import check_volume, fit_normalizer
from ..io_sources import Volume, as_volume

__all__ = ["scan_volume", "ScanPlanes"]


def scan_volume(image: Any) -> Volume:
    """The scan as a lazily read :class:`~napari_paser.io_sources.Volume` (see
    :func:`~napari_paser.io_sources.as_volume`), with the image's own one-line reason
    when it is not 2-D or 3-D (4-D, colour data, ...)."""
    if not isinstance(image, Volume) and np.ndim(image) not in (2, 3):
        validate_image(np.asarray(image))
    return as_volume(image)


class ScanPlanes:
    """Normalised, padded planes of a scan, read when needed; the planes to keep are read once.

    Parameters
    ----------
    volume : Volume
        The scan (a 2-D image is a stack of one plane).
    patch_size : tuple of int
        Planes are padded at the bottom and right to whole patches.
    low_percentile, high_percentile : float
        The bundle's normalisation percentiles.

    Raises
    ------
    PaserInputError
        The checks of :func:`~napari_paser.engine.normalize.validate_image`: dtype,
        colour data, planes smaller than a patch, NaN or infinite values, a constant scan.
    """

    def __init__(self, volume: Volume, patch_size: tuple[int, int], low_percentile: float = 0.5, high_percentile: float = 99.5):
        check_volume(volume, patch_size)
        self.volume = volume
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.normalizer = fit_normalizer(volume, low_percentile, high_percentile)
        self._keep: set[int] = set()
        self._planes: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return int(self.volume.shape[0])

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(rows, columns) of a plane before padding."""
        return int(self.volume.shape[1]), int(self.volume.shape[2])

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(H, W) of a plane padded to whole patches."""
        (h, w), (ph, pw) = self.plane_shape, self.patch_size
        return -(-h // ph) * ph, -(-w // pw) * pw

    @property
    def planes_kept(self) -> list[int]:
        """The planes held in memory."""
        return sorted(self._planes)

    def keep(self, zs: Iterable[int]) -> None:
        """Keep planes ``zs`` in memory once read; other planes are read each time."""
        self._keep.update(int(z) for z in zs)

    def plane(self, z: int) -> torch.Tensor:
        """Plane ``z`` normalised and padded to whole patches: (H, W) float32."""
        z = int(z)
        kept = self._planes.get(z)
        if kept is not None:
            return kept
        pixels = torch.from_numpy(self.normalizer(self.volume.read(z, z + 1)))
        padded = pad_to_patches(pixels.unsqueeze(1), self.patch_size)[0, 0]
        if z in self._keep:
            self._planes[z] = padded
        return padded

    def stack(self, zs: Iterable[int], planes: int = 1) -> torch.Tensor:
        """Slices ``zs`` as (n, planes, H, W): each with ``planes // 2`` neighbouring planes
        on each side (the first and last plane repeated past the stack's ends)."""
        return torch.stack([torch.stack([self.plane(i) for i in plane_indices(z, len(self), planes)]) for z in zs])

    def pixels(self, zs: Iterable[int]) -> np.ndarray:
        """Slices ``zs`` normalised, without the padding: (n, rows, columns) float32."""
        h, w = self.plane_shape
        return torch.stack([self.plane(z)[:h, :w] for z in zs]).numpy()
