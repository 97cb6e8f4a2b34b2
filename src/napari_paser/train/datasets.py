"""Training data: labelled volumes, the split by volume and the batch samplers.

A :class:`Volume` is one labelled stack, normalised per volume exactly as at inference
(:func:`napari_paser.engine.normalize`), so a model sees the same intensities in
training and in use. Splits are by volume: slices of one volume never end up on two
sides (neighbouring slices are nearly identical, which would leak). Samplers draw
augmented random patches (f1, f2) or slice crops that are whole patch grids (f0, so
f2's stitched patch logits can be distilled into it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..engine.patches import pad_to_patches, plane_indices
from ..errors import PaserInputError
from .augment import AugmentConfig, augment_batch, geometric, intensity
from .sparse_labels import labelled_slices

__all__ = [
    "Volume",
    "SPLITS",
    "normalize_volume",
    "make_volume",
    "load_tiff_pairs",
    "load_data_dir",
    "split_volumes",
    "SliceBank",
]

SPLITS = ("pretrain", "rl", "finetune", "val")
NUM_CLASSES = 3
IGNORE = 255
"""Label value of padding pixels and of unlabelled pixels (sparse labels), left out of every
loss and score."""


@dataclass
class Volume:
    """One labelled stack.

    Attributes
    ----------
    name : str
        Where it came from (file stem), for the report.
    image : ndarray (Z, rows, columns) float32
        Normalised intensities.
    labels : ndarray (Z, rows, columns) uint8
        Classes 0 pore, 1 carbon-binder, 2 nickel; 255 unlabelled (sparse labels).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])


def normalize_volume(image: np.ndarray, normalization: dict | None = None) -> np.ndarray:
    """Robust per-volume scaling to about [0, 1], shared with inference.

    Delegates to the engine so that training and inference can never disagree.
    """
    from ..engine.normalize import normalize_volume as engine_normalize

    norm = normalization or {}
    return engine_normalize(image, float(norm.get("low_percentile", 0.5)), float(norm.get("high_percentile", 99.5)))


def make_volume(name: str, image: np.ndarray, labels: np.ndarray, normalization: dict | None = None) -> Volume:
    """Validate a raw image/label pair and normalise the image.

    Labels may be sparse: 255 marks unlabelled pixels (whole unlabelled slices too).

    Raises
    ------
    PaserInputError
        If shapes differ, labels hold values other than 0, 1, 2, 255, or no pixel is labelled.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim == 2:
        image, labels = image[None], labels[None] if labels.ndim == 2 else labels
    if image.ndim != 3 or image.shape != labels.shape:
        raise PaserInputError(f"{name}: image {image.shape} and labels {labels.shape} must be equal (Z, Y, X) stacks")
    values = np.unique(labels)
    known = values[values != IGNORE]
    if known.size and (known.min() < 0 or known.max() >= NUM_CLASSES or not np.all(known == np.round(known))):
        raise PaserInputError(
            f"{name}: labels must be 0 (pore), 1 (carbon-binder), 2 (nickel) or 255 (unlabelled); found {values[:8].tolist()}"
        )
    if values.size and not known.size:
        raise PaserInputError(f"{name}: no labelled pixel (every label is 255, unlabelled)")
    return Volume(name, normalize_volume(image, normalization).astype(np.float32), labels.astype(np.uint8))


def load_tiff_pairs(images: Sequence[str | Path], labels: Sequence[str | Path], normalization: dict | None = None) -> list[Volume]:
    """Volumes from matching lists of image and label TIFF stacks."""
    from ..io import read_stack

    if len(images) != len(labels):
        raise PaserInputError(f"got {len(images)} --images but {len(labels)} --labels; they must pair up")
    vols = []
    for img_path, lab_path in zip(images, labels):
        img, _ = read_stack(img_path)
        lab, _ = read_stack(lab_path)
        vols.append(make_volume(Path(img_path).stem, img, lab, normalization))
    return vols


_IMAGE_RE = re.compile(r"^(?P<stem>.+?)[_-]?(image|img)\.tiff?$", re.IGNORECASE)


def _find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """``X_image.tif`` with ``X_labels.tif`` (or ``_label``/``_lab``) in one folder."""
    pairs = []
    for img in sorted(folder.iterdir()):
        m = _IMAGE_RE.match(img.name)
        if not m:
            continue
        stem = m.group("stem")
        for suffix in ("_labels", "_label", "_lab", "-labels", "labels"):
            for ext in (".tif", ".tiff"):
                lab = folder / f"{stem}{suffix}{ext}"
                if lab.is_file():
                    pairs.append((img, lab))
                    break
            else:
                continue
            break
    return pairs


_SLICE_NAME_RE = re.compile(r"^(?P<volume>.+)_z\d+$")


def _chunks(images: np.ndarray, labels: np.ndarray, names: Sequence[str], size: int, prefix: str, norm: dict | None) -> list[Volume]:
    """Single PNG slices of the paper's layout grouped into (pseudo-)volumes.

    Files named ``<volume>_z<index>`` (what ``napari-paser synth --format paper``
    writes) are grouped by volume; otherwise consecutive files (sorted by name) form
    pseudo-volumes of ``size`` slices, so neighbouring slices stay on one side.
    """
    stems = [Path(n).stem for n in names]
    matches = [m for m in (_SLICE_NAME_RE.match(s) for s in stems) if m is not None]
    if stems and len(matches) == len(stems):
        groups: dict[str, list[int]] = {}
        for i, m in enumerate(matches):
            groups.setdefault(m.group("volume"), []).append(i)
        return [make_volume(f"{prefix}:{vol}", images[idx], labels[idx], norm) for vol, idx in groups.items()]
    vols = []
    for start in range(0, len(images), size):
        stop = min(start + size, len(images))
        vols.append(make_volume(f"{prefix}:{stems[start]}..{stems[stop - 1]}", images[start:stop], labels[start:stop], norm))
    return vols


def load_data_dir(folder: str | Path, normalization: dict | None = None, chunk: int = 16) -> tuple[list[Volume], list[Volume] | None]:
    """Volumes from a folder: TIFF pairs, or the paper's PNG layout.

    Returns
    -------
    volumes : list of Volume
        Training volumes.
    validation : list of Volume or None
        The paper layout's own validation split (None for TIFF folders: the
        validation volumes are then split off by :func:`split_volumes`).

    Notes
    -----
    The paper's PNG files are single slices; they are grouped into volumes by name
    (``<volume>_z<index>``) or, failing that, into pseudo-volumes of ``chunk``
    consecutive slices, so that neighbouring slices stay on one side of the split.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PaserInputError(f"--data {folder} is not a folder")
    if (folder / "train_images").is_dir():
        from .paper_layout import read_paper_layout

        imgs, labs, names = read_paper_layout(folder, "train")
        train = _chunks(imgs, labs, names, chunk, "train", normalization)
        val = None
        if (folder / "validation_images").is_dir():
            vi, vl, vn = read_paper_layout(folder, "validation")
            val = _chunks(vi, vl, vn, chunk, "validation", normalization)
        return train, val
    pairs = _find_pairs(folder)
    if not pairs:
        raise PaserInputError(
            f"{folder} holds neither the paper's layout (train_images/, train_label/) nor TIFF pairs "
            "named NAME_image.tif / NAME_labels.tif"
        )
    return load_tiff_pairs([p[0] for p in pairs], [p[1] for p in pairs], normalization), None


def split_volumes(
    n: int, fractions: dict[str, float], seed: int, *, has_validation: bool = False
) -> dict[str, list[int]]:
    """Assign volume indices to the pretrain / RL / fine-tune / validation splits.

    Whole volumes only. With too few volumes for four disjoint splits, the training
    stages share the training volumes (and with a single volume there is no
    validation split): this is the ``--init`` case of a scientist with one labelled
    stack, where fine-tuning on it beats not training at all.

    Parameters
    ----------
    n : int
        Number of volumes.
    fractions : dict
        Share of each split in ``SPLITS`` (normalised here).
    seed : int
        Shuffling seed.
    has_validation : bool
        Validation volumes come from elsewhere: give none of these to ``val``.
    """
    if n < 1:
        raise PaserInputError("no training volumes")
    order = np.random.default_rng(seed).permutation(n).tolist()
    total = sum(fractions[s] for s in SPLITS if not (has_validation and s == "val"))
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    if not has_validation and n >= 2:
        n_val = max(1, int(round(n * fractions["val"] / total)))
        n_val = min(n_val, n - 1)
        out["val"], order = sorted(order[:n_val]), order[n_val:]
    train_splits = ("pretrain", "rl", "finetune")
    if len(order) < len(train_splits):
        for s in train_splits:
            out[s] = sorted(order)
        return out
    shares = np.array([fractions[s] for s in train_splits], dtype=float)
    counts = np.maximum(1, np.floor(shares / shares.sum() * len(order))).astype(int)
    while counts.sum() < len(order):  # the remainder goes to pretraining: it needs the most data
        counts[0] += 1
    while counts.sum() > len(order):
        counts[int(np.argmax(counts))] -= 1
    start = 0
    for s, c in zip(train_splits, counts):
        out[s] = sorted(order[start : start + c])
        start += c
    return out


class SliceBank:
    """The slices of some volumes as tensors, padded to whole patches, with samplers.

    Parameters
    ----------
    volumes : sequence of Volume
    patch_size : tuple of int
    planes : int
        Planes per sample (odd): each slice comes with ``planes // 2`` neighbouring
        planes of its volume on each side as channels, for networks that read them
        (:attr:`UNetConfig.planes`); slices without a labelled pixel still lend their
        planes to their neighbours.
    """

    def __init__(self, volumes: Sequence[Volume], patch_size: tuple[int, int], planes: int = 1):
        if not volumes:
            raise PaserInputError("a training split has no volumes")
        self.patch_size: tuple[int, int] = (int(patch_size[0]), int(patch_size[1]))
        self.planes = int(planes)
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.shapes: list[tuple[int, int]] = []
        # Sparse labels (some pixels 255): slices without a labelled pixel are left out
        # and crops are centred on labelled pixels (see _crop). Fully labelled volumes
        # never take that path, so their sampling is unchanged.
        # Whole unlabelled slices (e.g. the neighbours of the painted ones) do not count.
        labelled = [labelled_slices(v.labels) for v in volumes]
        self.sparse = any(bool((v.labels[z] == IGNORE).any()) for v, zs in zip(volumes, labelled) for z in zs)
        self._labelled: list[torch.Tensor] | None = [] if self.sparse else None
        for v, zs in zip(volumes, labelled):
            img = pad_to_patches(torch.from_numpy(v.image).unsqueeze(1), self.patch_size)
            # Labels are padded like the image (reflection), so pairs stay consistent.
            lab = pad_to_patches(torch.from_numpy(v.labels).float().unsqueeze(1), self.patch_size).round().long()
            for z in zs:
                if self._labelled is not None:
                    self._labelled.append(torch.nonzero(lab[z, 0] != IGNORE))
                self.images.append(img[z] if self.planes == 1 else img[plane_indices(z, v.num_slices, self.planes), 0])
                self.labels.append(lab[z, 0])
                self.shapes.append((v.image.shape[1], v.image.shape[2]))
        if not self.images:
            raise PaserInputError("a training split has no labelled pixel")

    def __len__(self) -> int:
        return len(self.images)

    def _flip_planes(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Reverse the plane order of a random half of the samples: up and down the stack
        look alike."""
        if self.planes == 1:
            return img
        flip = torch.rand(img.shape[0], generator=g) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), img.flip(1), img)

    def stacked(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Slices of equal padded size as (B, 1, H, W) and (B, H, W)."""
        idx = range(len(self)) if indices is None else indices
        return torch.stack([self.images[i] for i in idx]), torch.stack([self.labels[i] for i in idx])

    def stacked_eval_labels(self, indices: Sequence[int]) -> torch.Tensor:
        """Labels of equal padded size with the padding set to 255 (ignored by scores)."""
        out = []
        for i in indices:
            lab = self.labels[i].clone()
            h, w = self.shapes[i]
            lab[h:, :] = IGNORE
            lab[:, w:] = IGNORE
            out.append(lab)
        return torch.stack(out)

    def groups(self) -> list[list[int]]:
        """Slice indices grouped by padded size (so each group stacks)."""
        by: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(self.images):
            by.setdefault((im.shape[-2], im.shape[-1]), []).append(i)
        return list(by.values())

    def _crop(self, idx: Sequence[int], size: tuple[int, int], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ch, cw = size
        imgs, labs = [], []
        for i in idx:
            im, lb = self.images[i], self.labels[i]
            h, w = im.shape[-2:]
            if self._labelled is not None:
                # Sparse labels: a crop that holds a random labelled pixel.
                cy, cx = (int(v) for v in self._labelled[i][int(torch.randint(0, len(self._labelled[i]), (1,), generator=g))])
                y0, x0 = max(0, cy - ch + 1), max(0, cx - cw + 1)
                y = y0 + int(torch.randint(0, min(h - ch, cy) - y0 + 1, (1,), generator=g))
                x = x0 + int(torch.randint(0, min(w - cw, cx) - x0 + 1, (1,), generator=g))
            else:
                y = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                x = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            imgs.append(im[:, y : y + ch, x : x + cw])
            labs.append(lb[y : y + ch, x : x + cw])
        return torch.stack(imgs), torch.stack(labs)

    def _min_size(self) -> tuple[int, int]:
        return min(im.shape[-2] for im in self.images), min(im.shape[-1] for im in self.images)

    def sample_patches(
        self, n: int, cfg: AugmentConfig, g: torch.Generator, *, impulse: bool = False, halo: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` augmented random crops of the patch size (any position, not only the grid).

        A square crop is rotated/flipped first and the patch cut from it, so 90°
        rotations are possible although patches are not square. With ``halo`` the image
        crops carry that many context pixels on every side; labels cover the patch only.
        """
        if halo > 0:
            ph, pw = self.patch_size
            img, lab = self._sample_crops(n, (ph + 2 * halo, pw + 2 * halo), cfg, g, impulse)
            return self._flip_planes(img, g), lab[..., halo:-halo, halo:-halo].contiguous()
        img, lab = self._sample_crops(n, self.patch_size, cfg, g, impulse)
        return self._flip_planes(img, g), lab

    def _sample_crops(
        self, n: int, size: tuple[int, int], cfg: AugmentConfig, g: torch.Generator, impulse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ph, pw = size
        idx = torch.randint(0, len(self), (n,), generator=g).tolist()
        side = max(ph, pw)
        hmin, wmin = self._min_size()
        if cfg.rot90 and side <= min(hmin, wmin):
            img, lab = self._crop(idx, (side, side), g)
            img, lab = geometric(img, lab, cfg, g)
            y = int(torch.randint(0, side - ph + 1, (1,), generator=g))
            x = int(torch.randint(0, side - pw + 1, (1,), generator=g))
            img, lab = img[..., y : y + ph, x : x + pw], lab[..., y : y + ph, x : x + pw]
            no_geo = AugmentConfig(**{**cfg.to_dict(), "flips": False, "rot90": False})
            return augment_batch(img.contiguous(), lab.contiguous(), no_geo, g, impulse=impulse)
        img, lab = self._crop(idx, (ph, pw), g)
        return augment_batch(img, lab, cfg, g, impulse=impulse)

    def sample_slices(
        self, n: int, cfg: AugmentConfig, g: torch.Generator, max_grid: int = 4
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` augmented crops that are whole patch grids (at most ``max_grid`` patches a side).

        Half the batches are square crops rotated by 90° and then cut to whole
        patches; the others keep the slice orientation (flips only).
        """
        ph, pw = self.patch_size
        hmin, wmin = self._min_size()
        gy, gx = min(max_grid, hmin // ph), min(max_grid, wmin // pw)
        idx = torch.randint(0, len(self), (n,), generator=g).tolist()
        side = min(hmin, wmin, max(gy * ph, gx * pw))
        rotate = cfg.rot90 and bool(torch.rand(1, generator=g) < 0.5) and side >= max(ph, pw)
        if rotate:
            img, lab = self._crop(idx, (side, side), g)
            img, lab = geometric(img, lab, cfg, g)
            ch, cw = side // ph * ph, side // pw * pw
            img, lab = img[..., :ch, :cw].contiguous(), lab[..., :ch, :cw].contiguous()
        else:
            img, lab = self._crop(idx, (gy * ph, gx * pw), g)
            img, lab = geometric(img, lab, AugmentConfig(**{**cfg.to_dict(), "rot90": False}), g)
        return self._flip_planes(intensity(img, cfg, g), g).contiguous(), lab


def class_weights(volumes: Sequence[Volume], power: float = 0.5, cap: float = 10.0) -> torch.Tensor:
    """Cross-entropy weights ∝ frequency^-power, normalised to a pixel-weighted mean of 1.

    The paper fixes (0.963, 0.897, 0.140) for its data; other scans have other class
    balances, so the weights are computed from the training labels. ``power`` 0.5 is
    gentler than inverse frequency: it lifts the minority phases without making the
    loss noisy.
    """
    counts = np.zeros(NUM_CLASSES)
    for v in volumes:
        counts += np.bincount(v.labels.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    freq = np.maximum(counts / max(counts.sum(), 1), 1e-4)
    w = freq**-power
    w = w / (w * freq).sum()
    w = np.minimum(w, cap * w.min())
    return torch.tensor(w, dtype=torch.float32)

