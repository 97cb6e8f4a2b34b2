"""The fine-tuning dock widget: paint a few labels, adapt the bundle to this scan, run again.

Thin: it gathers the choices (image, labels layer, reviewed slices, budget, name), runs
:meth:`._finetune_controller.FinetuneController.job` in a napari thread worker (or
synchronously when ``blocking``), draws the loss and the held-out IoU as they come, and
hands the new bundle to the PaSeR widget, where it becomes the selected bundle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine import registry
from ..errors import PaserInputError, one_line
from . import _jobs
from ._finetune_controller import (
    TRAINING_LABELS_KEY,
    FinetuneController,
    FinetuneOutcome,
    FinetuneRequest,
    bundle_parent_folder,
    default_bundle_name,
    new_labels_store,
    new_training_labels,
    training_labels_from,
)
from ._launch import JobCallbacks, job_worker, run_here
from ._layers import crop, full_resolution, is_run_phases, layer_roi, spatial_axis_labels
from ._qt_rows import hbox_row

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

__all__ = ["FinetunePanel"]

TRAINING_LAYER_NAME = "training labels"
MODEL_COLORS = {"f0": "#7f7f7f", "f1": "#1f77b4", "f2": "#d62728"}


class FinetunePanel(QWidget):
    """Dock widget adapting a PaSeR bundle to the open scan from painted labels.

    Attributes
    ----------
    blocking : bool
        Run synchronously on the calling thread (tests, scripts).
    output_folder : str or None
        Where new bundles go when the image has no file (default: beside the image
        file, else ``~/napari-paser-bundles``).
    reviewed : set of int
        Slices marked as reviewed (used with "reviewed slices only").
    outcome : FinetuneOutcome or None
        The last finished fine-tuning.
    history : dict or None
        Loss and held-out IoU of the running (or last) fine-tuning, as plotted.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.blocking = False
        self.output_folder: str | None = None
        self.reviewed: set[int] = set()
        self.outcome: FinetuneOutcome | None = None
        self.history: dict | None = None
        self.controller = FinetuneController()
        self._worker: GeneratorWorker | None = None
        self._pbar: progress | None = None
        self._generation = 0
        self._started = 0.0
        self._stage = ""
        self._build()
        self.refresh_layers()
        for name in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, name).connect(self.refresh_layers)

    # ================================================================== UI

    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        self.new_labels_button = QPushButton("New training labels")
        self.new_labels_button.setToolTip(
            "Add an empty labels layer to paint on: 0 pore, 1 carbon-binder, 2 nickel (the phase colours); "
            "unpainted pixels are 255 (transparent) and ignored by training"
        )
        self.new_labels_button.clicked.connect(lambda: self.new_training_layer())
        self.reviewed_check = QCheckBox("reviewed slices only")
        self.reviewed_check.setToolTip("Train only on the slices marked as reviewed (for a corrected 'phases' layer)")
        self.mark_button = QPushButton("Mark slice reviewed")
        self.mark_button.clicked.connect(lambda: self.mark_reviewed())
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear_reviewed)
        self.reviewed_label = QLabel("none")
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(0, 3600)
        self.budget_spin.setSuffix(" s")
        self.budget_spin.setSpecialValueText("auto (≤ 180 s)")
        self.budget_spin.setToolTip("Wall-clock budget; auto: scaled with the labelled area, 60 s to at most 180 s")
        self.bundle_combo = QComboBox()
        for b in registry.list_bundles():
            self.bundle_combo.addItem(f"{b.name} {b.version}".strip(), str(b.path))
        self.bundle_combo.setToolTip("Bundle to start from (default: the one selected in the PaSeR widget)")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("<image>-paser-ft")
        self.name_edit.setToolTip("Name of the new bundle folder, made beside the image (-2, -3... if taken: nothing is replaced)")
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop now and keep the best networks so far (the bundle is still saved)")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("Paint a few strokes of each phase, then Start.")
        self.status.setWordWrap(True)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.0), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.loss_ax, self.iou_ax = self.figure.subplots(2, 1, sharex=True)
        self._draw_history(None)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow(self.new_labels_button)
        form.addRow(hbox_row(self.reviewed_check, self.mark_button, self.clear_button))
        form.addRow("Reviewed", self.reviewed_label)
        form.addRow("Start from", self.bundle_combo)
        form.addRow("Budget", self.budget_spin)
        form.addRow("New bundle", self.name_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(hbox_row(self.start_button, self.cancel_button))
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)

    def refresh_layers(self, *_: Any) -> None:
        """Image picker: grey-level images that are not PaSeR outputs; labels picker: Labels layers."""
        images = [lay.name for lay in self.viewer.layers if isinstance(lay, Image) and lay.metadata.get("napari_paser_layer") is None]
        labels = [lay.name for lay in self.viewer.layers if isinstance(lay, Labels) and lay.metadata.get("napari_paser_layer") != "routing"]
        for combo, names in ((self.image_combo, images), (self.labels_combo, labels)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self._on_labels_changed()

    def _on_labels_changed(self, *_: Any) -> None:
        layer = self.labels_layer
        self.reviewed_check.setChecked(layer is not None and is_run_phases(layer))

    # ================================================================== choices

    @property
    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    @image_layer.setter
    def image_layer(self, layer: Image | str) -> None:
        self.image_combo.setCurrentText(str(getattr(layer, "name", layer)))

    @property
    def labels_layer(self) -> Labels | None:
        name = self.labels_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    @labels_layer.setter
    def labels_layer(self, layer: Labels | str) -> None:
        self.labels_combo.setCurrentText(str(getattr(layer, "name", layer)))
        self._on_labels_changed()

    @property
    def budget_s(self) -> float | None:
        return float(self.budget_spin.value()) or None

    @budget_s.setter
    def budget_s(self, seconds: float | None) -> None:
        self.budget_spin.setValue(int(round(seconds or 0)))

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def worker(self) -> Any:
        return self._worker

    def new_training_layer(self) -> Labels | None:
        """Add an empty "training labels" layer over the chosen image and select it for painting."""
        from ._layers import phase_colormap

        image = self.image_layer
        if image is None:
            show_error("open or choose an image layer first")
            return None
        # A stack too big to segment in memory gets its training labels on disk, beside the
        # image file as its adapted bundle will be.
        store = None
        pixels = full_resolution(image)  # a pyramid is painted and adapted to at full resolution
        if _jobs.needs_streaming(pixels):
            source = getattr(getattr(image, "source", None), "path", None)
            store = new_labels_store(bundle_parent_folder(source, self.output_folder))
        data = new_training_labels(pixels.shape, store)
        layer = Labels(
            data, name=TRAINING_LAYER_NAME, colormap=phase_colormap(), opacity=0.8,
            scale=image.scale, translate=image.translate, metadata={TRAINING_LABELS_KEY: True},
            axis_labels=spatial_axis_labels(image) if image.ndim <= 3 else image.axis_labels,
        )
        layer = self.viewer.add_layer(layer)
        layer.brush_size = 6
        layer.selected_label = 0
        layer.mode = "paint"
        self.labels_layer = layer
        self.viewer.layers.selection.active = layer
        where = f" (kept on disk in {store})" if store is not None else ""
        self._set_status(f"Paint pore (label 0), carbon-binder (1) and nickel (2) in a few slices; 255 erases{where}.")
        return layer

    def _visible_slice(self) -> int:
        image = self.image_layer
        if image is None or image.ndim < 3:
            return 0
        z = image.world_to_data(self.viewer.dims.point)[-3]
        return int(min(max(round(float(z)), 0), full_resolution(image).shape[-3] - 1))

    def mark_reviewed(self, z: int | None = None) -> None:
        """Mark slice ``z`` (default: the one on screen) as reviewed."""
        self.reviewed.add(self._visible_slice() if z is None else int(z))
        self.reviewed_check.setChecked(True)
        self._show_reviewed()

    def clear_reviewed(self) -> None:
        self.reviewed.clear()
        self._show_reviewed()

    def _show_reviewed(self) -> None:
        zs = sorted(self.reviewed)
        self.reviewed_label.setText(", ".join(map(str, zs[:20])) + (" …" if len(zs) > 20 else "") if zs else "none")

    def _paser_widget(self) -> Any:
        from ._widget import PaserWidget

        try:
            docks = self.viewer.window.dock_widgets
        except AttributeError:  # a headless ViewerModel: no window
            return None
        return next((w for w in docks.values() if isinstance(w, PaserWidget)), None)

    def set_start_bundle(self, folder: str | Path) -> None:
        """Start from this bundle folder when no PaSeR widget is open (else its bundle is used)."""
        folder = str(Path(folder).expanduser())
        if self.bundle_combo.findData(folder) < 0:
            self.bundle_combo.addItem(f"{Path(folder).name} (folder)", folder)
        self.bundle_combo.setCurrentIndex(self.bundle_combo.findData(folder))

    def _open_paser_widget(self) -> Any:
        """Dock the PaSeR widget (to run the new bundle); None without a window."""
        try:
            _, widget = self.viewer.window.add_plugin_dock_widget("napari-paser", "PaSeR segmentation")
        except (AttributeError, KeyError, ValueError):  # headless, or the plugin is not registered
            return None
        return widget

    def _start_bundle(self) -> Path | None:
        widget = self._paser_widget()
        if widget is not None and widget.bundle_path is not None:
            return widget.bundle_path
        data = self.bundle_combo.currentData()
        return Path(data) if data else None

    # ================================================================== running

    def _request(self) -> FinetuneRequest:
        from ..train.finetune import unique_bundle_folder

        image, layer = self.image_layer, self.labels_layer
        if image is None:
            raise PaserInputError("choose the image layer to adapt to")
        if layer is None:
            raise PaserInputError("choose a labels layer (or press 'New training labels' and paint)")
        if image.rgb:
            raise PaserInputError(f"{image.name!r} is an RGB image; fine-tuning needs one grey-level stack")
        reviewed = self.reviewed if self.reviewed_check.isChecked() else None
        pixels, painted = full_resolution(image), full_resolution(layer)
        roi = layer_roi(layer)
        if roi is not None and tuple(painted.shape) != tuple(pixels.shape):  # a run over a region of the image
            pixels = crop(pixels, roi)
            if reviewed is not None and image.ndim == 3:  # marked on screen, in the image's planes
                reviewed = {z - roi[0][0] for z in reviewed if roi[0][0] <= z < roi[0][1]}
        labels = training_labels_from(painted, tuple(pixels.shape), reviewed)
        bundle = self._start_bundle()
        if bundle is None:
            raise PaserInputError("no bundle to start from")
        name = self.name_edit.text().strip() or default_bundle_name(image.name)
        source = getattr(getattr(image, "source", None), "path", None)
        folder = unique_bundle_folder(bundle_parent_folder(source, self.output_folder), name)
        return FinetuneRequest(image=pixels, labels=labels, bundle_path=bundle, folder=folder, name=folder.name, budget_s=self.budget_s)

    def start(self, blocking: bool | None = None) -> Any:
        """Start fine-tuning; returns the worker, or with ``blocking`` the outcome (None on failure)."""
        if self.busy:
            show_warning("a fine-tuning is already running: wait for it or press Cancel")
            return None
        try:
            request = self._request()
        except (PaserInputError, FileExistsError) as err:
            show_error(f"fine-tuning not started: {one_line(err)}")
            self._set_status(f"Not started: {one_line(err)}")
            return None
        self._generation += 1
        gen = self._generation
        self._started = time.perf_counter()
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._close_progress()
        self._pbar = progress(total=100, desc="PaSeR fine-tuning")
        self._stage = ""
        self._draw_history(None)
        labels = self.labels_layer.name if self.labels_layer is not None else "the labels"  # _request checked it
        self._set_status(f"Fine-tuning {Path(request.bundle_path).name} on {labels!r} → {request.folder}")
        callbacks = JobCallbacks(
            message=lambda msg: self._on_progress(msg, gen),
            returned=lambda out: self._on_returned(out, gen),
            errored=lambda err: self._on_errored(err, gen),
            finished=lambda: self._on_finished(gen),
        )
        if self.blocking if blocking is None else blocking:
            return run_here(self.controller.job(request), callbacks)
        self._worker = job_worker(self.controller.job, (request,), callbacks, owner=self)
        self._worker.start()
        return self._worker

    def cancel(self) -> None:
        """Stop training now; the best networks so far are saved as the new bundle."""
        if self.busy:
            self.controller.cancel()
            self._set_status("Stopping: keeping the best networks so far…")

    # ------------------------------------------------------------------ messages

    def _on_progress(self, msg: Any, gen: int) -> None:
        if gen != self._generation:
            return
        pbar = self._pbar  # local: a progress update may process events that close it
        if pbar is not None:
            if msg.stage != self._stage:
                self._stage = msg.stage
                pbar.set_description(f"PaSeR fine-tuning ({msg.stage})")
            step = int(100 * msg.fraction) - pbar.n
            if step > 0:
                pbar.update(step)
        self._set_status(f"{msg.stage}: {msg.text} ({msg.elapsed:.0f} / {msg.budget:.0f} s)")
        self.history = msg.history
        self._draw_history(msg.history)

    def _draw_history(self, history: dict | None) -> None:
        self.loss_ax.clear()
        self.iou_ax.clear()
        self.loss_ax.set_ylabel("loss")
        self.iou_ax.set_ylabel("held-out IoU")
        self.iou_ax.set_xlabel("seconds")
        if history:
            if history["time"]:
                self.loss_ax.plot(history["time"], history["loss"], color="black", lw=1)
            for m, values in history["iou"].items():
                if values:
                    self.iou_ax.plot(history["eval_time"], values, marker="o", ms=3, lw=1, color=MODEL_COLORS[m], label=m)
            if any(history["iou"].values()):
                self.iou_ax.legend(loc="lower right", fontsize=7, ncol=3)
        self.canvas.draw_idle()

    def _on_returned(self, outcome: FinetuneOutcome | None, gen: int) -> None:
        if gen != self._generation or outcome is None:
            return
        self.outcome = outcome
        held = outcome.result.held_out_iou
        what = "stopped early, best so far saved" if outcome.cancelled else "done"
        text = (
            f"Fine-tuning {what} in {outcome.result.seconds:.0f} s: held-out IoU f2 {held['start']['f2']:.3f} → "
            f"{held['best']['f2']:.3f}. Bundle {outcome.folder.name} is selected: press Run in the PaSeR widget."
        )
        planes = outcome.result.bundle.f2.config.planes
        if planes > 1:
            text += f" Its networks read {planes} neighbouring planes per slice."
        widget = self._paser_widget() or self._open_paser_widget()
        if widget is not None:
            widget.add_bundle_folder(outcome.folder)
        else:
            text += f" (saved to {outcome.folder})"
        self._draw_history(outcome.result.history)
        show_info(text)
        self._set_status(text)

    def _on_errored(self, err: BaseException, gen: int) -> None:
        if gen != self._generation:
            return
        show_error(f"fine-tuning failed: {one_line(err)}")
        self._set_status(f"Failed: {one_line(err)}")

    def _on_finished(self, gen: int) -> None:
        if gen != self._generation:
            return
        self._close_progress()
        self._worker = None
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _close_progress(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _set_status(self, text: str) -> None:
        self.status.setText(text)
