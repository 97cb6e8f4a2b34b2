"""The three result layers ("phases", "entropy", "routing") and their colours.

Label conventions
-----------------
napari treats label 0 as transparent background by default, but 0 is *pore* here. The
phase and routing layers therefore use a ``DirectLabelColormap`` with an explicit colour
for 0 and with ``background_value`` moved to :data:`PENDING` (255), the value of slices
that are not segmented yet. So pore is drawn in its own colour and pending slices are
transparent. Written phase volumes keep 255 for slices that were never segmented.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from .. import CLASS_COLORS, CLASS_NAMES

if TYPE_CHECKING:
    import napari

__all__ = [
    "PENDING",
    "MODEL_COLORS",
    "PHASES",
    "ENTROPY",
    "ROUTING",
    "phase_colormap",
    "routing_colormap",
    "spatial_geometry",
    "routing_geometry",
    "routing_outline",
    "RING_PIXELS",
    "ring_cells",
    "ResultLayers",
]

PENDING = 255
"""Label value of slices not segmented yet (transparent)."""

MODEL_COLORS = ("#8c8c8c", "#00e5ff", "#ff00ff")
"""f0 grey, f1 cyan, f2 magenta."""

PHASES, ENTROPY, ROUTING = "phases", "entropy", "routing"
ENTROPY_MAX = math.log(3.0)
"""Entropy of three equally likely classes: the top of the entropy contrast range."""


def phase_colormap() -> DirectLabelColormap:
    """0 pore, 1 carbon-binder, 2 nickel in :data:`CLASS_COLORS`; pending transparent."""
    colors: dict[int | None, Any] = {i: c for i, c in enumerate(CLASS_COLORS)}
    colors.update({PENDING: "transparent", None: "transparent"})
    return DirectLabelColormap(color_dict=colors, background_value=PENDING)


RING_PIXELS = 2
"""Width in image pixels of the ring that frames each patch in the routing layer."""


def ring_cells(patch_size: tuple[int, int]) -> tuple[int, int]:
    """Cells per patch (rows, columns) in the routing layer: one cell is RING_PIXELS wide."""
    return tuple(max(1, int(p) // RING_PIXELS) for p in patch_size)


def routing_colormap(f0_alpha: float = 0.5) -> DirectLabelColormap:
    """Routing colours: f0 faint grey, f1 cyan, f2 magenta; pending transparent."""
    grey = np.array([0.55, 0.55, 0.55, f0_alpha])
    colors: dict[int | None, Any] = {0: grey, 1: MODEL_COLORS[1], 2: MODEL_COLORS[2]}
    colors.update({PENDING: "transparent", None: "transparent"})
    return DirectLabelColormap(color_dict=colors, background_value=PENDING)


def spatial_geometry(layer: "napari.layers.Layer") -> tuple[np.ndarray, np.ndarray]:
    """(scale, translate) of an image layer's spatial axes (2 or 3 of them)."""
    nd = min(layer.ndim, 3)
    return np.asarray(layer.scale[-nd:], float), np.asarray(layer.translate[-nd:], float)


def routing_geometry(
    scale: np.ndarray, translate: np.ndarray, patch_size: tuple[int, int], cells: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translation of the routing layer so each ring of cells frames its patch.

    A patch of ``p`` pixels is ``cells`` layer cells of ``c = p / cells`` pixels. napari
    centres layer cell ``j`` at ``j * scale + translate``; cell ``j`` must cover image
    pixels ``j*c .. (j+1)*c - 1``, so its centre sits at image pixel ``j*c + (c-1)/2``:
    hence scale ``c * s`` and an extra shift of ``(c-1)/2 * s``.
    """
    scale, translate = np.asarray(scale, float).copy(), np.asarray(translate, float).copy()
    cells = ring_cells(patch_size) if cells is None else cells
    c = np.asarray(patch_size, float) / np.asarray(cells, float)
    out_scale = scale.copy()
    out_scale[-2:] = scale[-2:] * c
    out_translate = translate.copy()
    out_translate[-2:] = translate[-2:] + (c - 1) / 2 * scale[-2:]
    return out_scale, out_translate


def routing_outline(routing: np.ndarray, cells: tuple[int, int]) -> np.ndarray:
    """Draw a (..., GY, GX) routing as rings: (..., GY*cy, GX*cx), PENDING inside.

    Outlines keep the phase colours underneath readable, even where one model takes
    most patches; ``outline[..., ::cy, ::cx]`` gives the routing back.
    """
    cy, cx = cells
    ring = np.ones((cy, cx), bool)
    ring[1:-1, 1:-1] = False
    expanded = np.repeat(np.repeat(routing, cy, axis=-2), cx, axis=-1)
    mask = np.tile(ring, routing.shape[-2:])
    return np.where(mask, expanded, np.uint8(PENDING)).astype(np.uint8)


class ResultLayers:
    """Buffers of a run and the napari layers that show them.

    The buffers are always 3-D (plane, row, column); for a 2-D image the layers show
    plane 0 as a view, so filling a slice updates the layer data in place.

    Parameters
    ----------
    viewer : napari.Viewer
    image : napari.layers.Image
        Layer that was segmented: the result layers take its scale and translation.
    shape : (Z, Y, X)
    grid : (Z, GY, GX)
        Patch grid of the routing.
    patch_size : (rows, columns)
    """

    def __init__(
        self,
        viewer: "napari.Viewer",
        image: "napari.layers.Image",
        shape: tuple[int, int, int],
        grid: tuple[int, int, int],
        patch_size: tuple[int, int],
    ) -> None:
        self.viewer = viewer
        self.is_2d = image.ndim == 2
        self.patch_size = tuple(int(p) for p in patch_size)
        self.labels = np.full(shape, PENDING, np.uint8)
        self.entropy = np.zeros(shape, np.float32)
        self.routing = np.full(grid, PENDING, np.uint8)
        self.cells = ring_cells(self.patch_size)
        self.routing_rings = routing_outline(self.routing, self.cells)
        self.done = np.zeros(shape[0], bool)
        scale, translate = spatial_geometry(image)
        r_scale, r_translate = routing_geometry(scale, translate, self.patch_size)
        self.phases_layer = self._ensure(
            PHASES, "labels", self._view(self.labels), scale, translate,
            colormap=phase_colormap(), opacity=0.6, blending="translucent",
        )
        self.entropy_layer = self._ensure(
            ENTROPY, "image", self._view(self.entropy), scale, translate,
            colormap="magma", contrast_limits=(0.0, ENTROPY_MAX), blending="additive", visible=False,
        )
        self.routing_layer = self._ensure(
            ROUTING, "labels", self._view(self.routing_rings), r_scale, r_translate,
            colormap=routing_colormap(), opacity=0.9, blending="translucent",
        )
        self.phases_layer.metadata["napari_paser"] = {"source": image.name, "complete": False}

    # ------------------------------------------------------------------ helpers

    def _view(self, a: np.ndarray) -> np.ndarray:
        return a[0] if self.is_2d else a

    def _ensure(self, name: str, kind: str, data: np.ndarray, scale, translate, **kwargs):
        """Reuse our layer of that name (new data, same place in the list) or add one."""
        nd = data.ndim
        geometry = {"scale": np.asarray(scale)[-nd:], "translate": np.asarray(translate)[-nd:]}
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            ours = layer.metadata.get("napari_paser_layer") == name
            if ours and layer._type_string == kind and layer.ndim == nd:
                layer.data = data
                if not (np.allclose(layer.scale, geometry["scale"]) and np.allclose(layer.translate, geometry["translate"])):
                    layer.scale, layer.translate = geometry["scale"], geometry["translate"]
                return layer
            if ours:
                self.viewer.layers.remove(layer)
        add = self.viewer.add_labels if kind == "labels" else self.viewer.add_image
        layer = add(data, name=name, **geometry, **kwargs)
        layer.metadata["napari_paser_layer"] = name
        return layer

    @property
    def layers(self) -> tuple:
        return self.phases_layer, self.entropy_layer, self.routing_layer

    # ------------------------------------------------------------------ updates

    def set_slice(self, z: int, labels=None, entropy=None, routing=None) -> None:
        """Fill slice ``z`` of any of the three buffers and redraw what changed."""
        if labels is not None:
            self.labels[z] = labels
            self.done[z] = True
            self.phases_layer.refresh()
        if entropy is not None:
            self.entropy[z] = entropy
            self.entropy_layer.refresh()
        if routing is not None:
            self.store_routing(z, routing)
            self.routing_layer.refresh()

    def store_routing(self, z: int, routing: np.ndarray) -> None:
        """Keep slice ``z``'s routing (patch grid) and its drawn rings, without redrawing."""
        self.routing[z] = routing
        self.routing_rings[z] = routing_outline(routing, self.cells)

    def set_metadata(self, **info: Any) -> None:
        """Merge provenance (bundle, λ, TVD, route fractions, GFLOPs...) into the phases layer."""
        meta = dict(self.phases_layer.metadata.get("napari_paser", {}))
        meta.update(info)
        meta["complete"] = bool(self.done.all())
        meta["slices_done"] = int(self.done.sum())
        meta["slices_total"] = int(self.done.size)
        self.phases_layer.metadata["napari_paser"] = meta

    def alive(self) -> bool:
        """True while all three layers are still in the viewer."""
        return all(layer in self.viewer.layers for layer in self.layers)
