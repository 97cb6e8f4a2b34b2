"""The work behind the widget, as generators that run in a napari thread worker.

Each job yields small messages (a slice is ready, a stage starts) and returns an
:class:`Outcome`. The same generators run synchronously for tests and scripts, so both
paths share one code. torch and the engine are imported only inside the jobs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator

import numpy as np

from ._stats import no_comparison, slice_confusion, slice_fractions, summarize
from ._torch_loading import import_torch_quietly, worker_threads

if TYPE_CHECKING:
    from ..engine.windowed import WindowedSegmenter

__all__ = [
    "Ready", "Stage", "SliceDone", "Compared", "Outcome", "RunRequest", "run_job", "reroute_job", "compare_job",
    "F2Check", "check_against_f2_job",
    "pick_device", "Session", "needs_streaming", "STREAM_BYTES",
]

STREAM_BYTES = 2 << 30
"""Engine and layer state (bytes) above which a stack is segmented through a Zarr store on
disk with a bounded engine cache (see :func:`needs_streaming`)."""

# Engine caches (~13 bytes per voxel, ~18 with f0 fused into f1 / f2: its probabilities
# and the fused labels) plus the three result layers (~10) of an in-memory run.
_STATE_BYTES_PER_VOXEL = 28
# With blended borders, f1's and f2's probabilities over their windows as well.
_BLEND_BYTES_PER_VOXEL = 10


def _memory_limit() -> int:
    from ..engine.memory import physical_memory

    ram = physical_memory()
    if ram is None:  # not POSIX: keep the fixed limit
        return STREAM_BYTES
    return int(min(STREAM_BYTES, ram // 4))


def needs_streaming(data: Any, blend_borders: bool = False) -> bool:
    """True if segmenting the (Z, Y, X) ``data`` in memory (``blend_borders``: with the
    patches blended across their borders) would take more than the limit
    (:data:`STREAM_BYTES` or a quarter of RAM): it then goes through a Zarr store."""
    shape = tuple(getattr(data, "shape", ()))
    per_voxel = _STATE_BYTES_PER_VOXEL + (_BLEND_BYTES_PER_VOXEL if blend_borders else 0)
    return len(shape) == 3 and int(np.prod(shape)) * per_voxel > _memory_limit()


@dataclass
class Session:
    """One segmenter (image layer, bundle, MC passes) and the lock that guards it.

    The engine's caches are not thread-safe: whoever calls the segmenter (the worker,
    or the GUI thread for a cached visible slice) holds ``lock`` for that call.
    """

    key: tuple
    segmenter: Any
    device: str
    bundle: dict
    precision: str = "fp32"
    lock: threading.Lock = field(default_factory=threading.Lock)


LAYERS_WAIT_S = 10.0
"""Longest pause of a run while the GUI adds its result layers (see :class:`Ready`)."""


@dataclass
class Ready:
    """The volume is validated; result layers of this shape can be (re)made.

    The run pauses until ``shown`` is set (at most :data:`LAYERS_WAIT_S`): adding napari
    layers is Python-heavy GUI work that a computing worker would slow down by competing
    for the GIL and the cores, stalling the viewer.
    """

    session: Session
    shape: tuple[int, int, int]
    grid: tuple[int, int, int]
    patch_size: tuple[int, int]
    shown: threading.Event = field(default_factory=threading.Event)
    store: str | None = None


@dataclass
class Stage:
    """A stage of ``total`` slices starts (progress bar text)."""

    name: str
    total: int


@dataclass
class SliceDone:
    """Results of slice ``z`` (``entropy`` is None when only re-routed)."""

    z: int
    lam: float
    labels: np.ndarray | None = None
    entropy: np.ndarray | None = None
    routing: np.ndarray | None = None
    fractions: np.ndarray | None = None
    confusion: np.ndarray | None = None


@dataclass
class Compared:
    """Slice ``z`` compared with the ground truth: its (3, 3) confusion."""

    z: int
    confusion: np.ndarray


@dataclass
class Outcome:
    """What a finished job hands back: the engine result, its λ and the statistics."""

    result: Any
    lam: float
    stats: dict


@dataclass
class RunRequest:
    """Everything a run needs, captured on the GUI thread."""

    data: Any
    key: tuple
    bundle_path: Path
    mc_passes: int | None
    mode: str  # "lam" | "tvd"
    lam: float
    tvd: float
    order: list[int] | None = None
    session: Session | None = None
    ground_truth: Any = None  # (Z, Y, X) labels, read a slice at a time (a lazy layer too)
    store: str | None = None  # a folder: stream through a Zarr store there (big stacks)
    precision: str = "fp32"  # of the f1/f2 patches ("bf16": faster where it is native)
    blend_borders: bool = False  # blend neighbouring patches across their borders


def pick_device() -> str:
    """CUDA when available, else CPU with one core left to the viewer (imports torch:
    call from a job)."""
    import_torch_quietly()
    import torch

    from ..engine.devices import default_device

    device = default_device()
    if device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), worker_threads()))
    return device


def _visible_first(order: list[int] | None, n: int) -> list[int]:
    order = [z for z in (order or []) if 0 <= z < n]
    return order + [z for z in range(n) if z not in set(order)]


def open_session(req: RunRequest) -> Session:
    """Load the bundle and validate the volume (engine errors propagate unchanged)."""
    import_torch_quietly("napari_paser.engine.bundle", "napari_paser.engine.pipeline")
    from ..engine.bundle import load_bundle
    from ..engine.pipeline import PaserSegmenter
    from ..engine.precision import check_precision

    device = pick_device()
    precision = check_precision(req.precision, device)
    bundle = load_bundle(req.bundle_path, device=device)
    seg: PaserSegmenter | WindowedSegmenter
    if req.store is not None:  # bigger than memory: read plane by plane, bounded cache
        from ..engine.windowed import WindowedSegmenter

        seg = WindowedSegmenter(bundle, req.data, mc_passes=req.mc_passes or None, device=device, precision=precision,
                                blend_borders=req.blend_borders)
    else:
        seg = PaserSegmenter(bundle, mc_passes=req.mc_passes or None, device=device, precision=precision,
                             blend_borders=req.blend_borders)
        seg.set_volume(np.asarray(req.data))
    info = {"name": bundle.name, "version": str(bundle.meta.get("version", "")), "path": str(req.bundle_path)}
    return Session(req.key, seg, device, info, precision)


def _geometry(seg) -> tuple[tuple, tuple, tuple]:
    """(Z, Y, X), (Z, GY, GX) and the patch size of the segmenter's volume."""
    z, h, w = (int(v) for v in seg.shape)
    gy, gx = (int(v) for v in seg.grid)
    return (z, h, w), (z, gy, gx), tuple(int(p) for p in seg.patch_size)


def _finish(session: Session, lam: float, mode: str, tvd: float, per_slice: np.ndarray, confusion: np.ndarray | None,
            done: np.ndarray) -> Outcome:
    """Engine result and statistics once every slice is segmented (else partial statistics)."""
    seg = session.segmenter
    if not done.all():  # a cancelled run: GFLOPs and the engine result need every slice
        with session.lock:
            routing = np.stack([seg.routing(lam, z) if d else np.full(seg.grid, 255, np.uint8) for z, d in enumerate(done)])
        return Outcome(None, lam, summarize(per_slice=per_slice, routing=routing, done=done, confusion=confusion))
    with session.lock:
        result = seg.result(tvd=tvd) if mode == "tvd" else seg.result(lam=lam)
    stats = summarize(per_slice=per_slice, routing=np.asarray(result.routing), done=done, result=result, confusion=confusion)
    if mode == "tvd":
        stats["tvd_target"] = float(tvd)
    return Outcome(result, lam, stats)


def run_job(req: RunRequest) -> Generator[Any, None, Outcome]:
    """Analyse and segment every slice (visible first), yielding each as it is done.

    In TVD mode λ depends on all slices, so every slice is analysed first (entropy shown
    as it comes) and then composed.
    """
    session = req.session or open_session(req)
    seg = session.segmenter
    shape, grid, patch = _geometry(seg)
    ready = Ready(session, shape, grid, patch, store=req.store)
    yield ready
    ready.shown.wait(LAYERS_WAIT_S)
    order = _visible_first(req.order, shape[0])
    per_slice = np.full((shape[0], 3), np.nan)
    gt = req.ground_truth
    confusion = no_comparison(shape[0]) if gt is not None else None
    lam = float(req.lam)
    if req.mode == "tvd":
        yield Stage("analysing", len(order))
        # Several slices at once where the cores allow; the engine's caches change only
        # inside next(), so that is what holds the lock the viewer's thread composes under.
        analysed = seg.analyse_slices(order)
        try:
            for _ in order:
                with session.lock:
                    z = next(analysed)
                    ent = seg.entropy(z)
                yield SliceDone(z, lam, entropy=ent)
        finally:
            analysed.close()
        with session.lock:
            lam = float(seg.lam_for_tvd(req.tvd))
    yield Stage("segmenting", len(order))
    for z in order:
        with session.lock:
            seg.analyse(z)
            routing = seg.routing(lam, z)
            labels = seg.compose(z, routing=routing)
            ent = seg.entropy(z) if req.mode != "tvd" else None
        per_slice[z] = slice_fractions(labels)
        if confusion is not None:
            confusion[z] = slice_confusion(labels, gt[z])
        yield SliceDone(z, lam, labels, ent, routing, per_slice[z], None if confusion is None else confusion[z])
    return _finish(session, lam, req.mode, req.tvd, per_slice, confusion, np.ones(shape[0], bool))


def reroute_job(
    session: Session,
    lam: float,
    mode: str,
    tvd: float,
    order: list[int],
    per_slice: np.ndarray,
    done: np.ndarray,
    confusion: np.ndarray | None = None,
    ground_truth: Any = None,
) -> Generator[Any, None, Outcome]:
    """Re-route the slices in ``order`` for a new λ, running the patches not cached yet.

    ``done`` marks the slices segmented so far (all but those of a cancelled run);
    ``confusion`` holds every slice's comparison with ``ground_truth`` (re-compared here
    for the slices re-routed).
    """
    seg = session.segmenter
    per_slice = per_slice.copy()
    confusion = confusion.copy() if confusion is not None and ground_truth is not None else None
    yield Stage("re-routing", len(order))
    for z in order:
        with session.lock:
            routing = seg.routing(lam, z)
            labels = seg.compose(z, routing=routing)
        per_slice[z] = slice_fractions(labels)
        if confusion is not None:
            confusion[z] = slice_confusion(labels, ground_truth[z])
        yield SliceDone(z, lam, labels, None, routing, per_slice[z], None if confusion is None else confusion[z])
    return _finish(session, lam, mode, tvd, per_slice, confusion, done)


def compare_job(labels: Any, ground_truth: Any, slices: list[int]) -> Generator[Any, None, np.ndarray]:
    """Compare the phases of ``slices`` with a ground truth chosen after the run, a slice
    at a time (labels and truth may both be read from disk); returns the confusions."""
    confusion = no_comparison(len(labels))
    yield Stage("comparing with the ground truth", len(slices))
    for z in slices:
        confusion[z] = slice_confusion(np.asarray(labels[z]), ground_truth[z])
        yield Compared(z, confusion[z])
    return confusion


@dataclass
class F2Check:
    """Slice ``z`` as routed at ``lam`` against every patch on f2 (PaSeR's costliest
    routing): how much the compute saved there changed the phases."""

    z: int
    lam: float
    agreement: float  # share of the slice's pixels labelled as with f2 everywhere
    mean_iou: float  # of the slice's phases, f2 everywhere's taken as the truth
    seconds: float  # what the check took (f2 on the patches not computed yet)
    differs: np.ndarray  # (rows, columns) bool: where the two differ

    def as_stats(self) -> dict:
        return {"slice": self.z, "lam": self.lam, "agreement": self.agreement, "mean_iou": self.mean_iou}


def check_against_f2_job(session: Session, z: int, lam: float) -> Generator[Any, None, F2Check]:
    """Compose slice ``z`` at ``lam`` and with every patch on f2 (the f2 patches stay
    cached: a check after moving λ is quick) and compare them."""
    from ..engine import metrics

    seg = session.segmenter
    yield Stage(f"checking slice {z} against f2", 1)
    start = time.perf_counter()
    with session.lock:
        labels = seg.compose(z, routing=seg.routing(lam, z))
        reference = seg.compose(z, routing=np.full(tuple(seg.grid), 2, np.uint8))
    confusion = metrics.confusion_matrix(labels, reference)
    return F2Check(int(z), float(lam), metrics.pixel_agreement(confusion), metrics.mean_iou(confusion),
                   time.perf_counter() - start, labels != reference)
