"""The run summary panel: a text summary and a read-only table of phase fractions per slice."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QAbstractItemView

from napari_paser.napari_ui._stats import StatsPanel

pytestmark = pytest.mark.gui


def test_stats_panel_lists_each_slice_and_its_cells_cannot_be_edited(qtbot):
    panel = StatsPanel()
    qtbot.addWidget(panel)
    panel.show_stats({"route_fraction": {"f0": 0.25, "f1": 0.75, "f2": 0.0},
                      "phase_fraction": {"pore": 0.3, "carbon-binder": 0.2, "nickel": 0.5},
                      "phase_fraction_per_slice": [[0.3, 0.2, 0.5], [0.1, 0.4, 0.5]]})
    table = panel.table
    assert table.rowCount() == 2
    assert [table.item(1, c).text() for c in range(4)] == ["1", "10.0%", "40.0%", "50.0%"]
    assert table.editTriggers() == QAbstractItemView.EditTrigger.NoEditTriggers  # results, not inputs
    assert table.verticalHeader().isHidden()  # the slice column numbers the rows
    panel.clear()
    assert table.rowCount() == 0 and panel.stats == {}
