"""Baselines of the paper in the engine: the IDK cascade and PaSeR with a random policy.

Importing this module registers two methods in :data:`~.methods.METHODS`, so
``napari-paser segment --method`` / ``evaluate --methods`` and the napari widget offer
them beside ``paser``, ``f0``, ``f1`` and ``f2``:

``idk`` — the IDK cascade (Wang et al. 2017; paper B4)
    Every patch starts at f0 (the MC-dropout analysis of the whole slice, as for PaSeR).
    A patch whose mean f0 entropy (mean of f0's MC-dropout entropy map over the patch)
    is below ``a0`` keeps f0's labels; the others run f1, and a patch whose mean f1
    softmax entropy is below ``a1`` keeps f1's labels; the rest run f2. The cascade is
    charged for what it runs: f0's analysis on every slice, f1 on every patch that
    reached f1 (f1 must run to know its entropy) and f2 on the patches sent on to it.
    No policy network.

    Thresholds ``(a0, a1)`` (nats), first found that applies:

    1. the bundle manifest's ``meta["idk"]["thresholds"]`` (written by a tuning run,
       e.g. the benchmark's grid search on validation volumes, together with
       ``lam_idk`` and ``tuned_on``);
    2. otherwise *stack defaults*: ``a0`` = mean f0 patch entropy over the analysed
       slices of the current stack, ``a1`` = mean f1 patch entropy over the patches of
       those slices that reached f1. With no tuning this sends roughly the more
       uncertain half of the patches up at each stage. The defaults depend on which
       slices were analysed (in ``run`` those are the requested slices).

    Build a cascade with explicit thresholds with :func:`idk_method`.

``random`` — PaSeR-RandPol.
    f0's analysis as for PaSeR, then every patch is sent to f0, f1 or f2 uniformly at
    random (a seeded generator per slice: deterministic, independent of slice order and
    of what else ran). :func:`random_method` builds one with other mixing
    probabilities (the benchmark sweeps them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .methods import METHODS, Method, register_method

if TYPE_CHECKING:  # the pipeline imports this module: no import cycle at run time
    from .bundle import Bundle
    from .pipeline import PaserSegmenter

__all__ = [
    "cascade_routing",
    "cascade_charged",
    "bundle_idk_thresholds",
    "idk_thresholds",
    "idk_method",
    "random_routing",
    "random_method",
    "IDK",
    "RANDOM",
]

RANDOM_SEED = 20240229
"""Base seed of the random policy (combined with the segmenter's seed and the slice)."""


# --------------------------------------------------------------------------- IDK cascade


def cascade_routing(e0: np.ndarray, e1: np.ndarray, a0: float, a1: float) -> np.ndarray:
    """Final model per patch of an f0 → f1 → f2 cascade (no torch).

    Parameters
    ----------
    e0 : ndarray (..., GY, GX)
        Mean f0 entropy per patch.
    e1 : ndarray (..., GY, GX)
        Mean f1 entropy per patch; only read where the patch reached f1
        (``e0 >= a0``), so it may be NaN elsewhere.
    a0, a1 : float
        Entropy thresholds: a model keeps a patch whose entropy is strictly below its
        threshold. Lower thresholds send more patches up.

    Returns
    -------
    ndarray uint8 (..., GY, GX)
        0 f0, 1 f1, 2 f2.
    """
    e0 = np.asarray(e0, dtype=np.float64)
    e1 = np.asarray(e1, dtype=np.float64)
    up0 = ~(e0 < a0)
    # NaN entropies (not run) never pass a threshold; only patches that reached f1 matter.
    up1 = up0 & ~(e1 < a1)
    return up0.astype(np.uint8) + up1.astype(np.uint8)


def cascade_charged(seg: "PaserSegmenter", z: int, routing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A cascade pays for f1 on every patch that reached f1 (routed to f1 or f2)."""
    return routing >= 1, routing == 2


def bundle_idk_thresholds(bundle: Bundle) -> tuple[float, float] | None:
    """Tuned ``(a0, a1)`` from the bundle manifest's ``meta["idk"]``, or None."""
    idk = bundle.meta.get("idk") if isinstance(bundle.meta, dict) else None
    if isinstance(idk, dict) and idk.get("thresholds") is not None:
        a0, a1 = (float(v) for v in idk["thresholds"])
        return a0, a1
    return None


def _bundle_thresholds(seg: "PaserSegmenter") -> tuple[float, float] | None:
    return bundle_idk_thresholds(seg.bundle)


def _analysed(seg: "PaserSegmenter") -> np.ndarray:
    return np.flatnonzero(seg._analysed)


def idk_thresholds(seg: "PaserSegmenter", z: int | None = None) -> tuple[float, float]:
    """Thresholds the ``idk`` method uses on ``seg``'s current stack (see the module doc).

    The stack default of ``a1`` needs f1 on the patches that pass ``a0``; those patches
    are run here (batched, cached), and a cascade runs them anyway.
    """
    tuned = _bundle_thresholds(seg)
    if tuned is not None:
        return tuned
    if z is not None:
        seg.analyse(z)
    zs = _analysed(seg)
    if zs.size == 0:
        raise RuntimeError("no analysed slice to derive the IDK thresholds from")
    e0 = np.stack([seg.patch_entropy(int(k), 0) for k in zs])
    a0 = float(np.mean(e0))
    up = e0 >= a0
    for k, mask in zip(zs, up):
        if mask.any():
            seg.ensure_patches(int(k), 1, mask)
    e1 = np.stack([seg.patch_entropy(int(k), 1) for k in zs])[up]
    a1 = float(np.mean(e1)) if e1.size else float("inf")
    return a0, a1


def _cascade_route(seg: "PaserSegmenter", z: int, a0: float, a1: float) -> np.ndarray:
    seg.analyse(z)
    e0 = seg.patch_entropy(z, 0)
    up = ~(e0 < a0)
    if up.any():
        seg.ensure_patches(z, 1, up)
    return cascade_routing(e0, seg.patch_entropy(z, 1), a0, a1)


def idk_method(thresholds: Sequence[float] | None = None, name: str = "idk") -> Method:
    """An IDK-cascade :class:`Method` with fixed ``(a0, a1)`` (None: bundle / stack default).

    Register it with :func:`~.methods.register_method` to use it by name.
    """
    fixed = None if thresholds is None else tuple(float(t) for t in thresholds)
    if fixed is not None and len(fixed) != 2:
        raise ValueError(f"an IDK cascade of f0, f1, f2 has two thresholds, got {len(fixed)}")

    def route(seg: "PaserSegmenter", z: int, lam: float | None) -> np.ndarray:
        a0, a1 = fixed if fixed is not None else idk_thresholds(seg, z)
        return _cascade_route(seg, z, a0, a1)

    return Method(name, route, analyse=True, policy=False, uses_lam=False, charged=cascade_charged)


# --------------------------------------------------------------------------- random policy


def random_routing(grid: tuple[int, int], probs: Sequence[float], seed: int, z: int) -> np.ndarray:
    """Model per patch drawn from ``probs`` (over f0, f1, f2) with a per-slice seeded generator."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (3,) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"probs must be three non-negative weights, got {list(probs)}")
    rng = np.random.default_rng([RANDOM_SEED, int(seed), int(z)])
    return rng.choice(3, size=tuple(grid), p=p / p.sum()).astype(np.uint8)


def random_method(probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3), name: str = "random", seed: int | None = None) -> Method:
    """PaSeR-RandPol: f0's analysis, then patches to f0 / f1 / f2 at random with ``probs``.

    ``seed`` None uses the segmenter's seed. With ``probs[0] == 0`` no patch keeps f0's
    labels, so f0's analysis is neither run nor charged.
    """
    p = tuple(float(v) for v in probs)
    random_routing((1, 1), p, 0, 0)  # validate now

    def route(seg: "PaserSegmenter", z: int, lam: float | None) -> np.ndarray:
        # The stack's slice index, so a slab of a stack routes as the whole stack would.
        return random_routing(seg.grid, p, seg.seed if seed is None else seed, seg.first_slice + z)

    return Method(name, route, analyse=p[0] > 0, policy=False, uses_lam=False)


IDK = register_method(idk_method())
RANDOM = register_method(random_method())

assert "idk" in METHODS and "random" in METHODS
