"""Small layout helper shared by the dock widgets."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QWidget


def hbox_row(*widgets: QWidget) -> QWidget:
    """A borderless widget holding ``widgets`` side by side (one form row)."""
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        box.addWidget(w)
    return row
