"""Blending neighbouring patches across their borders (engine.blending, blend_borders)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

PATCH = (56, 64)


def test_ramps_hand_over_across_a_border_and_the_band_is_the_pixels_near_one():
    from napari_paser.engine.blending import border_band, border_ramp

    halo, width, size = 8, 8, 56
    ramp = border_ramp(size + 2 * halo, halo, width)
    # Two windows one patch apart: within `width` of their border the weights add to 1,
    # further inside each patch its own weight is 1, and half-way is the border itself.
    left, right = ramp[halo:], ramp[: halo + size][: size + halo]
    own_left, from_right = left[size - width : size], ramp[halo - width : halo]
    np.testing.assert_allclose(own_left + from_right, 1.0)
    assert np.all(left[width : size - width] == 1) and right[halo] > 0.5 > ramp[halo - 1]
    narrow = border_ramp(size + 2 * halo, halo, 2)
    assert np.all(narrow[: halo - 2] == 0) and np.all(narrow[halo + 2 : -halo - 2] == 1)
    with pytest.raises(ValueError, match="between 1 and the halo"):
        border_ramp(size + 2 * halo, halo, halo + 1)

    band = border_band((2, 3), (10, 12), 3)
    rows, cols = np.nonzero(band)
    near_row = (np.abs(rows - 10) < 3) | (np.abs(rows - 9) < 3)
    near_col = np.min(np.abs(cols[:, None] - np.array([11, 12, 23, 24])), axis=1) < 3
    assert np.all(near_row | near_col)
    assert band[7:13, 0].all() and not band[:7, 0].any() and not band[13:, 0].any()  # no band at the slice's own edges
    assert band[0, 9:15].all() and band[0, 21:27].all() and not band[0, :9].any() and not band[0, 27:].any()


def test_patches_that_agree_on_their_overlap_blend_to_the_same_labels():
    """Windows cut from one probability map blend to that map's argmax everywhere; a patch
    that disagrees moves only the pixels near its borders, and one that takes no part keeps its labels."""
    from napari_paser.engine.blending import blend_patches, border_band

    rng = np.random.default_rng(1)
    (gy, gx), (ph, pw), halo = (2, 3), (12, 10), 4
    full = rng.integers(0, 256, (3, gy * ph + 2 * halo, gx * pw + 2 * halo)).astype(np.uint8)
    windows = np.stack([np.stack([full[:, a * ph : (a + 1) * ph + 2 * halo, b * pw : (b + 1) * pw + 2 * halo] for b in range(gx)])
                        for a in range(gy)])
    truth = full[:, halo:-halo, halo:-halo].argmax(0).astype(np.uint8)
    routing = np.ones((gy, gx), np.uint8)
    labels = truth.copy()
    np.testing.assert_array_equal(blend_patches(labels, routing, {1: windows}, {1: halo}, (ph, pw), halo), truth)

    other = windows.copy()
    other[0, 1] = rng.integers(0, 256, other[0, 1].shape)  # patch (0, 1) now disagrees with the map
    blended = blend_patches(labels, routing, {1: other}, {1: halo}, (ph, pw), halo)
    band = border_band((gy, gx), (ph, pw), halo)
    assert not np.array_equal(blended, truth)
    np.testing.assert_array_equal(blended[~band], truth[~band])

    routing[0, 1] = 0  # on f0 without f0's probabilities: it takes no part
    kept = blend_patches(labels, routing, {1: other}, {1: halo}, (ph, pw), halo)
    np.testing.assert_array_equal(kept[:ph, pw : 2 * pw], labels[:ph, pw : 2 * pw])


def test_borders_that_only_f0_reaches_keep_their_labels():
    """Blending f0 with itself would only round its probabilities to bytes: where no f1 or
    f2 window reaches, the labels stay as they are, and next to a patch on f1 they blend."""
    from napari_paser.engine.blending import blend_patches, border_band

    (gy, gx), (ph, pw), halo = (3, 3), (12, 10), 4
    labels = np.full((gy * ph, gx * pw), 2, np.uint8)  # unlike f0's bytes, so a blended pixel shows
    f0_bytes = np.zeros((3, gy * ph, gx * pw), np.uint8)
    f0_bytes[0] = 200
    routing = np.zeros((gy, gx), np.uint8)
    np.testing.assert_array_equal(blend_patches(labels, routing, {}, {1: halo}, (ph, pw), halo, f0_bytes), labels)

    routing[0, 0] = 1
    windows = np.zeros((gy, gx, 3, ph + 2 * halo, pw + 2 * halo), np.uint8)
    windows[0, 0, 0] = 255
    blended = blend_patches(labels, routing, {1: windows}, {1: halo}, (ph, pw), halo, f0_bytes)
    band = border_band((gy, gx), (ph, pw), halo)
    rows, cols = np.mgrid[: gy * ph, : gx * pw]
    near_f1 = (rows < ph + halo) & (cols < pw + halo)
    assert np.all(blended[band & near_f1] == 0)
    np.testing.assert_array_equal(blended[~(band & near_f1)], labels[~(band & near_f1)])


@torch.no_grad()
def _reference(bundle, seg, cropped, z, routing):
    """The blend of slice ``z``, computed here from the windows ``seg`` keeps, after
    checking them against the networks run on each window outside the engine."""
    from napari_paser.engine.blending import border_band, border_ramp
    from napari_paser.engine.fusion import to_bytes

    halo, (ph, pw) = 8, PATCH
    x = np.pad(seg._input(z), halo, mode="reflect")
    f0_bytes = seg._f0prob[z].transpose(2, 0, 3, 1, 4).reshape(3, 2 * ph, 2 * pw)
    f0_padded = np.pad(f0_bytes, ((0, 0), (halo, halo), (halo, halo))).astype(np.float32)
    weight = border_ramp(ph + 2 * halo, halo, halo)[:, None] * border_ramp(pw + 2 * halo, halo, halo)[None, :]
    canvas = np.zeros((3, 2 * ph + 2 * halo, 2 * pw + 2 * halo), np.float32)
    for a in range(2):
        for b in range(2):
            rows, cols = slice(a * ph, (a + 1) * ph + 2 * halo), slice(b * pw, (b + 1) * pw + 2 * halo)
            m = int(routing[a, b])
            if m == 0:
                prob = f0_padded[:, rows, cols]
            else:
                kept = seg._pwindow[m][z, a, b]
                window = torch.from_numpy(np.ascontiguousarray(x[rows, cols]))[None, None]
                own = to_bytes(torch.softmax(bundle.segmenters()[m].window_logits(window), 1))[0].numpy()
                assert np.abs(kept.astype(int) - own).max() <= 1  # a batch of windows sums in another order
                w0 = float(bundle.fusion[m - 1])
                prob = (1 - w0) * kept.astype(np.float32) + w0 * f0_padded[:, rows, cols]
            canvas[:, rows, cols] += weight * prob
    band = border_band((2, 2), PATCH, halo)
    rows, cols = np.mgrid[: 2 * ph, : 2 * pw]
    reached = np.zeros_like(band)  # within the blend's width of a patch on f1 or f2: f0 alone is not blended
    for a, b in zip(*np.nonzero(routing)):
        reached |= (rows >= a * ph - halo) & (rows < (a + 1) * ph + halo) & (cols >= b * pw - halo) & (cols < (b + 1) * pw + halo)
    return np.where(band & reached, canvas[:, halo:-halo, halo:-halo].argmax(0), cropped)


@pytest.mark.parametrize("fused", [True, False])
def test_engine_blends_what_f1_and_f2_predict_in_their_halos(shipped, fused):
    """With f0 fused into f1 and f2 (the shipped bundle) and without: patches on f0 take
    part with f0's probabilities either way."""
    import copy

    from napari_paser.engine.blending import border_band
    from napari_paser.engine.pipeline import PaserSegmenter

    bundle, _, stack = shipped
    if not fused:
        bundle = copy.copy(bundle)
        bundle.fusion = (0.0, 0.0)
    stack = stack[:2]
    plain, blended = PaserSegmenter(bundle, mc_passes=2), PaserSegmenter(bundle, mc_passes=2, blend_borders=True)
    for seg in (plain, blended):
        seg.set_volume(stack)
    band = border_band((2, 2), PATCH, 8)
    changed = 0
    for routing in (np.array([[1, 2], [0, 1]]), np.full((2, 2), 2), np.zeros((2, 2), int)):
        for z in range(2):
            a, b = plain.compose(z, routing=routing), blended.compose(z, routing=routing)
            np.testing.assert_array_equal(a[~band], b[~band])  # inside the patches, the engine's labels
            np.testing.assert_array_equal(b, _reference(bundle, blended, a, z, routing))
            if not routing.any():
                np.testing.assert_array_equal(a, b)  # f0 alone keeps its own labels
            changed += int((a != b).sum())
    assert changed > 0  # the networks' halos disagree with their neighbours somewhere
    result = blended.result(lam=0.005)
    assert result.report()["bundle"]["blended_borders_px"] == 8
    assert "blended_borders_px" not in plain.result(lam=0.005).report()["bundle"]
    np.testing.assert_array_equal(result.routing, plain.result(lam=0.005).routing)


def test_streamed_slabs_blend_as_the_whole_stack_and_the_cli_records_it(shipped, tmp_path, capsys):
    from napari_paser import io
    from napari_paser.cli.main import main
    from napari_paser.engine.pipeline import segment
    from napari_paser.engine.streaming import stream_segment
    from napari_paser.io_sources import ArrayVolume

    bundle, path, stack = shipped
    ref = segment(stack, bundle, lam=0.005, mc_passes=2, blend_borders=True)
    out: dict = {}
    summary = stream_segment(ArrayVolume(stack), str(path), lam=0.005, mc_passes=2, slab=1, blend_borders=True,
                             writer=lambda kind, arr: out.setdefault(kind, []).append(arr))
    np.testing.assert_array_equal(np.concatenate(out["labels"]), ref.labels)
    assert summary.report["bundle"]["blended_borders_px"] == 8
    assert not np.array_equal(segment(stack, bundle, lam=0.005, mc_passes=2).labels, ref.labels)

    tifffile.imwrite(tmp_path / "scan.tif", stack)
    labels_out, report = tmp_path / "phases.tif", tmp_path / "report.json"
    assert main(["segment", str(tmp_path / "scan.tif"), "-o", str(labels_out), "--bundle", str(path), "--lam", "0.005",
                 "--mc-passes", "2", "--blend-borders", "--report", str(report), "--quiet"]) == 0
    assert "borders blended over 8 pixels" in capsys.readouterr().out
    assert main(["segment", str(tmp_path / "scan.tif"), "-o", str(tmp_path / "f0.tif"), "--bundle", str(path), "--method", "f0",
                 "--mc-passes", "2", "--quiet"]) == 0
    assert "no border blended (every patch on f0)" in capsys.readouterr().out
    np.testing.assert_array_equal(io.read_stack(tmp_path / "f0.tif")[0], segment(stack, bundle, method="f0", mc_passes=2).labels)
    np.testing.assert_array_equal(io.read_stack(labels_out)[0], ref.labels)
    assert json.loads(report.read_text())["bundle"]["blended_borders_px"] == 8


def test_a_bundle_without_halos_has_nothing_to_blend(tiny_bundle):
    from napari_paser.engine.pipeline import PaserSegmenter
    from napari_paser.errors import PaserInputError

    with pytest.raises(PaserInputError, match="nothing to blend"):
        PaserSegmenter(tiny_bundle, blend_borders=True)


def test_the_blends_class_argmax_is_numpys_ties_included():
    from napari_paser.engine.blending import _class_argmax

    scores = np.random.default_rng(2).integers(0, 3, (3, 40, 50)).astype(np.float32)[:, 2:-2, 3:-3]  # a strided view, many ties
    got = _class_argmax(scores)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, scores.argmax(0))


def test_evaluate_blends_by_default_with_a_bundle_that_reads_a_halo(shipped, tmp_path, capsys):
    from napari_paser import io
    from napari_paser.cli.main import main

    _, path, stack = shipped
    images = io.write_tiff(tmp_path / "scan.tif", stack[:2])
    truth = io.write_tiff(tmp_path / "truth.tif", np.random.default_rng(0).integers(0, 3, stack[:2].shape).astype(np.uint8))
    seen = {}
    for extra in ([], ["--no-blend-borders"]):
        report = tmp_path / f"eval{len(extra)}.json"
        assert main(["evaluate", "--images", str(images), "--labels", str(truth), "--bundle", str(path), "--methods", "paser,f1",
                     "--mc-passes", "2", "--json", str(report), *extra]) == 0
        out = capsys.readouterr().out
        seen[bool(extra)] = ("blended across their borders over 8 pixels" in out,
                             json.loads(report.read_text())["bundle"].get("blended_borders_px"),
                             [m["mean_iou"] for m in json.loads(report.read_text())["methods"]])
    assert seen[False][:2] == (True, 8) and seen[True][:2] == (False, None)
    assert seen[False][2] != seen[True][2]  # the blend moves some labels
