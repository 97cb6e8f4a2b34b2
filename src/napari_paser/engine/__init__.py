"""PaSeR engine without Qt: networks, bundles, routing and the segmentation pipeline.

Importing this package does not import torch; the names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PaserSegmenter": "pipeline",
    "SegmentationResult": "pipeline",
    "segment": "pipeline",
    "register_method": "pipeline",
    "METHODS": "pipeline",
    "Bundle": "bundle",
    "load_bundle": "bundle",
    "save_bundle": "bundle",
    "default_model_configs": "bundle",
    "resolve_bundle": "registry",
    "list_bundles": "registry",
    "DEFAULT_BUNDLE": "registry",
    "normalize_volume": "normalize",
    "validate_image": "normalize",
    "validate_labels": "normalize",
    "lam_for_tvd": "routing",
    "mean_iou": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
