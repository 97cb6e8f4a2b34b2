"""The benchmark's exact scores of blended routings (benchmarks/blend_scoring.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def blend_scoring(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import blend_scoring

    return blend_scoring


def test_regions_split_a_slice_by_the_patches_that_reach_each_pixel(blend_scoring):
    from napari_paser.engine.blending import border_band

    grid, patch, width = (3, 4), (12, 10), 3
    ids, counts = blend_scoring.region_ids(grid, patch, width)
    assert counts == (12, 9, 8, 6) and ids.shape == (36, 40)
    assert sorted(np.unique(ids)) == list(range(sum(counts)))
    # The interiors are the pixels off the blended band, and a corner is a (2 width)² square.
    np.testing.assert_array_equal(ids < counts[0], ~border_band(grid, patch, width))
    assert np.bincount(ids.ravel())[-1] == (2 * width) ** 2
    assert ids[12 - width, 10 - width] == ids[12 + width - 1, 10 + width - 1] == sum(counts[:3])  # the first corner
    with pytest.raises(ValueError, match="too small"):
        blend_scoring.region_ids(grid, (5, 10), width)


def test_any_routing_scored_from_the_regions_is_the_engines_blended_composition(blend_scoring):
    from napari_paser import io
    from napari_paser.engine import load_bundle, resolve_bundle
    from napari_paser.engine.pipeline import PaserSegmenter

    bundle = load_bundle(resolve_bundle())  # f1 and f2 read an 8-pixel halo; f0 fused in
    image, _ = io.read_stack(BENCHMARKS.parent / "sample_data" / "electrode_image.tif")
    image = np.ascontiguousarray(image[:2, :168, :192])  # 3 x 3 patches
    seg = PaserSegmenter(bundle, blend_borders=True)
    seg.set_volume(image)
    for method in ("f0", "f1", "f2"):
        seg.result(method=method)
    truth = np.random.default_rng(0).integers(0, 3, image.shape).astype(np.uint8)  # any labels will do
    fused = blend_scoring.blended_confusions([(seg, [0, 1])], [truth])
    plain = blend_scoring.blended_confusions([(seg, [0, 1])], [truth], models=(1, 2), fused=False)
    rng = np.random.default_rng(1)
    for table, low, kw in ((fused, 0, {}), (plain, 1, {"fused": False})):
        for _ in range(4):
            routing = rng.integers(low, 3, (2, *seg.grid)).astype(np.uint8)
            direct = sum(np.bincount((truth[z].astype(np.int64) * 3 + seg.compose(z, routing=routing[z], **kw)).ravel(),
                                     minlength=9).reshape(3, 3) for z in range(2))
            np.testing.assert_array_equal(table.pooled(routing), direct)
    with pytest.raises(ValueError, match="models"):
        plain.pooled(np.zeros((2, *seg.grid), np.uint8))


@pytest.mark.parametrize("passes, estimate", [(None, "moments"), (3, "sampled")])
def test_an_engine_like_another_estimates_f0_as_it_does(blend_scoring, shipped, passes, estimate):
    """The blended copy of an engine on the bundle's closed form uses the closed form too
    (asking it for the bundle's passes would sample them), and one asked for passes samples
    as many: the blended scores and seconds are those of the same analysis."""
    import copy
    from dataclasses import replace

    from napari_paser.engine.pipeline import PaserSegmenter

    bundle, _, image = shipped
    bundle = copy.deepcopy(bundle)
    bundle.f0.config = replace(bundle.f0.config, mc_estimate="moments")
    seg = PaserSegmenter(bundle, mc_passes=passes)
    seg.set_volume(image)
    like = blend_scoring.engine_like(seg, blend_borders=True)
    assert (like.mc_estimate, like.mc_passes, like.blend_borders) == (estimate, seg.mc_passes, True)
    np.testing.assert_array_equal(like.entropy(0), seg.entropy(0))
