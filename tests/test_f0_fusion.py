"""f0 fused into the patch models' output (Bundle.fusion): engine, manifest, streaming, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_paser.engine.bundle import BundleError, load_bundle, save_bundle  # noqa: E402
from napari_paser.engine.pipeline import PaserSegmenter  # noqa: E402
from napari_paser.engine.uncertainty import mc_predict, slice_seed  # noqa: E402
from test_engine_pipeline import PASSES, smooth_volume  # noqa: E402

WEIGHTS = (0.4, 0.3)


@pytest.fixture
def fused_bundle(tiny_bundle):
    """The tiny bundle fusing f0, whose head is tilted towards class 0 so that it disagrees
    with the patch models (random tiny networks all favour one class)."""
    with torch.no_grad():
        tiny_bundle.f0.head.bias.view(3, -1)[0] += 3.0  # pixel shuffle: class-major channels
    tiny_bundle.fusion = WEIGHTS
    return tiny_bundle


@pytest.fixture(scope="module")
def volume():
    return smooth_volume((2, 112, 128), seed=3)


def fresh(bundle, volume) -> PaserSegmenter:
    seg = PaserSegmenter(bundle, mc_passes=PASSES, channels_last=False)
    seg.set_volume(volume)
    return seg


def expected_fused(seg: PaserSegmenter, z: int, model: int, weight: float) -> np.ndarray:
    """argmax of (1 - w) p_model + w p_f0 on every patch of slice ``z``, from the networks."""
    x = torch.from_numpy(seg._planes(z, seg.bundle.f0.config.planes))[None]
    with torch.no_grad():
        p0, _ = mc_predict(seg.bundle.f0, x, PASSES, seed=slice_seed(0, z))
        p0 = (p0[0] * 255).round() / 255  # the engine keeps f0's probabilities as bytes
        net = seg.bundle.segmenters()[model]
        ph, pw = seg.patch_size
        out = np.zeros(seg.padded_shape, np.uint8)
        for gy, gx in np.ndindex(*seg.grid):
            win = torch.from_numpy(seg._patch_window(z, gy, gx, net.config.halo, net.config.planes))[None]
            pm = net(win).softmax(1)[0]
            cell = (slice(gy * ph, (gy + 1) * ph), slice(gx * pw, (gx + 1) * pw))
            out[cell] = ((1 - weight) * pm + weight * p0[:, cell[0], cell[1]]).argmax(0).numpy()
    h, w = seg.shape[1:]
    return out[:h, :w]


@pytest.mark.parametrize("model", [1, 2])
def test_fused_patches_are_the_weighted_argmax(fused_bundle, volume, model):
    seg = fresh(fused_bundle, volume)
    everywhere = np.full(seg.grid, model, np.uint8)
    fused = seg.compose(0, routing=everywhere)
    np.testing.assert_array_equal(fused, expected_fused(seg, 0, model, WEIGHTS[model - 1]))
    plain = seg.compose(0, routing=everywhere, fused=False)
    assert not np.array_equal(fused, plain)  # the random networks disagree: fusion moves labels
    # The patch models' own labels are what the same bundle without fusion returns.
    fused_bundle.fusion = (0.0, 0.0)
    np.testing.assert_array_equal(plain, fresh(fused_bundle, volume).compose(0, routing=everywhere))


def test_methods_without_f0_return_the_plain_models(fused_bundle, volume):
    seg = fresh(fused_bundle, volume)
    f1_result = seg.result(method="f1")  # no analysis yet: nothing to fuse
    f1_first = f1_result.labels
    paser = seg.result(lam=0.0)  # analyses, then runs the f1 patches again to fuse them
    assert "f0_fusion" not in f1_result.bundle and paser.bundle["f0_fusion"] == {"f1": WEIGHTS[0], "f2": WEIGHTS[1]}
    assert seg.result(method="f1").labels.tolist() == f1_first.tolist()
    for z in range(2):
        np.testing.assert_array_equal(paser.labels[z], seg.compose(z, routing=paser.routing[z]))
        assert seg.is_cached(z, paser.routing[z])
    f1_only = fresh(fused_bundle, volume)
    f1_only.result(method="f1")
    assert not f1_only.is_cached(0, np.ones(seg.grid, np.uint8))  # analysed nowhere, fused nowhere


def test_fusion_round_trips_through_the_manifest(fused_bundle, tmp_path):
    folder = save_bundle(fused_bundle, tmp_path / "fused")
    assert json.loads((folder / "manifest.json").read_text())["f0_fusion"] == {"f1": WEIGHTS[0], "f2": WEIGHTS[1]}
    assert load_bundle(folder).fusion == WEIGHTS
    fused_bundle.fusion = (0.0, 0.0)
    plain = save_bundle(fused_bundle, tmp_path / "plain")
    assert "f0_fusion" not in json.loads((plain / "manifest.json").read_text())
    assert load_bundle(plain).fusion == (0.0, 0.0)


@pytest.mark.parametrize("bad", [{"f1": 1.0}, {"f2": -0.1}, {"f1": "a lot"}, [0.2, 0.3]])
def test_bad_fusion_weights_are_a_clear_bundle_error(tiny_bundle, tmp_path, bad):
    folder = save_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["f0_fusion"] = bad
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(folder)


def test_streamed_slabs_fuse_like_the_in_memory_engine_and_say_so(fused_bundle, volume, tmp_path):
    from napari_paser.engine.pipeline import segment
    from napari_paser.engine.streaming import stream_segment
    from napari_paser.io_sources import ArrayVolume

    path = save_bundle(fused_bundle, tmp_path / "fused")
    for method, fused in (("paser", True), ("f1", False)):
        ref = segment(volume, fused_bundle, method=method, lam=0.0 if method == "paser" else None, mc_passes=PASSES)
        out: dict = {}
        summary = stream_segment(ArrayVolume(volume), str(path), method=method, lam=0.0 if method == "paser" else None, mc_passes=PASSES,
                                 slab=1, writer=lambda kind, arr: out.setdefault(kind, []).append(arr))
        np.testing.assert_array_equal(np.concatenate(out["labels"]), ref.labels)
        assert ("f0_fusion" in summary.report["bundle"]) is fused and ("f0_fusion" in ref.bundle) is fused


def test_reward_caches_score_the_patches_the_engine_composes(fused_bundle, volume):
    """The policy learns the gains routing realises: the training stage's per-patch
    confusions of f1 / f2 are those of the engine's fused labels (and of the networks'
    own labels when the bundle does not fuse)."""
    from napari_paser.train.rewards import build_reward_cache, patch_confusion

    seg = fresh(fused_bundle, volume)
    planes = max(m.config.planes for m in fused_bundle.segmenters())
    x = torch.from_numpy(np.stack([seg._planes(z, planes) for z in range(2)]))
    truth = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (2, *seg.padded_shape)))

    def engine_confusion(segmenter, model):
        labels = np.stack([segmenter.compose(z, routing=np.full(segmenter.grid, model, np.uint8)) for z in range(2)])
        return patch_confusion(torch.from_numpy(labels).long(), truth, seg.patch_size).int()

    fused_cache = build_reward_cache(fused_bundle, x, truth, mc_passes=PASSES, seed=0)
    for model in range(3):
        assert torch.equal(fused_cache.conf[:, model], engine_confusion(seg, model))
    fused_bundle.fusion = (0.0, 0.0)
    plain_cache = build_reward_cache(fused_bundle, x, truth, mc_passes=PASSES, seed=0)
    assert not torch.equal(plain_cache.conf[:, 1:], fused_cache.conf[:, 1:])  # fusion moved labels
    assert torch.equal(plain_cache.conf[:, 0], fused_cache.conf[:, 0])
    plain = fresh(fused_bundle, volume)
    for model in (1, 2):
        assert torch.equal(plain_cache.conf[:, model], engine_confusion(plain, model))
