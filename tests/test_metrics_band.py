"""The band streams its scan: slab by slab, the segmentations and metrics of the stack in memory."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_configs
from napari_paser.engine.metrics_band import PhaseEnvelope, band_steps
from napari_paser.engine.microstructure import compute_metrics
from napari_paser.engine.steps import run_steps


@pytest.fixture
def context_bundle():
    """A tiny bundle whose f2 reads the neighbouring planes (slabs need context)."""
    from napari_paser.engine.bundle import Bundle
    from napari_paser.engine.models import UNetConfig

    configs = tiny_configs()
    configs["f2"] = UNetConfig(base_width=8, depth=2, planes=3)
    return Bundle.from_configs(configs, seed=0, meta={"name": "tiny-context", "version": "0"}).eval()


def in_memory_band(bundle, image, lams, methods, mc_samples):
    """What the band gives for the stack segmented whole in memory."""
    from napari_paser.engine.pipeline import PaserSegmenter, drain, get_method

    seg = PaserSegmenter(bundle, seed=0)
    seg.set_volume(image)
    out = [drain(seg.run(lam=lam, method=get_method("paser"))) for lam in lams]
    out += [drain(seg.run(method=get_method(m))) for m in methods]
    for k in range(mc_samples):
        mc = PaserSegmenter(bundle, mc_passes=1, seed=1 + k)
        mc.set_volume(image)
        out.append(drain(mc.run(method=get_method("f0"))))
    return out


@pytest.mark.parametrize("slab", [1, 2, None])
def test_a_band_slab_by_slab_is_the_band_of_the_stack_in_memory(context_bundle, slab, tmp_path):
    pytest.importorskip("zarr")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (5, 56, 64)).astype(np.uint16)
    labels = rng.integers(0, 3, image.shape).astype(np.uint8)
    lams, methods = (0.0, 0.5, None), ("f2",)
    expected = in_memory_band(context_bundle, image, [context_bundle.default_lam if x is None else x for x in lams], methods, 2)
    envelope = PhaseEnvelope()
    members = run_steps(band_steps(image, context_bundle, 1, lams=lams, methods=methods, mc_samples=2, labels=labels,
                                   envelope=envelope, slab=slab, tortuosity=False))
    assert [m.name for m in members][-3:] == ["f2 everywhere", "f0 MC sample 1", "f0 MC sample 2"]
    for member, whole in zip(members, expected):
        want = compute_metrics(whole.labels, 1, tortuosity=False, require_all_phases=False)
        assert member.metrics.values == want.values, member.name
        np.testing.assert_array_equal(member.metrics.profiles, want.profiles)
        assert member.gflops == pytest.approx(whole.gflops_total, rel=1e-9)
    # the envelope: the labels and the deterministic members, voxel by voxel
    deterministic = [labels] + [np.asarray(r.labels) for r in expected[:4]]
    whole_env = PhaseEnvelope()
    whole_env.add_slab(0, deterministic)
    assert envelope.count == 5 and envelope.fraction_ranges() == whole_env.fraction_ranges()
    for got, want in zip(envelope.profile_range(1), whole_env.profile_range(1)):
        np.testing.assert_array_equal(got, want)


def test_the_band_reads_the_scan_and_the_labels_a_slab_at_a_time(tiny_bundle, monkeypatch):
    pytest.importorskip("zarr")
    import napari_paser.engine.streaming as streaming
    from napari_paser.io_sources import Volume, as_volume

    rng = np.random.default_rng(1)
    image = as_volume(rng.integers(0, 4000, (6, 56, 64)).astype(np.uint16))
    labels = as_volume(rng.integers(0, 3, (6, 56, 64)).astype(np.uint8))
    monkeypatch.setattr(streaming, "default_slab", lambda shape, patch_size: 2)
    reads = []
    real = Volume.read
    monkeypatch.setattr(Volume, "read", lambda self, z0, z1: reads.append((self, z1 - z0)) or real(self, z0, z1))
    members = run_steps(band_steps(image, tiny_bundle, 0, lams=(1.0,), methods=(), labels=labels, envelope=PhaseEnvelope(),
                                   tortuosity=False))
    assert len(members) == 1
    scan_reads = [n for v, n in reads if v is image]
    assert len(scan_reads) == 6 and max(scan_reads) == 2  # the statistics pass, then the segmentation
    assert [n for v, n in reads if v is labels] == [2, 2, 2]  # into the envelope
