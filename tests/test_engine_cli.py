"""`napari-paser segment` and `evaluate`: outputs, reports and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_paser import io
from napari_paser.cli.main import main

VOXEL = (2.0, 0.5, 0.5)


def stack(shape=(2, 112, 128), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, shape).astype(np.uint16)


@pytest.fixture
def image_file(tmp_path):
    return io.write_tiff(tmp_path / "img.tif", stack(), voxel_size=VOXEL)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_segment_writes_labels_and_report(tmp_path, image_file, tiny_bundle_dir, capsys):
    out, rep = tmp_path / "labels.tif", tmp_path / "report.json"
    rc, stdout, _ = run_cli(
        capsys, "segment", image_file, "-o", out, "--bundle", tiny_bundle_dir, "--lam", "0.2", "--mc-passes", "2", "--report", rep
    )
    assert rc == 0 and "wrote" in stdout
    labels, voxel = io.read_stack(out)
    assert labels.shape == (2, 112, 128) and labels.dtype == np.uint8 and labels.max() <= 2
    assert voxel == pytest.approx(VOXEL)
    report = json.loads(rep.read_text())
    for key in ("gflops_total", "gflops_per_slice", "route_fraction", "seconds", "lam", "tvd", "bundle"):
        assert key in report
    assert report["lam"] == 0.2 and len(report["gflops_per_slice"]) == 2
    assert report["device"] == "cpu"  # auto, on a machine without CUDA
    assert sum(report["route_fraction"].values()) == pytest.approx(1.0)
    # Refuses to overwrite; the existing file is untouched.
    before = out.read_bytes()
    rc, _, err = run_cli(capsys, "segment", image_file, "-o", out, "--bundle", tiny_bundle_dir)
    assert rc != 0 and "--overwrite" in err and out.read_bytes() == before
    rc, _, _ = run_cli(capsys, "segment", image_file, "-o", out, "--bundle", tiny_bundle_dir, "--method", "f1", "--overwrite", "--quiet")
    assert rc == 0 and out.read_bytes() != before


def test_segment_2d_input_gives_2d_output(tmp_path, tiny_bundle_dir, capsys):
    src = io.write_tiff(tmp_path / "slice.tif", stack((112, 128)))
    out = tmp_path / "slice_labels.tif"
    rc, _, _ = run_cli(capsys, "segment", src, "-o", out, "--bundle", tiny_bundle_dir, "--tvd", "0.1", "--quiet")
    assert rc == 0
    assert io.read_stack(out)[0].shape == (112, 128)


def _write_bad(tmp_path, kind: str):
    import tifffile

    p = tmp_path / f"{kind}.tif"
    if kind == "rgb":
        tifffile.imwrite(p, np.random.default_rng(0).integers(0, 255, (112, 128, 3), dtype=np.uint8), photometric="rgb")
    elif kind == "4d":
        tifffile.imwrite(p, np.random.default_rng(0).random((2, 2, 112, 128)).astype(np.float32))
    elif kind == "nan":
        a = stack().astype(np.float32)
        a[0, 5, 5] = np.nan
        tifffile.imwrite(p, a)
    elif kind == "constant":
        tifffile.imwrite(p, np.full((2, 112, 128), 9, np.uint16))
    elif kind == "small":
        tifffile.imwrite(p, stack((2, 40, 128)))
    elif kind == "garbage":
        p.write_bytes(b"II*\x00 this is not really a tiff" * 10)
    elif kind == "missing":
        pass
    return p


@pytest.mark.parametrize("kind", ["rgb", "4d", "nan", "constant", "small", "garbage", "missing"])
def test_segment_bad_input_one_line_error(tmp_path, tiny_bundle_dir, capsys, kind):
    src = _write_bad(tmp_path, kind)
    out = tmp_path / "out.tif"
    rc, _, err = run_cli(capsys, "segment", src, "-o", out, "--bundle", tiny_bundle_dir, "--report", tmp_path / "r.json")
    assert rc != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--lam", "1.5"], "--lam must be in [0, 1]"),
        (["--method", "nonsense"], "unknown method"),
        (["--bundle", "/nonexistent/bundle"], "no bundle"),
        (["--device", "tpu"], "unknown device"),
        (["--device", "cuda"], "no CUDA device is available here"),  # the tests' torch is a CPU build
    ],
)
def test_segment_bad_options(tmp_path, image_file, tiny_bundle_dir, capsys, argv, words):
    if "--bundle" not in argv:
        argv = [*argv, "--bundle", tiny_bundle_dir]
    rc, _, err = run_cli(capsys, "segment", image_file, "-o", tmp_path / "o.tif", *argv)
    assert rc != 0 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.tif").exists()



def test_segment_precision_bf16(tmp_path, image_file, tiny_bundle_dir, capsys, monkeypatch):
    """bf16 patches where bf16 is native: the same labels but for near-ties, recorded;
    a resumed Zarr run keeps its precision; where bf16 would be emulated, one line."""
    import zarr

    from napari_paser.engine import precision

    common = ["--bundle", tiny_bundle_dir, "--method", "f2", "--quiet"]
    if precision.bf16_is_fast("cpu"):
        rc, _, _ = run_cli(capsys, "segment", image_file, "-o", tmp_path / "fp32.tif", *common)
        rc16, _, _ = run_cli(capsys, "segment", image_file, "-o", tmp_path / "bf16.tif", "--precision", "bf16",
                             "--report", tmp_path / "r.json", *common)
        assert rc == rc16 == 0
        fp32, bf16 = io.read_stack(tmp_path / "fp32.tif")[0], io.read_stack(tmp_path / "bf16.tif")[0]
        assert (fp32 == bf16).mean() > 0.99
        assert json.loads((tmp_path / "r.json").read_text())["precision"] == "bf16"
        assert io.read_metadata(tmp_path / "bf16.tif")["napari_paser"]["precision"] == "bf16"
        rc, _, _ = run_cli(capsys, "segment", image_file, "-o", tmp_path / "run.zarr", "--precision", "bf16", *common)
        store = zarr.open_group(str(tmp_path / "run.zarr"), mode="r+")
        assert rc == 0 and store.attrs["napari_paser"]["run"]["precision"] == "bf16"
        attrs = dict(store.attrs["napari_paser"])
        store.attrs["napari_paser"] = {**attrs, "complete": False}  # as if the run had been stopped
        rc, _, err = run_cli(capsys, "segment", image_file, "-o", tmp_path / "run.zarr", *common)
        assert rc != 0 and "unfinished run with other input or settings" in err
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type="cpu": device_type != "cpu")
    rc, _, err = run_cli(capsys, "segment", image_file, "-o", tmp_path / "emulated.tif", "--precision", "bf16", *common)
    assert rc != 0 and "native bf16" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "emulated.tif").exists()
    truth = io.write_tiff(tmp_path / "lab.tif", np.zeros((2, 112, 128), np.uint8))
    rc, _, err = run_cli(capsys, "evaluate", "--images", image_file, "--labels", truth, "--precision", "bf16", *common[:2])
    assert rc != 0 and "native bf16" in err and len(err.strip().splitlines()) == 1


def test_missing_default_bundle_is_one_line(tmp_path, image_file, capsys, monkeypatch):
    from napari_paser.engine import registry

    monkeypatch.setattr(registry, "DEFAULT_BUNDLE", "no-such-default-bundle")
    rc, _, err = run_cli(capsys, "segment", image_file, "-o", tmp_path / "o.tif")
    assert rc != 0 and "default bundle" in err and len(err.strip().splitlines()) == 1


def test_evaluate_table_and_json(tmp_path, image_file, tiny_bundle_dir, capsys):
    truth = np.random.default_rng(1).integers(0, 3, (2, 112, 128)).astype(np.uint8)
    lab = io.write_tiff(tmp_path / "lab.tif", truth)
    js = tmp_path / "scores.json"
    rc, stdout, _ = run_cli(
        capsys, "evaluate", "--images", image_file, "--labels", lab, "--bundle", tiny_bundle_dir, "--mc-passes", "2", "--json", js, "--quiet"
    )
    assert rc == 0
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["method", "mean", "IoU"]
    assert [ln.split()[0] for ln in lines[2:6]] == ["paser", "f0", "f1", "f2"]
    data = json.loads(js.read_text())
    rows = {r["method"]: r for r in data["methods"]}
    assert rows["f2"]["gflops"] > rows["f1"]["gflops"] > 0
    for r in rows.values():
        assert 0 <= r["mean_iou"] <= 1 and r["iou_per_gflop"] == pytest.approx(r["mean_iou"] / r["gflops"])
    assert data["precision"] == "fp32"


def test_evaluate_rejects_bad_labels(tmp_path, image_file, tiny_bundle_dir, capsys):
    lab = io.write_tiff(tmp_path / "lab.tif", np.full((2, 112, 128), 5, np.uint8))
    rc, _, err = run_cli(capsys, "evaluate", "--images", image_file, "--labels", lab, "--bundle", tiny_bundle_dir, "--json", tmp_path / "s.json")
    assert rc != 0 and "outside {0, 1, 2}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


def test_resolve_device_picks_cuda_when_there_is_one_and_checks_what_is_named(monkeypatch):
    import torch

    from napari_paser.engine.devices import resolve_device
    from napari_paser.errors import PaserInputError

    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == "cpu"
    with pytest.raises(PaserInputError, match="no CUDA device"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(PaserInputError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(PaserInputError, match="cpu or cuda"):
        resolve_device("meta")


def test_segment_roi_labels_the_box_as_if_it_were_the_file(tmp_path, tiny_bundle_dir, capsys):
    image = stack((5, 130, 150), seed=3)
    whole = io.write_tiff(tmp_path / "whole.tif", image, voxel_size=VOXEL)
    box = io.write_tiff(tmp_path / "box.tif", image[1:4, 6:124, 10:-12], voxel_size=VOXEL)
    args = ["--bundle", tiny_bundle_dir, "--mc-passes", "2", "--quiet"]
    rc, _, err = run_cli(capsys, "segment", whole, "--roi", "1:4,6:124,10:-12", "-o", tmp_path / "roi.tif", "--report", tmp_path / "r.json", *args)
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "segment", box, "-o", tmp_path / "box_labels.tif", *args)
    assert rc == 0, err
    labels, voxel = io.read_stack(tmp_path / "roi.tif")
    np.testing.assert_array_equal(labels, io.read_stack(tmp_path / "box_labels.tif")[0])  # normalised by the box alone
    assert labels.shape == (3, 118, 128) and voxel == pytest.approx(VOXEL)
    roi = [[1, 4], [6, 124], [10, 138]]
    assert json.loads((tmp_path / "r.json").read_text())["roi"] == roi
    assert io.read_metadata(tmp_path / "roi.tif")["napari_paser"]["roi"] == roi
    rc, _, err = run_cli(capsys, "segment", whole, "--roi", "1:4,6:200,:", "-o", tmp_path / "bad.tif", *args)
    assert rc == 2 and "outside the 130 rows" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.tif").exists()


def test_benchmark_command_runs_the_suite_of_this_checkout(tmp_path, capsys):
    """``napari-paser benchmark`` runs ``benchmarks/run_all.py`` of the source checkout and
    writes its report where asked (the digits part at smoke size: about 20 s)."""
    import torch

    threads = torch.get_num_threads()
    try:
        rc, _, _ = run_cli(capsys, "benchmark", "--fast", "--only", "digits", "--out", tmp_path, "--seed", "3")
    finally:
        torch.set_num_threads(threads)  # the suite sets its own (--threads): the tests after this one keep theirs
    assert rc == 0
    results = json.loads((tmp_path / "results-fast.json").read_text())
    assert results["fast"] is True and results["seed"] == 3 and "digits" in results and "testsets" not in results
    assert "## Complementary models (R4): scikit-learn digits" in (tmp_path / "BENCHMARKS-fast.md").read_text()
    assert any((tmp_path / "figures").iterdir())


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_redraws_on_a_terminal_and_keeps_a_jobs_log_short(monkeypatch, terminal):
    import io as text_io
    import sys
    import time

    from napari_paser.cli.segment import progress_bar

    stream = text_io.StringIO()
    monkeypatch.setattr(stream, "isatty", lambda: terminal)
    monkeypatch.setattr(sys, "stderr", stream)
    update, close = progress_bar("segment (paser)", quiet=False)
    for done in range(1, 121):  # 1.2 s of steps: past the bar's one-second delay
        update(done, 120)
        time.sleep(0.01)
    close()
    redraws = stream.getvalue().count("\r")
    if terminal:  # a live bar, but not one redraw per step
        assert 0 < redraws < 60
    else:  # a job's log: no line within the first 30 s
        assert redraws == 0
