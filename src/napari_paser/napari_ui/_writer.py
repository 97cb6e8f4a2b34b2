"""npe2 writer: a Labels layer to a uint8 TIFF with voxel size and the run's provenance.

napari's File > Save dialog already asks before replacing the chosen file, so that file
may be replaced; the report and mask files next to it are only replaced together with it
(never on their own), so nothing is overwritten without that confirmation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._export import export_phases, export_targets

__all__ = ["write_labels"]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer (``data``, napari ``meta``) and return the written paths.

    The phase layer's ``metadata["napari_paser"]`` (bundle, λ/TVD, route fractions,
    GFLOPs, statistics) becomes the provenance record; its ``export_masks`` flag (the
    widget's "per-phase masks" checkbox) adds one binary mask per phase. Of a multiscale
    layer, the full-resolution level is written.
    """
    if meta.get("multiscale"):  # a pyramid: its full-resolution level is the volume
        data = data[0]
    provenance = dict((meta.get("metadata") or {}).get("napari_paser") or {})
    masks = bool(provenance.get("export_masks", False))
    main = export_targets(path, masks)["phases"]
    confirmed = main.exists()  # napari's save dialog asked the user about this file
    try:
        written = export_phases(
            path, data, scale=meta.get("scale"), provenance=provenance, masks=masks, overwrite=confirmed
        )
    except (FileExistsError, ValueError) as err:
        from napari.utils.notifications import show_error

        show_error(f"napari-paser did not save {Path(path).name}: {err}")
        return []
    return [str(p) for p in written]
