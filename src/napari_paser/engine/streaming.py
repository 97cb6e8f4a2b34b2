"""PaSeR on stacks larger than memory: slabs of planes, written as they finish.

A run has up to three passes over a lazily read :class:`~napari_paser.io_sources.Volume`:

1. **statistics** — every slab is read once for the intensity sample the
   :class:`~.normalize.Normalizer` is fitted on (the same strided sample the in-memory
   engine takes of the whole stack), for finiteness and for a non-constant volume;
2. **λ** (TVD mode, and the IDK cascade without tuned thresholds) — per-patch switch
   points (or patch entropies) of every plane: a few numbers per patch;
3. **segment** — each slab gets a fresh :class:`~.pipeline.PaserSegmenter` state with
   the whole stack's normaliser and slice indices, so its labels are the ones the
   whole stack would get, and is handed to the writer.

Memory therefore depends on the slab (a few planes), not on the number of planes. The
slab tasks are plain functions of a picklable :class:`StreamJob`, so a dask.distributed
cluster runs them as well (:func:`dask_executor`): every worker process loads the bundle
once and, for a Zarr output, writes its own region of the store.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import PaserInputError
from ..io_sources import Volume
from .memory import bound_heap, release_heap
from .normalize import Normalizer

__all__ = [
    "SAMPLE_VOXELS",
    "StreamJob",
    "SlabOutput",
    "check_volume",
    "fit_normalizer",
    "fit_bundle_normalizer",
    "default_slab",
    "run_slab",
    "plane_f2_check",
    "check_planes",
    "stream_segment",
    "LocalExecutor",
    "DaskExecutor",
]

SAMPLE_VOXELS = 4_000_000
"""Intensity statistics come from a regular subsample of about this many voxels (every
voxel of smaller stacks), taken like :meth:`Normalizer.fit` takes it from an array."""

SLAB_BYTES = 128 << 20
"""Default slab: as many planes as fit about this many bytes of engine state."""

# Bytes of engine state per padded pixel of a slab: input, normalised float32 LRU,
# f0/f1/f2 patch labels, entropy float32, labels, f0's probabilities and the fused f1/f2
# labels of a bundle that fuses f0 in (5), plus torch's activations of one slice.
_BYTES_PER_PIXEL = 21
# With blended borders also f1's and f2's probabilities over their windows: 2 models x 3
# classes x (56 + 16) (64 + 16) / (56 x 64) window pixels per patch pixel.
_BLEND_BYTES_PER_PIXEL = 10

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------- volume checks


def check_volume(volume: Volume, patch_size: tuple[int, int]) -> None:
    """The checks of :func:`~.normalize.validate_image` that need only the shape and dtype.

    Raises
    ------
    PaserInputError
        Unsupported dtype, colour or 4-D data, an empty stack, or planes smaller than a patch.
    """
    dt = np.dtype(volume.dtype)
    if dt == bool or not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise PaserInputError(f"image dtype {dt} is not supported: expected integer or float grayscale pixels")
    shape = volume.input_shape
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4:
        raise PaserInputError(f"image of shape {shape} looks like RGB/RGBA colour data: convert it to one grayscale channel")
    if volume.size == 0:
        raise PaserInputError(f"image of shape {shape} is empty")
    ph, pw = patch_size
    if shape[-2] < ph or shape[-1] < pw:
        raise PaserInputError(f"slices of {shape[-2]}x{shape[-1]} pixels are smaller than one {ph}x{pw} patch")


def default_slab(shape: Sequence[int], patch_size: tuple[int, int], budget: int = SLAB_BYTES, *, blend_borders: bool = False) -> int:
    """Planes per slab so that one slab's engine state is about ``budget`` bytes
    (``blend_borders``: the engine keeps its patch models' windows too)."""
    ph, pw = patch_size
    padded = (-(-int(shape[1]) // ph) * ph) * (-(-int(shape[2]) // pw) * pw)
    per_pixel = _BYTES_PER_PIXEL + (_BLEND_BYTES_PER_PIXEL if blend_borders else 0)
    return int(max(1, min(int(shape[0]), budget // (padded * per_pixel))))


def fit_normalizer(
    volume: Volume,
    low_percentile: float = 0.5,
    high_percentile: float = 99.5,
    *,
    slab: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Normalizer:
    """Fit the intensity normaliser on a strided sample of the whole stack, slab by slab.

    The sample is ``volume.reshape(-1)[::step]`` with ``step = ceil(size / SAMPLE_VOXELS)``,
    which is every voxel for stacks of up to 4 M voxels: the in-memory engine fits on
    the same values. Also checks every voxel for NaN/inf and the stack for being constant.

    Raises
    ------
    PaserInputError
        NaN or infinite values, or a constant stack.
    """
    z, h, w = volume.shape
    size = int(z) * int(h) * int(w)
    step = max(1, -(-size // SAMPLE_VOXELS))
    plane = int(h) * int(w)
    parts = []
    lo = hi = None
    floating = np.issubdtype(np.dtype(volume.dtype), np.floating)
    for z0, block in volume.slabs(slab):
        z1 = z0 + len(block)
        if floating and not np.isfinite(block).all():
            raise PaserInputError("image contains NaN or infinite values")
        bmin, bmax = block.min(), block.max()
        lo = bmin if lo is None else min(lo, bmin)
        hi = bmax if hi is None else max(hi, bmax)
        start = (-z0 * plane) % step  # first sampled voxel of this slab in the flat stack
        parts.append(block.reshape(-1)[start::step].copy())
        del block
        if progress is not None:
            progress(z1 - z0)
    if lo is None or hi is None:
        raise PaserInputError(f"image of shape {tuple(volume.shape)} is empty")
    if lo == hi:
        raise PaserInputError(f"image is constant (every pixel is {lo.item()!r}): nothing to segment")
    sample = np.concatenate(parts)
    try:
        return Normalizer.fit(sample, low_percentile, high_percentile)
    except PaserInputError:
        # The sample happened to be constant though the stack is not: use the full range.
        return Normalizer(float(lo), float(hi))


def fit_bundle_normalizer(volume: Volume, bundle: Any, **kwargs) -> Normalizer:
    """:func:`fit_normalizer` with the bundle's percentiles (``kwargs``: ``slab``, ``progress``)."""
    norm = bundle.normalization
    return fit_normalizer(volume, norm.get("low_percentile", 0.5), norm.get("high_percentile", 99.5), **kwargs)


# --------------------------------------------------------------------------- slab tasks


class SlabTasks:
    """Slab ``k`` of a job over ``self.volume``'s planes, ``self.slab`` planes each (for
    jobs whose tasks are slabs: :class:`StreamJob`, the band's
    :class:`~napari_paser.engine.metrics_band.BandJob`)."""

    volume: Volume
    slab: int

    def bounds(self, k: int) -> tuple[int, int]:
        z0 = int(k) * self.slab
        return z0, min(z0 + self.slab, self.volume.shape[0])

    @property
    def num_slabs(self) -> int:
        return -(-self.volume.shape[0] // self.slab)


@dataclass(frozen=True)
class StreamJob(SlabTasks):
    """Everything a slab task needs; picklable (the volume pickles as its path).

    Attributes
    ----------
    volume : Volume
    bundle_path : str
        Bundle folder (every worker must see it).
    method : str
    lam : float or None
        λ of the segment pass (TVD mode: the one chosen for the whole stack).
    normalizer : Normalizer
    slab : int
        Planes per slab.
    mc_passes, seed, batch_size : engine settings
    idk_thresholds : tuple of float or None
        (a0, a1) of an IDK cascade, fixed for the whole stack.
    entropy, routing : bool
        Return / write f0's entropy map and the routing map.
    output : object or None
        An :class:`~napari_paser.io_writers.OmeZarrOutput` the task writes itself; None:
        the task returns its arrays.
    device : str
    precision : {"fp32", "bf16"}
        Of the f1/f2 patch batches (:class:`~napari_paser.engine.pipeline.PaserSegmenter`).
    blend_borders : bool
        Blend neighbouring patches across their borders (as that engine's option).
    """

    volume: Volume
    bundle_path: str
    method: str
    lam: float | None
    normalizer: Normalizer
    slab: int
    mc_passes: int | None = None
    seed: int = 0
    batch_size: int = 32
    idk_thresholds: tuple[float, float] | None = None
    entropy: bool = False
    routing: bool = False
    output: Any = None
    device: str = "cpu"
    precision: str = "fp32"
    blend_borders: bool = False


@dataclass
class SlabOutput:
    """What one slab task hands back (arrays only when the driver writes them)."""

    k: int
    z0: int
    gflops: np.ndarray
    counts: np.ndarray  # (2, 3) int64: patches per model at λ and at λ = 0
    seconds: float
    labels: np.ndarray | None = None
    entropy: np.ndarray | None = None
    routing: np.ndarray | None = None


# One segmenter per thread and settings: a dask worker loads the bundle once (per
# thread: a segmenter's caches are not thread-safe, and workers may run several tasks).
_LOCAL = threading.local()


def thread_cached(name: str, key: tuple, build: Callable[[], Any]) -> Any:
    """What ``build()`` made for ``key`` in this thread, made once: one per ``name``, a new
    key replaces the old one (a dask worker keeps its segmenters between slab tasks)."""
    cached = getattr(_LOCAL, name, None)
    if cached is None or cached[0] != key:
        cached = (key, build())
        setattr(_LOCAL, name, cached)
    return cached[1]


def _segmenter(job: StreamJob):
    from .bundle import load_bundle
    from .pipeline import PaserSegmenter

    bound_heap()  # also in dask worker processes
    key = (os.path.abspath(job.bundle_path), job.mc_passes, job.seed, job.batch_size, job.device, job.precision, job.blend_borders)
    return thread_cached("segmenter", key, lambda: PaserSegmenter(
        load_bundle(job.bundle_path, device=job.device), mc_passes=job.mc_passes, seed=job.seed, device=job.device,
        batch_size=job.batch_size, precision=job.precision, blend_borders=job.blend_borders))


def _load_slab(job: StreamJob, k: int):
    from .pipeline import read_with_context

    z0, z1 = job.bounds(k)
    seg = _segmenter(job)
    slab, context = read_with_context(job.volume.read, job.volume.shape[0], z0, z1, seg.context_planes)
    seg.set_volume(slab, normalizer=job.normalizer, first_slice=z0, context=context)
    return seg, z0, z1


def _method(job: StreamJob):
    from .pipeline import get_method

    if job.idk_thresholds is not None:
        from .baselines import idk_method

        return idk_method(job.idk_thresholds, name=job.method)
    return get_method(job.method)


def run_slab(job: StreamJob, k: int) -> SlabOutput:
    """Segment slab ``k``; write it to ``job.output`` or return its arrays."""
    seg, z0, z1 = _load_slab(job, k)
    spec = _method(job)
    from .pipeline import drain

    result = drain(seg.run(lam=job.lam, method=spec))
    routing = np.asarray(result.routing)
    counts = np.zeros((2, 3), dtype=np.int64)
    counts[0] = np.bincount(routing.reshape(-1), minlength=3)
    if spec.uses_lam:
        ref = np.stack([seg.routing(0.0, z) for z in range(z1 - z0)])
        counts[1] = np.bincount(ref.reshape(-1), minlength=3)
    entropy = result.entropy if job.entropy and result.entropy is not None else None
    if job.entropy and entropy is None:  # f1 / f2 alone do not analyse: entropy on request
        entropy = np.stack([seg.entropy(z) for z in range(z1 - z0)])
    out = SlabOutput(k, z0, np.asarray(result.gflops_per_slice, dtype=np.float64), counts, float(result.compute_seconds))
    labels = np.asarray(result.labels)
    if job.output is not None:
        job.output.write_slab(k, z0, labels, entropy, routing if job.routing else None, out.gflops, counts, out.seconds)
    else:
        out.labels, out.entropy, out.routing = labels, entropy, (routing if job.routing else None)
    del result, seg
    release_heap()
    return out


def check_planes(planes: int, count: int) -> list[int]:
    """``count`` planes spread evenly over a stack of ``planes``, first and last included."""
    if count < 1 or planes < 1:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, planes - 1, min(count, planes))})


def plane_f2_check(job: StreamJob, z: int) -> np.ndarray:
    """(3, 3) confusion of plane ``z`` as ``job`` segments it (columns) against the same
    plane with every patch on f2 (rows; fused with f0 as the job's method fuses): what
    the routing's savings changed there, with no ground truth needed."""
    from .metrics import confusion_matrix
    from .pipeline import drain, read_with_context

    seg = _segmenter(job)
    plane, context = read_with_context(job.volume.read, job.volume.shape[0], z, z + 1, seg.context_planes)
    seg.set_volume(plane, normalizer=job.normalizer, first_slice=z, context=context)
    spec = _method(job)
    labels = np.asarray(drain(seg.run(lam=job.lam, method=spec)).labels)[0]
    reference = seg.compose(0, routing=np.full(tuple(seg.grid), 2, np.uint8), fused=spec.analyse)
    confusion = confusion_matrix(labels, reference)
    release_heap()
    return confusion


def slab_switch_points(job: StreamJob, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Switch points (s1, s2) of every patch of slab ``k`` (analyses its planes)."""
    from .pipeline import drain
    from .routing import switch_points

    seg, z0, z1 = _load_slab(job, k)
    costs = seg.bundle.costs().double().numpy()
    drain(seg.analyse_slices(range(z1 - z0)))  # several planes at once where the cores allow
    gains = np.stack([seg.gains(z) for z in range(z1 - z0)])
    return switch_points(gains, costs)


def slab_patch_entropy(job: StreamJob, k: int, a0: float | None = None) -> np.ndarray:
    """Mean f0 patch entropies of slab ``k`` (``a0`` None), or f1's on the patches with f0
    entropy ≥ ``a0`` (NaN elsewhere): what the IDK cascade's stack thresholds are means of."""
    from .pipeline import drain

    seg, z0, z1 = _load_slab(job, k)
    drain(seg.analyse_slices(range(z1 - z0)))  # several planes at once where the cores allow
    out = []
    for z in range(z1 - z0):
        e0 = seg.patch_entropy(z, 0).copy()
        if a0 is None:
            out.append(e0)
            continue
        up = e0 >= a0
        if up.any():
            seg.ensure_patches(z, 1, up)
        out.append(seg.patch_entropy(z, 1).copy())
    return np.stack(out)


# --------------------------------------------------------------------------- executors


class LocalExecutor:
    """Runs slab tasks one after the other in this process."""

    workers = 1

    def map(self, fn: Callable, job: Any, ks: Sequence[int], *args, ordered: bool = True) -> Iterator:
        for k in ks:
            yield fn(job, k, *args)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Runs slab tasks on a dask.distributed cluster, a bounded number in flight.

    Parameters
    ----------
    client : distributed.Client
    owns_cluster : bool
        Close the client (and its local cluster) in :meth:`close`.
    """

    def __init__(self, client, owns_cluster: bool = False):
        self.client = client
        self.owns_cluster = owns_cluster

    @property
    def workers(self) -> int:
        """Worker threads now (a scaled cluster, e.g. dask-jobqueue, may grow while it runs)."""
        return max(1, sum(self.client.nthreads().values()))

    def map(self, fn: Callable, job: Any, ks: Sequence[int], *args, ordered: bool = True) -> Iterator:
        from distributed import as_completed

        ks = list(ks)
        # A key of its own: scattered by content, a second map of the same job would share
        # the first one's key, which the first map's end releases under the second's tasks
        # ("lost dependencies", seen when the band's metrics followed its slabs).
        [job_future] = self.client.scatter([job], broadcast=True, hash=False)
        slab_of: dict[str, int] = {}
        ready: dict[int, Any] = {}
        todo = iter(ks)
        order = iter(ks)
        want = next(order, None)
        ac = as_completed()

        def submit() -> bool:
            k = next(todo, None)
            if k is None:
                return False
            f = self.client.submit(fn, job_future, k, *args, pure=False)
            slab_of[f.key] = k
            ac.add(f)
            return True

        for _ in range(2 * self.workers):
            submit()
        for f in ac:
            k = slab_of.pop(f.key)
            value = f.result()
            f.release()
            if not ordered:
                submit()
                yield value
                continue
            ready[k] = value
            while want is not None and want in ready:
                yield ready.pop(want)
                want = next(order, None)
            # Finished results wait in `ready` until their turn: two per worker thread at most.
            while len(slab_of) + len(ready) < 2 * self.workers and submit():
                pass

    def close(self) -> None:
        if self.owns_cluster:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()


def dask_executor(workers: int | None = None, scheduler: str | None = None) -> DaskExecutor:
    """A local cluster of ``workers`` processes (one thread each), or the running
    scheduler at ``scheduler`` (any dask deployment: SLURM, Kubernetes, cloud)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise PaserInputError("--workers/--scheduler need dask.distributed: pip install distributed") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise PaserInputError(f"cannot reach the dask scheduler at {scheduler}: {err}") from None
        return DaskExecutor(client, owns_cluster=False)
    cluster = LocalCluster(n_workers=int(workers or 1), threads_per_worker=1, processes=True, dashboard_address=None)
    return DaskExecutor(Client(cluster), owns_cluster=True)


# --------------------------------------------------------------------------- driver


@dataclass
class _Counter:
    total: int
    progress: Progress | None
    done: int = 0

    def add(self, n: int) -> None:
        self.done += int(n)
        if self.progress is not None:
            self.progress(self.done, self.total)


@dataclass
class StreamSummary:
    """Totals of a streamed run (the report; no arrays kept)."""

    report: dict
    done_slabs: list[int] = field(default_factory=list)


def _idk_needs_thresholds(bundle) -> bool:
    from .baselines import bundle_idk_thresholds

    return bundle_idk_thresholds(bundle) is None


def stream_segment(
    volume: Volume,
    bundle_path: str,
    *,
    method: str = "paser",
    lam: float | None = None,
    tvd: float | None = None,
    mc_passes: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    slab: int | None = None,
    writer: Any = None,
    zarr_output: Any = None,
    todo: Iterable[int] | None = None,
    entropy: bool = False,
    routing: bool = False,
    executor: Any = None,
    progress: Progress | None = None,
    device: str = "cpu",
    bundle: Any = None,
    precision: str = "fp32",
    f2_check_planes: int = 0,
    blend_borders: bool = False,
) -> StreamSummary:
    """Segment ``volume`` slab by slab into ``writer`` (ordered) or ``zarr_output`` (any order).

    Parameters
    ----------
    volume : Volume
        The lazily read stack.
    bundle_path : str
        Bundle folder; ``bundle`` may pass it already loaded (for checks on this side).
    method, lam, tvd, mc_passes, seed, batch_size, precision, blend_borders
        As :meth:`PaserSegmenter.run` / its constructor.
    slab : int, optional
        Planes per slab (default: :func:`default_slab`).
    writer : object, optional
        Gets ``writer(kind, array)`` for each finished slab in plane order, ``kind`` in
        ``labels`` / ``entropy`` / ``routing``.
    zarr_output : OmeZarrOutput, optional
        A prepared store; the slab tasks write into it. ``todo`` lists the slabs still
        missing (a resumed run); the report covers all slabs from the store's records.
    executor : LocalExecutor or DaskExecutor, optional
    progress : callable ``(done, total)``, optional
        Planes done over every pass.
    f2_check_planes : int
        Also segment this many evenly spaced planes with every patch on f2 and report, as
        ``f2_check``, how many of their pixels the run labelled alike and the mean IoU
        with f2's labels as the truth: what the λ costs in quality, without a ground
        truth (f2 on those planes costs what f2 everywhere costs there).

    Returns
    -------
    StreamSummary
        ``report`` has the keys of :meth:`SegmentationResult.report` plus ``slab``,
        ``workers`` and the normaliser's range.
    """
    from .bundle import bundle_record, load_bundle
    from .flops import CostModel
    from .patches import grid_shape
    from .pipeline import get_method
    from .routing import MODEL_NAMES
    from .uncertainty import mc_estimate

    wall0 = time.perf_counter()
    bound_heap()
    spec = get_method(method)
    if tvd is not None and lam is not None:
        raise PaserInputError("give either lam or tvd, not both")
    if tvd is not None and not spec.uses_lam:
        raise PaserInputError(f"method {method!r} has no λ to choose from a TVD")
    bundle = bundle if bundle is not None else load_bundle(bundle_path)
    ph, pw = bundle.patch_size
    patch = (int(ph), int(pw))
    check_volume(volume, patch)
    executor = executor or LocalExecutor()
    z = volume.shape[0]
    slab = int(slab or default_slab(volume.shape, patch, blend_borders=blend_borders))
    if slab < 1:
        raise PaserInputError(f"--slab must be at least 1, got {slab}")
    ks_all = list(range(-(-z // slab)))
    ks = ks_all if todo is None else sorted(int(k) for k in todo)
    idk_prepass = spec.name == "idk" and _idk_needs_thresholds(bundle)
    pre_passes = 1 + (1 if tvd is not None else 0) + (2 if idk_prepass else 0)  # statistics, λ, IDK thresholds
    to_segment = sum(min(slab, z - k * slab) for k in ks)
    checked = check_planes(z, f2_check_planes)
    counter = _Counter(total=(pre_passes * z if ks else z) + to_segment + len(checked), progress=progress)

    normalizer = fit_bundle_normalizer(volume, bundle, slab=slab, progress=counter.add)
    if spec.uses_lam:
        lam = bundle.default_lam if lam is None and tvd is None else lam
    if lam is not None and not 0.0 <= float(lam) <= 1.0:
        raise PaserInputError(f"lam must be in [0, 1], got {lam}")
    job = StreamJob(volume, str(bundle_path), spec.name, None if lam is None else float(lam), normalizer, slab,
                    mc_passes=mc_passes, seed=seed, batch_size=batch_size, entropy=entropy, routing=routing,
                    output=zarr_output, device=device, precision=precision, blend_borders=blend_borders)
    if ks and tvd is not None:
        job = _with_lam_for_tvd(job, tvd, executor, ks_all, counter)
    if ks and idk_prepass:
        job = _with_idk_thresholds(job, executor, ks_all, counter)

    gflops = np.zeros(z)
    counts = np.zeros((len(ks_all), 2, 3), dtype=np.int64)
    seconds = np.zeros(len(ks_all))
    for out in executor.map(run_slab, job, ks, ordered=writer is not None):
        z0 = out.z0
        gflops[z0 : z0 + len(out.gflops)] = out.gflops
        counts[out.k], seconds[out.k] = out.counts, out.seconds
        if writer is not None:
            writer("labels", out.labels)
            if entropy:
                writer("entropy", out.entropy)
            if routing:
                writer("routing", out.routing)
        counter.add(len(out.gflops))
    f2_check = _check_against_f2(job, executor, checked, counter) if checked else None
    if zarr_output is not None:  # a resumed run also counts the slabs done before
        rec = zarr_output.records()
        gflops, counts, seconds = rec["gflops"], rec["counts"], rec["seconds"]

    grid = grid_shape(volume.shape[1:], patch)
    padded = (grid[0] * patch[0], grid[1] * patch[1])
    passes = int(mc_passes if mc_passes is not None else bundle.mc_passes)
    cost = CostModel.measure(bundle, padded, passes, mc_estimate(bundle.f0.config, mc_passes))
    now, ref = counts[:, 0].sum(axis=0), counts[:, 1].sum(axis=0)
    f2_all = z * grid[0] * grid[1] * cost.patch[2] / 1e9
    total = float(gflops.sum())
    measured_tvd = float(np.abs(now - ref).sum() // 2) / max(int(ref.sum()), 1) if spec.uses_lam else None
    report = {
        "method": spec.name,
        "lam": job.lam,
        "tvd": measured_tvd,
        "tvd_target": None if tvd is None else float(tvd),
        "bundle": bundle_record(bundle, fused=spec.analyse, blend_borders=blend_borders),
        "shape": [int(v) for v in volume.shape],
        "patch_size": list(patch),
        "grid": [int(g) for g in grid],
        "gflops_total": total,
        "gflops_per_slice": [float(v) for v in gflops],
        "gflops_f2_everywhere": f2_all,
        "flops_ratio_vs_f2": total / f2_all if f2_all else None,
        "route_fraction": {name: float(c) / max(int(now.sum()), 1) for name, c in zip(MODEL_NAMES, now)},
        "seconds": time.perf_counter() - wall0,
        "compute_seconds": float(seconds.sum()),
        "slices": list(range(z)),
        "slab": slab,
        "workers": int(getattr(executor, "workers", 1)),
        "normalizer": {"low": normalizer.low, "high": normalizer.high},
        "idk_thresholds": list(job.idk_thresholds) if job.idk_thresholds else None,
    }
    if f2_check is not None:
        report["f2_check"] = f2_check
    return StreamSummary(report, done_slabs=list(ks))


def _with_lam_for_tvd(job: StreamJob, tvd: float, executor: Any, ks: list[int], counter: _Counter) -> StreamJob:
    """``job`` with the λ whose routing of the whole stack moves ``tvd`` of the patches off
    the reference routing (a pass over every slab for the policy's switch points)."""
    from .routing import lam_for_tvd

    s1: list[np.ndarray] = []  # per slab, in order (map keeps the order of ks)
    s2: list[np.ndarray] = []
    for a, b in executor.map(slab_switch_points, job, ks):
        s1.append(a)
        s2.append(b)
        counter.add(len(a))
    return replace(job, lam=float(lam_for_tvd(np.concatenate(s1), np.concatenate(s2), tvd)))


def _with_idk_thresholds(job: StreamJob, executor: Any, ks: list[int], counter: _Counter) -> StreamJob:
    """``job`` with the IDK cascade's entropy thresholds, each the mean entropy of the
    patches that reach its model (two passes over every slab: f0's, then f1's above the first)."""
    e0 = np.concatenate(list(_progressing(executor.map(slab_patch_entropy, job, ks), counter)))
    a0 = float(np.mean(e0))
    up = e0 >= a0
    e1 = np.concatenate(list(_progressing(executor.map(slab_patch_entropy, job, ks, a0), counter)))[up]
    a1 = float(np.mean(e1)) if e1.size else float("inf")
    return replace(job, idk_thresholds=(a0, a1))


def _check_against_f2(job: StreamJob, executor: Any, planes: list[int], counter: _Counter) -> dict:
    """How many pixels of ``planes`` the run labels as f2 on every patch does, and the mean
    IoU with f2's labels as the truth (see ``f2_check_planes``)."""
    from .metrics import mean_iou, pixel_agreement

    start = time.perf_counter()
    confusion = np.zeros((3, 3), dtype=np.int64)
    for cm in executor.map(plane_f2_check, job, planes):
        confusion += cm
        counter.add(1)
    return {"planes": planes, "agreement": pixel_agreement(confusion), "mean_iou": mean_iou(confusion),
            "seconds": time.perf_counter() - start}


def _progressing(results: Iterable[np.ndarray], counter: _Counter) -> Iterator[np.ndarray]:
    for r in results:
        counter.add(len(r))
        yield r
