"""TIFF stacks with voxel size and JSON metadata, written atomically (no torch here).

Voxel sizes are always ``(plane, row, column)`` in micrometres. Files are written as
ImageJ hyperstacks so Fiji/ImageJ shows the calibration; the JSON metadata dict goes
into the ImageJ ``Info`` property (Image > Show Info in Fiji) so it survives a round
trip through ImageJ as well.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .errors import PaserInputError

VoxelSize = tuple[float, float, float]

# Length units seen in ImageJ / OME / TIFF metadata -> micrometres per unit.
_UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
}

# What tifffile and its codecs raise for a damaged or unsupported file (codec errors
# derive from RuntimeError; tifffile raises NotImplementedError for a compression or
# layout it cannot decode). MemoryError and KeyboardInterrupt are deliberately not here:
# running out of memory must not read as "cannot read the file".
TIFF_READ_ERRORS = (
    tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError, TypeError, struct.error, EOFError,
    NotImplementedError, RuntimeError, zlib.error,
)

_INFO_PREFIX = "napari-paser-json:"
_JSON_TAG = 65000  # private tag of BigTIFF stacks written by io_writers


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; written stacks get the usual permissions instead.
_FILE_MODE = 0o666 & ~_current_umask()
FILE_MODE = _FILE_MODE
"""Mode of files this package writes through a temporary file (0666 less the user's umask)."""


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise PaserInputError(f"file not found: {p}")
    if p.is_dir():
        raise PaserInputError(f"expected a TIFF file, got a folder: {p}")
    return p


def _open_tiff(p: Path) -> tifffile.TiffFile:
    try:
        tif = tifffile.TiffFile(p)
    except (tifffile.TiffFileError, ValueError, OSError, struct.error) as err:
        raise PaserInputError(f"not a readable TIFF file: {p} ({err})") from None
    # A truncated file can parse its header yet hold no readable page.
    try:
        tif.pages.first
    except (IndexError, tifffile.TiffFileError, ValueError, OSError, struct.error):
        tif.close()
        raise PaserInputError(f"not a readable TIFF file: {p} (no readable image page)") from None
    return tif


def _unit_scale(unit: Any) -> float | None:
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    return _UNIT_TO_UM.get(str(unit).strip().lower())


def _tag_resolution(page: tifffile.TiffPage, name: str) -> float | None:
    """Pixel size (in the file's unit) from an X/YResolution tag (pixels per unit)."""
    tag = page.tags.get(name)
    if tag is None:
        return None
    value = tag.value
    try:
        num, den = (value if isinstance(value, tuple) else (value, 1))
        ppu = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not np.isfinite(ppu) or ppu <= 0:
        return None
    return 1.0 / ppu


def _ome_voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    sizes: dict[str, float | None] = {}
    for ax in "XYZ":
        raw = pixels.get(f"PhysicalSize{ax}")
        scale = _unit_scale(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        try:
            sizes[ax] = float(raw) * scale if raw is not None and scale is not None else None
        except ValueError:
            sizes[ax] = None
    if sizes["X"] is None:
        return None
    y = sizes["Y"] if sizes["Y"] is not None else sizes["X"]
    z = sizes["Z"] if sizes["Z"] is not None else y
    return (float(z), float(y), float(sizes["X"]))


def _voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    if tif.is_ome:
        vs = _ome_voxel_size(tif)
        if vs is not None:
            return vs
    page = tif.pages.first
    px = _tag_resolution(page, "XResolution")
    py = _tag_resolution(page, "YResolution")
    if px is None:
        return None
    py = px if py is None else py
    ij = tif.imagej_metadata
    if ij is not None:
        scale = _unit_scale(ij.get("unit"))
        if scale is None:  # uncalibrated ImageJ image ("pixel" or no unit)
            return None
        spacing = ij.get("spacing")
        pz = float(spacing) if spacing is not None else py
        return (pz * scale, py * scale, px * scale)
    # Plain TIFF: ResolutionUnit 2 = inch, 3 = centimetre, 1 = none. No plane spacing
    # exists in plain TIFF, so planes are assumed as thick as rows are tall.
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    scale = {2: 25400.0, 3: 1e4}.get(unit)
    if scale is None:
        return None
    return (py * scale, py * scale, px * scale)


def _squeeze_to_stack(data: np.ndarray, p: Path) -> np.ndarray:
    """Drop singleton axes; accept only (Y,X) or (Z,Y,X) grayscale data."""
    shape = data.shape
    if data.ndim > 2:
        keep = [i for i, n in enumerate(shape[:-2]) if n != 1]
        data = data.reshape(tuple(shape[i] for i in keep) + shape[-2:])
    if data.ndim not in (2, 3):
        raise PaserInputError(
            f"expected a grayscale (Z,Y,X) or (Y,X) stack in {p}, got shape {tuple(shape)}"
        )
    return data


def read_voxel_size(path: str | os.PathLike) -> VoxelSize | None:
    """Voxel size of a TIFF file without reading its pixels.

    Parameters
    ----------
    path
        TIFF file (ImageJ, OME or plain).

    Returns
    -------
    tuple of float or None
        ``(plane, row, column)`` in micrometres, or None when the file is uncalibrated.
    """
    p = _check_path(path)
    with _open_tiff(p) as tif:
        return _voxel_size(tif)


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, VoxelSize | None]:
    """Read a grayscale TIFF stack and its voxel size.

    Parameters
    ----------
    path
        TIFF file holding one (Z,Y,X) stack or one (Y,X) image.

    Returns
    -------
    data : np.ndarray
        The pixels as stored (uint8, uint16, float32, ...), singleton axes removed.
    voxel_size : tuple of float or None
        ``(plane, row, column)`` in micrometres from ImageJ (resolution + ``spacing``),
        OME (``PhysicalSize*``) or plain TIFF resolution tags; None if uncalibrated.

    Raises
    ------
    PaserInputError
        If the file is missing, not a TIFF, unreadable, or not a grayscale stack.
    """
    p = _check_path(path)
    with _open_tiff(p) as tif:
        try:
            data = tif.asarray()
        except TIFF_READ_ERRORS as err:  # corrupt strips, unsupported codecs, ...
            raise PaserInputError(f"cannot read the pixels of {p}: {err}") from None
        voxel = _voxel_size(tif)
    return _squeeze_to_stack(np.asarray(data), p), voxel


def _series_page(series: tifffile.TiffPageSeries, index: int, p: Path) -> tifffile.TiffPage | tifffile.TiffFrame:
    """Page ``index`` of ``series``: tifffile gives None for a page that the file lacks."""
    page = series.pages[index]
    if page is None:
        raise PaserInputError(f"not a readable TIFF file: {p} (page {index} of its image is missing)")
    return page


def _dask_stack(p: Path) -> Any:
    """A lazily read (Z,Y,X) dask array, one chunk per TIFF page."""
    import dask
    import dask.array as da

    with _open_tiff(p) as tif:
        series = tif.series[0]
        page = _series_page(series, 0, p)
        n_pages = len(series.pages)
        shape, dtype = page.shape, page.dtype

    def read_page(i: int) -> np.ndarray:
        with tifffile.TiffFile(p) as t:
            return _series_page(t.series[0], i, p).asarray()

    planes = [da.from_delayed(dask.delayed(read_page)(i), shape=shape, dtype=dtype) for i in range(n_pages)]
    return da.stack(planes) if n_pages > 1 else planes[0]


def open_stack_lazy(path: str | os.PathLike) -> Any:
    """Open a big stack without loading it into memory when possible.

    Parameters
    ----------
    path
        TIFF file holding one grayscale stack.

    Returns
    -------
    np.memmap, dask.array.Array or np.ndarray
        A read-only memory map when the pixels are stored uncompressed and contiguous;
        otherwise a dask array reading one page per chunk (if dask is installed);
        otherwise the fully read array. Use :func:`read_voxel_size` for calibration.

    Raises
    ------
    PaserInputError
        As :func:`read_stack`.
    """
    p = _check_path(path)
    with _open_tiff(p):
        pass  # validates the header with a clear message before any fallback
    try:
        data = tifffile.memmap(p, mode="r")
        return _squeeze_to_stack(data, p)
    except (ValueError, tifffile.TiffFileError):
        pass  # compressed or non-contiguous: memory mapping is impossible
    try:
        import dask  # noqa: F401
    except ImportError:
        return read_stack(p)[0]
    try:
        return _squeeze_to_stack(_dask_stack(p), p)
    except PaserInputError:
        raise
    except TIFF_READ_ERRORS:  # odd layouts (multi-series, tiles): fall back to a full read
        return read_stack(p)[0]


def _imagej_compatible(data: np.ndarray) -> np.ndarray:
    """Cast to a dtype ImageJ can store (uint8, uint16, int16, float32)."""
    if data.dtype.char in "BHhf":
        return data
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype == np.int8:
        return data.astype(np.int16)
    if np.issubdtype(data.dtype, np.integer) and data.size:
        lo, hi = int(data.min()), int(data.max())
        if lo >= 0 and hi <= 65535:
            return data.astype(np.uint16)
        if lo >= -32768 and hi <= 32767:
            return data.astype(np.int16)
    if np.iscomplexobj(data):
        raise PaserInputError("cannot store a complex-valued image as TIFF")
    return data.astype(np.float32)


def write_tiff(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    voxel_size: VoxelSize | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    compress: bool = False,
) -> Path:
    """Write an ImageJ-compatible TIFF stack atomically.

    Parameters
    ----------
    path
        Destination file; its folder is created if needed.
    data
        (Z,Y,X) or (Y,X) array of any real dtype. uint8/uint16/int16/float32 are stored
        as is; bool -> uint8, int8 -> int16, other integers -> the smallest of
        uint16/int16 that holds their range, else float32; floats -> float32.
    voxel_size
        ``(plane, row, column)`` in micrometres, stored as resolution tags, ImageJ
        ``spacing`` and unit ``um``.
    metadata
        JSON-serialisable dict; :func:`read_metadata` returns it.
    overwrite
        Replace an existing file.
    compress
        zlib-compress the pixels (smaller files, but no memory mapping on read).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    PaserInputError
        If ``data`` is not 2-D/3-D or the voxel size is not three positive numbers.
    TypeError
        If ``metadata`` is not JSON-serialisable.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists (use overwrite)")
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise PaserInputError(f"expected a (Z,Y,X) or (Y,X) array, got shape {arr.shape}")
    arr = np.ascontiguousarray(_imagej_compatible(arr))
    ij_meta: dict[str, Any] = {"axes": "ZYX" if arr.ndim == 3 else "YX"}
    kwargs: dict[str, Any] = {}
    if voxel_size is not None:
        vs = tuple(float(v) for v in voxel_size)
        if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
            raise PaserInputError(f"voxel size must be three positive numbers, got {voxel_size}")
        ij_meta.update(spacing=vs[0], unit="um")
        kwargs["resolution"] = (1.0 / vs[2], 1.0 / vs[1])
    if metadata is not None:
        # Fail before touching the disk if the dict cannot be serialised.
        ij_meta["Info"] = _INFO_PREFIX + json.dumps(metadata, sort_keys=True)
    if compress:
        kwargs["compression"] = "zlib"
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, arr, imagej=True, metadata=ij_meta, **kwargs)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata dict stored by :func:`write_tiff` ({} if none).

    Raises
    ------
    PaserInputError
        If the file is missing or not a TIFF.
    """
    p = _check_path(path)
    with _open_tiff(p) as tif:
        ij = tif.imagej_metadata or {}
        info = ij.get("Info")
        if info is None:  # BigTIFF stacks keep it in a private tag (io_writers.JSON_TAG)
            tag = tif.pages.first.tags.get(_JSON_TAG)
            info = tag.value if tag is not None else None
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    if not isinstance(info, str) or not info.startswith(_INFO_PREFIX):
        return {}
    try:
        value = json.loads(info[len(_INFO_PREFIX):])
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


__all__ = ["FILE_MODE", "TIFF_READ_ERRORS", "open_stack_lazy", "read_metadata", "read_stack", "read_voxel_size", "write_tiff"]
