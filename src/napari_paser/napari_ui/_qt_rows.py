"""Small layout helpers shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtWidgets import QAbstractItemView, QHBoxLayout, QHeaderView, QTableWidget, QWidget


def hbox_row(*widgets: QWidget) -> QWidget:
    """A borderless widget holding ``widgets`` side by side (one form row)."""
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        box.addWidget(w)
    return row


def read_only_table(headers: Sequence[str], *, stretch: bool = False) -> QTableWidget:
    """A table of results: columns ``headers``, no row numbers, cells not editable;
    with ``stretch`` the columns share the table's width."""
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(list(headers))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    rows, columns = table.verticalHeader(), table.horizontalHeader()
    if rows is not None:  # Qt's type stubs allow None; a QTableWidget has both
        rows.setVisible(False)
    if stretch and columns is not None:
        columns.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    return table
