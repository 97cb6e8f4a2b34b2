"""Segmentation methods as small records: how patches are routed and what is charged.

:class:`Method` says how a method routes the patches of a slice and which calls it pays
for; :data:`METHODS` holds them by name (``paser``, ``f0``, ``f1``, ``f2`` here, the
baselines ``idk`` and ``random`` once :mod:`.baselines` is imported; :func:`get_method`
imports it). :func:`charge` is the one place that turns a routing into FLOPs and
measured seconds, for the in-memory, streaming and windowed engines alike. No torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import PaserInputError

if TYPE_CHECKING:
    from .flops import CostModel
    from .pipeline import PaserSegmenter

__all__ = ["Method", "METHODS", "register_method", "get_method", "charge"]


def _charge_routed(seg: "PaserSegmenter", z: int, routing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return routing == 1, routing == 2


@dataclass(frozen=True)
class Method:
    """How a segmentation method routes patches and what it is charged for.

    Attributes
    ----------
    name : str
    route : callable ``(seg, z, lam) -> (GY, GX) uint8``
        Final model per patch of slice ``z``. May call ``seg.ensure_patches`` to look
        at patch outputs first (a cascade).
    analyse : bool
        The method needs (and is charged for) f0's MC-dropout analysis of each slice.
    policy : bool
        The method is charged for the policy network.
    uses_lam : bool
        λ / TVD knobs apply.
    charged : callable ``(seg, z, routing) -> (mask_f1, mask_f2)``
        Patches whose f1 / f2 forward the method pays for (default: the routed ones;
        a cascade also pays for the f1 runs of patches it escalated to f2).
    """

    name: str
    route: Callable[["PaserSegmenter", int, "float | None"], np.ndarray]
    analyse: bool = True
    policy: bool = False
    uses_lam: bool = False
    charged: Callable[["PaserSegmenter", int, np.ndarray], tuple[np.ndarray, np.ndarray]] = _charge_routed


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` available as ``method=method.name`` everywhere (CLI included)."""
    METHODS[method.name] = method
    return method


def _constant_route(model: int) -> Callable:
    def route(seg: "PaserSegmenter", z: int, lam: float | None) -> np.ndarray:
        return np.full(seg.grid, model, dtype=np.uint8)

    return route


register_method(Method("paser", lambda seg, z, lam: seg.routing(lam, z), analyse=True, policy=True, uses_lam=True))
register_method(Method("f0", _constant_route(0), analyse=True))
register_method(Method("f1", _constant_route(1), analyse=False))
register_method(Method("f2", _constant_route(2), analyse=False))


def get_method(name: str) -> Method:
    """The registered method ``name`` (a one-line input error for an unknown one)."""
    # The baselines register more methods when imported; do it lazily here.
    if name not in METHODS:
        with contextlib.suppress(ImportError):
            from . import baselines  # noqa: F401
    if name not in METHODS:
        raise PaserInputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def charge(
    cost_model: "CostModel",
    method: Method,
    mask_f1: np.ndarray,
    mask_f2: np.ndarray,
    *,
    seconds_analysis: float = 0.0,
    seconds_policy: float = 0.0,
    seconds_patches: np.ndarray | None = None,
) -> tuple[int, float]:
    """FLOPs and measured seconds that ``method`` is charged for on one slice.

    Parameters
    ----------
    cost_model : CostModel
        FLOPs of every call for this slice shape.
    method : Method
    mask_f1, mask_f2 : ndarray (GY, GX) bool
        Patches whose f1 / f2 forward the method pays for (``method.charged``).
    seconds_analysis, seconds_policy : float
        Measured seconds of f0's analysis and of the policy on this slice.
    seconds_patches : ndarray (3, GY, GX), optional
        Measured seconds of every patch forward per model.

    Returns
    -------
    flops : int
    seconds : float
    """
    flops = cost_model.slice_flops(int(mask_f1.sum()), int(mask_f2.sum()), analysis=method.analyse, policy=method.policy)
    seconds = (seconds_analysis if method.analyse else 0.0) + (seconds_policy if method.policy else 0.0)
    if seconds_patches is not None:
        seconds += float(seconds_patches[1][mask_f1].sum() + seconds_patches[2][mask_f2].sum())
    return int(flops), float(seconds)
