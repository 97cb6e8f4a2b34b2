"""Result layers added step by step, and the worker's torch loading and thread count."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_paser.napari_ui._layers import PENDING, ResultLayers
from napari_paser.napari_ui._torch_loading import worker_threads

pytestmark = pytest.mark.gui


def test_deferred_layers_appear_one_per_call_with_what_was_filled_before(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((3, 64, 64), np.float32), name="ct", scale=(2.0, 0.5, 0.5))
    layers = ResultLayers(viewer, image, (3, 64, 64), (3, 2, 2), (32, 32), defer=True)
    assert layers.layers == () and not layers.complete and len(viewer.layers) == 1
    # Results and provenance that arrive before the layers are kept.
    layers.set_slice(1, labels=np.ones((64, 64), np.uint8), entropy=np.full((64, 64), 0.5, np.float32),
                     routing=np.array([[0, 1], [2, 1]], np.uint8))
    layers.set_metadata(lam=0.25)
    assert layers.add_next() and [l.name for l in layers.layers] == ["phases"]
    assert layers.phases_layer.metadata["napari_paser"]["lam"] == 0.25
    assert (layers.phases_layer.data[1] == 1).all() and (layers.phases_layer.data[0] == PENDING).all()
    assert layers.add_next() and layers.entropy_layer.data[1].max() == np.float32(0.5)
    assert not layers.add_next() and layers.complete
    assert layers.routing_layer.data[1, :: layers.cells[0], :: layers.cells[1]].tolist() == [[0, 1], [2, 1]]
    np.testing.assert_allclose(layers.phases_layer.scale, (2.0, 0.5, 0.5))
    assert not layers.add_next() and len(viewer.layers) == 4  # nothing added twice
    # A later run on the same image reuses the layers in place.
    again = ResultLayers(viewer, image, (3, 64, 64), (3, 2, 2), (32, 32))
    assert again.complete and len(viewer.layers) == 4
    assert again.phases_layer is layers.phases_layer and (again.phases_layer.data == PENDING).all()


@pytest.mark.parametrize(("shape", "own", "expected"), [
    ((3, 64, 64), None, ("plane", "row", "column")),  # napari's "-3, -2, -1" are not names
    ((64, 64), None, ("row", "column")),
    ((3, 64, 64), ("z", "y", "x"), ("z", "y", "x")),  # another reader's names are kept
])
def test_result_layers_name_their_axes_as_their_scan_does(make_napari_viewer, shape, own, expected):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros(shape, np.float32), name="ct", **({"axis_labels": own} if own else {}))
    planes = shape[0] if len(shape) == 3 else 1
    layers = ResultLayers(viewer, image, (planes, 64, 64), (planes, 2, 2), (32, 32))
    assert [layer.axis_labels for layer in layers.layers] == [expected] * 3
    assert viewer.dims.axis_labels == expected
    assert image.axis_labels == (own or tuple(str(a) for a in range(-len(shape), 0)))  # the user's layer is left alone


def test_a_run_on_another_image_keeps_the_layers_of_the_image_before(make_napari_viewer):
    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((2, 64, 64), np.float32), name="anode")
    second = viewer.add_image(np.zeros((2, 64, 64), np.float32), name="cathode")
    before = ResultLayers(viewer, first, (2, 64, 64), (2, 2, 2), (32, 32))
    before.set_slice(0, labels=np.ones((64, 64), np.uint8), entropy=np.full((64, 64), 0.5, np.float32),
                     routing=np.array([[0, 1], [2, 1]], np.uint8))
    kept = before.layers
    after = ResultLayers(viewer, second, (2, 64, 64), (2, 2, 2), (32, 32))
    assert [layer.name for layer in kept] == ["phases (anode)", "entropy (anode)", "routing (anode)"]
    assert (kept[0].data[0] == 1).all() and kept[1].data[0].max() == np.float32(0.5)  # the results are still there
    assert [layer.name for layer in after.layers] == ["phases", "entropy", "routing"]
    assert not set(map(id, after.layers)) & set(map(id, kept)) and (after.phases_layer.data == PENDING).all()
    again = ResultLayers(viewer, second, (2, 64, 64), (2, 2, 2), (32, 32))  # the same image: its layers are reused
    assert again.phases_layer is after.phases_layer and len(viewer.layers) == 8


def test_removing_an_added_layer_makes_the_set_dead(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((2, 32, 32), np.float32), name="ct")
    layers = ResultLayers(viewer, image, (2, 32, 32), (2, 1, 1), (32, 32), defer=True)
    layers.add_next()
    assert layers.alive()
    viewer.layers.remove("phases")
    assert not layers.alive()


def test_worker_leaves_one_core_to_the_viewer():
    assert worker_threads(1) == 1
    assert worker_threads(2) == 1
    assert worker_threads(16) == 15


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload maps a Linux shared library")
def test_torch_library_preload_then_import_works(fresh_python):
    code = (
        "import sys\n"
        "from napari_paser.napari_ui._torch_loading import preload_torch_native\n"
        "assert 'torch' not in sys.modules\n"
        "assert preload_torch_native() is True\n"
        "assert preload_torch_native() is False  # once is enough\n"
        "import torch\n"
        "x = torch.arange(6.0).reshape(2, 3)\n"
        "print(float((x @ x.T).sum()))\n"
    )
    assert fresh_python(code).strip() == "83.0"  # [[5, 14], [14, 50]]


def test_quiet_torch_import_freezes_the_heap_and_restores_the_collector(fresh_python):
    code = (
        "import gc, sys\n"
        "from napari_paser.napari_ui._torch_loading import import_torch_quietly\n"
        "assert gc.get_freeze_count() == 0 and gc.isenabled()\n"
        "import_torch_quietly('napari_paser.engine.pipeline')\n"
        "assert 'torch' in sys.modules and 'napari_paser.engine.pipeline' in sys.modules\n"
        "assert gc.isenabled(), 'the collector must be running again'\n"
        "assert gc.get_freeze_count() > 100_000, gc.get_freeze_count()\n"
    )
    fresh_python(code)
