"""The plugin is discoverable by napari, and the wheel carries manifest, samples and the default bundle."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_npe2_validate_passes():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-paser"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


def test_manifest_is_discovered_from_the_installed_package():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-paser")
    assert manifest.name == "napari-paser"
    # The one manifest is the top-level file; the package holds only a link to it.
    assert (ROOT / "napari.yaml").read_text() == (ROOT / "src/napari_paser/napari.yaml").read_text()


def test_console_command_help():
    out = subprocess.run([sys.executable, "-m", "napari_paser.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for sub in ("synth", "segment", "evaluate", "metrics", "train", "benchmark"):
        assert sub in out.stdout
    from napari_paser.engine.registry import DEFAULT_BUNDLE, list_bundles

    for sub in ("segment", "evaluate", "metrics", "finetune"):  # --bundle names the default and the installed
        out = subprocess.run([sys.executable, "-m", "napari_paser.cli.main", sub, "--help"], capture_output=True, text=True)
        text = "".join(out.stdout.split())  # argparse wraps long names at their hyphens
        assert f"(default:{DEFAULT_BUNDLE};installed:" in text, sub
        assert all(b.name in text for b in list_bundles()), sub


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("napari_paser-*.whl")
    return whl


def test_wheel_contains_manifest_sample_data_and_bundled_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_paser/napari.yaml" in names
    assert "napari_paser/sample_data/electrode_image.tif" in names
    assert "napari_paser/sample_data/electrode_labels.tif" in names
    assert any(n.startswith("napari_paser/models/") and n.endswith("manifest.json") for n in names)
    assert any(n.startswith("napari_paser/models/") and n.endswith("weights.safetensors") for n in names)
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("napari_paser/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = zf.read(entry_points).decode()
    assert "napari.manifest" in text and "napari_paser:napari.yaml" in text
    assert "napari-paser = napari_paser.cli.main:main" in text


def test_wheel_carries_the_default_bundle_only_and_fits_pypi(wheel):
    from napari_paser.engine.registry import DEFAULT_BUNDLE

    with zipfile.ZipFile(wheel) as zf:
        bundles = {n.split("/")[2] for n in zf.namelist() if n.startswith("napari_paser/models/") and n.count("/") >= 3}
    assert bundles == {DEFAULT_BUNDLE}
    # PyPI refuses files over 100 MB unless a project is granted more.
    assert wheel.stat().st_size < 100e6


def test_unpacked_wheel_segments_with_its_bundle(wheel, tmp_path, fresh_python):
    # The wheel alone (no source tree on the path) finds its bundle and segments a slice.
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    out = fresh_python(
        f"""
import sys
sys.path.insert(0, {str(tmp_path / "site")!r})
import numpy as np
import tifffile
import napari_paser
from napari_paser.engine import registry
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.pipeline import segment
assert napari_paser.__file__.startswith({str(tmp_path)!r}), napari_paser.__file__
names = [b.name for b in registry.list_bundles()]
image = tifffile.imread(registry.BUNDLE_ROOT.parent / "sample_data" / "electrode_image.tif")[:3]
result = segment(image, load_bundle(registry.resolve_bundle()))
print(names, result.labels.shape, sorted(np.unique(result.labels).tolist()))
"""
    )
    from napari_paser.engine.registry import DEFAULT_BUNDLE

    assert out.strip() == f"['{DEFAULT_BUNDLE}'] (3, 224, 256) [0, 1, 2]"
    # An earlier bundle asked for by name: the error says where it is.
    out = fresh_python(
        f"""
import sys
sys.path.insert(0, {str(tmp_path / "site")!r})
from napari_paser.engine import registry
try:
    registry.resolve_bundle("paser-synth-v2.16")
except FileNotFoundError as err:
    print(err)
"""
    )
    assert f"(bundled: {DEFAULT_BUNDLE}; an installed wheel carries the default bundle only" in out


def test_no_qt_binding_or_napari_all_in_runtime_dependencies():
    from importlib.metadata import requires

    runtime = [r for r in requires("napari-paser") if "extra ==" not in r]
    lowered = " ".join(runtime).lower()
    for banned in ("pyqt", "pyside", "napari[all]"):
        assert banned not in lowered
