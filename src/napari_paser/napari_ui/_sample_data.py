"""npe2 sample data: the bundled electrode micro-CT stack and its ground-truth phases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari_paser

from ..errors import PaserInputError

__all__ = ["sample_dir", "electrode_sample", "electrode_image_sample"]

IMAGE_FILE = "electrode_image.tif"
LABELS_FILE = "electrode_labels.tif"


def sample_dir() -> Path:
    """Folder of the sample files: inside the package (wheel), else the repository root."""
    package = Path(napari_paser.__file__).resolve().parent
    for folder in (package / "sample_data", package.parents[1] / "sample_data"):
        if (folder / IMAGE_FILE).is_file():
            return folder
    raise PaserInputError(f"the sample stack {IMAGE_FILE} is not installed (looked in {package / 'sample_data'})")


def _image_layer() -> tuple:
    from .. import io

    data, voxel_size = io.read_stack(sample_dir() / IMAGE_FILE)
    kwargs: dict[str, Any] = {"name": "electrode", "metadata": {"source_path": str(sample_dir() / IMAGE_FILE)},
                              "axis_labels": napari_paser.AXIS_NAMES[-data.ndim :]}
    if voxel_size is not None:
        kwargs["scale"] = list(voxel_size)[-data.ndim :]
        kwargs["metadata"]["voxel_size_um"] = list(voxel_size)
    return data, kwargs, "image"


def _labels_layer() -> tuple:
    from .. import io
    from ._layers import phase_colormap

    data, voxel_size = io.read_stack(sample_dir() / LABELS_FILE)
    kwargs = {"name": "ground truth", "colormap": phase_colormap(), "opacity": 0.5, "visible": False,
              "axis_labels": napari_paser.AXIS_NAMES[-data.ndim :]}
    if voxel_size is not None:
        kwargs["scale"] = list(voxel_size)[-data.ndim :]
    return data.astype("uint8", copy=False), kwargs, "labels"


def electrode_sample() -> list[tuple]:
    """The sample stack (Image "electrode") and its ground truth (Labels "ground truth")."""
    return [_image_layer(), _labels_layer()]


def electrode_image_sample() -> list[tuple]:
    """The sample stack alone."""
    return [_image_layer()]
