"""The Qt-free side of the fine-tuning panel: which pixels train, where the bundle goes, the job.

Labels layers use the file convention of the plugin (0 pore, 1 carbon-binder, 2 nickel,
255 unlabelled and drawn transparent), so the panel's own "training labels" layer, a
labels TIFF opened from disk and the ``phases`` layer of a run (corrected by the user)
are all read the same way; a phases layer is usually restricted to the slices the user
marked as reviewed. The job is a generator (as :mod:`._jobs`), driven by a napari
thread worker or synchronously; cancelling asks the training loop to stop, which then
keeps the best networks so far and still saves the bundle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterable

import numpy as np

from ..errors import PaserInputError

__all__ = [
    "TRAINING_LABELS_KEY",
    "UNLABELLED",
    "new_training_labels",
    "new_labels_store",
    "training_labels_from",
    "default_bundle_name",
    "bundle_parent_folder",
    "FinetuneRequest",
    "FinetuneOutcome",
    "FinetuneController",
]

TRAINING_LABELS_KEY = "napari_paser_training_labels"
"""Metadata key that marks the labels layer made by the panel."""
UNLABELLED = 255


def new_training_labels(shape: tuple[int, ...], store: str | Path | None = None) -> Any:
    """An empty (all unlabelled) uint8 labels array of the image's shape.

    Parameters
    ----------
    shape : tuple of int
    store : path-like, optional
        Make it a Zarr store there (chunked by slice) instead of an array in memory, for
        a stack too big for memory: napari paints into it and fine-tuning reads the
        painted slices from it (see :func:`new_labels_store`).
    """
    if store is None:
        return np.full(tuple(shape), UNLABELLED, np.uint8)
    from ..io_writers import create_zarr_array, new_zarr_group

    chunks = (1, *shape[1:]) if len(shape) == 3 else tuple(shape)
    return create_zarr_array(new_zarr_group(store), "labels", shape=tuple(shape), chunks=chunks, dtype="uint8", fill_value=UNLABELLED)


def new_labels_store(folder: str | Path | None = None) -> Path:
    """A new, unused store path for training labels in a new folder under ``folder`` (the
    system's temporary folder by default). Nothing removes it: the labels are the user's work."""
    import tempfile

    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="napari-paser-labels-", dir=folder)) / "training_labels.zarr"


def training_labels_from(data: Any, image_shape: tuple[int, ...], reviewed: Iterable[int] | None = None) -> Any:
    """Training labels (0, 1, 2, 255) from a labels layer's data, checked against the image.

    Parameters
    ----------
    data : array_like
        The layer's data (0 pore, 1 carbon-binder, 2 nickel, 255 unlabelled).
    image_shape : tuple of int
    reviewed : iterable of int, optional
        Only these slices count (the others become 255): a corrected ``phases`` layer
        is right only where the user looked.

    Returns
    -------
    PaintedSlices
        A label volume of the image's shape that holds the painted slices only (the
        layer is read a slab at a time, the reviewed slices alone when given).

    Raises
    ------
    PaserInputError
        Shape, values, no labelled pixel, one phase only, or no reviewed slice.
    """
    from ..train.sparse_labels import PaintedSlices, read_labelled_slices

    if reviewed is None or tuple(data.shape) != tuple(image_shape):
        slices, painted = read_labelled_slices(data, image_shape)  # (or the shape's message)
        return PaintedSlices(image_shape, slices, painted)
    zs = sorted({int(z) for z in reviewed})
    if not zs:
        raise PaserInputError("no slice is marked as reviewed: mark the slices whose labels you checked, or untick 'reviewed slices only'")
    stack = data if len(image_shape) == 3 else data[None]
    if zs[0] < 0 or zs[-1] >= stack.shape[0]:
        raise PaserInputError(f"reviewed slice {zs[-1] if zs[-1] >= stack.shape[0] else zs[0]} is outside the stack of {stack.shape[0]} slices")
    found, painted = read_labelled_slices(np.stack([np.asarray(stack[z]) for z in zs]))
    return PaintedSlices(image_shape, [zs[k] for k in found], painted)


def default_bundle_name(image_name: str) -> str:
    """``<image>-paser-ft``: the suggested name of a bundle adapted to that image."""
    stem = Path(str(image_name)).stem or "scan"
    return f"{stem}-paser-ft"


def bundle_parent_folder(source_path: str | None, fallback: str | Path | None = None) -> Path:
    """Where a new bundle goes: beside the image file, else ``fallback`` (else ~/napari-paser-bundles)."""
    if source_path:
        return Path(source_path).parent  # a file, or a folder of slices: beside it
    return Path(fallback) if fallback else Path.home() / "napari-paser-bundles"


@dataclass
class FinetuneRequest:
    """Everything a fine-tuning needs, captured on the GUI thread."""

    image: Any
    labels: Any  # a PaintedSlices volume (see training_labels_from)
    bundle_path: Path
    folder: Path
    name: str
    budget_s: float | None = None
    seed: int = 0


@dataclass
class FinetuneOutcome:
    """The saved bundle folder and the training result."""

    folder: Path
    result: Any

    @property
    def cancelled(self) -> bool:
        return bool(self.result.cancelled)


class FinetuneController:
    """Runs one fine-tuning at a time; :meth:`cancel` stops it keeping the best so far."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def cancel(self) -> None:
        """Ask the running job to stop after its current step (its bundle is still saved)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def job(self, request: FinetuneRequest) -> Generator[Any, None, FinetuneOutcome]:
        """Load the bundle, fine-tune (yielding :class:`~napari_paser.train.finetune.FinetuneProgress`), save."""
        from ._torch_loading import import_torch_quietly, worker_threads

        self._stop.clear()
        if (request.folder / "manifest.json").exists():
            raise FileExistsError(f"{request.folder} already holds a bundle; choose another name")
        import_torch_quietly("napari_paser.train.finetune")
        from ..engine.bundle import load_bundle
        from ..train.finetune import FinetuneConfig, finetune_iter, save_finetuned

        bundle = load_bundle(request.bundle_path)
        cfg = FinetuneConfig(budget_s=request.budget_s, seed=request.seed, threads=worker_threads())
        # The layer's data as it is (numpy, dask, Zarr): fine-tuning reads only the planes it uses.
        result = yield from finetune_iter(bundle, request.image, request.labels, cfg, stop=self._stop.is_set)
        folder = save_finetuned(result, request.folder, request.name)
        return FinetuneOutcome(folder, result)
