"""The Metrics dock widget: microstructure metrics of a phases layer, with ranges.

Thin: it gathers the choices, runs :func:`._metrics_jobs.metrics_job` in a napari thread
worker (or synchronously when ``blocking``), and shows the table, the porosity profile
(matplotlib) and progress. All checks and numbers come from the engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from napari.layers import Image, Labels
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import PaserInputError, one_line
from . import _metrics_jobs as jobs
from ._export import voxel_size_from_scale
from ._launch import JobCallbacks, job_worker, run_here
from ._layers import crop, full_resolution, layer_roi, spatial_axis_labels
from ._qt_rows import AxisSpinBox, hbox_row, read_only_table
from ._tooltips import TOOLTIPS

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

__all__ = ["MetricsPanel"]

NO_BAND = "(no band)"
DEFAULT_LAMS = "0, default, 0.1, 0.3, 1"


class MetricsPanel(QWidget):
    """Dock widget computing microstructure metrics of a labels layer.

    Attributes
    ----------
    blocking : bool
        Run synchronously on the calling thread (tests, scripts).
    outcome : MetricsOutcome or None
        The last finished computation.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.blocking = False
        self.outcome: jobs.MetricsOutcome | None = None
        self._worker: GeneratorWorker | None = None
        self._pbar: progress | None = None
        self._generation = 0
        self._profile_axis = "axis 0"  # the x label of the porosity profile: set by compute()
        self._started = 0.0
        self._cancelled = False
        self._build()
        self.refresh_layers()
        self.viewer.layers.events.inserted.connect(self.refresh_layers)
        self.viewer.layers.events.removed.connect(self.refresh_layers)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        form = QFormLayout()
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("Phase labels: 0 pore, 1 carbon-binder, 2 nickel (e.g. the 'phases' layer of a PaSeR run)")
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The grey scan the labels came from: segmenting it again at several λ and as f0 "
                                    "MC-dropout samples gives every metric a [min, max] range")
        self.axis_spin = AxisSpinBox()  # named as the chosen labels layer names its axes
        self.axis_spin.setToolTip("Axis of the porosity profile and of the tortuosity (0 plane, 1 row, 2 column)")
        self.labels_combo.currentTextChanged.connect(self._name_axes)
        self.cb_spin = QDoubleSpinBox()
        self.cb_spin.setRange(0.0, 1.0)
        self.cb_spin.setDecimals(3)
        self.cb_spin.setSingleStep(0.01)
        self.cb_spin.setToolTip("Carbon-binder diffusivity relative to the pore's; 0: carbon-binder blocks "
                                "(> 0 adds the pore + carbon-binder tortuosity)")
        self.tau_check = QCheckBox("tortuosity (TauFactor)")
        self.tau_check.setChecked(True)
        self.tau_width_spin = QSpinBox()
        self.tau_width_spin.setRange(0, 1_000_000)
        self.tau_width_spin.setSingleStep(32)
        self.tau_width_spin.setSpecialValueText("auto")
        self.tau_width_spin.setSuffix(" voxels")
        self.tau_width_spin.setToolTip("Solve τ in columns this wide that span the volume along the axis, one at a time, "
                                       "combined in parallel (walls between columns raise τ a little). auto: the whole "
                                       "volume when its solve fits in half the memory, else the widest columns that do")
        self.tau_check.toggled.connect(self.tau_width_spin.setEnabled)
        self.lams_edit = QLineEdit(DEFAULT_LAMS)
        self.lams_edit.setToolTip("λ values of the band ('default' is the bundle's)")
        self.mc_spin = QSpinBox()
        self.mc_spin.setRange(0, 32)
        self.mc_spin.setValue(4)
        self.mc_spin.setToolTip("Single-pass f0 MC-dropout samples in the band")
        self.bf16_check = QCheckBox("bf16")
        self.bf16_check.setToolTip(TOOLTIPS["bf16"])
        form.addRow("Labels", self.labels_combo)
        form.addRow("Axis", self.axis_spin)
        form.addRow("Carbon-binder D", self.cb_spin)
        form.addRow("", self.tau_check)
        form.addRow("τ columns", self.tau_width_spin)
        form.addRow("Band image", self.image_combo)
        form.addRow("Band λ", self.lams_edit)
        form.addRow("Band MC samples", hbox_row(self.mc_spin, self.bf16_check))
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Compute")
        self.run_button.clicked.connect(lambda: self.compute())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button = QPushButton("Export…")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._export_dialog)
        for b in (self.run_button, self.cancel_button, self.export_button):
            buttons.addWidget(b)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.table = read_only_table(["metric", "value", "range", "unit"])
        self.table.setMinimumHeight(240)  # the eleven metrics without scrolling in a typical dock
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(160)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.table)
        layout.addWidget(self.canvas)

    def refresh_layers(self, *_: Any) -> None:
        """Fill the layer choosers (phases layers first)."""
        def fill(combo: QComboBox, names: list[str], extra: Sequence[str] = ()) -> None:
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(list(extra) + names)
            if current in names or current in extra:
                combo.setCurrentText(current)
            combo.blockSignals(False)

        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        labels.sort(key=lambda n: n != "phases")
        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.name != "entropy"]
        fill(self.labels_combo, labels)
        fill(self.image_combo, images, [NO_BAND])

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _name_axes(self, layer_name: str) -> None:
        # A (plane, row, column) stack's axes, by the layer's own names or AXIS_NAMES; the
        # numbers alone for any other layer.
        layer = self._layer(layer_name)
        self.axis_spin.set_names(spatial_axis_labels(layer) if layer is not None and layer.ndim == 3 else ())

    def request(self) -> jobs.MetricsRequest:
        """The request for the current choices (raises PaserInputError on a bad choice)."""
        from ..engine.metrics_band import parse_lams
        from ..io_sources import recorded_blend

        layer = self._layer(self.labels_combo.currentText())
        if layer is None:
            raise PaserInputError("choose a labels layer (e.g. the 'phases' layer of a PaSeR run)")
        # As it is (a Zarr store for a big stack): the job reads it a slab at a time. A
        # pyramid's full-resolution level: the metrics of its coarser levels would differ.
        data = full_resolution(layer)
        image_layer = self._layer(self.image_combo.currentText())
        meta = layer.metadata.get("napari_paser", {}) if isinstance(layer.metadata, dict) else {}
        bundle = (meta.get("bundle") or {}).get("path") if isinstance(meta.get("bundle"), dict) else None
        image = None if image_layer is None else full_resolution(image_layer)
        roi = layer_roi(layer)
        if image is not None and roi is not None and tuple(image.shape) != tuple(data.shape):
            image = crop(image, roi)  # the phases of a run over a region: the band reads that region
        return jobs.MetricsRequest(
            labels=data, axis=self.axis_spin.value(), voxel_size=voxel_size_from_scale(layer.scale, data.ndim),
            cb_diffusivity=self.cb_spin.value() or None, tortuosity=self.tau_check.isChecked(),
            tortuosity_width=self.tau_width_spin.value() or None,
            image=image,
            bundle_path=Path(bundle) if bundle else None,
            band_lams=parse_lams(self.lams_edit.text()) if image_layer is not None else (),
            band_mc=self.mc_spin.value() if image_layer is not None else 0,
            band_precision="bf16" if self.bf16_check.isChecked() else "fp32",
            band_blend_borders=recorded_blend(meta) is not None,  # the band is made as the phases were
        )

    # ------------------------------------------------------------------ running
    def compute(self, blocking: bool | None = None) -> Any:
        """Start the computation; returns the worker, or with ``blocking`` the outcome
        (None on failure; the reason is notified)."""
        if self.busy:
            show_info("metrics are being computed: wait or press Cancel")
            return None
        try:
            req = self.request()
            jobs.check_request(req)  # bad input: one notification, no worker started
        except PaserInputError as err:
            show_error(f"Metrics: {err}")
            self.status.setText(f"Not computed: {err}")
            return None
        self._generation += 1
        gen = self._generation
        names = self.axis_spin.names
        self._profile_axis = f"the {names[req.axis]} axis" if req.axis < len(names) else f"axis {req.axis}"
        self._cancelled = False
        self._started = time.perf_counter()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._pbar = progress(total=100, desc="Metrics")
        self.status.setText("Computing…")
        callbacks = JobCallbacks(
            message=lambda msg: self._on_progress(msg, gen),
            returned=lambda out: self._on_returned(out, gen),
            errored=lambda err: self._on_errored(err, gen),
            finished=lambda: self._on_finished(gen),
        )
        if self.blocking if blocking is None else blocking:
            return run_here(jobs.metrics_job(req), callbacks)
        self._worker = job_worker(jobs.metrics_job, (req,), callbacks, owner=self)
        self._worker.start()
        return self._worker

    def cancel(self) -> None:
        """Stop at the next step (a TauFactor solve stops within 100 iterations)."""
        if self._worker is not None:
            self._cancelled = True
            self.status.setText("Cancelling…")
            self._worker.quit()

    def _on_progress(self, msg: jobs.MetricsProgress, gen: int) -> None:
        if gen != self._generation or self._pbar is None or self._cancelled:
            return  # steps queued before a cancel are not news
        overall = (msg.done + msg.fraction) / max(msg.total, 1)
        self._pbar.n = int(100 * min(overall, 1.0))
        self._pbar.set_description(f"Metrics: {msg.stage}")
        self.status.setText(f"{msg.stage} ({100 * msg.fraction:.0f} %)")

    def _on_returned(self, outcome: jobs.MetricsOutcome, gen: int) -> None:
        from ..engine.metrics_report import tortuosity_notes

        if gen != self._generation or outcome is None:
            return
        self.outcome = outcome
        self._cancelled = False  # finished before the cancel arrived
        self._show(outcome)
        self.export_button.setEnabled(True)
        extra = f", band of {len(outcome.band)} segmentations" if outcome.band else ""
        notes = "".join(f" {note}." for note in tortuosity_notes(outcome.metrics))
        self.status.setText(f"Done in {time.perf_counter() - self._started:.1f} s{extra}.{notes}")

    def _on_errored(self, err: BaseException, gen: int) -> None:
        if gen != self._generation:
            return
        show_error(f"Metrics failed: {one_line(err)}")
        self.status.setText(f"Failed: {one_line(err)}")

    def _on_finished(self, gen: int) -> None:
        if gen != self._generation:
            return
        if self._cancelled:
            show_info("Metrics cancelled")
            self.status.setText("Cancelled.")
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # ------------------------------------------------------------------ display
    def _show(self, outcome: jobs.MetricsOutcome) -> None:
        rows = jobs.table_rows(outcome)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(row):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        m = outcome.metrics
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        ax.plot(m.positions, m.porosity_profile, color="#3b4cc0", label="porosity")
        if outcome.profile_min is not None and outcome.profile_max is not None:
            ax.fill_between(m.positions, outcome.profile_min, outcome.profile_max, color="#3b4cc0", alpha=0.25, label="band")
            ax.legend(loc="best", fontsize="small")
        ax.set_xlabel(f"position along {self._profile_axis} ({'µm' if m.voxel_size is not None else 'voxels'})")
        ax.set_ylabel("porosity")
        ax.set_ylim(0, 1)
        self.canvas.draw()  # now: a deferred draw could outlive a closed panel

    # ------------------------------------------------------------------ export
    def default_export_base(self) -> Path:
        def path_of(layer: Any) -> str | None:
            return getattr(getattr(layer, "source", None), "path", None) if layer is not None else None

        layer = self._layer(self.labels_combo.currentText())
        image = self._layer(self.image_combo.currentText())
        name = layer.name if layer is not None else "phases"
        return jobs.default_export_base(path_of(layer), name, path_of(image))

    def export(self, base: str | Path, overwrite: bool = False) -> list[Path] | None:
        """Write ``<base>.json`` and ``<base>.csv``; refuses existing files unless ``overwrite``."""
        if self.outcome is None:
            show_error("compute the metrics first")
            return None
        try:
            written = list(jobs.export_metrics(self.outcome, base, overwrite=overwrite,
                                               extra={"labels_layer": self.labels_combo.currentText()}))
        except (OSError, PaserInputError) as err:
            show_error(f"Metrics export failed: {one_line(err)}")
            return None
        show_info("wrote " + ", ".join(str(p) for p in written))
        return written

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export metrics (JSON + CSV)", str(self.default_export_base()) + ".json", "JSON + CSV (*.json)",
            options=QFileDialog.Option.DontConfirmOverwrite,  # both files are asked about at once below
        )
        if not path:
            return
        targets = jobs.export_targets(path)
        existing = [str(p) for p in targets.values() if p.exists()]
        overwrite = False
        if existing:
            answer = QMessageBox.question(self, "Replace files?", "Replace " + ", ".join(existing) + "?")
            if answer != QMessageBox.StandardButton.Yes:
                return
            overwrite = True
        self.export(path, overwrite=overwrite)
