"""Registry of the model bundles shipped with napari-paser (timm-style).

Each entry names a bundle folder under ``napari_paser/models/``. Anything else that
looks like a bundle folder (``manifest.json`` + ``weights.safetensors``) can be used by
path. This module does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PretrainedBundle",
    "DEFAULT_BUNDLE",
    "BUNDLE_ROOT",
    "list_bundles",
    "resolve_bundle",
    "check_bundle_folder",
    "bundle_patch_size",
    "bundle_default_lam",
    "bundle_blend_width",
]

BUNDLE_ROOT = Path(__file__).resolve().parent.parent / "models"
DEFAULT_BUNDLE = "paser-synth-v2.29"


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


def bundle_patch_size(folder: Path) -> tuple[int, int] | None:
    """Patch size from a bundle manifest, read without torch (None if unreadable)."""
    try:
        ph, pw = json.loads((folder / "manifest.json").read_text())["patch_size"]
        return int(ph), int(pw)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def bundle_default_lam(folder: Path) -> float | None:
    """The λ a bundle recommends (chosen on its validation data), read without torch
    (None if unreadable or outside [0, 1])."""
    try:
        lam = float(json.loads((folder / "manifest.json").read_text())["default_lam"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return lam if 0.0 <= lam <= 1.0 else None


def bundle_blend_width(folder: Path) -> int:
    """Pixels on each side of a border that a bundle's patches can be blended over (the
    halo its f1 and f2 read, the narrower one's), read without torch (0 if unreadable)."""
    try:
        models = json.loads((folder / "manifest.json").read_text())["models"]
        return min(int(models[k]["config"].get("halo", 0)) for k in ("f1", "f2"))
    except (OSError, KeyError, TypeError, ValueError, AttributeError):
        return 0


def check_bundle_folder(folder: Path) -> str | None:
    """Why ``folder`` is not a PaSeR bundle (None if it looks like one); no torch."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    missing = [n for n in ("manifest.json", "weights.safetensors") if not (folder / n).is_file()]
    if missing:
        return f"{folder.name} is not a PaSeR bundle: it lacks {', '.join(missing)}"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        return f"{folder.name}/manifest.json is not valid JSON ({err})"
    if not isinstance(manifest, dict) or "models" not in manifest or "patch_size" not in manifest:
        return f"{folder.name}/manifest.json is not a PaSeR manifest (no models or patch_size)"
    return None
