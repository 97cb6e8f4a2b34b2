"""Export of a phase volume: uint8 TIFF or OME-Zarr, optional per-phase masks and a JSON report.

Used by both the npe2 writer (File > Save Layers) and the widget's Export button. All
target files are checked before anything is written, so an export never leaves a mix
of old and new files; each file is written atomically (temporary file + rename).

The volume is read and written a slab of planes at a time, so exporting a stack that
was segmented through a Zarr store on disk never holds it in memory, and stacks over
4 GiB become BigTIFF (:class:`napari_paser.io_writers.TiffSliceWriter`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np

from .. import CLASS_COLORS, CLASS_NAMES, __version__
from ..errors import PaserInputError
from ._layers import PENDING

__all__ = ["export_targets", "export_phases", "export_steps", "to_uint8_labels", "voxel_size_from_scale"]

SLAB_BYTES = 16 << 20
"""Label bytes read per step of an export (each mask adds as much again)."""


def export_targets(path: str | os.PathLike, masks: bool = False) -> dict[str, Path]:
    """Files an export to ``path`` writes: ``phases``, ``report`` and one per mask; TIFF
    files, or OME-Zarr stores for a ``path`` ending in ``.zarr``."""
    from ..io_writers import is_zarr_path

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") and not is_zarr_path(path):
        path = path.with_name(path.name + ".tif")
    targets = {"phases": path, "report": path.with_name(path.stem + "_report.json")}
    if masks:
        for name in CLASS_NAMES:
            targets[f"mask:{name}"] = path.with_name(f"{path.stem}_{name}{path.suffix}")
    return targets


def to_uint8_labels(data: Any) -> np.ndarray:
    """Labels as uint8, refusing values that do not fit (negative or above 255)."""
    arr = np.asarray(data)
    _check_label_dtype(arr.dtype)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise PaserInputError(f"labels range {arr.min()}..{arr.max()} does not fit in uint8 (0..255)")
    return arr.astype(np.uint8, copy=False)


def _check_label_dtype(dtype: np.dtype) -> None:
    if not np.issubdtype(dtype, np.integer) and dtype != bool:
        raise PaserInputError(f"labels must be integers, got {dtype}")


def voxel_size_from_scale(scale: Sequence[float] | None, ndim: int) -> tuple[float, float, float] | None:
    """(plane, row, column) voxel size from a layer scale; ``None`` for unit scale (unknown)."""
    if scale is None:
        return None
    s = [float(v) for v in scale][-ndim:]
    if all(v == 1.0 for v in s):
        return None
    if len(s) == 2:
        s = [1.0, *s]
    return (s[-3], s[-2], s[-1])


def _write_json_atomic(path: Path, payload: dict) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2, default=_json_default)
    os.replace(tmp.name, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def export_phases(
    path: str | os.PathLike,
    labels: Any,
    *,
    scale: Sequence[float] | None = None,
    provenance: dict | None = None,
    masks: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write a phase volume, optionally one binary mask per phase, and a JSON report:
    :func:`export_steps` run to its end (see it for the parameters)."""
    from ..engine.steps import run_steps

    return run_steps(export_steps(path, labels, scale=scale, provenance=provenance, masks=masks, overwrite=overwrite))


def export_steps(
    path: str | os.PathLike,
    labels: Any,
    *,
    scale: Sequence[float] | None = None,
    provenance: dict | None = None,
    masks: bool = False,
    overwrite: bool = False,
) -> Generator[tuple[int, int], None, list[Path]]:
    """Write a phase volume, optionally one binary mask per phase, and a JSON report,
    yielding ``(planes_done, planes_total)`` after every slab.

    Closing the generator before its end (a cancelled export) deletes what it had
    written so far: the files are renamed into place only once every plane is written.

    Parameters
    ----------
    path : path-like
        The phase volume: a TIFF (``.tif`` is added if missing; BigTIFF over 4 GiB), or
        for ``*.zarr`` an OME-Zarr label image with coarser levels for viewers. The report
        is ``<stem>_report.json``, masks ``<stem>_<phase>.tif`` / ``.zarr`` (0/255 uint8).
    labels : array (Z, Y, X) or (Y, X)
        0 pore, 1 carbon-binder, 2 nickel; 255 marks slices that were never segmented.
        Any array that slices along its first axis (numpy, Zarr, dask): it is read a
        slab of planes at a time.
    scale : sequence of float, optional
        napari layer scale (µm per voxel, plane/row/column).
    provenance : dict, optional
        Run record (bundle, version, λ/TVD, route fractions, GFLOPs, statistics).
    masks : bool
        Also write the per-phase masks.
    overwrite : bool
        Replace existing files. Otherwise any existing target aborts the export before
        anything is written.

    Returns
    -------
    list of Path
        The files written, phase volume first (the generator's return value).

    Raises
    ------
    FileExistsError
        If a target exists and ``overwrite`` is false.
    PaserInputError
        If the labels are not integers in 0..255.
    """
    from ..io_sources import as_volume
    from ..io_writers import TiffSliceWriter, ZarrLabelWriter, is_zarr_path

    targets = export_targets(path, masks)
    existing = [p for p in targets.values() if p.exists()]
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing)
        raise FileExistsError(f"not overwriting existing file(s): {names}")
    shape = tuple(int(n) for n in np.shape(labels))
    if len(shape) not in (2, 3):
        raise PaserInputError(f"expected a (Z,Y,X) or (Y,X) label volume, got shape {shape}")
    volume = as_volume(labels)
    _check_label_dtype(np.dtype(volume.dtype))
    voxel_size = voxel_size_from_scale(scale, len(shape))
    prov = json.loads(json.dumps(provenance or {}, default=_json_default))
    classes = [{"index": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(CLASS_NAMES, CLASS_COLORS))]
    base = {"layer_type": "labels", "classes": classes, "pending_value": PENDING, "provenance": prov}
    outputs = {"phases": {**base, "kind": "phases"}}
    for index, name in enumerate(CLASS_NAMES if masks else ()):
        outputs[f"mask:{name}"] = {**base, "kind": "mask", "phase": name, "phase_index": index}
    writers: list[TiffSliceWriter | ZarrLabelWriter] = []
    try:
        for key, meta in outputs.items():
            if is_zarr_path(targets[key]):
                writers.append(ZarrLabelWriter(targets[key], shape, np.uint8, voxel_size=voxel_size, metadata=meta,
                                               overwrite=overwrite, phases=key == "phases"))
            else:
                writers.append(TiffSliceWriter(targets[key], shape, np.uint8, voxel_size=voxel_size, metadata=meta,
                                               overwrite=overwrite))
        pending = 0
        for z0, block in volume.slabs(SLAB_BYTES // (shape[-2] * shape[-1])):
            slab = to_uint8_labels(block)
            pending += int(np.count_nonzero(slab == PENDING))
            writers[0].write(slab)
            for index, writer in enumerate(writers[1:]):
                writer.write(np.where(slab == index, np.uint8(255), np.uint8(0)))
            yield z0 + len(block), len(volume)
        written = [writer.close() for writer in writers]
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    report = {
        "napari_paser_version": __version__,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": [str(Path(p).name) for p in written],
        "shape": list(shape),
        "voxel_size_um": list(voxel_size) if voxel_size else None,
        "classes": classes,
        "unsegmented_voxels": pending,
        "run": prov,
    }
    _write_json_atomic(targets["report"], report)
    return [Path(p) for p in written] + [targets["report"]]
