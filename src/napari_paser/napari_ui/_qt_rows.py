"""Small layout helpers shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtWidgets import QAbstractItemView, QHBoxLayout, QHeaderView, QSpinBox, QTableWidget, QWidget

from .. import AXIS_NAMES


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


class AxisSpinBox(QSpinBox):
    """A spin box of a stack's axis (0, 1, 2) that shows the axis's name after its number
    ("0 plane"), or the number alone where the axes have no names.

    The name is the spin box's suffix, so typing a number and the arrows work as in any
    spin box, with whichever Qt binding napari runs on."""

    def __init__(self, names: Sequence[str] = AXIS_NAMES) -> None:
        super().__init__()
        self.setRange(0, len(AXIS_NAMES) - 1)
        self.names: tuple[str, ...] = ()
        self.valueChanged.connect(self._show_name)
        self.set_names(names)

    def set_names(self, names: Sequence[str]) -> None:
        """Name the axes (one per value from 0), e.g. as the chosen layer names them; none
        for plain numbers."""
        self.names = tuple(str(name) for name in names)
        self._show_name(self.value())

    def _show_name(self, value: int) -> None:
        self.setSuffix(f" {self.names[value]}" if 0 <= value < len(self.names) else "")
