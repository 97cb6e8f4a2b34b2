"""Tortuosity of volumes too big for one TauFactor solve: columns solved one at a time.

TauFactor keeps several float32 fields of the whole volume on its device; measured on
this project's CPU (TauFactor 1.2, random pore networks of 128³ and 256³ voxels) a solve
took about 60 bytes per voxel for the pore network and 91 with carbon-binder conducting,
plus 70-110 MB, so a 1000³ scan would need 60-90 GB. When the whole volume does not fit
the memory budget (half of the machine's RAM, or of the GPU's memory), the volume is cut
into **columns** that span it whole along the flux axis and tile the cross-section, each
read and solved on its own. They are combined as conductors in parallel (no flux crosses
a column's side walls):

    D_rel = Σ A_i D_rel,i / Σ A_i,    ε = Σ A_i ε_i / Σ A_i,    τ = ε / D_rel

with A_i a column's cross-section, D_rel,i = D_eff,i / D and ε_i its conducting volume
fraction (for pore + carbon-binder, TauFactor's weighted ``D_mean``). The side walls
close the detours a path could take through a neighbouring column, so the combined τ is
at least the whole volume's, and closer to it the wider the columns; the spread of the
columns' own τ shows how far a column is from a representative volume.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Generator, Sequence

import numpy as np

from ..errors import PaserInputError
from ..io_sources import Volume
from .devices import default_device
from .memory import physical_memory, release_heap, worker_memory_limit
from .steps import relay_steps, run_steps
from .tortuosity import CARBON, PORE, TauProgress, TortuosityResult, tortuosity_steps

__all__ = [
    "MIN_COLUMN_WIDTH",
    "ColumnPlan",
    "ColumnJob",
    "ColumnOutcome",
    "check_column_width",
    "solve_bytes",
    "memory_budget",
    "plan_columns",
    "read_box",
    "solve_column",
    "tortuosity_columns_steps",
]

# Peak memory of one solve (see the module docstring), rounded up.
_BYTES_PER_VOXEL = {False: 64, True: 96}
_FIXED_BYTES = 128 << 20
MIN_COLUMN_WIDTH = 32
"""Narrower columns measure their walls more than the microstructure."""
_READ_VOXELS = 32 * 224 * 256  # planes read at a time while a column is filled


def check_column_width(width: int) -> int:
    """``width`` as an int, if it is at least :data:`MIN_COLUMN_WIDTH`.

    Raises
    ------
    PaserInputError
        A narrower width.
    """
    if int(width) < MIN_COLUMN_WIDTH:
        raise PaserInputError(f"tortuosity columns must be at least {MIN_COLUMN_WIDTH} voxels across, got {width}")
    return int(width)


def solve_bytes(n_voxels: int, multi_phase: bool = False) -> int:
    """Estimated peak memory (bytes) of a TauFactor solve of ``n_voxels`` voxels."""
    return _FIXED_BYTES + int(n_voxels) * _BYTES_PER_VOXEL[bool(multi_phase)]


def memory_budget(device: str | None = None) -> int:
    """Bytes one solve may take on ``device`` (None: where TauFactor would run, CUDA if
    there is a GPU): half of the RAM (of a dask worker's memory limit, in a worker that
    has one), or half of the GPU's memory."""
    import torch

    if device is None:
        device = default_device()
    if str(device).startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory // 2)
    limits = [m for m in (physical_memory(), worker_memory_limit()) if m]
    return min(limits) // 2 if limits else 4 << 30


@dataclass(frozen=True)
class ColumnPlan:
    """How a tortuosity solve is cut.

    Attributes
    ----------
    axis : int
        Flux axis of the (plane, row, column) volume.
    width : int or None
        Columns' cross-section edge in voxels; None: the whole volume in one solve.
    boxes : list of (slice, slice, slice)
        The (plane, row, column) box of every solve.
    """

    axis: int
    width: int | None
    boxes: list[tuple[slice, slice, slice]]


def _edges(n: int, width: int) -> list[tuple[int, int]]:
    """``ceil(n / width)`` near-equal parts of ``range(n)``, none wider than ``width``."""
    k = max(1, math.ceil(n / width))
    cuts = np.linspace(0, n, k + 1).round().astype(int)
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))


def plan_columns(
    shape: Sequence[int],
    axis: int,
    *,
    multi_phase: bool = False,
    width: int | None = None,
    budget: int | None = None,
) -> ColumnPlan:
    """Cut a (plane, row, column) volume into columns along ``axis`` that fit the budget.

    Parameters
    ----------
    shape : three ints
    axis : int
        Flux axis (0, 1 or 2).
    multi_phase : bool
        Carbon-binder conducts too (a bigger solver).
    width : int or None
        Columns' cross-section edge in voxels; None chooses: the whole volume when it fits
        ``budget``, else the widest columns that do. A width as wide as the volume solves
        it whole.
    budget : int or None
        Bytes one solve may take (default: :func:`memory_budget`).

    Raises
    ------
    PaserInputError
        A width below :data:`MIN_COLUMN_WIDTH`, or columns that need more memory than
        twice the budget (the whole RAM by default).
    """
    shape = tuple(int(n) for n in shape)
    budget = memory_budget() if budget is None else int(budget)
    cross = [a for a in range(3) if a != axis]
    whole = solve_bytes(int(np.prod(shape)), multi_phase)
    if width is None:
        if whole <= budget:
            width = max(shape[a] for a in cross)
        else:
            # the largest cross-section that fits, as a square unless the volume is thinner
            area = max(0, budget - _FIXED_BYTES) // (shape[axis] * _BYTES_PER_VOXEL[bool(multi_phase)])
            width = math.isqrt(area)
            thinnest = min(shape[a] for a in cross)
            if thinnest < width:
                width = area // thinnest
            if width < MIN_COLUMN_WIDTH:
                raise PaserInputError(
                    f"tortuosity: even columns of {MIN_COLUMN_WIDTH} voxels along axis {axis} need "
                    f"{solve_bytes(shape[axis] * MIN_COLUMN_WIDTH**2, multi_phase) / 2**30:.1f} GiB, more than the "
                    f"{budget / 2**30:.1f} GiB one solve may take; crop the volume or skip the tortuosity")
    else:
        width = check_column_width(width)
    parts = [_edges(shape[a], width) for a in cross]
    boxes: list[tuple[slice, slice, slice]] = []
    for lo0, hi0 in parts[0]:
        for lo1, hi1 in parts[1]:
            box = [slice(0, shape[axis])] * 3
            box[cross[0]], box[cross[1]] = slice(lo0, hi0), slice(lo1, hi1)
            boxes.append((box[0], box[1], box[2]))
    biggest = max(math.prod(s.stop - s.start for s in b) for b in boxes)
    if solve_bytes(biggest, multi_phase) > 2 * budget:
        raise PaserInputError(
            f"tortuosity: columns of {width} voxels need {solve_bytes(biggest, multi_phase) / 2**30:.1f} GiB each, more than "
            f"this machine has ({2 * budget / 2**30:.1f} GiB); choose narrower columns")
    whole_volume = len(boxes) == 1
    return ColumnPlan(axis, None if whole_volume else width, boxes)


def read_box(volume: Volume, box: tuple[slice, slice, slice]) -> np.ndarray:
    """The (plane, row, column) ``box`` of ``volume``, read a few planes at a time."""
    planes, rows, cols = box
    out = np.empty((planes.stop - planes.start, rows.stop - rows.start, cols.stop - cols.start), dtype=volume.dtype)
    step = volume.slab_planes(_READ_VOXELS)
    for z in range(planes.start, planes.stop, step):
        z1 = min(z + step, planes.stop)
        out[z - planes.start : z1 - planes.start] = volume.read(z, z1)[:, rows, cols]
    return out


@dataclass(frozen=True)
class ColumnJob:
    """Everything a column's solve needs; picklable, so dask workers can run columns
    (a file-backed volume pickles as its path).

    Attributes
    ----------
    volume : Volume
        Phase labels (checked by the caller), (plane, row, column).
    axis : int
        The flux axis the result reports (the caller's; ``plan.axis`` is the volume's).
    plan : ColumnPlan
    cb_diffusivity, voxel_size, diffusivity, device, iter_limit, conv_crit
        As for :func:`~napari_paser.engine.tortuosity.tortuosity_steps`.
    """

    volume: Volume
    axis: int
    plan: ColumnPlan
    cb_diffusivity: float | None = None
    voxel_size: tuple[float, float, float] | None = None
    diffusivity: float = 1.0
    device: str | None = None
    iter_limit: int = 20000
    conv_crit: float = 1e-2


@dataclass(frozen=True)
class ColumnOutcome:
    """One column's solve, its cross-section (voxels) and mean conductance (ε, or
    ``ε_pore + D_cb · ε_cb`` with carbon-binder conducting)."""

    result: TortuosityResult
    area: int
    conductance: float


def _column_steps(job: ColumnJob, k: int) -> Generator[TauProgress, None, ColumnOutcome]:
    labels = read_box(job.volume, job.plan.boxes[k]).astype(np.uint8, copy=False)  # checked by the caller
    res = yield from tortuosity_steps(labels, job.plan.axis, cb_diffusivity=job.cb_diffusivity, voxel_size=job.voxel_size,
                                      diffusivity=job.diffusivity, device=job.device, iter_limit=job.iter_limit,
                                      conv_crit=job.conv_crit)
    conductance = float(np.mean(labels == PORE))
    if job.cb_diffusivity:
        conductance += job.cb_diffusivity * float(np.mean(labels == CARBON))
    return ColumnOutcome(dataclasses.replace(res, axis=int(job.axis)), labels.size // labels.shape[job.plan.axis], conductance)


def solve_column(job: ColumnJob, k: int) -> ColumnOutcome:
    """Column ``k`` solved to the end: the task a dask worker runs."""
    try:
        return run_steps(_column_steps(job, k))
    finally:
        release_heap()


def _combine(outcomes: list[ColumnOutcome], job: ColumnJob) -> TortuosityResult:
    """One result for columns in parallel (see the module docstring)."""
    results = [o.result for o in outcomes]
    a = np.asarray([o.area for o in outcomes], dtype=float)
    a /= a.sum()
    d_rel = float(np.dot(a, [r.effective_diffusivity / job.diffusivity for r in results]))
    eps = float(np.dot(a, [o.conductance for o in outcomes]))
    tau = eps / d_rel if d_rel > 0 else math.inf
    return TortuosityResult(
        tau=tau,
        effective_diffusivity=job.diffusivity * d_rel,
        volume_fraction=float(np.dot(a, [r.volume_fraction for r in results])),
        converged=all(r.converged for r in results),
        iterations=max(r.iterations for r in results),
        axis=results[0].axis,
        phases=results[0].phases,
        column_width=job.plan.width,
        column_taus=tuple(r.tau for r in results),
    )


def _over_columns(step: TauProgress, done: int, total: int) -> TauProgress:
    """A column's progress as progress over all the columns."""
    return dataclasses.replace(step, fraction=(done + step.fraction) / total)


def tortuosity_columns_steps(job: ColumnJob, executor: Any = None) -> Generator[TauProgress, None, TortuosityResult]:
    """Solve the tortuosity of ``job.volume`` column by column as ``job.plan`` cuts it.

    Parameters
    ----------
    job : ColumnJob
    executor : LocalExecutor, DaskExecutor or None
        None: the columns one after the other in this process, with progress within
        each. An executor of :mod:`.streaming` (e.g. ``dask_executor(workers=4)``) runs
        them as tasks, progress after each; the result is the same.

    Yields
    ------
    TauProgress
        With ``fraction`` over all columns.

    Returns
    -------
    TortuosityResult
        The whole volume's, or the columns' combined with their own τ in ``column_taus``.
    """
    n = len(job.plan.boxes)
    outcomes: list[ColumnOutcome] = []
    if executor is not None and n > 1:
        for out in executor.map(solve_column, job, range(n), ordered=True):
            outcomes.append(out)
            yield TauProgress(out.result.iterations, job.iter_limit, 0.0, len(outcomes) / n, out.result.tau)
        return _combine(outcomes, job)
    for k in range(n):
        gen = _column_steps(job, k)
        out = yield from relay_steps(gen, functools.partial(_over_columns, done=k, total=n))
        if n == 1:
            return out.result
        outcomes.append(out)
        del gen
        # Each column allocates and frees the same large fields: give them back, or the
        # heap's fragments pile up column after column. (A fixed mmap threshold, as in
        # segment's slabs, bounds them further but slowed TauFactor's iterations 1.7-2.5x.)
        release_heap()
    return _combine(outcomes, job)
