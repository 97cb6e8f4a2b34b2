"""Shared fixtures. Heavy imports stay inside fixtures so collection is fast."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Keep torch from oversubscribing the cores: at most two threads, and under pytest-xdist
# (README's test command) each worker's share of the cores. Tests of how threads are
# shared set their own.
_xdist_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, (os.cpu_count() or 1) // _xdist_workers))))


def tiny_configs(patch_size=(56, 64)):
    """Small random networks with the real architecture, for fast tests."""
    from napari_paser.engine.models import PolicyConfig, UNetConfig

    return {
        "f0": UNetConfig(base_width=2, depth=2, dropout=0.1),
        "f1": UNetConfig(base_width=4, depth=2),
        "f2": UNetConfig(base_width=8, depth=2),
        "policy": PolicyConfig(width=4, patch_size=tuple(patch_size)),
    }


def channels(axis: int = 0, shape=(12, 14, 16)):
    """Nickel with straight pore channels and one carbon-binder channel along ``axis``
    (labels for the microstructure metrics, whose tortuosity along ``axis`` is about 1)."""
    import numpy as np

    lab = np.full(shape, 2, np.uint8)
    others = [a for a in range(3) if a != axis]
    for (a, b), phase in (((slice(2, 5), slice(7, 9)), 0), ((slice(8, 10), slice(2, 4)), 0), ((slice(8, 10), slice(10, 12)), 1)):
        idx = [slice(None)] * 3
        idx[others[0]], idx[others[1]] = a, b
        lab[tuple(idx)] = phase
    return lab


def write_ome_zarr(path, data, scale=(2.0, 0.5, 0.25), unit="micrometer", extra_axes=(), levels=1):
    """An OME-Zarr image of the (Z, Y, X) ``data``, with singleton ``extra_axes`` (e.g. "c")
    in front; with ``levels`` > 1 a pyramid, each level taking every second row and column
    of the one before."""
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    axes = [{"name": a, "type": "channel"} for a in extra_axes] + [{"name": n, "type": "space", "unit": unit} for n in "zyx"]
    datasets = []
    for level in range(levels):
        plane_step = data[:, :: 2**level, :: 2**level]
        arr = plane_step.reshape((1,) * len(extra_axes) + plane_step.shape)
        g.create_array(str(level), data=arr, chunks=(1,) * len(extra_axes) + (1,) + arr.shape[-2:])
        level_scale = [scale[0], scale[1] * 2**level, scale[2] * 2**level]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(extra_axes) + level_scale}]})
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    return path


@pytest.fixture
def tiny_bundle():
    """A randomly initialised (seeded) bundle with tiny networks, in eval mode."""
    from napari_paser.engine.bundle import Bundle

    return Bundle.from_configs(tiny_configs(), seed=0, meta={"name": "tiny-test", "version": "0"}).eval()


@pytest.fixture
def tiny_bundle_dir(tiny_bundle, tmp_path):
    """The tiny bundle saved as a folder."""
    from napari_paser.engine.bundle import save_bundle

    return save_bundle(tiny_bundle, tmp_path / "tiny-bundle")


@pytest.fixture(scope="module")
def shipped():
    """The default bundle (f1 and f2 read an 8-pixel halo; f0 fused in), its folder, and
    three planes of the sample stack cut to 2 x 2 patches (for the blended borders)."""
    from pathlib import Path

    import numpy as np

    from napari_paser import io
    from napari_paser.engine import load_bundle, resolve_bundle

    path = resolve_bundle()
    image, _ = io.read_stack(Path(__file__).parents[1] / "sample_data" / "electrode_image.tif")
    return load_bundle(path), path, np.ascontiguousarray(image[:3, 40 : 40 + 2 * 56, 60 : 60 + 2 * 64])


@pytest.fixture
def fresh_python():
    """Run code in a new interpreter (for what a test process has already changed:
    imported modules, the garbage collector); asserts it exits 0, returns its stdout."""

    def run(code: str, timeout: float = 240) -> str:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    return run
