"""The random-forest baseline: features, fitting on sparse labels, evaluate --methods rf."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_paser.errors import PaserInputError


def _scan(slices=3, shape=(60, 70), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros((slices, *shape), np.uint8)
    for z in range(slices):
        for cy, cx in rng.integers(0, min(shape), size=(4, 2)):
            lab[z][(yy - cy) ** 2 + (xx - cx) ** 2 < 60] = 2
        lab[z][((yy + 3 * z) % 15) < 2] = 1
    img = np.choose(lab, [1000.0, 1600.0, 3000.0]) + rng.normal(0, 120, lab.shape)
    return img.astype(np.uint16), lab


def test_pixel_features_are_multiscale_and_finite():
    from napari_paser.engine.random_forest import SIGMAS, pixel_features

    img, _ = _scan(1)
    f = pixel_features(img[0].astype(np.float32) / 3000)
    assert f.shape[:2] == img.shape[1:] and f.dtype == np.float32
    assert f.shape[2] == 1 + 8 * len(SIGMAS)  # raw + per sigma: Gaussian, edges, 2 Hessian, LoG, DoG, 2 structure tensor
    assert np.isfinite(f).all()


def test_forest_learns_from_sparse_labels_and_ignores_unlabelled_pixels():
    from napari_paser.engine.metrics import evaluate
    from napari_paser.engine.random_forest import RandomForestSegmenter
    from napari_paser.train.sparse_labels import simulate_strokes

    img, lab = _scan(3)
    sparse = np.full_like(lab, 255)
    sparse[0] = simulate_strokes(lab[0], 0.15, seed=0)
    rf = RandomForestSegmenter(n_estimators=10, n_jobs=1).fit(img, sparse)
    pred = rf.predict(img[1:])
    assert pred.shape == img[1:].shape and pred.dtype == np.uint8
    assert evaluate(pred, lab[1:])["mean_iou"] > 0.8
    again = RandomForestSegmenter(n_estimators=10, n_jobs=1).fit(img, sparse).predict(img[1:])
    assert np.array_equal(again, pred)  # seeded


def test_3d_features_of_a_block_equal_those_of_the_whole_volume(monkeypatch):
    """Blocks of planes read the margin their filters need, so memory follows the block."""
    from napari_paser.engine import random_forest as rf_mod

    img, lab = _scan(30, shape=(40, 44))
    vol = img.astype(np.float32) / 3000
    sigmas = (0.7, 1.0)
    assert rf_mod._margin(sigmas) == 10  # so planes 12-13 read planes 2-23 of 30
    whole = rf_mod.pixel_features(vol, sigmas)
    assert whole.shape == (*vol.shape, 1 + 10 * len(sigmas))  # 3-D: 3 Hessian and 3 structure-tensor eigenvalues
    np.testing.assert_allclose(rf_mod.volume_features(vol[2:24], 10, 12, sigmas), whole[12:14], rtol=1e-4, atol=1e-5)
    # The forest in blocks of 4 planes predicts what it predicts in blocks of 16.
    forest = rf_mod.RandomForestSegmenter(n_estimators=5, n_jobs=1, sigmas=sigmas, features="3d").fit(img, np.where(np.arange(30)[:, None, None] < 2, lab, 255))
    one_block = forest.predict(img)
    monkeypatch.setattr(rf_mod, "BLOCK", 4)
    np.testing.assert_array_equal(forest.predict(img), one_block)
    with pytest.raises(ValueError, match="'2d' or '3d'"):
        rf_mod.RandomForestSegmenter(n_estimators=2, features="4d").fit(img, lab)


def test_forest_refuses_bad_labels_and_predicting_unfitted():
    from napari_paser.engine.random_forest import RandomForestSegmenter

    img, lab = _scan(2)
    with pytest.raises(PaserInputError, match="only nickel"):
        RandomForestSegmenter(n_estimators=2).fit(img, np.where(lab == 2, 2, 255))
    with pytest.raises(PaserInputError, match="not trained"):
        RandomForestSegmenter().predict(img)


def test_cli_evaluate_rf_row(tiny_bundle_dir, tmp_path, capsys):
    from napari_paser.cli.main import main
    from napari_paser.io import write_tiff

    img, lab = _scan(2)
    train = lab.copy()
    train[1] = 255
    paths = [str(write_tiff(tmp_path / n, a)) for n, a in (("img.tif", img), ("lab.tif", lab), ("train.tif", train))]
    out = tmp_path / "scores.json"
    rc = main(["evaluate", "--images", paths[0], "--labels", paths[1], "--bundle", str(tiny_bundle_dir), "--method", "f0,rf",
               "--rf-train-labels", paths[2], "--rf-trees", "5", "--json", str(out), "--quiet"])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["methods"]}
    assert rows["rf"]["mean_iou"] > 0.8 and rows["rf"]["gflops"] is None and rows["rf"]["labelled_pixels"] == lab[0].size
    assert "rf " in capsys.readouterr().out and rows["rf"]["features"] == "2d"
    rc = main(["evaluate", "--images", paths[0], "--labels", paths[1], "--method", "rf", "--rf-train-labels", paths[2],
               "--rf-trees", "5", "--rf-features", "3d", "--json", str(tmp_path / "3d.json"), "--quiet"])
    rows = {r["method"]: r for r in json.loads((tmp_path / "3d.json").read_text())["methods"]}
    assert rc == 0 and rows["rf"]["features"] == "3d" and rows["rf"]["mean_iou"] > 0.5
    capsys.readouterr()
    assert main(["evaluate", "--images", paths[0], "--labels", paths[1], "--method", "rf"]) == 2
    assert "--rf-train-labels" in capsys.readouterr().err
