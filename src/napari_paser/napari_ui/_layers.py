"""The three result layers ("phases", "entropy", "routing") and their colours.

Label conventions
-----------------
napari treats label 0 as transparent background by default, but 0 is *pore* here. The
phase and routing layers therefore use a ``DirectLabelColormap`` with an explicit colour
for 0 and with ``background_value`` moved to :data:`PENDING` (255), the value of slices
that are not segmented yet. So pore is drawn in its own colour and pending slices are
transparent. Written phase volumes keep 255 for slices that were never segmented.

Edits
-----
A user may paint corrections on the phase layer, but re-routing and new runs write the
phase buffer. So the first edit hands the painted layer over to the user: it becomes
"phases (edited)", which the plugin never writes again, and the plugin's results go on
in a new "phases" layer (:meth:`ResultLayers.fork_phases`).

Another image
-------------
A run reuses the plugin's layers of the image it segments. A run on another image keeps
the layers of the image before: they are renamed "phases (ct)" and so on, after that
image, and the new run gets layers of its own, so no result is replaced unasked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap

from .. import AXIS_NAMES, CLASS_COLORS

if TYPE_CHECKING:
    import napari

__all__ = [
    "PENDING",
    "MODEL_COLORS",
    "PHASES",
    "EDITED",
    "F2_DIFFERENCES",
    "ENTROPY",
    "ROUTING",
    "phase_colormap",
    "is_run_phases",
    "full_resolution",
    "crop",
    "layer_roi",
    "edited_planes",
    "routing_colormap",
    "spatial_geometry",
    "spatial_axis_labels",
    "routing_geometry",
    "routing_outline",
    "map_style",
    "lazy_routing_outline",
    "RING_PIXELS",
    "ring_cells",
    "ResultLayers",
]

PENDING = 255
"""Label value of slices not segmented yet (transparent)."""

MODEL_COLORS = ("#8c8c8c", "#00e5ff", "#ff00ff")
"""f0 grey, f1 cyan, f2 magenta."""

PHASES, ENTROPY, ROUTING = "phases", "entropy", "routing"
EDITED = "phases (edited)"
F2_DIFFERENCES = "differs from f2"
"""The pixels of a checked slice that f2 on every patch labels otherwise (one plane)."""
"""Name of a phase layer the user painted on: theirs from then on (napari numbers repeats)."""
ENTROPY_MAX = math.log(3.0)
"""Entropy of three equally likely classes: the top of the entropy contrast range."""


def is_run_phases(layer: Any) -> bool:
    """True for a run's phase layer or the user's edited fork of one: PaSeR's labels,
    right only where the user checked them (the fine-tuning panel then trains on the
    slices marked reviewed)."""
    metadata = layer.metadata if isinstance(layer.metadata, dict) else {}
    provenance = metadata.get("napari_paser")
    return metadata.get("napari_paser_layer") == PHASES or (isinstance(provenance, dict) and bool(provenance.get("edited")))


def full_resolution(layer: Any) -> Any:
    """The array the panels compute on: a multiscale layer's full-resolution level (an
    OME-Zarr pyramid opened with napari-ome-zarr, say), else the layer's data.

    napari's data coordinates of a multiscale layer (``world_to_data``, ``scale``) are those
    of its first level, so everything placed over that level lines up with the layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def crop(data: Any, ranges: Any) -> Any:
    """``data`` cut to one ``(start, stop)`` per axis (numpy, dask or zarr: lazy ones stay lazy)."""
    return data[tuple(slice(int(a), int(b)) for a, b in ranges)]


def layer_roi(layer: Any) -> list[list[int]] | None:
    """The region of its scan that a labels layer made by PaSeR covers (a run's phases, its
    edited fork, or a file ``segment`` or *Export…* wrote, opened again): one
    ``[start, stop]`` per axis of the scan, None for the whole scan."""
    from ..io_sources import recorded_roi

    return recorded_roi(layer.metadata.get("napari_paser") if isinstance(layer.metadata, dict) else None)


def edited_planes(history_item: Any, num_planes: int) -> set[int] | None:
    """Planes of a 3-D Labels layer that one napari history item (a ``paint`` event's
    value) changed; None where its atoms are of a form this does not know."""
    planes: set[int] = set()
    for atom in history_item:
        key = getattr(atom, "slice_key", None)  # a masked edit: its bounding box
        if key is not None:
            first = key[0]
            planes.update(range(*first.indices(num_planes)) if isinstance(first, slice) else [int(first)])
        elif isinstance(atom, tuple) and len(atom) == 3:  # (multi-index, old values, new values)
            planes.update(int(z) for z in np.unique(np.asarray(atom[0][0])))
        else:
            return None
    return planes


def phase_colormap() -> DirectLabelColormap:
    """0 pore, 1 carbon-binder, 2 nickel in :data:`CLASS_COLORS`; pending transparent."""
    colors: dict[int | None, Any] = {i: c for i, c in enumerate(CLASS_COLORS)}
    colors.update({PENDING: "transparent", None: "transparent"})
    return DirectLabelColormap(color_dict=colors, background_value=PENDING)


RING_PIXELS = 2
"""Width in image pixels of the ring that frames each patch in the routing layer."""


def ring_cells(patch_size: tuple[int, int]) -> tuple[int, int]:
    """Cells per patch (rows, columns) in the routing layer: one cell is RING_PIXELS wide."""
    ph, pw = patch_size
    return max(1, int(ph) // RING_PIXELS), max(1, int(pw) // RING_PIXELS)


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


def spatial_axis_labels(layer: "napari.layers.Layer") -> tuple[str, ...]:
    """Names of an image layer's spatial axes (2 or 3) for the layers placed over it: its
    own where it names them (``z, y, x`` from another reader, say), else :data:`AXIS_NAMES`
    in place of napari's numbers for unnamed axes."""
    nd = min(layer.ndim, 3)
    own = tuple(str(label) for label in layer.axis_labels[-nd:])
    unnamed = tuple(str(axis) for axis in range(-nd, 0))
    return AXIS_NAMES[-nd:] if own == unnamed else own


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


def map_style(name: str) -> dict:
    """How the :data:`ENTROPY` and :data:`ROUTING` layers are drawn: a run's, and those the
    reader opens from ``segment --entropy --routing`` outputs."""
    if name == ENTROPY:
        return dict(colormap="magma", contrast_limits=(0.0, ENTROPY_MAX), blending="additive", visible=False)
    if name == ROUTING:
        return dict(colormap=routing_colormap(), opacity=0.9, blending="translucent")
    raise ValueError(f"no map called {name!r}")


def lazy_routing_outline(routing: Any, cells: tuple[int, int]) -> Any:
    """:func:`routing_outline` of a (Z, GY, GX) or (GY, GX) routing map, drawn a plane at a
    time as napari reads it (dask), so a map of a big stack is never drawn whole."""
    import dask.array as da

    grid = routing.shape[-2:]
    per_plane = (1,) * (routing.ndim - 2) + tuple(grid)
    lazy = routing.rechunk(per_plane) if isinstance(routing, da.Array) else da.from_array(routing, chunks=per_plane)
    chunks = (1,) * (routing.ndim - 2) + (grid[0] * cells[0], grid[1] * cells[1])
    return lazy.map_blocks(routing_outline, cells, chunks=chunks, dtype=np.uint8)


def _disk_buffers(folder: str, shape: tuple, grid: tuple, cells: tuple[int, int]) -> tuple[Any, Any, Any]:
    """Phase, entropy and routing-ring volumes as Zarr arrays, one chunk per plane."""
    from ..io_writers import create_zarr_array, new_zarr_group

    z, h, w = (int(v) for v in shape)
    rings = (z, int(grid[1]) * cells[0], int(grid[2]) * cells[1])
    g = new_zarr_group(folder)
    labels = create_zarr_array(g, PHASES, shape=(z, h, w), chunks=(1, h, w), dtype="uint8", fill_value=PENDING)
    entropy = create_zarr_array(g, ENTROPY, shape=(z, h, w), chunks=(1, h, w), dtype="float32", fill_value=0.0)
    routing = create_zarr_array(g, ROUTING, shape=rings, chunks=(1, *rings[1:]), dtype="uint8", fill_value=PENDING)
    return labels, entropy, routing


class ResultLayers:
    """Buffers of a run and the napari layers that show them.

    The buffers are always 3-D (plane, row, column); for a 2-D image the layers show
    plane 0 as a view, so filling a slice updates the layer data in place.

    Adding a layer to napari is its most expensive GUI step (about 0.1 s per layer, more
    for the first Labels layer of a session). With ``defer`` the layers are added one per
    :meth:`add_next` call, so a caller can spread them over event-loop turns and keep the
    viewer responsive; the buffers take results from the start, and a layer added later
    shows everything filled before it existed.

    Parameters
    ----------
    viewer : napari.Viewer
    image : napari.layers.Image
        Layer that was segmented: the result layers take its scale and translation.
    shape : (Z, Y, X)
    grid : (Z, GY, GX)
        Patch grid of the routing.
    patch_size : (rows, columns)
    defer : bool
        Add no layer yet: call :meth:`add_next` (or :meth:`add_all`).
    store : str or Path, optional
        Keep the phase, entropy and routing-ring volumes in a Zarr store in this folder
        instead of memory (stacks larger than memory): the layers read it lazily, one
        plane at a time, and the store stays on disk after the session.
    on_edit : callable, optional
        Called with these layers and the planes the edit changed (None: not known) when
        the user edits the phase layer (paint, fill, erase, polygon): the caller should
        :meth:`fork_phases` and write those planes again.
    offset : (plane, row, column)
        Where the segmented region starts in ``image`` (the panel's region box): the
        layers are placed over it.
    """

    def __init__(
        self,
        viewer: "napari.Viewer",
        image: "napari.layers.Image",
        shape: tuple[int, int, int],
        grid: tuple[int, int, int],
        patch_size: tuple[int, int],
        defer: bool = False,
        store: Any = None,
        on_edit: Callable[["ResultLayers", set[int] | None], None] | None = None,
        offset: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        self.viewer = viewer
        self.on_edit = on_edit
        self.is_2d = image.ndim == 2
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.routing = np.full(grid, PENDING, np.uint8)
        self.cells = ring_cells(self.patch_size)
        self.store = None if store is None else str(store)
        self.labels: Any  # numpy in memory, a Zarr array with a store; likewise the other two
        if self.store is None:
            self.labels = np.full(shape, PENDING, np.uint8)
            self.entropy = np.zeros(shape, np.float32)
            self.routing_rings = routing_outline(self.routing, self.cells)
        else:
            self.labels, self.entropy, self.routing_rings = _disk_buffers(self.store, shape, grid, self.cells)
        self.done = np.zeros(shape[0], bool)
        self.metadata: dict[str, Any] = {"source": image.name, "complete": False}
        self.image = {"id": image.unique_id, "name": image.name}  # which image these layers are of
        scale, translate = spatial_geometry(image)
        self.axis_labels = spatial_axis_labels(image)
        translate = translate + np.asarray(offset[-len(scale):], float) * scale  # over the region segmented
        r_scale, r_translate = routing_geometry(scale, translate, self.patch_size)
        # Phases first: it carries the provenance and is what users look at.
        self._specs: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, dict]] = [
            (PHASES, "labels", self.labels, scale, translate,
             dict(colormap=phase_colormap(), opacity=0.6, blending="translucent")),
            (ENTROPY, "image", self.entropy, scale, translate, map_style(ENTROPY)),
            (ROUTING, "labels", self.routing_rings, r_scale, r_translate, map_style(ROUTING)),
        ]
        self._added: dict[str, Any] = {}
        if not defer:
            self.add_all()

    # ------------------------------------------------------------------ layers

    def add_next(self) -> bool:
        """Add (or reuse) the next result layer; returns whether any is still missing."""
        if self.complete:
            return False
        name, kind, data, scale, translate, kwargs = self._specs[len(self._added)]
        layer = self._ensure(name, kind, self._view(data), scale, translate, **kwargs)
        if name == PHASES:
            layer.metadata["napari_paser"] = dict(self.metadata)
            layer.events.paint.connect(self._on_paint)
        self._added[name] = layer
        return not self.complete

    def _on_paint(self, event: Any) -> None:
        # Our own writes fill the buffer and refresh: only a user's edit emits ``paint``.
        # By id: a plugin's viewer hands out proxies of the layers the event's source is.
        phases = self.phases_layer
        if self.on_edit is not None and phases is not None and event.source.unique_id == phases.unique_id:
            self.on_edit(self, {0} if self.is_2d else edited_planes(event.value, len(self.done)))

    def detach(self) -> None:
        """Stop reporting edits (a newer run's layers took over the viewer's layers)."""
        layer = self.phases_layer
        if layer is not None:
            layer.events.paint.disconnect(self._on_paint)

    def fork_phases(self) -> Any:
        """Hand the phase layer, just edited by the user, over to the user; returns it.

        The layer is renamed :data:`EDITED` and is no longer the plugin's: no run or
        re-route writes it again, and its array is the user's. The plugin's results go on
        in a copy of that array, shown in a new, hidden "phases" layer below it (the
        user's edit is in the copy too until the caller writes those planes again, e.g.
        by re-routing them). On disk (``store``) the copy is a new array in the same
        store, its chunk files copied.
        """
        edited = self._added[PHASES]
        edited.events.paint.disconnect(self._on_paint)
        edited.metadata.pop("napari_paser_layer", None)
        edited.metadata["napari_paser"] = {**edited.metadata.get("napari_paser", {}), "edited": True}
        edited.name = EDITED
        self.labels = self._copy_labels()
        i = next(i for i, spec in enumerate(self._specs) if spec[0] == PHASES)
        _, kind, _, scale, translate, kwargs = self._specs[i]
        self._specs[i] = (PHASES, kind, self.labels, scale, translate, kwargs)
        fresh = self._ensure(PHASES, kind, self._view(self.labels), scale, translate, **kwargs, visible=False)
        fresh.metadata["napari_paser"] = dict(self.metadata)
        fresh.events.paint.connect(self._on_paint)
        layers = self.viewer.layers
        layers.move(layers.index(fresh), layers.index(edited))  # just below the user's layer
        self._added = {PHASES: fresh, **{k: v for k, v in self._added.items() if k != PHASES}}
        layers.selection.active = edited  # the user goes on painting their layer
        return edited

    def _copy_labels(self) -> Any:
        if self.store is None:
            return np.array(self.labels)
        import shutil

        import zarr

        # Our store is Zarr format 2 on a local folder (_disk_buffers): an array is a folder
        # of chunk files, so copying the files copies it without decoding a chunk (200
        # planes of 1024² random labels: 0.04 s, against 1.8 s read and written again).
        folder = Path(self.store)
        name = next(f"{PHASES}-{i}" for i in range(1, 10_000) if not (folder / f"{PHASES}-{i}").exists())
        shutil.copytree(folder / self.labels.path, folder / name)
        return zarr.open_group(self.store, mode="r+")[name]

    def add_all(self) -> None:
        """Add every result layer not added yet."""
        while self.add_next():
            pass

    @property
    def complete(self) -> bool:
        """All three layers have been added."""
        return len(self._added) == len(self._specs)

    @property
    def phases_layer(self) -> Any:
        return self._added.get(PHASES)

    @property
    def entropy_layer(self) -> Any:
        return self._added.get(ENTROPY)

    @property
    def routing_layer(self) -> Any:
        return self._added.get(ROUTING)

    @property
    def layers(self) -> tuple:
        """The layers added so far (phases, entropy, routing order)."""
        return tuple(self._added.values())

    def _view(self, a: np.ndarray) -> np.ndarray:
        return a[0] if self.is_2d else a

    def _ensure(self, name: str, kind: str, data: np.ndarray, scale, translate, **kwargs):
        """Reuse our layer of that name (new data, same place in the list) or add one."""
        nd = data.ndim
        geometry = {"scale": np.asarray(scale)[-nd:], "translate": np.asarray(translate)[-nd:]}
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            ours = layer.metadata.get("napari_paser_layer") == name
            if ours and name in (PHASES, ENTROPY, ROUTING) and self._of_another_image(layer):
                self._keep(layer)
                ours = False  # the renamed layer is left as it is; a new one is added below
            elif ours and isinstance(layer, Labels if kind == "labels" else Image) and layer.ndim == nd:
                layer.data = data
                if not (np.allclose(layer.scale, geometry["scale"]) and np.allclose(layer.translate, geometry["translate"])):
                    layer.scale, layer.translate = geometry["scale"], geometry["translate"]
                return layer
            if ours:
                self.viewer.layers.remove(layer)
        add = self.viewer.add_labels if kind == "labels" else self.viewer.add_image
        layer = add(data, name=name, axis_labels=self.axis_labels[-nd:], **geometry, **kwargs)
        layer.metadata["napari_paser_layer"] = name
        layer.metadata["napari_paser_image"] = dict(self.image)
        return layer

    def _of_another_image(self, layer: Any) -> bool:
        # Layers from before this record are taken as the current image's, as they were.
        image = layer.metadata.get("napari_paser_image")
        return isinstance(image, dict) and image.get("id") != self.image["id"]

    def _keep(self, layer: Any) -> None:
        """Leave a result layer of another image to the user, renamed after that image."""
        layer.name = f"{layer.name} ({layer.metadata['napari_paser_image'].get('name', 'earlier image')})"

    def show_differences(self, z: int, differs: np.ndarray) -> Any:
        """Show where slice ``z`` differs from f2 on every patch (``differs``, rows x
        columns): a layer of that one plane over the slice, replacing an earlier check's."""
        _, _, _, scale, translate, _ = next(spec for spec in self._specs if spec[0] == PHASES)
        data = np.asarray(differs, np.uint8)
        translate = np.array(translate, float)
        if not self.is_2d:
            data = data[None]
            translate[0] += z * scale[0]  # one plane, placed at the slice it is of
        colors = DirectLabelColormap(color_dict={0: "transparent", 1: "#ff3030", None: "transparent"}, background_value=0)
        active = self.viewer.layers.selection.active
        layer = self._ensure(F2_DIFFERENCES, "labels", data, scale, translate, colormap=colors, opacity=0.9, blending="translucent")
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # the user goes on with the layer they had
        return layer

    def drop_differences(self) -> None:
        """Remove the layer of :meth:`show_differences` (stale once λ moves)."""
        layer = self.viewer.layers[F2_DIFFERENCES] if F2_DIFFERENCES in self.viewer.layers else None
        if layer is not None and layer.metadata.get("napari_paser_layer") == F2_DIFFERENCES:
            self.viewer.layers.remove(layer)

    # ------------------------------------------------------------------ updates

    def refresh(self) -> None:
        """Redraw the layers added so far (after their buffers changed)."""
        for layer in self.layers:
            layer.refresh()

    def set_slice(
        self, z: int, labels: np.ndarray | None = None, entropy: np.ndarray | None = None, routing: np.ndarray | None = None
    ) -> None:
        """Fill slice ``z`` of any of the three buffers and redraw what changed."""
        if labels is not None:
            self.labels[z] = labels
            self.done[z] = True
        if entropy is not None:
            self.entropy[z] = entropy
        if routing is not None:
            self.store_routing(z, routing)
        for name, given in ((PHASES, labels), (ENTROPY, entropy), (ROUTING, routing)):
            if given is not None and name in self._added:
                self._added[name].refresh()

    def store_routing(self, z: int, routing: np.ndarray) -> None:
        """Keep slice ``z``'s routing (patch grid) and its drawn rings, without redrawing."""
        self.routing[z] = routing
        self.routing_rings[z] = routing_outline(routing, self.cells)

    def set_metadata(self, **info: Any) -> None:
        """Merge provenance (bundle, λ, TVD, route fractions, GFLOPs...) into the phases layer."""
        self.metadata.update(info)
        self.metadata["complete"] = bool(self.done.all())
        self.metadata["slices_done"] = int(self.done.sum())
        self.metadata["slices_total"] = int(self.done.size)
        if self.phases_layer is not None:
            self.phases_layer.metadata["napari_paser"] = dict(self.metadata)

    def alive(self) -> bool:
        """True while every layer added so far is still in the viewer."""
        return all(layer in self.viewer.layers for layer in self.layers)
