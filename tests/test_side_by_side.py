"""Slices and batches of patches run side by side: in order, one torch thread each, the
same outputs as one at a time, and the wall time they took charged once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_paser.engine import side_by_side  # noqa: E402
from napari_paser.engine.pipeline import PaserSegmenter  # noqa: E402
from napari_paser.engine.side_by_side import one_torch_thread, ordered_map, share_wall, workers_for  # noqa: E402


@pytest.fixture
def threads():
    """Set torch's threads for a test; the test process's are restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_pieces_run_at_once_in_order_with_one_torch_thread_each(threads):
    threads(2)
    meet = threading.Barrier(2, timeout=20)  # the first two pieces return only if they run at once
    seen = []

    def compute(x):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        if x < 2:
            meet.wait()
        return x * x

    assert list(ordered_map(compute, range(6), workers=2)) == [0, 1, 4, 9, 16, 25]
    assert len(seen) == 6 and all(name.startswith("paser") and n == 1 for name, n in seen)
    assert torch.get_num_threads() == 2


def test_inputs_are_read_on_the_calling_thread_a_few_pieces_ahead(threads):
    threads(2)
    readers = []

    def inputs():
        for x in range(20):
            readers.append(threading.current_thread().name)
            yield x

    results = ordered_map(lambda x: x, inputs(), workers=2)
    assert next(results) == 0
    assert len(readers) <= 5  # 2 x workers ahead of the results, and the one read to refill
    assert list(results) == list(range(1, 20))
    assert set(readers) == {threading.current_thread().name}


def test_leaving_early_cancels_what_has_not_started_and_gives_the_threads_back(threads):
    threads(2)
    started = []
    results = ordered_map(lambda x: started.append(x) or x, range(100), workers=2)
    assert next(results) == 0
    results.close()
    assert len(started) <= 5
    assert torch.get_num_threads() == 2


def test_an_error_in_a_piece_reaches_the_caller(threads):
    threads(2)

    def compute(x):
        if x == 3:
            raise ValueError("bad piece")
        return x

    with pytest.raises(ValueError, match="bad piece"):
        list(ordered_map(compute, range(10), workers=2))
    assert torch.get_num_threads() == 2


def test_one_worker_is_a_plain_loop_on_the_calling_thread(threads):
    threads(2)
    names = []
    assert list(ordered_map(lambda x: names.append(threading.current_thread().name) or x + 1, range(3), workers=1)) == [1, 2, 3]
    assert set(names) == {threading.current_thread().name}


def test_how_many_pieces_run_at_once(threads):
    threads(2)
    cpu = torch.device("cpu")
    assert workers_for(8, 224 * 256, cpu) == 2
    assert workers_for(1, 224 * 256, cpu) == 1
    assert workers_for(8, side_by_side.MAX_PIXELS + 1, cpu) == 1  # large slices split well on their own
    assert workers_for(8, 224 * 256, torch.device("cuda")) == 1
    threads(1)
    assert workers_for(8, 224 * 256, cpu) == 1


def test_one_torch_thread_holds_inside_the_block_and_gives_the_rest_back_after_an_error(threads):
    threads(2)
    with one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"), one_torch_thread():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_overlapping_seconds_share_the_wall_time():
    a, b = share_wall(3.0, np.array([1.0, 2.0]), np.array([3.0]))
    np.testing.assert_allclose(a, [0.5, 1.0])
    np.testing.assert_allclose(b, [1.5])
    (none,) = share_wall(1.0, np.zeros(2))
    assert not none.any()


def _spy_threads(monkeypatch) -> dict[str, set[str]]:
    """Names of the threads that run the analysis and the patch batches."""
    names: dict[str, set[str]] = {"analysis": set(), "patches": set()}
    analysis, patches = PaserSegmenter._analysis, PaserSegmenter._patch_outputs

    def spy_analysis(self, inputs):
        names["analysis"].add(threading.current_thread().name)
        return analysis(self, inputs)

    def spy_patches(self, model, inputs):
        names["patches"].add(threading.current_thread().name)
        return patches(self, model, inputs)

    monkeypatch.setattr(PaserSegmenter, "_analysis", spy_analysis)
    monkeypatch.setattr(PaserSegmenter, "_patch_outputs", spy_patches)
    return names


def _everything(bundle, image, **kw) -> tuple[dict, float, float]:
    """Labels, routings, entropies and gains of PaSeR, f0, f1 and f2 on ``image``; the
    seconds the engine charges for everything it ran (each slice's analysis and each
    patch once) and the wall time that took."""
    seg = PaserSegmenter(bundle, mc_passes=2, batch_size=2, **kw)
    seg.set_volume(image)
    out = {}
    start = time.perf_counter()
    for method in ("paser", "f0", "f1", "f2"):
        res = seg.result(method=method)
        out[method] = (res.labels, res.routing)
    wall = time.perf_counter() - start
    charged = sum(f0 + policy + patches.sum() for f0, policy, patches in (seg.timings(z) for z in range(seg.num_slices)))
    out["entropy"] = np.stack([seg.entropy(z) for z in range(seg.num_slices)])
    out["gains"] = np.stack([seg.gains(z) for z in range(seg.num_slices)])
    return out, charged, wall


@pytest.mark.parametrize("blend", [True, False])
def test_the_shipped_bundle_gives_the_same_outputs_with_two_threads_as_with_one(shipped, threads, monkeypatch, blend):
    bundle, _, image = shipped  # three planes of 2 x 2 patches: slices and batches of 2 patches side by side
    threads(1)
    alone, _, _ = _everything(bundle, image, blend_borders=blend)
    threads(2)
    names = _spy_threads(monkeypatch)
    together, charged, wall = _everything(bundle, image, blend_borders=blend)
    assert all(n.startswith("paser") for n in names["analysis"] | names["patches"]) and len(names["patches"]) == 2
    for key, value in alone.items():
        for a, b in zip(value if isinstance(value, tuple) else (value,), together[key] if isinstance(value, tuple) else (together[key],)):
            np.testing.assert_array_equal(a, b, err_msg=key)
    # Each piece measured its own seconds; the pieces overlapped, so what the engine
    # charges is the wall time of the phases they ran in, within the run's.
    assert 0 < charged <= wall


def test_an_f0_whose_mc_passes_seed_the_global_generator_analyses_one_slice_at_a_time(tiny_bundle, threads, monkeypatch):
    assert tiny_bundle.f0.config.mc_scope == "decoder"
    threads(2)
    names = _spy_threads(monkeypatch)
    image = (np.random.default_rng(0).random((3, 56, 128)) * 1000).astype(np.uint16)
    seg = PaserSegmenter(tiny_bundle, mc_passes=2, batch_size=1)
    seg.set_volume(image)
    seg.result(method="f1")
    seg.result(method="paser")
    assert names["analysis"] == {threading.current_thread().name}
    assert all(n.startswith("paser") for n in names["patches"])


def test_analyse_slices_yields_each_slice_in_order_once_analysed_several_at_once(shipped, threads, monkeypatch):
    bundle, _, image = shipped
    threads(2)
    names = _spy_threads(monkeypatch)
    seg = PaserSegmenter(bundle, mc_passes=2)
    seg.set_volume(image)
    seg.analyse(1)
    order = []
    for z in seg.analyse_slices([2, 1, 0, 2]):
        assert seg.is_analysed(z)
        order.append(z)
    assert order == [2, 1, 0, 2]
    # slice 1 was analysed alone, on the calling thread; slices 2 and 0 on the workers
    assert threading.current_thread().name in names["analysis"] and any(n.startswith("paser") for n in names["analysis"])
    alone = PaserSegmenter(bundle, mc_passes=2, side_by_side=False)
    alone.set_volume(image)
    for z in range(3):
        np.testing.assert_array_equal(seg.gains(z), alone.gains(z))
        np.testing.assert_array_equal(seg.entropy(z), alone.entropy(z))
    with pytest.raises(IndexError, match="out of range"):
        next(seg.analyse_slices([0, 3]))


def test_the_panels_tvd_mode_analyses_side_by_side_in_its_order(shipped, threads, monkeypatch):
    from napari_paser.napari_ui import _jobs

    bundle, path, image = shipped
    threads(2)
    monkeypatch.setattr(_jobs, "worker_threads", lambda cpu_count=None: 2)  # the viewer's cores but one, on a 3-core machine
    names = _spy_threads(monkeypatch)
    req = _jobs.RunRequest(data=image, key=("side by side",), bundle_path=path, mc_passes=2, mode="tvd", lam=0.005, tvd=0.3,
                           order=[2, 0, 1])
    job, analysed = _jobs.run_job(req), []
    try:
        while True:
            msg = next(job)
            if isinstance(msg, _jobs.Ready):
                msg.shown.set()
            elif isinstance(msg, _jobs.SliceDone) and msg.labels is None:  # the analysis stage
                analysed.append(msg.z)
    except StopIteration as stop:
        outcome = stop.value
    assert analysed == [2, 0, 1]
    assert names["analysis"] and all(n.startswith("paser") for n in names["analysis"])
    alone = PaserSegmenter(bundle, mc_passes=2, side_by_side=False)
    alone.set_volume(image)
    for z in range(3):
        alone.analyse(z)
    assert outcome.lam == alone.lam_for_tvd(0.3)
