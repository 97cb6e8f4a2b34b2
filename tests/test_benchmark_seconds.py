"""The benchmark's seconds: the median of rounds run in rotated order (benchmarks/common.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common

    return common


@pytest.mark.parametrize("blend_borders", [False, True])
def test_seconds_are_the_median_of_rounds_that_rotate_the_models(common, monkeypatch, blend_borders):
    from napari_paser import io
    from napari_paser.engine import load_bundle, resolve_bundle
    from napari_paser.engine.pipeline import PaserSegmenter

    bundle = load_bundle(resolve_bundle())
    image, _ = io.read_stack(BENCHMARKS.parent / "sample_data" / "electrode_image.tif")
    seg = PaserSegmenter(bundle, mc_passes=2, blend_borders=blend_borders)
    seg.set_volume(np.ascontiguousarray(image[:2, :112, :128]))
    for method in ("f0", "f1", "f2"):
        seg.result(method=method)
    engines = [(seg, [0, 1])]
    own = common.engine_seconds(engines)
    assert np.all(own[0] > 0) and np.all(own[2][:, 0] == 0) and np.all(own[2][:, 1:] > 0)

    # Later rounds scaled ×1e6 and ×1e-6: every median is then the first round's value,
    # however much a busy machine slows a fresh engine (×10 and ×0.1 were not enough for
    # one beside another test process).
    real, models, scales = common.engine_seconds, [], iter([1.0] + [1e6] * 3 + [1e-6] * 3)

    def scaled(fresh, model=None):
        if models:  # after the engines' own seconds, fresh engines like them
            assert all(s is not seg and s.blend_borders == blend_borders for s, _ in fresh)
        models.append(model)
        k = next(scales)
        return tuple(k * a for a in real(fresh, model))

    monkeypatch.setattr(common, "engine_seconds", scaled)
    median = common.median_seconds(engines, 3, blend_borders=blend_borders)
    assert models == [None, 1, 2, 0, 2, 0, 1]  # no model always runs first
    for got, want in zip(median, own):
        np.testing.assert_allclose(got, want)
    models.clear()
    scales = iter([1.0])
    common.median_seconds(engines, 1, blend_borders=blend_borders)
    assert models == [None]  # one round: the engines' own seconds, nothing rerun
