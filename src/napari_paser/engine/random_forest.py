"""The classical baseline: a random-forest pixel classifier on multi-scale filter features.

What ilastik's pixel classification and Fiji's Weka segmentation do, so the gain of
fine-tuning PaSeR is measured against what users would otherwise do: Gaussian
smoothing, gradient magnitude, Laplacian of Gaussian, difference of Gaussians, Hessian
eigenvalues and structure-tensor eigenvalues at several scales (scikit-image), per slice
(``features="2d"``) or over the volume (``"3d"``, as ilastik filters a 3-D dataset), and
a scikit-learn random forest trained on the labelled pixels (255 = unlabelled).
Images are normalised per volume as for PaSeR. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from numpy.typing import ArrayLike

from ..errors import PaserInputError
from .normalize import Normalizer, validate_image

if TYPE_CHECKING:
    from sklearn.ensemble import RandomForestClassifier

__all__ = ["SIGMAS", "pixel_features", "volume_features", "RandomForestSegmenter"]

SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
"""ilastik's default scales (its 0.3 is left out: at this resolution it is the raw image)."""
UNLABELLED = 255
BLOCK = 16
"""Planes whose 3-D features are computed together."""


def pixel_features(image: np.ndarray, sigmas: tuple[float, ...] = SIGMAS) -> np.ndarray:
    """Filter responses of one normalised (Y, X) slice, or of a (Z, Y, X) volume with 3-D
    filters: (..., features) float32.

    Per sigma: Gaussian, gradient magnitude and Hessian eigenvalues
    (``skimage.feature.multiscale_basic_features``), Laplacian of Gaussian, difference
    of Gaussians to the next scale and the structure-tensor eigenvalues; plus the raw
    intensity.
    """
    from scipy import ndimage
    from skimage.feature import multiscale_basic_features, structure_tensor, structure_tensor_eigenvalues

    img = np.asarray(image, np.float32)
    parts = [img[..., None]]
    for s in sigmas:
        parts.append(
            multiscale_basic_features(img, intensity=True, edges=True, texture=True, sigma_min=s, sigma_max=s, num_sigma=1, channel_axis=None)
        )
        parts.append(ndimage.gaussian_laplace(img, s)[..., None])
        parts.append((ndimage.gaussian_filter(img, s) - ndimage.gaussian_filter(img, 1.6 * s))[..., None])
        tensor = structure_tensor(img, sigma=s, order="rc")
        parts.append(np.moveaxis(structure_tensor_eigenvalues(tensor), 0, -1))
    return np.concatenate(parts, axis=-1).astype(np.float32, copy=False)


def _margin(sigmas: tuple[float, ...]) -> int:
    """Planes beyond a block that its 3-D features depend on: the structure tensor and
    the Hessian smooth twice, each Gaussian reaching 4 sigma (scipy's truncation)."""
    return 2 * (int(4 * max(sigmas) + 0.5) + 1)


def volume_features(
    volume: np.ndarray, z0: int, z1: int, sigmas: tuple[float, ...] = SIGMAS, normalize: Callable | None = None
) -> np.ndarray:
    """3-D filter responses (z1 - z0, Y, X, features) of planes ``z0:z1`` of a volume,
    computed on the block and the planes around it that they depend on (so a block's
    features equal those of the whole volume, and memory follows the block).

    ``normalize`` (e.g. a :class:`Normalizer`) is applied to those planes only; without
    it the volume is taken as normalised.
    """
    m = _margin(sigmas)
    a, b = max(0, z0 - m), min(len(volume), z1 + m)
    block = volume[a:b] if normalize is None else normalize(volume[a:b])
    return pixel_features(block, sigmas)[z0 - a : z1 - a]


@dataclass
class RandomForestSegmenter:
    """Random-forest pixel classifier (fit on sparse labels, predict whole stacks).

    Attributes
    ----------
    n_estimators : int
        Trees (ilastik uses 100).
    max_samples : int
        At most this many labelled pixels are used for fitting, drawn evenly at random:
        the forest's accuracy saturates long before every pixel of a full slice.
    sigmas : tuple of float
        Feature scales.
    features : {"2d", "3d"}
        Filters per slice, or over the volume (neighbouring planes inform each voxel).
    n_jobs : int or None
        Threads of scikit-learn (None: one; -1: every core).
    seed : int
    normalization : dict
        Robust percentiles of the per-volume scaling (as a PaSeR bundle's).
    """

    n_estimators: int = 100
    max_samples: int = 100_000
    sigmas: tuple[float, ...] = SIGMAS
    features: str = "2d"
    n_jobs: int | None = -1
    seed: int = 0
    normalization: dict = field(default_factory=lambda: {"low_percentile": 0.5, "high_percentile": 99.5})
    forest: RandomForestClassifier | None = None

    def _normalizer(self, image: np.ndarray) -> Normalizer:
        n = self.normalization
        return Normalizer.fit(image, float(n.get("low_percentile", 0.5)), float(n.get("high_percentile", 99.5)))

    def _blocks(self, vol: np.ndarray, norm: Normalizer, zs) -> Iterator[tuple[int, np.ndarray]]:
        """(z, features (Y, X, F) of plane z) for the planes ``zs`` in order.

        Only the planes the features read are normalised, so memory follows a block: 2-D
        features one plane at a time, 3-D features ``BLOCK`` planes at a time with the
        margin their filters read (filtered once per block, not per plane).
        """
        if self.features not in ("2d", "3d"):
            raise ValueError(f"features must be '2d' or '3d', got {self.features!r}")
        block: tuple[int, np.ndarray] | None = None  # (its index, its features)
        for z in zs:
            if self.features == "2d":
                yield z, pixel_features(norm(vol[z]), self.sigmas)
                continue
            b = z // BLOCK
            if block is None or block[0] != b:
                block = b, volume_features(vol, b * BLOCK, min(len(vol), (b + 1) * BLOCK), self.sigmas, normalize=norm)
            yield z, block[1][z - b * BLOCK]

    def fit(self, image: ArrayLike, labels: ArrayLike) -> "RandomForestSegmenter":
        """Train on the labelled pixels of ``labels`` (0, 1, 2; 255 unlabelled), same shape as ``image``."""
        from sklearn.ensemble import RandomForestClassifier

        from ..train.sparse_labels import validate_training_labels

        image = validate_image(image)
        labels = validate_training_labels(labels, image.shape)
        vol = image[None] if image.ndim == 2 else image
        norm = self._normalizer(vol)
        rng = np.random.default_rng(self.seed)
        zs = np.flatnonzero((labels != UNLABELLED).reshape(len(labels), -1).any(1))
        total = int((labels != UNLABELLED).sum())
        keep = min(1.0, self.max_samples / total)
        xs, ys = [], []
        for z, feats in self._blocks(vol, norm, zs):
            idx = np.flatnonzero(labels[z].ravel() != UNLABELLED)
            if keep < 1.0:
                idx = idx[rng.random(len(idx)) < keep]
            if len(idx) == 0:
                continue
            xs.append(feats.reshape(-1, feats.shape[-1])[idx])
            ys.append(labels[z].ravel()[idx])
        self.forest = RandomForestClassifier(n_estimators=self.n_estimators, n_jobs=self.n_jobs, random_state=self.seed)
        self.forest.fit(np.concatenate(xs), np.concatenate(ys))
        return self

    def predict(self, image: ArrayLike, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Phase labels (Z, Y, X) uint8 of ``image`` (a (Y, X) slice gives (1, Y, X))."""
        if self.forest is None:
            raise PaserInputError("the random forest is not trained: call fit() first")
        image = validate_image(image)
        vol = image[None] if image.ndim == 2 else image
        norm = self._normalizer(vol)
        out = np.empty(vol.shape, np.uint8)
        for z, feats in self._blocks(vol, norm, range(len(vol))):
            out[z] = self.forest.predict(feats.reshape(-1, feats.shape[-1])).reshape(vol.shape[1:]).astype(np.uint8)
            if progress is not None:
                progress(z + 1, len(vol))
        return out
