"""Input validation, robust normalisation and the IoU definitions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_paser.engine.metrics import confusion_matrix, evaluate, iou_per_class, iou_per_gflop, mean_iou
from napari_paser.engine.normalize import CLIP_MARGIN, Normalizer, normalize_volume, validate_image, validate_labels
from napari_paser.errors import PaserInputError

PATCH = (56, 64)


def test_normalisation_is_robust_and_bounded():
    rng = np.random.default_rng(0)
    vol = rng.normal(1000, 50, (4, 64, 64)).astype(np.uint16)
    vol[0, 0, 0] = 65535  # a hot pixel must not squash the contrast
    out = normalize_volume(vol, 1, 99)
    assert out.dtype == np.float32
    assert out.min() >= -CLIP_MARGIN and out.max() <= 1 + CLIP_MARGIN
    assert 0.4 < np.median(out) < 0.6
    norm = Normalizer.fit(vol, 1, 99)
    np.testing.assert_array_equal(norm(vol[1]), out[1])  # slice-wise == whole volume


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((80, 80, 3), np.uint8) + np.arange(3, dtype=np.uint8), "RGB"),
        (np.random.rand(2, 3, 64, 64), "4-D"),
        (np.where(np.eye(64, dtype=bool), np.nan, 1.0), "NaN"),
        (np.full((64, 64), np.inf), "NaN or infinite"),
        (np.full((2, 64, 64), 7, np.uint16), "constant"),
        (np.random.rand(50, 300), "smaller than one 56x64 patch"),
        (np.random.rand(300, 60), "smaller than one 56x64 patch"),
        (np.random.rand(64, 64) > 0.5, "bool"),
        (np.random.rand(64, 64) + 1j, "complex"),
        (np.zeros((0, 64, 64)), "empty"),
    ],
)
def test_bad_images_raise_one_line(image, words):
    with pytest.raises(PaserInputError) as err:
        validate_image(image, PATCH)
    msg = str(err.value)
    assert words in msg and "\n" not in msg


def test_good_images_pass():
    assert validate_image(np.random.rand(56, 64), PATCH).shape == (56, 64)
    assert validate_image(np.arange(2 * 60 * 70).reshape(2, 60, 70), PATCH).ndim == 3


def test_labels_validation():
    ok = validate_labels(np.array([[0, 1], [2, 2]], np.int64), (2, 2))
    assert ok.dtype == np.uint8
    with pytest.raises(PaserInputError, match=r"outside \{0, 1, 2\}: 3"):
        validate_labels(np.array([0, 1, 3]))
    with pytest.raises(PaserInputError, match="do not match"):
        validate_labels(np.zeros((2, 2), np.uint8), (3, 3))


def test_iou_definitions():
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    cm = confusion_matrix(pred, truth)
    assert cm.sum() == 6 and cm[0, 1] == 1 and cm[2, 0] == 1
    np.testing.assert_allclose(iou_per_class(cm), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(pred, truth) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # A class absent from both prediction and truth is left out of the mean.
    assert mean_iou(np.array([0, 1]), np.array([0, 1])) == 1.0
    # Dataset level: one confusion matrix over all images, not a mean of image scores.
    scores = evaluate(np.stack([pred, pred]), np.stack([truth, truth]))
    assert scores["mean_iou"] == pytest.approx(mean_iou(pred, truth))
    assert iou_per_gflop(0.5, 2.0) == 0.25 and np.isnan(iou_per_gflop(0.5, 0.0))


def test_seam_edges_count_false_edges_by_where_they_lie():
    from napari_paser.engine.metrics import SEAM_REGIONS, seam_edges

    truth = np.zeros((112, 128), np.uint8)
    truth[:, 100:] = 2  # one true boundary, inside patch (0, 1) and (1, 1), away from every border
    labels = truth.copy()
    # A seam: a false edge across the border between patches (0, 0) and (0, 1) in 10 rows. The
    # block's other sides count nowhere: 6 pixels from that border, or off the 8-pixel grid that
    # interior pairs keep (gcd(56, 64); the borders lie on it too).
    labels[20:30, 64:70] = 1
    labels[80:88, 32:40] = 1  # a blob inside patch (1, 0), on that grid: false edges on its 4 sides of 8
    mixed = seam_edges(labels, truth, np.array([[1, 2], [1, 1]]), (56, 64))
    assert set(mixed) == set(SEAM_REGIONS)
    assert mixed["mixed_borders"][0] == 10 and mixed["same_model_borders"][0] == 0 and mixed["interior"][0] == 4 * 8
    same = seam_edges(labels, truth, np.ones((2, 2), int), (56, 64))
    assert same["mixed_borders"] == (0, 0) and same["same_model_borders"][0] == 10 and same["interior"] == mixed["interior"]
    # Pairs of one true phase across the borders, 8 pixels or more from the slice's edge: the
    # border between patch columns in 112 - 16 rows, the one between patch rows in 128 - 16 columns.
    assert same["same_model_borders"][1] == 96 + 112
    assert mixed["mixed_borders"][1] + mixed["same_model_borders"][1] == same["same_model_borders"][1]
    assert seam_edges(truth, truth, np.array([[0, 1], [1, 0]]), (56, 64))["mixed_borders"] == (0, 96 + 112)
    with pytest.raises(ValueError, match="does not tile"):
        seam_edges(labels, truth, np.ones((3, 2), int), (56, 64))
    with pytest.raises(ValueError, match="same shape"):
        seam_edges(labels[:-1], truth, np.ones((2, 2), int), (56, 64))
