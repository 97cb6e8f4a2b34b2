"""The authors' PNG folder layout: round trip and input errors."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from napari_paser.errors import PaserInputError
from napari_paser.train.paper_layout import image_to_uint8, read_paper_layout, write_paper_layout


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vols = {
        "train": [(rng.integers(0, 256, (3, 20, 24), dtype=np.uint8), rng.integers(0, 3, (3, 20, 24)))],
        "test": [(rng.integers(0, 256, (20, 24), dtype=np.uint8), rng.integers(0, 3, (20, 24)).astype(np.uint8))],
    }
    files = write_paper_layout(tmp_path, vols)
    assert len(files) == 4
    images, labels, names = read_paper_layout(tmp_path, "train")
    assert images.dtype == np.float32 and labels.dtype == np.uint8 and len(names) == 3
    np.testing.assert_array_equal(labels, vols["train"][0][1])
    np.testing.assert_allclose(images, vols["train"][0][0] / 255.0, atol=1e-7)
    images, labels, _ = read_paper_layout(tmp_path, "test")
    np.testing.assert_array_equal(labels[0], vols["test"][0][1])
    # Encoding on disk as the authors use it: 0 pore, 255 carbon, in between nickel.
    raw = iio.imread(tmp_path / "train_label" / names[0])
    assert set(np.unique(raw)) <= {0, 128, 255}
    assert (tmp_path / "train_images" / names[0]).is_file()


def test_reader_accepts_any_in_between_value(tmp_path):
    (tmp_path / "validation_images").mkdir()
    (tmp_path / "validation_label").mkdir()
    iio.imwrite(tmp_path / "validation_images" / "a.png", np.full((4, 4), 51, np.uint8))
    iio.imwrite(tmp_path / "validation_label" / "a.png", np.array([[0, 1, 254, 255]] * 4, np.uint8))
    images, labels, _ = read_paper_layout(tmp_path, "validation")
    assert images[0, 0, 0] == pytest.approx(0.2)
    np.testing.assert_array_equal(labels[0, 0], [0, 2, 2, 1])


def test_uint16_images_are_scaled(tmp_path):
    img = np.linspace(1000, 50000, 2 * 8 * 8).reshape(2, 8, 8).astype(np.uint16)
    out = image_to_uint8(img)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    write_paper_layout(tmp_path, {"train": [(img, np.zeros(img.shape, np.uint8))]})
    images, _, _ = read_paper_layout(tmp_path, "train")
    assert images.shape == (2, 8, 8)


def test_errors(tmp_path):
    with pytest.raises(PaserInputError, match="missing folder"):
        read_paper_layout(tmp_path, "train")
    with pytest.raises(PaserInputError, match="unknown split"):
        read_paper_layout(tmp_path, "val")
    (tmp_path / "train_images").mkdir()
    (tmp_path / "train_label").mkdir()
    iio.imwrite(tmp_path / "train_images" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(PaserInputError, match="no label"):
        read_paper_layout(tmp_path, "train")
    with pytest.raises(PaserInputError):
        write_paper_layout(tmp_path, {"train": [(np.zeros((4, 4)), np.full((4, 4), 3))]})
