"""The λ and TVD controls: a log or linear slider beside a spin box that keeps the exact value."""

from __future__ import annotations

import numpy as np
import pytest

from napari_paser.napari_ui._value_slider import LinearScale, LogScale, ValueSlider

pytestmark = pytest.mark.gui


def test_log_scale_spreads_each_decade_over_as_many_positions_and_round_trips():
    scale = LogScale(low=1e-4, high=1.0, steps=400)
    values = np.array([scale.value(p) for p in range(scale.steps + 1)])
    assert values[0] == 0.0 and values[1] == pytest.approx(1e-4) and values[-1] == pytest.approx(1.0)
    ratios = values[2:] / values[1:-1]
    np.testing.assert_allclose(ratios, ratios[0])  # every step is the same factor
    assert ratios[0] == pytest.approx(1e4 ** (1 / 399))
    assert [scale.position(v) for v in values] == list(range(scale.steps + 1))
    per_decade = [np.count_nonzero((values >= lo) & (values < 10 * lo)) for lo in (1e-4, 1e-3, 1e-2, 1e-1)]
    assert max(per_decade) - min(per_decade) <= 1 and min(per_decade) >= 99
    assert scale.position(0.4e-4) == 0 and scale.position(0.6e-4) == 1 and scale.position(5.0) == scale.steps
    with pytest.raises(ValueError):
        LogScale(low=0.0, high=1.0, steps=10)
    with pytest.raises(ValueError):
        LogScale(low=1e-3, high=1.0, steps=1)


def test_linear_scale_round_trips_and_clips():
    scale = LinearScale(maximum=0.5, steps=500)
    assert [scale.position(scale.value(p)) for p in range(501)] == list(range(501))
    assert scale.value(200) == pytest.approx(0.2) and scale.position(-1.0) == 0 and scale.position(9.0) == 500


def test_value_slider_keeps_the_exact_value_and_moves_the_slider_to_the_nearest_position(qtbot):
    scale = LogScale(low=1e-4, high=1.0, steps=400)
    control = ValueSlider(scale, 0.5, decimals=5)
    qtbot.addWidget(control)
    seen: list[float] = []
    control.valueChanged.connect(seen.append)

    control.value = 0.0051234567  # finer than the spin box shows and between two slider positions
    assert control.value == 0.0051234567 and seen == [0.0051234567]
    assert control.slider.value() == scale.position(0.0051234567)
    assert scale.value(control.slider.value()) != control.value
    assert control.spin.value() == pytest.approx(0.00512)

    control.slider.setValue(1)  # dragged to the left end's first step
    assert control.value == pytest.approx(1e-4) and control.spin.value() == pytest.approx(1e-4)
    control.slider.setValue(0)
    assert control.value == 0.0 and seen[-1] == 0.0

    control.spin.setValue(0.00075)  # typed: kept as typed, the slider follows
    assert control.value == pytest.approx(0.00075) and control.slider.value() == scale.position(0.00075)
    assert len(seen) == 4  # one signal per change, none echoed back from the other control

    control.set_value_silently(0.25)
    assert control.value == 0.25 and len(seen) == 4
    control.value = 0.25
    assert len(seen) == 4  # unchanged: no signal
    with pytest.raises(ValueError, match="value must be in"):
        control.value = 1.5
    assert control.value == 0.25
