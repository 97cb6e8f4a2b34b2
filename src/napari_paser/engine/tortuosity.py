"""Tortuosity factor and effective diffusivity with TauFactor, with progress and cancel.

TauFactor (Cooper et al., SoftwareX 2016; the ``taufactor`` package) solves steady
diffusion through a voxel mask with over-relaxed iterations and reports the tortuosity
factor τ of ``D_eff = D · ε / τ``. It always drives the flux along its first array axis,
so the mask is transposed to put the requested axis first. Its ``solve`` loop runs to
convergence in one call; here it is called in slices of :data:`CHECK_EVERY` iterations
(the interval at which TauFactor itself tests convergence, so the answer is the same as
one call) and a generator yields between them, which gives a progress estimate and lets
a caller cancel by simply not asking for the next step (``gen.close()``).

``taufactor`` is an optional dependency (extra ``metrics``; it pulls pyvista): it and
torch are imported only when a solve starts.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Generator, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import PaserInputError
from .devices import default_device
from .steps import run_steps

__all__ = [
    "CHECK_EVERY",
    "TauProgress",
    "TortuosityResult",
    "import_taufactor",
    "percolates",
    "tortuosity_steps",
    "tortuosity",
]

CHECK_EVERY = 100  # TauFactor checks convergence every 100 iterations
PORE, CARBON = 0, 1  # label values (0 pore, 1 carbon-binder, 2 nickel)


@dataclass(frozen=True)
class TauProgress:
    """One step of a running solve.

    Attributes
    ----------
    iteration : int
        Iterations done so far.
    iter_limit : int
    error : float
        TauFactor's convergence measure: (max - min) / max of the flux through the planes.
    fraction : float
        Estimated share of the work done, in [0, 1): the convergence error's progress from
        its first value to the target on a log scale.
    tau : float
        The current estimate of τ.
    """

    iteration: int
    iter_limit: int
    error: float
    fraction: float
    tau: float


@dataclass(frozen=True)
class TortuosityResult:
    """Outcome of one solve.

    Attributes
    ----------
    tau : float
        Tortuosity factor (``inf`` when the conducting phases do not connect the two
        faces of the volume along ``axis``).
    effective_diffusivity : float
        ``D · ε / τ`` in the units of ``diffusivity`` (0 when not percolating). For the
        pore + carbon-binder solve ``ε`` is TauFactor's phase-weighted mean diffusivity
        over ``D`` (``ε_pore + D_cb · ε_cb``).
    volume_fraction : float
        Volume fraction of the conducting phases.
    converged : bool
        TauFactor's convergence test passed (also true when not percolating).
    iterations : int
    axis : int
    phases : str
        ``"pore"`` or ``"pore+carbon-binder"``.
    column_width : int or None
        None: one solve of the whole volume. Else the volume was solved in columns this
        many voxels wide (see :mod:`.tortuosity_columns`); the other fields combine them
        and ``iterations`` is the most any column took.
    column_taus : tuple of float
        Each column's own τ (empty for a whole-volume solve).
    """

    tau: float
    effective_diffusivity: float
    volume_fraction: float
    converged: bool
    iterations: int
    axis: int
    phases: str
    column_width: int | None = None
    column_taus: tuple[float, ...] = ()


def import_taufactor() -> ModuleType:
    """Import TauFactor, or raise one clear error saying how to install it."""
    try:
        import taufactor
    except ImportError as err:
        raise PaserInputError(
            f"tortuosity needs the optional package taufactor ({err}); install it with: pip install 'napari-paser[metrics]'"
        ) from None
    return taufactor


def percolates(mask: np.ndarray, axis: int) -> bool:
    """Whether a face-connected cluster of ``mask`` touches both faces along ``axis``."""
    labelled, n = ndi.label(mask)
    if n == 0:
        return False
    first = np.unique(np.take(labelled, 0, axis=axis))
    last = np.unique(np.take(labelled, -1, axis=axis))
    both = np.intersect1d(first[first > 0], last[last > 0])
    return bool(both.size)


def _is_isotropic(spacing: Sequence[float]) -> bool:
    return max(spacing) - min(spacing) <= 1e-6 * max(spacing)


def _anisotropic_solver(tf):
    """TauFactor's ``AnisotropicSolver`` with its flux mask fixed.

    ``Solver.vertical_flux`` drops the flux of voxels whose neighbour weight exceeds 8,
    which for the plain solver means "non-conducting" (weight inf). With anisotropic
    weights ((dx/dy)² per row neighbour) conducting voxels exceed 8 too, and TauFactor
    1.2.1 then finds no flux at all (straight channels in 0.5 x 0.25 x 0.25 µm voxels
    never converge). Masking only the infinite weights restores the intended test.
    """
    import torch

    class FixedAnisotropicSolver(tf.AnisotropicSolver):
        def vertical_flux(self):
            flux = self.field[:, 2:-1, 1:-1, 1:-1] - self.field[:, 1:-2, 1:-1, 1:-1]
            flux[torch.isinf(self.factor[:, :-1])] = 0
            flux[torch.isinf(self.factor[:, 1:])] = 0
            return flux

    return FixedAnisotropicSolver


def _make_solver(tf, labels3: np.ndarray, cb_diffusivity: float | None, spacing: tuple[float, float, float], device: str):
    """The TauFactor solver for labels already moved to (flux axis, ., .)."""
    if cb_diffusivity is None or cb_diffusivity == 0:
        mask = (labels3 == PORE).astype(np.uint8)
        if _is_isotropic(spacing):
            return tf.Solver(mask, device=device)
        return _anisotropic_solver(tf)(mask, spacing=tuple(float(s) for s in spacing), device=device)
    # MultiPhaseSolver: 0 blocks, other labels conduct with their own diffusivity.
    img = np.zeros(labels3.shape, dtype=np.uint8)
    img[labels3 == PORE] = 1
    img[labels3 == CARBON] = 2
    if not _is_isotropic(spacing):
        warnings.warn("TauFactor's multi-phase solver assumes cubic voxels; the voxel size is ignored for this τ", stacklevel=3)
    return tf.MultiPhaseSolver(img, cond={1: 1.0, 2: float(cb_diffusivity)}, device=device)


def tortuosity_steps(
    labels: np.ndarray,
    axis: int,
    *,
    cb_diffusivity: float | None = None,
    voxel_size: Sequence[float] | None = None,
    diffusivity: float = 1.0,
    device: str | None = None,
    iter_limit: int = 20000,
    conv_crit: float = 1e-2,
) -> Generator[TauProgress, None, TortuosityResult]:
    """Solve for the tortuosity factor of the pore network (optionally + carbon-binder).

    Parameters
    ----------
    labels : ndarray (plane, row, column)
        Phase labels 0 pore, 1 carbon-binder, 2 nickel (validated by the caller).
    axis : int
        Direction of the flux.
    cb_diffusivity : float or None
        None or 0: only pore conducts (TauFactor ``Solver``). Otherwise carbon-binder
        conducts too, with this diffusivity relative to the pore's (``MultiPhaseSolver``).
    voxel_size : three floats or None
        (plane, row, column); anisotropic voxels use TauFactor's ``AnisotropicSolver``.
    diffusivity : float
        Bulk diffusivity D of the electrolyte; ``effective_diffusivity`` is in its units.
    device : str or None
        Torch device; None uses CUDA when available, else the CPU.
    iter_limit, conv_crit
        TauFactor's iteration limit and convergence criterion.

    Yields
    ------
    TauProgress
        Every :data:`CHECK_EVERY` iterations. Close the generator to cancel.

    Returns
    -------
    TortuosityResult
    """
    tf = import_taufactor()
    arr = np.asarray(labels)
    out_axis = int(axis)
    if arr.ndim == 2:
        arr, axis = arr[None], axis + 1
    moved = np.ascontiguousarray(np.moveaxis(arr, axis, 0))
    spacing = tuple(np.asarray(voxel_size if voxel_size is not None else (1.0, 1.0, 1.0), dtype=float)[[axis] + [a for a in range(3) if a != axis]])
    multi = cb_diffusivity is not None and cb_diffusivity > 0
    conducting = (moved == PORE) | ((moved == CARBON) if multi else False)
    name = "pore+carbon-binder" if multi else "pore"
    eps = float(conducting.mean())
    if not percolates(conducting, 0):
        # No path from face to face: no flux at all (TauFactor would say the same after a solve).
        return TortuosityResult(math.inf, 0.0, eps, True, 0, out_axis, name)
    solver = _make_solver(tf, moved, cb_diffusivity, spacing, device or default_device())
    first_err = None
    quiet = io.StringIO()  # TauFactor prints its own status lines
    while not solver.converged and solver.iter < iter_limit:
        with contextlib.redirect_stdout(quiet), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solver.solve(iter_limit=min(iter_limit, solver.iter + CHECK_EVERY), verbose=False, conv_crit=conv_crit)
            tau_now, err = solver.compute_metrics()
        quiet.seek(0)
        quiet.truncate()
        err = float(np.max(np.abs(err)))
        first_err = err if first_err is None else first_err
        frac = 0.0
        if first_err > conv_crit and err > 0:
            frac = min(0.99, max(0.0, math.log(first_err / err) / math.log(first_err / conv_crit)))
        yield TauProgress(int(solver.iter), int(iter_limit), err, frac, float(np.asarray(tau_now).ravel()[0]))
    tau = float(np.asarray(solver.tau).ravel()[0])
    if multi:
        # TauFactor: τ = D_mean / D_eff with D_mean = Σ ε_p D_p (pore D = 1).
        d_mean = float(solver.D_mean)
        d_rel = d_mean / tau if tau > 0 and math.isfinite(tau) else 0.0
    else:
        d_rel = eps / tau if tau > 0 and math.isfinite(tau) else 0.0
    if not tau > 0:
        tau = math.inf
    return TortuosityResult(tau, float(diffusivity) * d_rel, eps, bool(solver.converged), int(solver.iter), out_axis, name)


def tortuosity(labels: np.ndarray, axis: int, progress: Callable[[TauProgress], None] | None = None, **kwargs) -> TortuosityResult:
    """:func:`tortuosity_steps` run to the end; ``progress`` is called with every step."""
    return run_steps(tortuosity_steps(labels, axis, **kwargs), progress)
