"""Streaming `segment`: slab results equal the in-memory engine; every input and output
gives the same labels; Zarr outputs resume; memory is bounded by the slab."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_paser import io
from napari_paser.cli.main import main
from napari_paser.errors import PaserInputError
from napari_paser.io_sources import ArrayVolume

VOXEL = (2.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def electrode():
    """6 planes of 112x128 from the bundled sample stack (at λ 0.2 and at a TVD of 0.05 the
    default bundle keeps some patches on f0 and sends the rest to f1 there: v2.29 sends every
    patch of this crop to f1 from λ 0 to 0.1, and none to f2 at any λ tried up to 0.2; the
    IDK cascade and the random policy send some to f2)."""
    from pathlib import Path

    image, _ = io.read_stack(Path(__file__).parents[1] / "sample_data" / "electrode_image.tif")
    return np.ascontiguousarray(image[:6, 112:224, 128:256])


@pytest.fixture(scope="module")
def quick():
    from napari_paser.engine import load_bundle, resolve_bundle

    path = resolve_bundle()
    return str(path), load_bundle(path)


def collect():
    out: dict[str, list] = {}
    return out, lambda kind, arr: out.setdefault(kind, []).append(arr)


@pytest.mark.parametrize(
    "method, knobs",
    [("paser", {"lam": 0.2}), ("paser", {"tvd": 0.05}), ("idk", {}), ("random", {})],
)
def test_slabs_equal_the_in_memory_engine(electrode, quick, method, knobs):
    from napari_paser.engine.pipeline import segment
    from napari_paser.engine.streaming import stream_segment

    path, bundle = quick
    ref = segment(electrode, bundle, method=method, mc_passes=2, **knobs)
    out, writer = collect()
    rep = stream_segment(ArrayVolume(electrode), path, method=method, mc_passes=2, slab=4, writer=writer,
                         entropy=True, routing=True, bundle=bundle, **knobs).report
    np.testing.assert_array_equal(np.concatenate(out["labels"]), ref.labels)
    np.testing.assert_array_equal(np.concatenate(out["routing"]), ref.routing)
    np.testing.assert_array_equal(np.concatenate(out["entropy"]), ref.entropy)
    assert rep["lam"] == ref.lam and rep["tvd"] == ref.tvd
    assert rep["route_fraction"] == ref.route_fraction
    assert rep["gflops_total"] == pytest.approx(ref.gflops_total, rel=1e-12)
    # the stack exercises the routing: patches go to more than one model
    assert sum(share > 0 for share in ref.route_fraction.values()) >= 2


class CountingVolume(ArrayVolume):
    """Records the largest number of planes read at once."""

    largest = 0

    def _read(self, z0, z1):
        CountingVolume.largest = max(CountingVolume.largest, z1 - z0)
        return super()._read(z0, z1)


def test_reads_at_most_one_slab(electrode, quick):
    from napari_paser.engine.streaming import stream_segment

    path, bundle = quick
    big = np.concatenate([electrode] * 3)  # 18 planes
    out, writer = collect()
    CountingVolume.largest = 0
    stream_segment(CountingVolume(big), path, method="f0", mc_passes=1, slab=2, writer=writer, bundle=bundle)
    assert CountingVolume.largest == 2 and sum(len(a) for a in out["labels"]) == 18


def test_bad_stacks_fail_before_any_work(quick):
    from napari_paser.engine.streaming import stream_segment

    path, bundle = quick
    nan = np.ones((3, 60, 70), np.float32)
    nan[2, 5, 5] = np.nan
    for data, match in [(nan, "NaN"), (np.full((3, 60, 70), 7, np.uint16), "constant"),
                        (np.zeros((3, 40, 70), np.uint8), "smaller than one"), (np.zeros((60, 70, 3), np.uint8), "RGB")]:
        with pytest.raises(PaserInputError, match=match):
            stream_segment(ArrayVolume(data), path, writer=lambda *a: pytest.fail("wrote"), bundle=bundle)


def test_fit_normalizer_rejects_an_empty_stack():
    from napari_paser.engine.streaming import fit_normalizer

    with pytest.raises(PaserInputError, match="empty"):
        fit_normalizer(ArrayVolume(np.zeros((0, 60, 70), np.uint8)))


def run_cli(*argv) -> int:
    return main(["segment", "--mc-passes", "2", "--slab", "4", "--quiet", "--lam", "0.01"] + [str(a) for a in argv])


def test_inputs_and_outputs_agree(tmp_path, electrode):
    import h5py
    import zarr

    tif = io.write_tiff(tmp_path / "img.tif", electrode, voxel_size=VOXEL)
    assert run_cli(tif, "-o", tmp_path / "ref.tif", "--entropy", "--routing", "--report", tmp_path / "ref.json") == 0
    ref, vs = io.read_stack(tmp_path / "ref.tif")
    assert vs == pytest.approx(VOXEL) and ref.shape == electrode.shape
    report = json.loads((tmp_path / "ref.json").read_text())
    assert report["slab"] == 4 and io.read_metadata(tmp_path / "ref.tif")["napari_paser"]["gflops_total"] == report["gflops_total"]

    (tmp_path / "slices").mkdir()
    for z, plane in enumerate(electrode):
        io.write_tiff(tmp_path / "slices" / f"s{z:03d}.tif", plane, voxel_size=VOXEL)
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f.create_dataset("exchange/data", data=electrode).attrs["element_size_um"] = VOXEL
    zarr.save_array(str(tmp_path / "img.zarr"), electrode)
    for i, src in enumerate([tmp_path / "slices", f"{tmp_path / 'img.h5'}:/exchange/data", tmp_path / "img.zarr"]):
        assert run_cli(src, "-o", tmp_path / f"out{i}.tif") == 0
        np.testing.assert_array_equal(io.read_stack(tmp_path / f"out{i}.tif")[0], ref, err_msg=str(src))

    assert run_cli(tif, "-o", tmp_path / "out.zarr", "--entropy", "--routing") == 0
    store = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(store["0"][:], ref)
    np.testing.assert_array_equal(store["entropy"][:], io.read_stack(tmp_path / "ref_entropy.tif")[0])
    np.testing.assert_array_equal(store["routing"][:], io.read_stack(tmp_path / "ref_routing.tif")[0])
    attrs = dict(store.attrs)
    assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == list(VOXEL)
    assert attrs["napari_paser"]["complete"] and attrs["napari_paser"]["report"]["gflops_total"] == pytest.approx(report["gflops_total"])



def test_check_planes_reports_what_the_lambda_changed_against_f2(tmp_path, electrode, capsys):
    from napari_paser.engine import load_bundle
    from napari_paser.engine.metrics import confusion_matrix, mean_iou
    from napari_paser.engine.pipeline import PaserSegmenter
    from napari_paser.engine.registry import resolve_bundle

    tif = io.write_tiff(tmp_path / "img.tif", electrode, voxel_size=VOXEL)
    assert run_cli(tif, "-o", tmp_path / "out.zarr", "--check-planes", "3", "--lam", "0.3") == 0
    assert "against f2 on every patch of 3 planes" in capsys.readouterr().out
    import zarr

    check = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["napari_paser"]["report"]["f2_check"]
    assert check["planes"] == [0, 2, 5]  # evenly spaced, first and last
    seg = PaserSegmenter(load_bundle(resolve_bundle(None)), mc_passes=2, blend_borders=True)  # as segment blends by default
    seg.set_volume(electrode)
    cm = sum(confusion_matrix(seg.compose(z, lam=0.3), seg.compose(z, routing=np.full(seg.grid, 2, np.uint8))) for z in (0, 2, 5))
    assert check["agreement"] == pytest.approx(np.trace(cm) / cm.sum()) and check["mean_iou"] == pytest.approx(mean_iou(cm))
    assert check["agreement"] < 1
    # f2 everywhere against itself; a bad count is one line.
    assert run_cli(tif, "-o", tmp_path / "f2.tif", "--method", "f2", "--check-planes", "2", "--report", tmp_path / "f2.json") == 0
    assert json.loads((tmp_path / "f2.json").read_text())["f2_check"]["agreement"] == 1.0
    assert run_cli(tif, "-o", tmp_path / "bad.tif", "--check-planes", "-1") != 0
    assert "--check-planes must be at least 0" in capsys.readouterr().err and not (tmp_path / "bad.tif").exists()


def test_a_zarr_output_gets_coarser_levels_for_viewers(tmp_path, electrode, monkeypatch):
    import zarr

    from napari_paser import io_writers
    from napari_paser.io_sources import open_volume

    monkeypatch.setattr(io_writers, "PYRAMID_TOP", 40)  # levels until no axis is over 40
    tif = io.write_tiff(tmp_path / "img.tif", electrode, voxel_size=VOXEL)
    assert run_cli(tif, "-o", tmp_path / "out.zarr") == 0
    store = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    labels = store["0"][:]
    assert [store[k].shape for k in ("1", "2")] == [(3, 56, 64), (2, 28, 32)] and "3" not in store
    np.testing.assert_array_equal(store["1"][:], labels[::2, ::2, ::2])  # nearest: still labels
    np.testing.assert_array_equal(store["2"][:], labels[::4, ::4, ::4])
    datasets = dict(store.attrs)["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [list(VOXEL), [2 * v for v in VOXEL], [4 * v for v in VOXEL]]
    assert store.attrs["napari_paser"]["report"]["pyramid_levels"] == [[3, 56, 64], [2, 28, 32]]
    with open_volume(tmp_path / "out.zarr") as phases:  # what metrics, finetune and the reader read
        np.testing.assert_array_equal(phases.read(0, 6), labels)
        assert [v.shape for v in phases.coarser_levels()] == [(3, 56, 64), (2, 28, 32)]
    # A pyramid written again (a resumed run) replaces its levels; a single plane stays one plane.
    out = io_writers.OmeZarrOutput(tmp_path / "out.zarr")
    assert out.write_pyramid(40) == [(3, 56, 64), (2, 28, 32)]
    assert len(dict(zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs)["multiscales"][0]["datasets"]) == 3
    one = io.write_tiff(tmp_path / "one.tif", electrode[0], voxel_size=VOXEL)
    assert run_cli(one, "-o", tmp_path / "one.zarr") == 0
    assert zarr.open_group(str(tmp_path / "one.zarr"), mode="r")["2"].shape == (1, 28, 32)

def test_interrupted_zarr_run_resumes_to_identical_labels(tmp_path, electrode, monkeypatch, capsys):
    import zarr

    from napari_paser.engine import streaming

    tif = io.write_tiff(tmp_path / "img.tif", electrode, voxel_size=VOXEL)
    argv = [tif, "-o", tmp_path / "out.zarr", "--slab", "2"]
    assert run_cli(tif, "-o", tmp_path / "ref.tif", "--slab", "2") == 0
    real = streaming.run_slab

    def dies_on_slab_1(job, k):
        if k == 1:
            raise KeyboardInterrupt  # the run is killed after slab 0 was written
        return real(job, k)

    monkeypatch.setattr(streaming, "run_slab", dies_on_slab_1)
    assert run_cli(*argv) != 0  # "interrupted", as after Ctrl-C
    monkeypatch.setattr(streaming, "run_slab", real)
    store = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert list(store["paser/done"][:]) == [1, 0, 0] and not store.attrs["napari_paser"]["complete"]

    assert run_cli(*argv, "--mc-passes", "3") != 0
    assert "unfinished run with other input or settings" in capsys.readouterr().err
    assert run_cli(*argv) == 0  # same command: skips slab 0 and finishes
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][:], io.read_stack(tmp_path / "ref.tif")[0])
    report = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["napari_paser"]["report"]
    assert report["resumed_slabs_skipped"] == 1 and len(report["gflops_per_slice"]) == 6 and min(report["gflops_per_slice"]) > 0
    assert run_cli(*argv) != 0 and "finished output" in capsys.readouterr().err
    assert run_cli(*argv, "--overwrite") == 0


def test_two_dask_workers_equal_one_process(tmp_path, electrode):
    import zarr

    tif = io.write_tiff(tmp_path / "img.tif", electrode, voxel_size=VOXEL)
    assert main(["segment", str(tif), "-o", str(tmp_path / "one.zarr"), "--mc-passes", "2", "--slab", "2", "--quiet", "--tvd", "0.2"]) == 0
    assert main(["segment", str(tif), "-o", str(tmp_path / "two.zarr"), "--mc-passes", "2", "--slab", "2", "--quiet", "--tvd", "0.2",
                 "--workers", "2"]) == 0
    one = zarr.open_group(str(tmp_path / "one.zarr"), mode="r")
    two = zarr.open_group(str(tmp_path / "two.zarr"), mode="r")
    np.testing.assert_array_equal(two["0"][:], one["0"][:])
    r1, r2 = one.attrs["napari_paser"]["report"], two.attrs["napari_paser"]["report"]
    # The λ that meets the TVD target is a switch point of the policy's gains (about 1e-4),
    # whose convolutions sum in another order with one thread per worker than with every
    # core here (about 2e-9 apart): the same λ to a relative 1e-4, the same routing.
    assert r2["workers"] == 2 and r2["lam"] == pytest.approx(r1["lam"], rel=1e-4) and r2["route_fraction"] == r1["route_fraction"]


def test_written_files_keep_the_users_umask(tmp_path, electrode, tiny_bundle):
    import os

    from napari_paser.engine.bundle import save_bundle

    mask = os.umask(0)
    os.umask(mask)
    tif = io.write_tiff(tmp_path / "img.tif", electrode[:2])
    assert run_cli(tif, "-o", tmp_path / "out.tif", "--report", tmp_path / "r.json", "--routing") == 0
    assert run_cli(tif, "-o", tmp_path / "out.zarr") == 0
    bundle = save_bundle(tiny_bundle, tmp_path / "bundle")
    for p in [tmp_path / "out.tif", tmp_path / "out_routing.tif", tmp_path / "r.json", bundle / "manifest.json",
              bundle / "weights.safetensors"]:
        assert os.stat(p).st_mode & 0o777 == 0o666 & ~mask, p
    assert os.stat(tmp_path / "out.zarr").st_mode & 0o777 == 0o777 & ~mask


def test_windowed_engine_routes_like_the_in_memory_one(tiny_bundle):
    """The two engines share their λ / TVD routing: same routings, TVD and λ for a TVD."""
    import torch

    from napari_paser.engine.pipeline import PaserSegmenter
    from napari_paser.engine.windowed import WindowedSegmenter

    with torch.no_grad():  # gains that differ between patches, so λ matters
        tiny_bundle.policy.head[-1].weight.mul_(3.0)
        tiny_bundle.policy.head[-1].bias.copy_(torch.tensor([0.05, 0.1]))
    vol = np.random.default_rng(0).integers(0, 4000, (5, 56, 64)).astype(np.uint16)
    whole = PaserSegmenter(tiny_bundle, mc_passes=2)
    whole.set_volume(vol)
    windowed = WindowedSegmenter(tiny_bundle, vol, mc_passes=2, window=2)
    # Both analyse a list of slices alike (the napari panel's TVD mode): each yielded in order.
    assert list(whole.analyse_slices([4, 0, 1, 2, 3])) == list(windowed.analyse_slices([4, 0, 1, 2, 3])) == [4, 0, 1, 2, 3]
    assert all(whole.is_analysed(z) and windowed.is_analysed(z) for z in range(5))
    for lam in (0.0, 0.1, 0.5):
        assert all(np.array_equal(whole.routing(lam, z), windowed.routing(lam, z)) for z in range(5))
        assert whole.tvd(lam) == windowed.tvd(lam)
    assert whole.lam_for_tvd(0.3) == windowed.lam_for_tvd(0.3) > 0
    with pytest.raises(PaserInputError):
        windowed.routing(1.5, 0)
