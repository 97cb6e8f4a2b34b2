"""`napari-paser metrics`: known answers, outputs, the --band ranges and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import channels
from napari_paser import io
from napari_paser.cli.main import main

pytest.importorskip("taufactor")

VOXEL = (0.5, 0.25, 0.25)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def labels_file(tmp_path):
    return io.write_tiff(tmp_path / "phases.tif", channels(), voxel_size=VOXEL)


def test_metrics_json_and_csv_with_known_answers(tmp_path, labels_file, capsys):
    js, cs = tmp_path / "m.json", tmp_path / "m.csv"
    rc, out, _ = run_cli(capsys, "metrics", labels_file, "--axis", "0", "--json", js, "--csv", cs, "--cb-diffusivity", "0.1",
                           "--surface-method", "faces", "--quiet")
    assert rc == 0 and "tortuosity_factor.pore" in out
    rep = json.loads(js.read_text())
    lab = channels()
    for k, name in enumerate(("pore", "carbon-binder", "nickel")):
        assert rep[f"volume_fraction.{name}"] == np.count_nonzero(lab == k) / lab.size
    assert abs(rep["tortuosity_factor.pore"] - 1) <= 0.02
    assert abs(rep["tortuosity_factor.pore+carbon-binder"] - 1) <= 0.02
    assert rep["effective_diffusivity.pore"] == pytest.approx(rep["volume_fraction.pore"], rel=0.02)
    assert rep["voxel_size"] == list(VOXEL) and rep["units"]["specific_surface_area.nickel"] == "1/µm"
    assert rep["porosity_profile"]["axis"] == 0 and len(rep["porosity_profile"]["porosity"]) == 12
    # Face counting is exact on the channels' walls: pore/nickel = perimeter x length (µm²) / volume (µm³).
    walls = 2 * ((3 * 0.25 + 2 * 0.25) + (2 * 0.25 + 2 * 0.25)) * 12 * 0.5
    assert rep["interfacial_area.pore/nickel"] == pytest.approx(walls / (lab.size * 0.5 * 0.25 * 0.25), rel=1e-9)
    with cs.open() as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert float(rows["volume_fraction.pore"]["value"]) == pytest.approx(rep["volume_fraction.pore"])
    assert "porosity_profile[11]" in rows


def test_voxel_size_option_overrides_the_file(tmp_path, labels_file, capsys):
    js = tmp_path / "m.json"
    rc, _, _ = run_cli(capsys, "metrics", labels_file, "--voxel-size", "1", "1", "1", "--no-tortuosity", "--json", js, "--quiet")
    assert rc == 0
    rep = json.loads(js.read_text())
    assert rep["voxel_size"] == [1.0, 1.0, 1.0] and "tortuosity_factor.pore" not in rep


def test_existing_output_is_not_replaced(tmp_path, labels_file, capsys):
    js = tmp_path / "m.json"
    js.write_text("mine")
    rc, _, err = run_cli(capsys, "metrics", labels_file, "--json", js, "--quiet")
    assert rc == 2 and "--overwrite" in err and js.read_text() == "mine"
    rc, _, _ = run_cli(capsys, "metrics", labels_file, "--json", js, "--overwrite", "--no-tortuosity", "--quiet")
    assert rc == 0 and json.loads(js.read_text())["axis"] == 0


@pytest.mark.parametrize(
    "data, argv, message",
    [
        (np.where(channels() == 1, 5, channels()).astype(np.uint8), [], "outside {0, 1, 2}"),
        (np.where(channels() == 1, 0, channels()).astype(np.uint8), [], "carbon-binder absent"),
        (channels(), ["--axis", "3"], "axis 3 is out of range"),
        (channels(), ["--voxel-size", "1", "0", "1"], "voxel size"),
        (channels(), ["--cb-diffusivity", "-1"], "--cb-diffusivity"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, data, argv, message):
    src = io.write_tiff(tmp_path / "bad.tif", data)
    js = tmp_path / "m.json"
    rc, _, err = run_cli(capsys, "metrics", src, "--json", js, "--quiet", *argv)
    assert rc == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not js.exists()


def test_missing_file_is_one_line(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "metrics", tmp_path / "nope.tif", "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_band_reports_ranges_over_segmentations(tmp_path, tiny_bundle_dir, capsys):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (2, 56, 64)).astype(np.uint16)
    labels = rng.integers(0, 3, (2, 56, 64)).astype(np.uint8)
    img_f = io.write_tiff(tmp_path / "img.tif", image)
    lab_f = io.write_tiff(tmp_path / "lab.tif", labels)
    js = tmp_path / "band.json"
    rc, out, err = run_cli(capsys, "metrics", lab_f, "--axis", "2", "--no-tortuosity", "--band", img_f, "--bundle", tiny_bundle_dir,
                           "--band-lams", "0,1", "--band-mc", "1", "--mc-passes", "2", "--json", js, "--quiet")
    assert rc == 0, err
    rep = json.loads(js.read_text())
    assert [m["name"] for m in rep["band"]] == ["paser λ=0", "paser λ=1", "f2 everywhere", "f0 MC sample 1"]
    for key, (lo, hi) in rep["ranges"].items():
        members = [rep[key]] + [m[key] for m in rep["band"]]
        if key.startswith("volume_fraction."):  # also over the voxel-wise envelope
            assert lo <= min(members) + 1e-12 and hi >= max(members) - 1e-12
        else:
            assert lo == pytest.approx(min(members)) and hi == pytest.approx(max(members))
    assert rep["ranges"]["volume_fraction.pore"][0] < rep["ranges"]["volume_fraction.pore"][1]
    assert len(rep["porosity_profile"]["min"]) == 64
    rc, _, err = run_cli(capsys, "metrics", lab_f, "--band", img_f, "--bundle", tiny_bundle_dir, "--band-lams", "2", "--quiet")
    assert rc == 2 and "[0, 1]" in err
    # Labels of a box of the scan (segment --roi) take the same box of it.
    bigger = io.write_tiff(tmp_path / "bigger.tif", np.pad(image, ((1, 0), (3, 5), (0, 7))))
    meta = {"napari_paser": {"roi": [[1, 3], [3, 59], [0, 64]]}}
    boxed = io.write_tiff(tmp_path / "boxed.tif", labels, metadata=meta)
    band = ["--axis", "2", "--no-tortuosity", "--bundle", tiny_bundle_dir, "--band-lams", "0,1", "--band-mc", "1", "--mc-passes", "2", "--quiet"]
    for given in ([], ["--band-roi", "1:3,3:59,0:64"]):  # the box the labels recorded, or named
        js_roi = tmp_path / "band_roi.json"
        rc, _, err = run_cli(capsys, "metrics", boxed, "--band", bigger, *given, *band, "--json", js_roi, "--overwrite")
        assert rc == 0, err
        assert ("the band reads that box" in err) == (not given)
        assert json.loads(js_roi.read_text())["ranges"] == rep["ranges"]  # the same scan, read through the box
    rc, _, err = run_cli(capsys, "metrics", lab_f, "--band", bigger, *band)
    assert rc == 2 and "--band image has shape (3, 64, 71)" in err  # labels that record no box
    rc, _, err = run_cli(capsys, "metrics", lab_f, "--band", img_f, "--bundle", tiny_bundle_dir, "--band-methods", "f3", "--quiet")
    assert rc == 2 and "f0, f1 or f2" in err



def test_band_in_bf16_where_it_is_native(tmp_path, tiny_bundle_dir, capsys, monkeypatch):
    from napari_paser.engine import pipeline, precision

    rng = np.random.default_rng(0)
    img_f = io.write_tiff(tmp_path / "img.tif", rng.integers(0, 4000, (2, 56, 64)).astype(np.uint16))
    lab_f = io.write_tiff(tmp_path / "lab.tif", rng.integers(0, 3, (2, 56, 64)).astype(np.uint8))
    argv = ["metrics", lab_f, "--no-tortuosity", "--band", img_f, "--bundle", tiny_bundle_dir, "--band-lams", "0",
            "--band-mc", "0", "--precision", "bf16", "--quiet"]
    if precision.bf16_is_fast("cpu"):
        made, real = [], pipeline.PaserSegmenter
        with monkeypatch.context() as m:
            m.setattr(pipeline, "PaserSegmenter", lambda *a, **kw: made.append(kw["precision"]) or real(*a, **kw))
            rc, _, err = run_cli(capsys, *argv, "--json", tmp_path / "b.json")
        assert rc == 0, err
        assert made == ["bf16"] and json.loads((tmp_path / "b.json").read_text())["band_precision"] == "bf16"
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type="cpu": device_type != "cpu")
    rc, _, err = run_cli(capsys, *argv)
    assert rc != 0 and "native bf16" in err and len(err.strip().splitlines()) == 1



def test_band_on_a_dask_cluster_reports_what_one_process_does(tmp_path, capsys):
    """Workers load the bundle from its folder, segment their slabs, write them where the
    driver reads them, and compute the members' metrics, τ included."""
    pytest.importorskip("distributed")
    sample = Path(__file__).parents[1] / "sample_data"
    image, _ = io.read_stack(sample / "electrode_image.tif")
    labels, _ = io.read_stack(sample / "electrode_labels.tif")
    img_f = io.write_tiff(tmp_path / "img.tif", image[:6])
    lab_f = io.write_tiff(tmp_path / "lab.tif", labels[:6])
    reports = []
    for name, extra in (("here", ()), ("cluster", ("--workers", "2"))):
        js = tmp_path / f"{name}.json"
        rc, _, err = run_cli(capsys, "metrics", lab_f, "--axis", "0", "--tau-iter-limit", "300", "--band", img_f, "--band-lams", "1",
                             "--band-methods", "", "--band-mc", "1", "--band-slab", "2", "--json", js, "--quiet", *extra)
        assert rc == 0, err
        reports.append(json.loads(js.read_text()))
    here, cluster = reports
    assert [m["name"] for m in here["band"]] == ["paser λ=1", "f0 MC sample 1"]
    assert all(0 < m["tortuosity_factor.pore"] < 100 for m in here["band"])
    for report in reports:
        report.pop("seconds")
    assert cluster == here


def test_band_of_a_zarr_store_made_over_a_region_reads_that_region(tmp_path, tiny_bundle_dir, capsys):
    import zarr

    rng = np.random.default_rng(1)
    scan = io.write_tiff(tmp_path / "scan.tif", rng.integers(0, 4000, (3, 70, 80)).astype(np.uint16))
    store = tmp_path / "box.zarr"
    rc, _, err = run_cli(capsys, "segment", scan, "--roi", "1:3,7:63,8:72", "-o", store, "--bundle", tiny_bundle_dir,
                         "--mc-passes", "2", "--quiet")
    assert rc == 0, err
    labels = zarr.open_group(str(store), mode="r+")["0"]
    labels[:] = rng.integers(0, 3, labels.shape).astype(np.uint8)  # every phase, for the metrics (the tiny bundle's are not)
    rc, _, err = run_cli(capsys, "metrics", store, "--band", scan, "--no-tortuosity", "--bundle", tiny_bundle_dir,
                         "--band-lams", "0", "--band-methods", "", "--band-mc", "0", "--mc-passes", "2", "--quiet")
    assert rc == 0, err
    assert "the labels are the box 1:3,7:63,8:72 of their scan" in err


def test_the_band_of_labels_segmented_with_blended_borders_is_blended_too(tmp_path, shipped, tiny_bundle_dir, capsys):
    """Labels that record blended borders get a blended band unless told otherwise; a
    bundle with nothing to blend is one line before any work."""
    import tifffile

    bundle, path, stack = shipped
    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, stack[:2])
    plain, blended = tmp_path / "plain.tif", tmp_path / "blended.tif"
    for out, extra in ((plain, ["--no-blend-borders"]), (blended, [])):  # segment blends by default with this bundle
        assert run_cli(capsys, "segment", scan, "-o", out, "--bundle", path, "--mc-passes", "2", "--quiet", *extra)[0] == 0
    band = ["--no-tortuosity", "--band", scan, "--bundle", path, "--band-lams", "0", "--band-methods", "", "--band-mc", "0",
            "--mc-passes", "2", "--quiet"]
    seen = {}
    for labels, extra in ((plain, []), (blended, []), (blended, ["--no-blend-borders"]), (plain, ["--blend-borders"])):
        js = tmp_path / "band.json"
        rc, _, err = run_cli(capsys, "metrics", labels, *band, *extra, "--json", js, "--overwrite")
        rep = json.loads(js.read_text())
        assert rc == 0 and ("were blended across their borders over 8 pixels" in err) == (labels == blended and not extra)
        seen[(labels.name, *extra)] = (rep["band_blend_borders"], rep["band"][0]["volume_fraction.pore"])
    assert [b for b, _ in seen.values()] == [False, True, False, True]
    assert seen[("plain.tif",)][1] == seen[("blended.tif", "--no-blend-borders")][1] != seen[("blended.tif",)][1]
    assert seen[("blended.tif",)][1] == seen[("plain.tif", "--blend-borders")][1]
    rc, _, err = run_cli(capsys, "metrics", blended, "--no-tortuosity", "--band", scan, "--bundle", tiny_bundle_dir, "--quiet")
    assert rc == 2 and "reads no halo" in err and err.count("\n") == 2  # the note on the labels, then the error
