"""The bundle registry's checks, which read a folder without torch: what they say of folders that are not bundles."""

from __future__ import annotations

import json
import re

import pytest

from napari_paser.engine.registry import DEFAULT_BUNDLE, bundle_default_lam, bundle_patch_size, check_bundle_folder, resolve_bundle


def _folder(tmp_path, manifest=None, weights=True, text=None):
    folder = tmp_path / "bundle"
    folder.mkdir()
    if manifest is not None or text is not None:
        (folder / "manifest.json").write_text(text if text is not None else json.dumps(manifest))
    if weights:
        (folder / "weights.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("manifest", "text", "weights", "says"),
    [
        (None, None, True, "it lacks manifest.json"),
        ({"models": {}, "patch_size": [56, 64]}, None, False, "it lacks weights.safetensors"),
        (None, "{not json", True, "is not valid JSON"),
        ({"patch_size": [56, 64]}, None, True, "no models or patch_size"),
        (None, "[1, 2]", True, "no models or patch_size"),
    ],
)
def test_a_folder_that_is_not_a_bundle_is_named_with_the_reason(tmp_path, manifest, text, weights, says):
    assert says in check_bundle_folder(_folder(tmp_path, manifest, weights, text))


def test_a_bundle_folder_passes_the_check_and_gives_its_patch_size_and_lambda(tmp_path):
    folder = _folder(tmp_path, {"models": {}, "patch_size": [56, 64], "default_lam": 0.27})
    assert check_bundle_folder(folder) is None
    assert bundle_patch_size(folder) == (56, 64) and bundle_default_lam(folder) == pytest.approx(0.27)
    assert check_bundle_folder(tmp_path / "absent") == f"{tmp_path / 'absent'} is not a folder"


@pytest.mark.parametrize("manifest", [{"patch_size": [56]}, {"default_lam": "high"}, {"default_lam": 1.5}, {}])
def test_what_a_manifest_cannot_say_reads_as_unknown(tmp_path, manifest):
    folder = _folder(tmp_path, manifest)
    assert bundle_patch_size(folder) is None and bundle_default_lam(folder) is None


def test_an_unknown_bundle_name_lists_the_bundled_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"no bundle named or found at 'no-such-bundle' (bundled: {DEFAULT_BUNDLE}")):
        resolve_bundle("no-such-bundle")
    assert resolve_bundle(str(tmp_path)) == tmp_path  # a folder is taken as it is
