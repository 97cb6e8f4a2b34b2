"""Deterministic patch routing for a cost weight λ, and the λ that keeps a TVD budget.

The policy predicts, per patch, the IoU gains ``g1, g2`` of f1 and f2 over f0. For a
cost weight λ the routing logits are ``T * ((1-λ) * [0, g1, g2] - λ * C)``
(:meth:`PolicyNet.logits`), and we route to their argmax, ties to the cheaper model.

Rather than evaluating the argmax for every λ, each patch is reduced to two *switch
points*: it uses a model at least as big as f1 while ``λ < s1`` and uses f2 while
``λ < s2`` (``s2 <= s1``). Re-routing for a new λ is then two comparisons per patch, the
chosen cost never rises with λ by construction, and the λ for a TVD budget is read off
the sorted switch points exactly. No torch here: this runs live behind napari sliders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..errors import PaserInputError

if TYPE_CHECKING:
    from .bundle import Bundle

__all__ = [
    "MODEL_NAMES",
    "SlicewiseRouting",
    "switch_points",
    "route",
    "route_from_switch_points",
    "route_fraction",
    "total_variation",
    "tvd_at",
    "lam_for_tvd",
]

MODEL_NAMES = ("f0", "f1", "f2")


def _threshold(dg: np.ndarray, dc: float) -> np.ndarray:
    """λ below which ``(1-λ) dg > λ dc`` holds (0 where it never holds on [0, 1]).

    ``(1-λ) dg > λ dc``  <=>  ``λ < dg / (dg + dc)`` for ``dg > 0``, ``dc >= 0``.
    """
    dg = np.asarray(dg, dtype=np.float64)
    out = np.zeros(dg.shape, dtype=np.float64)
    pos = dg > 0
    # dc = 0 gives 1: at λ = 1 the two models tie and the cheaper one is kept.
    out[pos] = dg[pos] / (dg[pos] + dc)
    return out


def _check_costs(costs) -> np.ndarray:
    c = np.asarray(costs, dtype=np.float64).reshape(-1)
    if c.shape != (3,) or not (c[0] == 0 and 0 <= c[1] <= c[2]):
        raise ValueError(f"costs must be [0, C1, C2] with 0 <= C1 <= C2, got {c.tolist()}")
    return c


def switch_points(gains: np.ndarray, costs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch switch points of the argmax routing.

    Parameters
    ----------
    gains : ndarray (..., 2, GY, GX)
        Predicted gains of f1 and f2 over f0 (``PolicyNet.gains``).
    costs : array_like (3,)
        ``[0, C1, C2]``, ascending.

    Returns
    -------
    s1, s2 : ndarray (..., GY, GX) float64
        The patch goes to a model >= f1 iff ``λ < s1`` and to f2 iff ``λ < s2``.
    """
    c = _check_costs(costs)
    g = np.asarray(gains, dtype=np.float64)
    if g.ndim < 3 or g.shape[-3] != 2:
        raise ValueError(f"gains must have shape (..., 2, GY, GX), got {g.shape}")
    g1, g2 = g[..., 0, :, :], g[..., 1, :, :]
    t10 = _threshold(g1, c[1])  # f1 beats f0
    t20 = _threshold(g2, c[2])  # f2 beats f0
    t21 = _threshold(g2 - g1, c[2] - c[1])  # f2 beats f1
    s2 = np.minimum(t20, t21)
    s1 = np.maximum(t10, t20)
    return s1, s2


def route_from_switch_points(s1: np.ndarray, s2: np.ndarray, lam: float) -> np.ndarray:
    """Model index per patch (uint8: 0 f0, 1 f1, 2 f2) for cost weight ``lam``."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return (s1 > lam).astype(np.uint8) + (s2 > lam).astype(np.uint8)


def route(gains: np.ndarray, lam: float, costs: ArrayLike) -> np.ndarray:
    """Argmax routing of ``gains`` (..., 2, GY, GX) for ``lam``; ties go to the cheaper model."""
    return route_from_switch_points(*switch_points(gains, costs), lam)


def route_fraction(routing: np.ndarray, num_models: int = 3) -> np.ndarray:
    """Fraction of patches routed to each model (float64, sums to 1)."""
    counts = np.bincount(np.asarray(routing).reshape(-1), minlength=num_models).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance ½ Σ |p - q| between two distributions."""
    return 0.5 * float(np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum())


def tvd_at(s1: np.ndarray, s2: np.ndarray, lam: float) -> float:
    """TVD between the routing distributions at ``lam`` and at λ = 0."""
    # Integer counts, divided once: exact, so the TVD is monotone in λ to the last bit.
    now = np.bincount(route_from_switch_points(s1, s2, lam).reshape(-1), minlength=3)
    ref = np.bincount(route_from_switch_points(s1, s2, 0.0).reshape(-1), minlength=3)
    return float(np.abs(now - ref).sum() // 2) / max(int(ref.sum()), 1)


def lam_for_tvd(s1: np.ndarray, s2: np.ndarray, tau: float) -> float:
    """Largest λ in [0, 1] whose routing distribution is within TVD ``tau`` of λ = 0's.

    Patches only move to cheaper models as λ grows, so with ``Δ_k`` the change of the
    fraction routed to model k, ``TVD(λ) = max(Δ_f0, -Δ_f2)``: the larger of the number
    of patches that left {f1, f2} and the number that left f2 (over N). Both counts are
    step functions that rise at the sorted switch points, so the answer is just below
    the (k+1)-th switch point of either kind, ``k = floor(tau * N)``.

    Returns
    -------
    float
        1.0 if the whole range keeps within ``tau``; otherwise the largest float below
        the first λ at which the TVD exceeds ``tau`` (so ``lam + ε`` exceeds it).
    """
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    s1 = np.asarray(s1, dtype=np.float64).reshape(-1)
    s2 = np.asarray(s2, dtype=np.float64).reshape(-1)
    n = s1.size
    if n == 0:
        raise ValueError("no patches to compute a TVD over")
    allowed = int(np.floor(tau * n + 1e-9))
    limit = np.inf
    for s in (s1, s2):
        # Patches routed up at λ = 0 (s > 0) leave at λ = s, switch points within [0, 1].
        moves = np.sort(s[(s > 0) & (s <= 1.0)])
        if moves.size > allowed:
            limit = min(limit, moves[allowed])
    if limit > 1.0:
        return 1.0
    return float(np.nextafter(limit, -np.inf))


class SlicewiseRouting:
    """λ and TVD routing of a stack from its slices' switch points.

    Shared by :class:`~napari_paser.engine.pipeline.PaserSegmenter` (the whole stack in
    memory) and :class:`~napari_paser.engine.windowed.WindowedSegmenter` (a few slices
    at a time). Subclasses hold ``bundle``, ``_analysed`` (Z,) bool and the switch points
    ``_s1``, ``_s2`` (Z, GY, GX), and define ``_check_slice(z)`` and ``analyse(z)``.
    """

    bundle: Bundle
    _analysed: np.ndarray
    _s1: np.ndarray
    _s2: np.ndarray

    if TYPE_CHECKING:

        def _check_slice(self, z: int) -> int: ...

        def analyse(self, z: int) -> None: ...

    def _lam(self, lam: float | None) -> float:
        lam = self.bundle.default_lam if lam is None else float(lam)
        if not 0.0 <= lam <= 1.0:
            raise PaserInputError(f"lam must be in [0, 1], got {lam}")
        return lam

    def routing(self, lam: float | None, z: int) -> np.ndarray:
        """Model per patch (GY, GX) uint8 of slice ``z`` for cost weight ``lam`` (None: bundle default)."""
        z = self._check_slice(z)
        if not self._analysed[z]:
            self.analyse(z)
        return route_from_switch_points(self._s1[z], self._s2[z], self._lam(lam))

    def _analysed_slices(self, slices: Sequence[int] | None) -> np.ndarray:
        idx = np.flatnonzero(self._analysed) if slices is None else np.asarray([self._check_slice(z) for z in slices], dtype=np.int_)
        if idx.size == 0 or not self._analysed[idx].all():
            raise RuntimeError("the TVD is computed over analysed slices: analyse them first")
        return idx

    def tvd(self, lam: float | None, slices: Sequence[int] | None = None) -> float:
        """TVD between the routing distributions at ``lam`` and λ = 0 over analysed slices."""
        idx = self._analysed_slices(slices)
        return tvd_at(self._s1[idx], self._s2[idx], self._lam(lam))

    def lam_for_tvd(self, tau: float, slices: Sequence[int] | None = None) -> float:
        """Largest λ whose routing is within TVD ``tau`` of λ = 0's (all analysed slices by default)."""
        tau = float(tau)
        if not 0.0 <= tau <= 1.0:
            raise PaserInputError(f"tvd must be in [0, 1], got {tau}")
        idx = self._analysed_slices(slices)
        return lam_for_tvd(self._s1[idx], self._s2[idx], tau)
