"""The PaSeR dock widget: pick an image and a bundle, run, move λ/TVD, read statistics, export.

The widget holds no method logic: it gathers the user's choices, runs the generators of
:mod:`._jobs` in a napari thread worker (or synchronously for tests and scripts) and
shows their messages in the "phases", "entropy" and "routing" layers and the statistics
panel. torch is imported by the jobs only, so opening the widget does not import it.
"""

from __future__ import annotations

import functools
import importlib
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine import registry
from ..engine.registry import bundle_blend_width, bundle_default_lam, bundle_patch_size, check_bundle_folder
from ..errors import PaserInputError, one_line
from . import _jobs, _stats
from ._export import export_steps, export_targets
from ._launch import JobCallbacks, job_worker, run_here
from ._layers import ResultLayers, crop, full_resolution
from ._qt_rows import hbox_row
from ._stats import StatsPanel, summarize
from ._tooltips import LOAD_BUNDLE_ITEM, NO_GROUND_TRUTH, TOOLTIPS
from ._value_slider import LinearScale, LogScale, ValueSlider

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from ..io_sources import Box

__all__ = ["PaserWidget"]

MAX_SESSIONS = 2  # each segmenter caches a whole volume's analysis: keep memory bounded
SHOWN_RUN: Any = object()
"""A ``box`` argument meaning the region of the run on show (None is the whole image)."""
DEBOUNCE_MS = 50
MODES = {"λ (cost weight)": "lam", "TVD (budget)": "tvd"}
JOB_TITLES = {"run": "run", "reroute": "re-routing", "export": "export", "compare": "comparison", "check": "check against f2"}
LAM_SCALE = LogScale(low=1e-4, high=1.0, steps=400)
"""λ's slider: 0, then 1e-4 to 1 in steps of 2.3 % (a bundle's useful λ spans decades)."""
TVD_SCALE = LinearScale(maximum=0.5, steps=500)
STORE_DEFAULT_TEXT = "Big stacks to: temporary folder…"
TIFF_FILTER, ZARR_FILTER = "TIFF (*.tif *.tiff)", "OME-Zarr (*.zarr)"
"""The export dialog's formats (a name ending in .zarr writes OME-Zarr either way)."""


# napari imports these the first time a Labels layer is made (features table, colour
# conversion). Importing them once in a background thread when the widget opens keeps
# that import (about a second) off the event loop when the first run adds its layers.
_WARM_MODULES = ("pandas", "scipy.linalg", "skimage.color", "skimage.exposure")
_warmed = threading.Event()


def _warm_imports() -> None:
    for name in _WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # optional for napari: it will not need it either
            pass
    try:
        # A Labels layer's polygon overlay builds vispy's dash patterns (pure numpy,
        # cached per process, ~60 ms): build them here rather than in the first run.
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except (ImportError, AttributeError, TypeError, ValueError):
        pass  # a private vispy helper: if it changed, napari pays the cost as before


def _start_warm_imports() -> None:
    if not _warmed.is_set():
        _warmed.set()
        threading.Thread(target=_warm_imports, name="napari-paser-warm-imports", daemon=True).start()


class PaserWidget(QWidget):
    """Dock widget running PaSeR on an image layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari.

    Attributes
    ----------
    blocking : bool
        Run jobs synchronously on the calling thread (tests, scripts) instead of in a
        thread worker. ``run(blocking=...)`` overrides it per call.
    reroute_ms : list of float
        Duration of every synchronous visible-slice re-route (milliseconds).
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.blocking = False
        self.reroute_ms: list[float] = []
        self._sessions: OrderedDict[tuple, _jobs.Session] = OrderedDict()
        # Stacks too big for memory are segmented into a Zarr store in a new folder under
        # this one (None: the system's temporary folder).
        self.store_folder: str | None = None
        self._active: _jobs.Session | None = None  # session behind the result layers
        self._source: Image | None = None  # image layer behind the result layers
        self._layers: ResultLayers | None = None
        self._layers_shown: threading.Event | None = None
        self._per_slice = np.zeros((0, 3))
        self._confusion: np.ndarray | None = None  # per slice against the ground truth (summarize)
        self._compare_pending = False  # the ground truth changed while a job ran
        self._result = None
        self._lam_shown: float | None = None  # λ of the composed layers
        self._f2_check: _jobs.F2Check | None = None  # the last check of a slice against f2 everywhere
        self._worker: GeneratorWorker | None = None
        self._job: str | None = None  # a key of JOB_TITLES while a job runs
        self._generation = 0  # messages of older jobs are ignored
        self._job_started = 0.0
        self._pbar: progress | None = None
        self._reroute_pending = False
        self._recompose: set[int] = set()  # planes of PaSeR's phase layer that hold a user's edit
        self._box: Box | None = None  # the region of the shown run's image (None: all of it)
        self._pending_box: Box | None = None  # the region of the run being started
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.reroute)
        _start_warm_imports()
        self._build()
        self._connect_viewer()
        self._refresh_layer_choices()

    # ================================================================== UI

    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.bundle_combo = QComboBox()
        self.mc_spin = QSpinBox()
        self.mc_spin.setRange(0, 64)
        self.mc_spin.setSpecialValueText("bundle default")
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MODES))
        self.lam_control = ValueSlider(LAM_SCALE, 0.5, decimals=5)
        self.tvd_control = ValueSlider(TVD_SCALE, 0.2, decimals=3)
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.device_label = QLabel("chosen when a run starts")
        self.bf16_check = QCheckBox("bf16")
        self.blend_check = QCheckBox("blend across borders")
        self._blend_wanted = True  # ticked wherever the bundle reads a halo (see _use_bundle)
        self.gt_combo = QComboBox()
        self.check_button = QPushButton("Check slice against f2")
        self.stats = StatsPanel()
        self.masks_check = QCheckBox("per-phase masks")
        self.export_button = QPushButton("Export…")
        self.status_label = QLabel("Ready.")
        self.status_label.setWordWrap(True)
        self.store_button = QPushButton(STORE_DEFAULT_TEXT)
        self.roi_edit = QLineEdit()
        self.roi_edit.setPlaceholderText("whole image")
        self.roi_button = QPushButton("From shapes")

        for widget, key in [
            (self.image_combo, "image"), (self.bundle_combo, "bundle"), (self.mc_spin, "mc_passes"),
            (self.mode_combo, "mode"), (self.lam_control, "lam"),
            (self.tvd_control, "tvd"), (self.run_button, "run"),
            (self.cancel_button, "cancel"), (self.device_label, "device"), (self.bf16_check, "bf16"), (self.blend_check, "blend"),
            (self.gt_combo, "ground_truth"),
            (self.check_button, "check_f2"),
            (self.masks_check, "export_masks"), (self.export_button, "export"), (self.status_label, "status"),
            (self.store_button, "store"), (self.roi_edit, "roi"), (self.roi_button, "roi_from_shapes"),
        ]:
            widget.setToolTip(TOOLTIPS[key])

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Region", hbox_row(self.roi_edit, self.roi_button))
        form.addRow("Bundle", self.bundle_combo)
        form.addRow("MC passes", self.mc_spin)
        form.addRow("Mode", self.mode_combo)
        form.addRow("λ", self.lam_control)
        form.addRow("TVD", self.tvd_control)
        form.addRow(hbox_row(self.run_button, self.cancel_button))
        form.addRow("Device", hbox_row(self.device_label, self.bf16_check))
        form.addRow("Patches", self.blend_check)
        stats_box = QGroupBox("Statistics")
        stats_box.setToolTip(TOOLTIPS["stats"])
        stats_form = QFormLayout(stats_box)
        stats_form.addRow("Ground truth", self.gt_combo)
        stats_form.addRow(self.check_button)
        stats_form.addRow(self.stats)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(stats_box)
        layout.addWidget(hbox_row(self.masks_check, self.export_button))
        layout.addWidget(self.store_button)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self._fill_bundles()
        self._use_bundle()
        self.bundle_combo.activated.connect(self._on_bundle_activated)
        self.bundle_combo.currentIndexChanged.connect(self._use_bundle)
        self.blend_check.toggled.connect(self._on_blend_toggled)
        self.mode_combo.currentIndexChanged.connect(self._on_mode)
        self.lam_control.valueChanged.connect(self._on_slider)
        self.tvd_control.valueChanged.connect(self._on_slider)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(lambda: self.export())
        self.store_button.clicked.connect(self._choose_store_folder)
        self.roi_button.clicked.connect(lambda: self.roi_from_shapes())
        self.check_button.clicked.connect(lambda: self.check_against_f2())
        self.masks_check.toggled.connect(self._on_masks_toggled)
        self.gt_combo.currentIndexChanged.connect(self._on_ground_truth)
        self._on_mode()

    def _choose_store_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the results of stacks too big for memory")
        if folder:
            self.set_store_folder(folder)

    def set_store_folder(self, folder: str | Path | None) -> None:
        """Segment stacks too big for memory into a Zarr store under ``folder`` (None: temporary folder)."""
        self.store_folder = str(folder) if folder else None
        self.store_button.setText(f"Big stacks to: {Path(folder).name}/" if folder else STORE_DEFAULT_TEXT)

    def _fill_bundles(self, select: str | None = None) -> None:
        """Bundled models (default first), folders loaded by the user, then the loader."""
        extra = [self.bundle_combo.itemData(i) for i in range(self.bundle_combo.count())]
        bundled = registry.list_bundles()
        known = {str(b.path) for b in bundled}
        extra = [p for p in extra if p and p not in known]
        self.bundle_combo.blockSignals(True)
        self.bundle_combo.clear()
        for b in bundled:
            self.bundle_combo.addItem(f"{b.name} {b.version}".strip(), str(b.path))
        for p in extra:
            self.bundle_combo.addItem(f"{Path(p).name} (folder)", p)
        self.bundle_combo.addItem(LOAD_BUNDLE_ITEM, None)
        index = self.bundle_combo.findData(select) if select else 0
        self.bundle_combo.setCurrentIndex(max(index, 0))
        self.bundle_combo.blockSignals(False)

    # ================================================================== viewer

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "reordered"):
            getattr(events, name).connect(self._refresh_layer_choices)
        events.inserted.connect(self._watch_layer)
        events.removed.connect(self._on_layer_removed)
        for layer in self.viewer.layers:
            self._watch_layer(layer)

    def _watch_layer(self, event_or_layer: Any) -> None:
        layer = getattr(event_or_layer, "value", event_or_layer)
        layer.events.name.connect(self._refresh_layer_choices)
        if isinstance(layer, Image):
            # New pixels invalidate that layer's cached analyses.
            layer.events.data.connect(lambda _e, lid=layer.unique_id: self._forget(lid))

    def _forget(self, layer_id: str) -> None:
        for key in [k for k in self._sessions if k[0] == layer_id]:
            del self._sessions[key]
        if self._active is not None and self._active.key[0] == layer_id:
            self._active = None

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        if isinstance(layer, Image) and layer.metadata.get("napari_paser_layer") is None:
            self._forget(layer.unique_id)
        if self._layers is not None and not self._layers.alive():
            # A result layer was deleted: its run can no longer be shown or re-routed.
            self.cancel()
            self._layers, self._active = None, None

    def _refresh_layer_choices(self, *_: Any) -> None:
        """Image picker: Image layers that are not our own outputs; GT picker: Labels."""
        images = [
            l.name for l in self.viewer.layers
            if isinstance(l, Image) and l.metadata.get("napari_paser_layer") is None
        ]
        truths = [
            l.name for l in self.viewer.layers
            if isinstance(l, Labels) and l.metadata.get("napari_paser_layer") is None
        ]
        for combo, names, lead in ((self.image_combo, images, []), (self.gt_combo, truths, [NO_GROUND_TRUTH])):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(lead + names)
            if current in lead + names:
                combo.setCurrentText(current)
            combo.blockSignals(False)

    # ================================================================== properties

    @property
    def image_layer(self) -> Any:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    @image_layer.setter
    def image_layer(self, layer: Any) -> None:
        name = getattr(layer, "name", layer)
        if self.image_combo.findText(str(name)) < 0:
            kind = type(layer).__name__ if not isinstance(layer, str) else "unknown"
            show_error(f"PaSeR segments grey-level Image layers; {name!r} ({kind}) is not one")
            return
        self.image_combo.setCurrentText(str(name))

    @property
    def ground_truth_layer(self) -> Labels | None:
        name = self.gt_combo.currentText()
        return self.viewer.layers[name] if name != NO_GROUND_TRUTH and name in self.viewer.layers else None

    @ground_truth_layer.setter
    def ground_truth_layer(self, layer: Labels | None) -> None:
        self.gt_combo.setCurrentText(NO_GROUND_TRUTH if layer is None else layer.name)

    @property
    def mode(self) -> str:
        return MODES[self.mode_combo.currentText()]

    @mode.setter
    def mode(self, value: str) -> None:
        self.mode_combo.setCurrentText(next(k for k, v in MODES.items() if v == value))

    @property
    def lam(self) -> float:
        return self.lam_control.value

    @lam.setter
    def lam(self, value: float) -> None:
        self.lam_control.value = value

    @property
    def tvd(self) -> float:
        return self.tvd_control.value

    @tvd.setter
    def tvd(self, value: float) -> None:
        self.tvd_control.value = value

    @property
    def precision(self) -> str:
        """Of the f1/f2 patches of the next run: "bf16" when its box is ticked, else "fp32"."""
        return "bf16" if self.bf16_check.isChecked() else "fp32"

    @property
    def bundle_path(self) -> Path | None:
        data = self.bundle_combo.currentData()
        return Path(data) if data else None

    @property
    def worker(self) -> Any:
        """The running thread worker (None when idle or after a blocking run)."""
        return self._worker

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def result_layers(self) -> ResultLayers | None:
        return self._layers

    # ================================================================== bundles

    def _use_bundle(self, *_: Any) -> None:
        """Start the λ slider at the chosen bundle's recommended λ (the one ``segment``
        uses), without re-routing a run already shown; offer blending where its f1 and f2
        read a halo (there is nothing to blend otherwise)."""
        folder = self.bundle_path
        can_blend = folder is not None and bundle_blend_width(folder) > 0
        self.blend_check.blockSignals(True)
        self.blend_check.setEnabled(can_blend)
        self.blend_check.setChecked(can_blend and self._blend_wanted)
        self.blend_check.blockSignals(False)
        lam = bundle_default_lam(folder) if folder is not None else None
        if lam is None:
            return
        self.lam_control.set_value_silently(lam)

    def _on_blend_toggled(self, checked: bool) -> None:
        self._blend_wanted = bool(checked)  # kept for the bundles that can blend

    def _on_bundle_activated(self, index: int) -> None:
        if self.bundle_combo.itemData(index) is None:
            folder = QFileDialog.getExistingDirectory(self, "Choose a PaSeR bundle folder")
            if folder:
                self.add_bundle_folder(folder)
            else:
                self._fill_bundles()

    def add_bundle_folder(self, folder: str | Path) -> bool:
        """Add a bundle folder to the picker and select it; notify and refuse a non-bundle."""
        folder = Path(folder).expanduser()
        problem = check_bundle_folder(folder)
        if problem:
            show_error(problem)
            self._fill_bundles(str(self.bundle_path) if self.bundle_path else None)
            return False
        if self.bundle_combo.findData(str(folder)) < 0:
            self.bundle_combo.insertItem(self.bundle_combo.count() - 1, f"{folder.name} (folder)", str(folder))
        self.bundle_combo.setCurrentIndex(self.bundle_combo.findData(str(folder)))
        return True

    # ================================================================== running

    def _check_image(self, layer: Any, patch: tuple[int, int] | None, plane: tuple[int, ...] | None = None) -> str | None:
        """Why ``layer`` (its region's ``plane`` rows and columns) cannot be segmented
        (None if it can); cheap checks only."""
        if layer is None:
            return "choose an image layer to segment first"
        if not isinstance(layer, Image):
            return f"{layer.name!r} is a {type(layer).__name__} layer; PaSeR segments Image layers"
        if layer.rgb:
            return f"{layer.name!r} is an RGB image; convert it to one grey-level channel first"
        if layer.ndim not in (2, 3):
            return f"{layer.name!r} is {layer.ndim}-D; PaSeR needs a 2-D slice or a (plane, row, column) stack"
        data = full_resolution(layer)  # a pyramid is segmented at its full resolution
        dtype = np.dtype(data.dtype)
        if dtype == bool or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            return f"{layer.name!r} has {dtype} pixels; PaSeR needs integer or float grey levels"
        rows, cols = plane or data.shape[-2:]
        if patch and (rows < patch[0] or cols < patch[1]):
            where = "the region's" if plane else f"{layer.name!r}"
            return f"{where} slices are {rows}x{cols} pixels, smaller than one {patch[0]}x{patch[1]} patch"
        return None

    def _visible_slice(self, layer: Any | None = None, box: Any = SHOWN_RUN) -> int:
        """The slice on screen, counted in a run's region (``box``, None for the whole
        image; default: the region of the run on show)."""
        layer = layer or self._source or self.image_layer
        if layer is None or layer.ndim < 3:
            return 0
        box = self._box if box is SHOWN_RUN else box
        (z0, z1), _, _ = box or ((0, full_resolution(layer).shape[-3]), None, None)
        z = layer.world_to_data(self.viewer.dims.point)[-3]
        return int(np.clip(round(float(z)) - z0, 0, z1 - z0 - 1))

    def region(self, layer: Any | None = None) -> Box | None:
        """The box of ``layer`` (default: the chosen image) that the *Region* field names,
        None for the whole image; raises :class:`PaserInputError` for a bad one."""
        from ..io_sources import parse_roi

        text = self.roi_edit.text().strip()
        layer = layer or self.image_layer
        if not text or layer is None:
            return None
        data = full_resolution(layer)
        shape = data.shape if layer.ndim == 3 else (1, *data.shape)
        return parse_roi(text, shape, layer.ndim)

    def roi_from_shapes(self, shapes: Any | None = None) -> str | None:
        """Fill *Region* with the rows and columns the shapes of a Shapes layer cover, over
        every plane (``shapes``: that layer; default: the selected Shapes layer, else the
        top one). Returns the text, or None (notified) when there is nothing to take."""
        image = self.image_layer
        if shapes is None:
            active = self.viewer.layers.selection.active
            candidates = [active] if isinstance(active, Shapes) else [lay for lay in reversed(self.viewer.layers) if isinstance(lay, Shapes)]
            shapes = next((lay for lay in candidates if len(lay.data)), None)
        if image is None or shapes is None or not len(shapes.data):
            show_error("draw a rectangle in a Shapes layer over the image first")
            return None
        points = np.array([image.world_to_data(shapes.data_to_world(v)) for shape in shapes.data for v in shape])[:, -2:]
        rows, cols = full_resolution(image).shape[-2:]
        # The pixels whose centre-cell the shapes reach (pixel i spans i - 0.5 .. i + 0.5).
        y0, x0 = np.clip(np.floor(points.min(0) + 0.5).astype(int), 0, (rows, cols))
        y1, x1 = np.clip(np.floor(points.max(0) + 0.5).astype(int) + 1, 0, (rows, cols))
        if y1 <= y0 or x1 <= x0:
            show_error(f"the shapes of {shapes.name!r} lie outside {image.name!r}")
            return None
        text = (":," if image.ndim == 3 else "") + f"{y0}:{y1},{x0}:{x1}"
        self.roi_edit.setText(text)
        return text

    def _ground_truth(self, shape: tuple[int, ...], warn: bool = True, box: Any = SHOWN_RUN) -> Any:
        """The chosen ground truth's (Z, Y, X) data if it fits the image, else None (warned);
        a truth of the whole image is cut to the run's region (``box``, None for the whole
        image; default: the region of the run on show).

        A lazily read layer is not read here: the jobs read it a slice at a time and leave
        out of the IoU any slice that is not labels 0, 1, 2."""
        layer = self.ground_truth_layer
        if layer is None:
            return None
        gt = full_resolution(layer)
        gt = gt[None] if gt.ndim == 2 else gt
        box = self._box if box is SHOWN_RUN else box
        if box is not None and tuple(gt.shape) != tuple(shape):
            gt = crop(gt, box)  # a truth of the whole image: the run's region of it
        problem = None
        if tuple(gt.shape) != tuple(shape):
            problem = f"has shape {tuple(gt.shape)}, not the image's {tuple(shape)}"
        elif not np.issubdtype(gt.dtype, np.integer) or (isinstance(gt, np.ndarray) and (gt.min() < 0 or gt.max() > 2)):
            problem = "is not made of labels 0 (pore), 1 (carbon-binder), 2 (nickel)"
        if problem:
            if warn:
                show_warning(f"ground truth {layer.name!r} {problem}: no IoU is reported")
            return None
        return gt

    def run(self, blocking: bool | None = None) -> Any:
        """Segment the chosen image with the chosen bundle.

        Returns the started worker, or, with ``blocking``, the :class:`_jobs.Outcome`
        (None if the run failed or could not start; the reason is notified).
        """
        if self.busy:
            show_warning("a PaSeR run is already in progress: wait for it or press Cancel")
            return None
        layer, bundle = self.image_layer, self.bundle_path
        if bundle is None:
            show_error("choose a model bundle first (or load a bundle folder)")
            return None
        problem = check_bundle_folder(bundle) or self._check_image(layer, bundle_patch_size(bundle))
        if problem:
            show_error(problem)
            return None
        try:
            box = self.region(layer)
        except PaserInputError as err:
            show_error(f"Region: {err}")
            return None
        data = full_resolution(layer)
        if box is not None:
            from ..io_sources import box_ranges

            data = crop(data, box_ranges(box, layer.ndim))
        problem = self._check_image(layer, bundle_patch_size(bundle), data.shape[-2:])
        if problem:
            show_error(problem)
            return None
        mc = self.mc_spin.value() or None
        precision = self.precision
        blend = self.blend_check.isChecked() and self.blend_check.isEnabled()
        key = (layer.unique_id, str(bundle), mc, box, precision, blend)
        shape = data.shape if layer.ndim == 3 else (1, *data.shape)
        store = None
        if _jobs.needs_streaming(data, blend):  # results to a Zarr store on disk, shown lazily
            if self.store_folder:
                Path(self.store_folder).mkdir(parents=True, exist_ok=True)
            store = str(Path(tempfile.mkdtemp(prefix="napari-paser-", dir=self.store_folder)) / f"{layer.name}_results.zarr")
        request = _jobs.RunRequest(
            data=data, key=key, bundle_path=bundle, mc_passes=mc, mode=self.mode, lam=self.lam,
            tvd=self.tvd, order=[self._visible_slice(layer, box)], session=self._sessions.get(key),
            ground_truth=self._ground_truth(shape, box=box), store=store, precision=precision, blend_borders=blend,
        )
        self._pending_source, self._pending_box = layer, box
        self._set_status(f"Running on {layer.name!r}…")
        return self._start("run", _jobs.run_job, request, blocking=blocking)

    def _start(self, kind: str, job: Any, *args: Any, blocking: bool | None = None) -> Any:
        self._generation += 1
        gen = self._generation
        self._job = kind
        self._job_started = time.perf_counter()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._close_progress()
        self._pbar = progress(total=0, desc=f"PaSeR {JOB_TITLES[kind]}")
        callbacks = JobCallbacks(
            message=lambda msg: self._on_message(msg, gen),
            returned=lambda out: self._on_returned(out, gen),
            errored=lambda err: self._on_errored(err, gen),
            finished=lambda: self._on_finished(gen),
            aborted=lambda: self._on_aborted(gen),
        )
        if self.blocking if blocking is None else blocking:
            return run_here(job(*args), callbacks)
        self._worker = job_worker(job, args, callbacks, owner=self)
        self._worker.start()
        return self._worker

    def cancel(self) -> None:
        """Stop the running job after the slice in progress; finished slices stay (a
        cancelled export leaves no file)."""
        self._debounce.stop()
        if self._worker is not None:
            self._set_status("Cancelling the export…" if self._job == "export" else "Cancelling after the current slice…")
            self._worker.quit()
            self._release_worker()

    # ------------------------------------------------------------------ messages

    def _on_message(self, msg: Any, gen: int) -> None:
        if gen != self._generation:
            if isinstance(msg, _jobs.Ready):
                msg.shown.set()  # nothing will be shown: let the superseded job end
            return  # a superseded job
        if self._job == "export":
            if self._pbar is not None:
                done, total = msg
                self._pbar.total = total
                self._pbar.update(done - self._pbar.n)
        elif isinstance(msg, _jobs.Ready):
            self._on_ready(msg)
        elif isinstance(msg, _jobs.Stage) and self._pbar is not None:
            # One bar per job, reset per stage: making a bar costs the GUI ~0.1 s.
            pbar = self._pbar
            pbar.n = 0
            pbar.total = msg.total
            pbar.set_description(f"PaSeR {msg.name}")
        elif isinstance(msg, _jobs.Compared):
            if self._confusion is not None:
                self._confusion[msg.z] = msg.confusion
            if self._pbar is not None:
                self._pbar.update(1)
        elif isinstance(msg, _jobs.SliceDone) and self._layers is not None and self._layers.alive():
            z = msg.z
            visible = z == self._visible_slice() or self.viewer.dims.ndisplay == 3
            if msg.labels is not None:
                self._layers.labels[z] = msg.labels
                self._layers.done[z] = True
                self._per_slice[z] = msg.fractions
            if msg.confusion is not None and self._confusion is not None:
                self._confusion[z] = msg.confusion
            if msg.entropy is not None:
                self._layers.entropy[z] = msg.entropy
            if msg.routing is not None:
                self._layers.store_routing(z, msg.routing)
            if visible:  # redraw only what is on screen: other slices are sliced on demand
                self._layers.refresh()
            if self._pbar is not None:
                self._pbar.update(1)

    def _on_ready(self, msg: _jobs.Ready) -> None:
        session = msg.session
        self._sessions[session.key] = session
        self._sessions.move_to_end(session.key)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        self._active, self._source = session, self._pending_source
        threaded = self._worker is not None
        if self._layers is not None:
            self._layers.detach()  # the new run reuses the "phases" layer
        self._box = self._pending_box
        (z0, _), (y0, _), (x0, _) = self._box or ((0, 0), (0, 0), (0, 0))
        self._layers = ResultLayers(self.viewer, self._source, msg.shape, msg.grid, msg.patch_size, defer=threaded, store=msg.store,
                                    on_edit=self._on_phases_edited, offset=(z0, y0, x0))
        if self._box is not None:  # where the labels lie in the image: (start, stop) of planes, rows, columns
            from ..io_sources import box_ranges

            self._layers.set_metadata(roi=box_ranges(self._box, self._source.ndim))
        self._layers_shown = msg.shown
        if threaded:
            self._add_layers_stepwise(self._layers)
        else:
            msg.shown.set()
        self._per_slice = np.full((msg.shape[0], 3), np.nan)
        self._confusion = _stats.no_comparison(msg.shape[0]) if self.ground_truth_layer is not None else None
        self._result = None
        self._f2_check = None
        self._layers.drop_differences()  # of the run before
        self.device_label.setText(session.device)

    def _on_phases_edited(self, layers: ResultLayers, planes: set[int] | None) -> None:
        """The user painted on the phase layer: make it theirs, and keep PaSeR's results
        in a new "phases" layer, whose painted planes are composed again from the engine."""
        if layers is not self._layers:
            return
        edited = layers.fork_phases()
        show_info(f"Your edits are kept in the layer '{edited.name}', which PaSeR will not change; save it with "
                  "File > Save Selected Layers. PaSeR's results go on in a new, hidden 'phases' layer, which the λ "
                  "slider and Export… use.")
        self._recompose.update(planes if planes is not None else np.flatnonzero(layers.done).tolist())
        if not self.busy:  # else when the job ends: a running job writes into the new layer too
            self._recompose_edited()

    def _recompose_edited(self) -> None:
        """Write the engine's labels over the user's edits copied into PaSeR's new layer."""
        planes, self._recompose = sorted(self._recompose), set()
        if planes:
            self.reroute(slices=planes)

    def _add_layers_stepwise(self, layers: ResultLayers) -> None:
        """Add the result layers one per event-loop turn: each napari layer takes ~0.1 s
        to build, all three in one turn would freeze the viewer for their sum."""

        def step() -> None:
            if self._layers is layers and layers.alive() and layers.add_next():
                QTimer.singleShot(0, step)
            else:
                self._release_worker()

        QTimer.singleShot(0, step)

    def _release_worker(self) -> None:
        """Let a run paused for its result layers go on (see :class:`_jobs.Ready`)."""
        if self._layers_shown is not None:
            self._layers_shown.set()
            self._layers_shown = None

    def _on_returned(self, outcome: _jobs.Outcome | list[Path] | np.ndarray, gen: int) -> None:
        if gen != self._generation or outcome is None or self._layers is None:
            return
        if isinstance(outcome, list):  # an export's files
            show_info(f"exported {len(outcome)} files to {outcome[0].parent}")
            self._set_status(f"Exported {outcome[0].name}.")
            return
        if isinstance(outcome, np.ndarray):  # a comparison's confusions
            self._confusion = outcome
            self._publish_comparison()
            self._set_status("Compared with the ground truth.")
            return
        if isinstance(outcome, _jobs.F2Check):
            self._f2_check = outcome
            self._layers.show_differences(outcome.z, outcome.differs)
            self._publish(self.stats.stats)  # the statistics shown, now with the check
            self._set_status(f"Slice {outcome.z} at λ = {outcome.lam:.4g}: {100 * outcome.agreement:.2f} % of its pixels as with "
                             f"f2 on every patch ({outcome.seconds:.1f} s).")
            return
        self._layers.add_all()  # a quick job can end before the stepwise adding did
        self._result, self._lam_shown = outcome.result, outcome.lam
        if outcome.result is None:
            self._publish(outcome.stats, note="partial run: GFLOPs are reported once every slice is segmented")
        else:
            self._publish(outcome.stats)
        if self._job == "run":
            self._set_status(f"Done in {time.perf_counter() - self._job_started:.1f} s at λ = {outcome.lam:.4g}.")
        else:
            self._set_status(f"Re-routed at λ = {outcome.lam:.4g}.")

    def _on_errored(self, err: BaseException, gen: int) -> None:
        if gen != self._generation:
            return
        show_error(f"PaSeR {JOB_TITLES[self._job] if self._job else 'job'} failed: {one_line(err)}")
        self._set_status(f"Failed: {one_line(err)}")
        if self._job in ("run", "reroute"):
            self._publish_partial()

    def _on_aborted(self, gen: int) -> None:
        if gen != self._generation:
            return
        if self._job == "run" and self._layers is not None:
            done, total = int(self._layers.done.sum()), self._layers.done.size
            show_info(f"PaSeR run cancelled: {done} of {total} slices segmented, the others left empty")
            self._set_status(f"Cancelled: {done} of {total} slices segmented.")
            self._publish_partial()
        elif self._job == "export":
            show_info("PaSeR export cancelled: no file was written")
            self._set_status("Export cancelled.")
        elif self._job == "compare":
            self._publish_comparison()
            self._set_status("Comparison cancelled: the IoU is over the slices compared.")

    def _on_finished(self, gen: int) -> None:
        if gen != self._generation:
            return
        if self._layers is not None and self._layers.alive():
            self._layers.add_all()  # cancelled or failed before the stepwise adding ended
        self._release_worker()
        self._close_progress()
        self._worker, self._job = None, None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self._compare_pending:
            self._compare_pending = False
            self._on_ground_truth()
        if self._reroute_pending:
            self._reroute_pending = False
            self._recompose.clear()  # the re-route writes every plane
            self._debounce.start()
        elif self._recompose:
            self._recompose_edited()

    def _close_progress(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _publish(self, stats: dict, note: str = "") -> None:
        """Statistics to the panel and provenance to the phases layer (read by the writer)."""
        if self._layers is None or self._active is None:
            return
        report: dict = self._result.report() if self._result is not None else {}
        if self._f2_check is not None and self._f2_check.lam != self._lam_shown:  # stale once λ moves: check again
            self._f2_check = None
            self._layers.drop_differences()
        if self._f2_check is not None:
            stats = {**stats, "f2_check": self._f2_check.as_stats()}
        self._layers.set_metadata(
            bundle=self._active.bundle, device=self._active.device, precision=self._active.precision, mode=self.mode,
            lam=self._lam_shown, tvd=stats.get("tvd", self.tvd if self.mode == "tvd" else None),
            route_fraction=stats.get("route_fraction"), gflops_total=stats.get("gflops_total"),
            gflops_f2_everywhere=stats.get("gflops_f2_everywhere"), statistics=stats, report=report,
            export_masks=self.masks_check.isChecked(),
        )
        self.stats.show_stats(stats, note)

    def _publish_partial(self) -> None:
        """Statistics of the slices finished so far (after a cancel or a failure)."""
        if self._layers is None or not self._layers.done.any():
            return
        self._result = None
        stats = self._summary()
        self._lam_shown = self._lam_shown if self._lam_shown is not None else self.lam
        self._publish(stats, note="partial run: GFLOPs are reported once every slice is segmented")

    # ================================================================== live re-routing

    def _on_mode(self, *_: Any) -> None:
        lam_mode = self.mode == "lam"
        self.lam_control.setEnabled(lam_mode)
        self.tvd_control.setEnabled(not lam_mode)
        self._on_slider()

    def _on_slider(self, *_: Any) -> None:
        if self._active is not None:
            self._debounce.start()  # coalesce a drag into one re-route

    def check_against_f2(self, blocking: bool | None = None) -> Any:
        """Compare the slice on screen, as routed at the λ shown, with every patch on f2
        (the costliest routing): the share of pixels alike and the mean IoU appear in the
        statistics until λ moves. The f2 patches stay cached, so checking again after
        moving λ is quick. Returns the worker, or with ``blocking`` the :class:`_jobs.F2Check`
        (None if it could not start; the reason is notified)."""
        if self.busy:
            show_warning("wait for the running job to finish before checking against f2")
            return None
        if self._active is None or self._layers is None or not self._layers.alive() or self._lam_shown is None:
            show_error("nothing to check yet: run PaSeR first")
            return None
        z = self._visible_slice()
        if not self._layers.done[z]:
            show_error(f"slice {z} is not segmented yet")
            return None
        self._set_status(f"Checking slice {z} against f2…")
        return self._start("check", _jobs.check_against_f2_job, self._active, z, self._lam_shown, blocking=blocking)

    def _target_lam(self, session: _jobs.Session) -> float | None:
        """λ for the sliders; None if the engine is busy for now (the caller retries)."""
        if self.mode == "lam":
            return self.lam
        if not session.lock.acquire(timeout=0.05):
            return None
        try:
            return float(session.segmenter.lam_for_tvd(self.tvd))
        finally:
            session.lock.release()

    def reroute(self, blocking: bool | None = None, slices: list[int] | None = None) -> Any:
        """Re-route the shown run for the sliders' λ/TVD from the engine's caches.

        The visible slice is re-composed at once on this thread when every patch it needs
        is cached; the other slices (and the visible one otherwise) follow in a worker.
        ``slices``: only these (default: every segmented slice).
        """
        if self._active is None or self._layers is None or not self._layers.alive():
            return None
        if self._job in ("run", "export", "compare", "check"):
            self._reroute_pending = True  # applied when the job ends (an export or a comparison reads the layer)
            return None
        if self._worker is not None:
            self._worker.quit()  # superseded: its messages are ignored from now on
            self._worker = None
        session, seg = self._active, self._active.segmenter
        lam = self._target_lam(session)
        if lam is None:  # a superseded worker is finishing its slice: try again shortly
            self._debounce.start()
            return None
        wanted = range(seg.num_slices) if slices is None else sorted(set(slices))
        analysed = [z for z in wanted if self._layers.done[z] and seg.is_analysed(z)]
        if not analysed:
            return None
        z = self._visible_slice()
        if z in analysed:
            shown_now = self._reroute_visible_now(session, lam, z)
            analysed.remove(z)
            if not shown_now or self._confusion is not None:  # to compose, or to compare with the truth off this thread
                analysed.insert(0, z)
        self._lam_shown = lam
        self._set_status(f"Re-routing at λ = {lam:.4g}…")
        return self._start(
            "reroute", _jobs.reroute_job, session, lam, self.mode, self.tvd, analysed, self._per_slice,
            self._layers.done.copy(), self._confusion, self._ground_truth(self._layers.labels.shape, warn=False),
            blocking=blocking,
        )

    def _reroute_visible_now(self, session: _jobs.Session, lam: float, z: int) -> bool:
        """Recompose slice ``z`` on the GUI thread if it needs no network; True if done."""
        from ._stats import slice_fractions

        if not session.lock.acquire(timeout=0.05):
            return False  # the worker is inside a slice: let it do this one first
        try:
            start = time.perf_counter()
            routing = session.segmenter.routing(lam, z)
            if not session.segmenter.is_cached(z, routing):
                return False
            labels = session.segmenter.compose(z, routing=routing)
        finally:
            session.lock.release()
        self._per_slice[z] = slice_fractions(labels)
        assert self._layers is not None  # reroute, the caller, checked it
        self._layers.set_slice(z, labels=labels, routing=routing)
        self.reroute_ms.append(1000 * (time.perf_counter() - start))
        return True

    # ================================================================== statistics, export

    def _summary(self) -> dict:
        """Statistics of the layers shown (the engine's result once every slice is done)."""
        assert self._layers is not None
        return summarize(per_slice=self._per_slice, routing=self._layers.routing, done=self._layers.done,
                         result=self._result, confusion=self._confusion)

    def _publish_comparison(self) -> None:
        partial = self._result is None
        self._publish(self._summary(), note="partial run: GFLOPs are reported once every slice is segmented" if partial else "")

    def _on_ground_truth(self, *_: Any) -> None:
        """Compare the shown phases with the newly chosen ground truth, a slice at a time
        in the background (the layers may be read from disk)."""
        if self.busy:  # even before a run's first slice: its request holds the old choice
            self._compare_pending = True  # compared once the job ends
            return
        if self._layers is None or self._active is None or not self._layers.done.any():
            return
        gt = self._ground_truth(self._layers.labels.shape)
        if gt is None:
            self._confusion = None
            self._publish_comparison()
            return
        self._confusion = _stats.no_comparison(len(self._layers.done))
        self._start("compare", _jobs.compare_job, self._layers.labels, gt, [int(z) for z in np.flatnonzero(self._layers.done)])

    def _on_masks_toggled(self, checked: bool) -> None:
        if self._layers is not None:
            self._layers.set_metadata(export_masks=bool(checked))

    def export(
        self, path: str | Path | None = None, *, masks: bool | None = None, overwrite: bool = False,
        blocking: bool | None = None,
    ) -> Any:
        """Write the phase volume, its JSON report and (optionally) per-phase masks.

        Without ``path`` a save dialog asks for one; existing files are replaced only after
        the user confirms (or with ``overwrite``). The volume is written a slab of planes
        at a time in a thread worker, with a progress bar; Cancel stops it and leaves no
        file. Returns the started worker, or, with ``blocking``, the written files ([] if
        none; the reason is notified).
        """
        blocking = self.blocking if blocking is None else blocking
        nothing: list[Path] | None = [] if blocking else None
        if self.busy:
            show_warning("wait for the running job to finish before exporting")
            return nothing
        if self._layers is None or not self._layers.alive() or not self._layers.done.any():
            show_error("nothing to export yet: run PaSeR first")
            return nothing
        masks = self.masks_check.isChecked() if masks is None else masks
        if path is None:
            stem = self._source.name if self._source is not None else "electrode"  # set with the result layers
            path, chosen = QFileDialog.getSaveFileName(
                self, "Export phases", f"{stem}_phases.tif", f"{TIFF_FILTER};;{ZARR_FILTER}",
                options=QFileDialog.Option.DontConfirmOverwrite,  # we ask for all files at once below
            )
            if not path:
                return nothing
            from ..io_writers import is_zarr_path

            if chosen == ZARR_FILTER and not is_zarr_path(path):
                path = str(Path(path).with_suffix(".zarr"))  # the format chosen, whatever the name typed
            existing = [p.name for p in export_targets(path, masks).values() if p.exists()]
            if existing:
                answer = QMessageBox.question(self, "Replace files?", "Replace " + ", ".join(existing) + "?")
                if answer != QMessageBox.StandardButton.Yes:
                    return nothing
                overwrite = True
        phases = self._layers.phases_layer
        provenance = {**phases.metadata.get("napari_paser", {}), "export_masks": masks}
        if not self._layers.done.all():
            show_warning("only part of the stack is segmented: unsegmented slices are written as 255")
        job = functools.partial(export_steps, scale=phases.scale, provenance=provenance, masks=masks, overwrite=overwrite)
        self._set_status(f"Exporting {Path(path).name}…")
        started = self._start("export", job, path, phases.data, blocking=blocking)
        return (started or []) if blocking else started

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)
