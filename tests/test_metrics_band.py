"""The band streams its scan: slab by slab, the segmentations and metrics of the stack in memory."""

from __future__ import annotations

import dataclasses

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
    monkeypatch.setattr(streaming, "default_slab", lambda shape, patch_size, **_: 2)
    reads = []
    real = Volume.read
    monkeypatch.setattr(Volume, "read", lambda self, z0, z1: reads.append((self, z1 - z0)) or real(self, z0, z1))
    members = run_steps(band_steps(image, tiny_bundle, 0, lams=(1.0,), methods=(), labels=labels, envelope=PhaseEnvelope(),
                                   tortuosity=False))
    assert len(members) == 1
    scan_reads = [n for v, n in reads if v is image]
    assert len(scan_reads) == 6 and max(scan_reads) == 2  # the statistics pass, then the segmentation
    assert [n for v, n in reads if v is labels] == [2, 2, 2]  # into the envelope


def test_a_blended_band_is_the_band_of_the_stack_segmented_with_blended_borders(shipped):
    """With blend_borders the PaSeR and single-model members are the labels that
    ``segment --blend-borders`` gives (they differ from the cropped ones); the MC samples
    (f0 alone) do not change, and a bundle whose patch models read no halo is refused first."""
    pytest.importorskip("zarr")
    from napari_paser.engine.bundle import Bundle
    from napari_paser.engine.pipeline import PaserSegmenter, drain, get_method
    from napari_paser.errors import PaserInputError

    bundle, _, image = shipped
    kwargs = dict(lams=(0.0,), methods=("f1",), mc_samples=1, slab=2, tortuosity=False)
    blended = run_steps(band_steps(image, bundle, 1, blend_borders=True, **kwargs))
    cropped = run_steps(band_steps(image, bundle, 1, **kwargs))

    def segmented(blend: bool) -> list[np.ndarray]:
        seg = PaserSegmenter(bundle, blend_borders=blend)
        seg.set_volume(image)
        return [np.asarray(drain(seg.run(lam=lam, method=get_method(m))).labels) for m, lam in (("paser", 0.0), ("f1", None))]

    wants = {True: segmented(True), False: segmented(False)}
    assert all(np.any(a != b) for a, b in zip(wants[True], wants[False]))  # the blend moves some labels here
    for members, blend in ((blended, True), (cropped, False)):
        for member, labels in zip(members, wants[blend]):
            assert member.metrics.values == compute_metrics(labels, 1, tortuosity=False, require_all_phases=False).values, member.name
    assert all(b.metrics.values != c.metrics.values for b, c in zip(blended[:2], cropped[:2]))
    assert blended[-1].name == "f0 MC sample 1" and blended[-1].metrics.values == cropped[-1].metrics.values
    halo_less = Bundle.from_configs(tiny_configs(), seed=0, meta={"name": "tiny", "version": "0"}).eval()
    with pytest.raises(PaserInputError, match="reads no halo"):
        next(band_steps(image, halo_less, 1, blend_borders=True, **kwargs))


class ReversedExecutor:
    """Runs the tasks in this process, last slab first (as a cluster may finish them),
    through a pickled copy of the job (as a cluster receives it)."""

    workers = 1

    def map(self, fn, job, ks, *args, ordered=True):
        import pickle

        job = pickle.loads(pickle.dumps(job))
        for k in reversed(list(ks)):
            yield fn(job, k, *args)

    def close(self):
        pass


def test_slabs_as_tasks_in_any_order_give_the_band_of_one_process(context_bundle, tmp_path):
    """The workers' job carries the bundle's folder, not its networks; slab order changes nothing."""
    pytest.importorskip("zarr")
    from napari_paser.engine.bundle import load_bundle, save_bundle

    bundle = load_bundle(save_bundle(context_bundle, tmp_path / "context-bundle"))
    rng = np.random.default_rng(2)
    image = rng.integers(0, 4000, (5, 56, 64)).astype(np.uint16)
    labels = rng.integers(0, 3, image.shape).astype(np.uint8)
    kwargs = dict(lams=(0.0, None), methods=("f2",), mc_samples=1, labels=labels, slab=2, tortuosity=False)
    here_env, tasks_env = PhaseEnvelope(), PhaseEnvelope()
    here = run_steps(band_steps(image, bundle, 0, envelope=here_env, **kwargs))
    done = []
    tasks = run_steps(band_steps(image, bundle, 0, envelope=tasks_env, executor=ReversedExecutor(), **kwargs),
                      lambda step: done.append(step[1]))
    assert done[:4] == [0, 1, 2, 3]  # a unit per slab as it finishes (3 slabs), then the members
    for a, b in zip(here, tasks):
        assert (a.name, a.gflops, a.metrics.values) == (b.name, b.gflops, b.metrics.values)
        np.testing.assert_array_equal(a.metrics.profiles, b.metrics.profiles)
    assert tasks_env.fraction_ranges() == here_env.fraction_ranges()
    for got, want in zip(tasks_env.profile_range(2), here_env.profile_range(2)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(Exception, match="bundle loaded from a folder"):
        run_steps(band_steps(image, dataclasses.replace(bundle, path=None), 0, executor=ReversedExecutor(), **kwargs))


def test_envelopes_of_other_shapes_do_not_merge():
    a, b = PhaseEnvelope(), PhaseEnvelope()
    a.start((2, 3, 4), 2)
    b.start((2, 3, 5), 2)
    with pytest.raises(Exception, match="cannot merge"):
        a.merge(b)
