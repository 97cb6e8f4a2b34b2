"""A slider with a spin box beside it, for λ and the TVD budget.

A bundle's interesting λ spans decades (v2.23 sends patches to f2 only below λ 0.002,
and all of them to f1 up to about 0.1), so λ's slider is logarithmic: each step moves λ
by the same factor. The spin box holds the exact value: typing a λ, or a bundle's
default λ, is kept to the last digit even where no slider position falls on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout, QSlider, QWidget


@dataclass(frozen=True)
class LinearScale:
    """Slider positions ``0..steps`` spread evenly over ``[0, maximum]``."""

    maximum: float
    steps: int

    def value(self, position: int) -> float:
        """The value at slider ``position``."""
        return self.maximum * position / self.steps

    def position(self, value: float) -> int:
        """The slider position nearest ``value`` (clipped to the slider's range)."""
        return int(round(min(max(value, 0.0), self.maximum) / self.maximum * self.steps))


@dataclass(frozen=True)
class LogScale:
    """Slider position 0 is 0; positions ``1..steps`` spread log-evenly over ``[low, high]``.

    Every step multiplies the value by ``(high / low) ** (1 / (steps - 1))``, so a decade
    near 0.001 gets as many positions as the decade near 0.1.
    """

    low: float
    high: float
    steps: int

    def __post_init__(self) -> None:
        if not 0.0 < self.low < self.high or self.steps < 2:
            raise ValueError(f"need 0 < low < high and steps >= 2, got {self.low}, {self.high}, {self.steps}")

    def value(self, position: int) -> float:
        """The value at slider ``position`` (0 at position 0, ``high`` at ``steps``)."""
        if position <= 0:
            return 0.0
        fraction = (min(position, self.steps) - 1) / (self.steps - 1)
        return self.low * (self.high / self.low) ** fraction

    def position(self, value: float) -> int:
        """The slider position nearest ``value`` on the log scale (below half of ``low``: 0)."""
        if value < self.low / 2:
            return 0
        fraction = math.log(min(max(value, self.low), self.high) / self.low) / math.log(self.high / self.low)
        return 1 + int(round(fraction * (self.steps - 1)))


class ValueSlider(QWidget):
    """A horizontal slider and a spin box that show one value.

    Dragging the slider sets the value of its position; typing in the spin box (or
    setting :attr:`value`) keeps the exact value and moves the slider to the nearest
    position. :attr:`valueChanged` is emitted once per change, from either.

    Parameters
    ----------
    scale : LinearScale or LogScale
        Maps slider positions to values.
    value : float
        Initial value.
    decimals : int
        Digits the spin box shows and accepts.
    """

    valueChanged = Signal(float)

    def __init__(self, scale: LinearScale | LogScale, value: float, decimals: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.scale = scale
        self.maximum = scale.value(scale.steps)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, scale.steps)
        self.slider.setSingleStep(max(1, scale.steps // 100))
        self.slider.setPageStep(max(1, scale.steps // 10))
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(decimals)
        self.spin.setRange(0.0, self.maximum)
        self.spin.setSingleStep(10.0 ** -decimals)
        self.spin.setKeyboardTracking(False)  # re-route once the number is typed, not per digit
        self._value = 0.0
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.slider, stretch=1)
        row.addWidget(self.spin)
        self._show(float(value))
        self.slider.valueChanged.connect(self._on_slider)
        self.spin.valueChanged.connect(self._on_spin)

    @property
    def value(self) -> float:
        """The exact value (not rounded to a slider position or to the spin box's digits)."""
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        value = float(value)
        if value != self._value:
            self._show(value)
            self.valueChanged.emit(value)

    def set_value_silently(self, value: float) -> None:
        """Show ``value`` without emitting :attr:`valueChanged`."""
        self._show(float(value))

    def setToolTip(self, text: str | None) -> None:  # noqa: N802 (Qt's name)
        super().setToolTip(text)
        self.slider.setToolTip(text)
        self.spin.setToolTip(text)

    def _show(self, value: float) -> None:
        if not 0.0 <= value <= self.maximum:
            raise ValueError(f"value must be in [0, {self.maximum:g}], got {value}")
        self._value = value
        # Signals blocked: neither control echoes the change back as a new value.
        self.slider.blockSignals(True)
        self.slider.setValue(self.scale.position(value))
        self.slider.blockSignals(False)
        self.spin.blockSignals(True)
        self.spin.setValue(value)
        self.spin.blockSignals(False)

    def _on_slider(self, position: int) -> None:
        self.value = self.scale.value(position)

    def _on_spin(self, value: float) -> None:
        self.value = value
