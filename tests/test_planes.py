"""Patch models that read neighbouring planes: widening, engines, training samples, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _widened(bundle, planes: int = 3):
    from napari_paser.engine.models import with_planes

    bundle.f0, bundle.f1, bundle.f2 = (with_planes(m, planes) for m in bundle.segmenters())
    return bundle.eval()


def test_widened_network_starts_as_the_original_on_the_planes_mean():
    from napari_paser.engine.models import UNet, UNetConfig, with_planes

    torch.manual_seed(0)
    f2 = UNet(UNetConfig(base_width=4, depth=2, stem=2, halo=4)).eval()
    wide = with_planes(f2, 5)
    assert wide.config.planes == 5 and wide.config.input_channels == 5 and f2.config.planes == 1
    planes = torch.randn(2, 5, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(wide(planes), f2(planes.mean(1, keepdim=True)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        UNet(UNetConfig(planes=2))
    with pytest.raises(ValueError, match="one-plane"):
        with_planes(wide, 3)


def test_plane_indices_repeat_the_edge_planes():
    from napari_paser.engine.patches import plane_indices

    assert plane_indices(0, 6, 5).tolist() == [0, 0, 0, 1, 2]
    assert plane_indices(5, 6, 3).tolist() == [4, 5, 5]
    assert plane_indices(2, 1, 3).tolist() == [0, 0, 0]


def test_engine_feeds_the_neighbouring_planes(tiny_bundle):
    """A patch model that reads planes gets planes z-1, z, z+1 of the stack, in order."""
    from napari_paser.engine.pipeline import PaserSegmenter

    bundle = _widened(tiny_bundle)
    vol = np.random.default_rng(0).integers(0, 4000, (4, 56, 64)).astype(np.uint16)
    seg = PaserSegmenter(bundle, mc_passes=1)
    seg.set_volume(vol)
    win = seg._patch_window(0, 0, 0, halo=0, planes=3)
    norm = seg._normalizer
    np.testing.assert_array_equal(win, np.stack([norm(vol[0]), norm(vol[0]), norm(vol[1])]))
    # A slab with its context reads what the whole stack reads.
    slab = PaserSegmenter(bundle, mc_passes=1)
    slab.set_volume(vol[2:3], normalizer=norm, first_slice=2, context=(vol[1:2], vol[3:4]))
    np.testing.assert_array_equal(slab._patch_window(0, 0, 0, 0, 3), seg._patch_window(2, 0, 0, 0, 3))


@pytest.fixture(scope="module")
def looks_back():
    """The default bundle with f0, f1 and f2 reading 5 planes (widened where they read one)
    and then made to read only the plane before each slice: any plane taken from the wrong
    place changes the labels."""
    from pathlib import Path

    from napari_paser import io
    from napari_paser.engine import load_bundle, resolve_bundle

    planes = 5
    bundle = _widened(load_bundle(resolve_bundle()), planes)
    with torch.no_grad():
        for m in bundle.segmenters():
            w = m.inc[0].weight  # (out, planes * per_plane, k, k), planes outermost
            blocks = w.reshape(w.shape[0], planes, -1, *w.shape[2:])
            summed = blocks.sum(1)  # what the network applies to a stack of equal planes
            blocks.zero_()
            blocks[:, planes // 2 - 1] = summed
    image, _ = io.read_stack(Path(__file__).parents[1] / "sample_data" / "electrode_image.tif")
    return bundle, np.ascontiguousarray(image[:6, 56:168, 64:192])


@pytest.mark.parametrize("slab", [1, 4])
def test_streamed_slabs_and_the_windowed_engine_equal_the_in_memory_engine(looks_back, tmp_path, slab):
    from napari_paser.engine.bundle import save_bundle
    from napari_paser.engine.normalize import Normalizer
    from napari_paser.engine.pipeline import PaserSegmenter, drain, segment
    from napari_paser.engine.streaming import stream_segment
    from napari_paser.engine.windowed import WindowedSegmenter
    from napari_paser.io_sources import ArrayVolume

    bundle, vol = looks_back
    path = save_bundle(bundle, tmp_path / "wide")
    for method in ("paser", "f2"):
        ref = segment(vol, bundle, method=method, lam=0.005 if method == "paser" else None, mc_passes=1)
        assert len(np.unique(ref.labels)) == 3
        out: dict = {}
        stream_segment(ArrayVolume(vol), str(path), method=method, lam=0.005 if method == "paser" else None, mc_passes=1,
                       slab=slab, entropy=True, routing=True, writer=lambda kind, arr: out.setdefault(kind, []).append(arr))
        np.testing.assert_array_equal(np.concatenate(out["labels"]), ref.labels)
        np.testing.assert_array_equal(np.concatenate(out["entropy"]), segment(vol, bundle, method="paser", mc_passes=1).entropy)
        if method == "paser":
            np.testing.assert_array_equal(np.concatenate(out["routing"]), ref.routing)
    windowed = WindowedSegmenter(bundle, vol, mc_passes=1, window=2)
    whole = PaserSegmenter(bundle, mc_passes=1)  # composes as PaSeR does: f0 fused into f2's patches
    whole.set_volume(vol)
    everywhere = np.full(windowed.grid, 2)
    np.testing.assert_array_equal(np.stack([windowed.compose(z, routing=everywhere) for z in range(6)]),
                                  np.stack([whole.compose(z, routing=everywhere) for z in range(6)]))
    # The check has teeth: without its context a slab's first plane reads itself instead.
    alone = PaserSegmenter(bundle, mc_passes=1)
    norm = Normalizer.fit(vol, bundle.normalization["low_percentile"], bundle.normalization["high_percentile"])
    alone.set_volume(vol[3:], normalizer=norm, first_slice=3)
    assert not np.array_equal(drain(alone.run(method="f2", slices=[0])).labels[0], ref.labels[3])


def test_slice_bank_samples_the_neighbouring_planes_around_labelled_slices():
    from napari_paser.train.augment import AugmentConfig
    from napari_paser.train.datasets import SliceBank, Volume

    rng = np.random.default_rng(0)
    image = rng.random((5, 56, 64)).astype(np.float32)
    labels = np.full((5, 56, 64), 255, np.uint8)
    labels[2] = rng.integers(0, 3, (56, 64))
    flat, wide = SliceBank([Volume("v", image, labels)], (28, 32)), SliceBank([Volume("v", image, labels)], (28, 32), planes=3)
    assert len(flat) == len(wide) == 1 and wide.images[0].shape == (3, 56, 64)
    torch.testing.assert_close(wide.images[0], torch.from_numpy(image[1:4]))
    cfg = AugmentConfig(contrast=0, offset=0, noise=0, blur=0)  # geometry only: same draws for both banks
    x1, y1 = flat.sample_patches(6, cfg, torch.Generator().manual_seed(3), halo=4)
    x3, y3 = wide.sample_patches(6, cfg, torch.Generator().manual_seed(3), halo=4)
    assert x3.shape == (6, 3, 36, 40) and torch.equal(y1, y3)
    torch.testing.assert_close(x3[:, 1], x1[:, 0])  # the centre plane is the slice itself


def test_finetune_widens_the_networks_and_the_adapted_bundle_round_trips(tiny_bundle, tmp_path):
    from napari_paser.engine.bundle import load_bundle, save_bundle
    from napari_paser.engine.pipeline import segment
    from napari_paser.train.finetune import FinetuneConfig, finetune

    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (4, 56, 64)).astype(np.uint16)
    lab = np.full(img.shape, 255, np.uint8)
    lab[1] = rng.integers(0, 3, (56, 64))
    cfg = FinetuneConfig(budget_s=3.0, batch=4, f0_batch=1, evaluations=1, threads=1, planes=3)
    res = finetune(tiny_bundle, img, lab, cfg)
    assert all(m.config.planes == 3 for m in res.bundle.segmenters()) and tiny_bundle.f2.config.planes == 1
    assert res.bundle.policy.config.in_channels == tiny_bundle.policy.config.in_channels  # the policy reads the slice itself
    assert tiny_bundle.policy.skip is None and res.bundle.policy.config.linear_skip  # re-fitted on a copy
    loaded = load_bundle(save_bundle(res.bundle, tmp_path / "adapted"))
    assert loaded.f2.config.planes == 3
    for method in ("paser", "f2"):
        np.testing.assert_array_equal(segment(img, loaded, method=method).labels, segment(img, res.bundle, method=method).labels)
    # Adapting the adapted bundle keeps its planes; a single slice stays 2-D.
    again = finetune(loaded, img, lab, FinetuneConfig(**{**cfg.to_dict(), "planes": 5, "augment": cfg.augment}))
    assert again.bundle.f2.config.planes == 3
    flat = finetune(tiny_bundle, img[1], lab[1], cfg)
    assert flat.bundle.f2.config.planes == 1


def test_preset_v2_10_widens_only_f2():
    """v2.10 is v2.9 with an f2 that reads 5 planes; its training preset trains f2 only."""
    from napari_paser.engine.bundle import default_model_configs
    from napari_paser.train.presets import get_preset

    old, new = default_model_configs("v2.9"), default_model_configs("v2.10")
    assert new["f2"].planes == 5 and old["f2"].planes == 1
    assert {k: v.to_dict() for k, v in new.items() if k != "f2"} == {k: v.to_dict() for k, v in old.items() if k != "f2"}
    cfg = get_preset("v2.10")
    assert cfg.arch == "v2.10" and cfg.f2_steps > 0 and cfg.f1_steps == 0 and cfg.f0_steps == 0
    assert cfg.policy_objective == "dense"
