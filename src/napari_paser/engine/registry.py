"""Registry of the model bundles shipped with napari-paser (timm-style).

Each entry names a bundle folder under ``napari_paser/models/``. Anything else that
looks like a bundle folder (``manifest.json`` + ``weights.safetensors``) can be used by
path. This module does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PretrainedBundle", "DEFAULT_BUNDLE", "BUNDLE_ROOT", "list_bundles", "resolve_bundle"]

BUNDLE_ROOT = Path(__file__).resolve().parent.parent / "models"
DEFAULT_BUNDLE = "paser-synth-v2.21"


@dataclass(frozen=True)
class PretrainedBundle:
    """A bundled model: its name, folder and the summary from its manifest."""

    name: str
    path: Path
    description: str
    version: str

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_BUNDLE


def list_bundles() -> list[PretrainedBundle]:
    """The bundles shipped inside the package, default first."""
    found = []
    if BUNDLE_ROOT.is_dir():
        for folder in sorted(BUNDLE_ROOT.iterdir()):
            manifest = folder / "manifest.json"
            if manifest.is_file():
                meta = json.loads(manifest.read_text())
                found.append(
                    PretrainedBundle(folder.name, folder, meta.get("description", ""), str(meta.get("version", "")))
                )
    return sorted(found, key=lambda b: (not b.is_default, b.name))


def resolve_bundle(name_or_path: str | Path | None = None) -> Path:
    """Folder of a bundle given its registry name or a path (``None``: the default).

    Raises
    ------
    FileNotFoundError
        If it is neither a bundled name nor an existing folder.
    """
    key = DEFAULT_BUNDLE if name_or_path in (None, "") else str(name_or_path)
    for bundle in list_bundles():
        if bundle.name == key:
            return bundle.path
    path = Path(key).expanduser()
    if path.is_dir():
        return path
    names = ", ".join(b.name for b in list_bundles()) or "none installed"
    hint = ""
    if key.startswith("paser-synth-"):  # perhaps an earlier bundle, which the wheel leaves out
        hint = "; an installed wheel carries the default bundle only, the earlier ones are in the project's source tree"
    raise FileNotFoundError(f"no bundle named or found at {key!r} (bundled: {names}{hint})")
