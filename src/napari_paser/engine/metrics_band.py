"""How much the segmentation's cost changes the metrics: a band of segmentations.

The same scan is segmented at several cost weights λ (one :class:`PaserSegmenter`, so
re-routing reuses its caches: only patches no earlier λ needed are run), with single
models everywhere (by default f2, the most expensive segmentation PaSeR can give) and,
on request, as single Monte-Carlo dropout samples of f0 (one f0 decoder pass with its own dropout
mask, seeds 1..N); then every segmentation's metrics are computed.

The scan is read and segmented a slab of planes at a time, as ``segment`` streams a
stack (intensity statistics from the whole stack, neighbouring planes as context, so
the labels are those of the stack in memory); each segmentation's slabs go to a Zarr
array in a temporary folder (``TMPDIR``) that is deleted at the end, and its metrics
read that array a slab at a time. Memory therefore depends on the slice size, not on the
number of planes. The slabs are independent tasks (:func:`band_slab` of a picklable
:class:`BandJob`), and so are the members' metrics (:func:`band_member_metrics`), so a
dask.distributed cluster runs them as it runs ``segment``'s slabs
(:class:`~napari_paser.engine.streaming.DaskExecutor`): its workers load the bundle from
its folder and share the temporary folder.

Every segmentation agrees with the others on most voxels and the band's members share
the networks' biases, so the spread of their volume fractions understates how uncertain
a fraction is. A :class:`PhaseEnvelope` therefore also records, voxel by voxel, which
phases the deterministic members (PaSeR at every λ, single models) give: a phase's
fraction lies between the voxels all of them give it and the voxels any of them gives
it. Single-pass dropout samples stay out of it: they differ voxel by voxel with f0's
noise, which would bound that noise rather than the segmentation's choices.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..errors import PaserInputError
from ..io_sources import Volume, as_volume
from .microstructure import MetricsStep, MicrostructureMetrics, metrics_steps, phase_label_volume, validate_phase_labels
from .steps import relay_steps
from .streaming import SlabTasks, thread_cached

if TYPE_CHECKING:  # torch only once a band is computed
    from .bundle import Bundle

__all__ = [
    "DEFAULT_BAND_LAMS",
    "DEFAULT_BAND_METHODS",
    "BandJob",
    "BandMember",
    "BandSlab",
    "PhaseEnvelope",
    "band_member_metrics",
    "band_slab",
    "parse_lams",
    "parse_methods",
    "band_steps",
]

DEFAULT_BAND_LAMS = (0.0, None, 0.1, 0.3, 1.0)
"""λ of the default band; None is the bundle's default λ (λ = 1 is f0 alone, λ = 0 the most expensive routing)."""

DEFAULT_BAND_METHODS = ("f2",)
"""Single models run on every patch in the default band."""

@dataclass(frozen=True)
class BandMember:
    """One segmentation of the band and its metrics.

    Attributes
    ----------
    name : str
        e.g. ``"paser λ=0.025"`` or ``"f0 MC sample 2"``.
    lam : float or None
    gflops : float
        Cost of the segmentation (GFLOPs, the engine's count).
    metrics : MicrostructureMetrics
    """

    name: str
    lam: float | None
    gflops: float
    metrics: MicrostructureMetrics


class PhaseEnvelope:
    """Per voxel, the phases every segmentation gives it and the phases any gives it,
    kept as counts along each axis (so a slab at a time, with no full-size array).

    Examples
    --------
    >>> env = PhaseEnvelope()
    >>> env.add_slab(0, [np.array([[[0, 0, 2, 2]]]), np.array([[[0, 2, 2, 2]]])])
    >>> env.fraction_ranges()["volume_fraction.pore"]
    (0.25, 0.5)
    """

    def __init__(self) -> None:
        self._shape: tuple[int, int, int] | None = None
        self._ndim = 3
        self._every: list[np.ndarray] = []  # per axis: (3 phases, positions) voxel counts
        self._any: list[np.ndarray] = []
        self.count = 0

    def start(self, shape: Sequence[int], count: int) -> None:
        """Prepare for ``count`` segmentations of ``shape`` ((Z, Y, X) or (Y, X)), added
        slab by slab with :meth:`add_slab`."""
        self._ndim = len(shape)
        z, y, x = (int(n) for n in (1,) * (3 - len(shape)) + tuple(shape))
        self._shape = (z, y, x)
        self._every = [np.zeros((3, n), np.int64) for n in (z, y, x)]
        self._any = [np.zeros((3, n), np.int64) for n in (z, y, x)]
        self.count = int(count)

    def add_slab(self, z0: int, segmentations: Sequence[np.ndarray]) -> None:
        """Planes ``z0 ...`` of every segmentation at once (labels in {0, 1, 2})."""
        slabs = [np.asarray(s) for s in segmentations]
        slabs = [s[None] if s.ndim == 2 else s for s in slabs]
        if self._shape is None:
            self.start(slabs[0].shape, len(slabs))
        if len(slabs) != self.count:
            raise PaserInputError(f"the envelope holds {self.count} segmentations, got {len(slabs)}")
        assert self._shape is not None
        for z in range(slabs[0].shape[0]):
            every = np.full(self._shape[1:], 0b111, dtype=np.uint8)
            any_ = np.zeros(self._shape[1:], dtype=np.uint8)
            for s in slabs:
                if s.shape[1:] != self._shape[1:]:
                    raise PaserInputError(f"a segmentation of planes {s.shape[1:]} cannot join an envelope of {self._shape[1:]}")
                bits = np.left_shift(np.uint8(1), s[z].astype(np.uint8, copy=False))
                every &= bits
                any_ |= bits
            for phase in range(3):
                for bitfield, counts in ((every, self._every), (any_, self._any)):
                    has = (bitfield >> phase) & 1
                    counts[0][phase, z0 + z] += int(has.sum())
                    counts[1][phase] += has.sum(axis=1, dtype=np.int64)
                    counts[2][phase] += has.sum(axis=0, dtype=np.int64)

    def merge(self, other: "PhaseEnvelope") -> None:
        """Add the counts of ``other``, an envelope of the same shape and count filled with
        other planes (a slab task's part of the band)."""
        if other._shape != self._shape or other.count != self.count:
            raise PaserInputError(f"cannot merge an envelope of {other._shape} x {other.count} into one of {self._shape} x {self.count}")
        for mine, theirs in ((self._every, other._every), (self._any, other._any)):
            for counts, more in zip(mine, theirs):
                counts += more

    def _size(self) -> int:
        if self._shape is None:
            raise RuntimeError("the envelope is empty: add segmentations first")
        return int(np.prod(self._shape))

    def fraction_ranges(self) -> dict[str, tuple[float, float]]:
        """``{"volume_fraction.<phase>": (lowest, highest)}`` over the voxel-wise envelope."""
        from .. import CLASS_NAMES

        n = self._size()
        return {f"volume_fraction.{name}": (float(self._every[0][c].sum()) / n, float(self._any[0][c].sum()) / n)
                for c, name in enumerate(CLASS_NAMES)}

    def profile_range(self, axis: int, phase: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest fraction of ``phase`` (default pore) in every plane
        perpendicular to ``axis`` of the labels as added (0 or 1 for a 2-D image)."""
        axis = int(axis) + (3 - self._ndim)
        per_plane = self._size() / self._every[axis].shape[1]
        return self._every[axis][phase] / per_plane, self._any[axis][phase] / per_plane


def parse_lams(text: str) -> tuple[float | None, ...]:
    """``"0,default,0.3"`` -> ``(0.0, None, 0.3)``; values must lie in [0, 1]."""
    out: list[float | None] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if part.lower() == "default":
            out.append(None)
            continue
        try:
            v = float(part)
        except ValueError:
            raise PaserInputError(f"band λ values must be numbers in [0, 1] or 'default', got {part!r}") from None
        if not 0.0 <= v <= 1.0:
            raise PaserInputError(f"band λ values must be in [0, 1], got {v}")
        out.append(v)
    return tuple(out)


def parse_methods(text: str) -> tuple[str, ...]:
    """``"f1,f2"`` -> ``("f1", "f2")``; each must be f0, f1 or f2 ("" for none)."""
    out = tuple(p.strip() for p in str(text).split(",") if p.strip())
    bad = [m for m in out if m not in ("f0", "f1", "f2")]
    if bad:
        raise PaserInputError(f"band methods must be f0, f1 or f2, got {', '.join(bad)}")
    return out


def _metrics_stage(step: MetricsStep, name: str, done: int, units: int) -> tuple[str, int, int]:
    return f"{name}: {step.stage}", done, units


MemberRun = tuple[str, str, "float | None", "int | None", int]
"""(name, method, λ, MC passes or None for the shared segmenter, seed) of one member."""


def _member_runs(bundle: Bundle, lams, methods, mc_samples: int, seed: int) -> list[MemberRun]:
    """(name, method, λ, MC passes or None for the shared segmenter, seed) of every member."""
    runs: list[MemberRun] = []
    for lam in lams:
        value = bundle.default_lam if lam is None else float(lam)
        runs.append((f"paser λ={value:.4g}" + (" (default)" if lam is None else ""), "paser", value, None, seed))
    for method in methods:
        runs.append((f"{method} everywhere", method, None, None, seed))
    for k in range(mc_samples):
        runs.append((f"f0 MC sample {k + 1}", "f0", None, 1, seed + 1 + k))
    return runs


@dataclass
class BandJob(SlabTasks):
    """What every slab task of a band needs: the scan, the members, where their labels go.

    Picklable for a dask cluster when ``bundle`` is None: the workers then load the
    bundle from ``bundle_path`` (once per worker thread).

    Attributes
    ----------
    volume : Volume
        The grey scan (every worker must be able to open it).
    runs : tuple
        (name, method, λ, MC passes or None, seed) of every member, in report order.
    normalizer : Normalizer
        The intensity statistics of the whole scan.
    slab : int
        Planes per task.
    stores : tuple of str
        Zarr array of every member's labels (the same shape as the scan's input).
    labels : Volume or None
        The main segmentation, joining the envelope.
    envelope : bool
        Count the envelope of the labels and the deterministic members.
    bundle_path : str or None
        Bundle folder the workers load.
    mc_passes, seed, batch_size, device, precision
        Engine settings of the λ and single-model members (precision: of their f1/f2 patches).
    blend_borders : bool
        Blend the λ and single-model members' patches across their borders, as
        ``segment`` does by default (the MC samples run f0 alone: no patches).
    bundle : Bundle or None
        A bundle already loaded (runs in this process).
    """

    volume: Volume
    runs: tuple[MemberRun, ...]
    normalizer: Any
    slab: int
    stores: tuple[str, ...]
    labels: Volume | None = None
    envelope: bool = False
    bundle_path: str | None = None
    mc_passes: int | None = None
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"
    precision: str = "fp32"
    blend_borders: bool = False
    bundle: Any = field(default=None, repr=False)
    _segmenters: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_segmenters"] = {}  # a worker builds its own
        return state

    @property
    def deterministic(self) -> list[int]:
        """Members of the shared segmenter (PaSeR at every λ and single models)."""
        return [i for i, run in enumerate(self.runs) if run[3] is None]

    def release(self) -> None:
        """Drop the segmenters of a run in this process (their caches hold the last slab)."""
        self._segmenters.clear()


@dataclass
class BandSlab:
    """What one slab task hands back: every member's GFLOPs, and the envelope's counts."""

    k: int
    gflops: np.ndarray
    envelope: PhaseEnvelope | None


def _band_segmenters(job: BandJob) -> dict:
    """``{None: the shared segmenter, i: member i's own}``, built once per job here or per
    worker thread on a cluster (a segmenter's caches are not thread-safe)."""
    if job.bundle is None:
        key = (os.path.abspath(str(job.bundle_path)), job.runs, job.mc_passes, job.batch_size, job.device, job.precision,
               job.blend_borders)
        return thread_cached("band", key, lambda: _new_segmenters(job))
    if not job._segmenters:
        job._segmenters.update(_new_segmenters(job))
    return job._segmenters


def _new_segmenters(job: BandJob) -> dict:
    from .bundle import load_bundle
    from .pipeline import PaserSegmenter

    # No memory.bound_heap here, unlike segment: with a fixed mmap threshold the band
    # peaked lower (1021.8 against 1232.6 MB, 8 planes of 1024²) but took 40 % longer.
    bundle = job.bundle if job.bundle is not None else load_bundle(str(job.bundle_path), device=job.device)
    # The λ and single-model members share one segmenter (and its caches); each MC
    # sample has its own (one pass, its own seed).
    def segmenter(passes: int | None, seed: int, blend: bool = False) -> PaserSegmenter:
        return PaserSegmenter(bundle, mc_passes=passes, seed=seed, device=job.device, batch_size=job.batch_size,
                              precision=job.precision, blend_borders=blend)

    out: dict[int | None, Any] = {None: segmenter(job.mc_passes, job.seed, job.blend_borders)}
    for i, (_, _, _, passes, s) in enumerate(job.runs):
        if passes is not None:
            out[i] = segmenter(passes, s)
    return out


def band_slab(job: BandJob, k: int) -> BandSlab:
    """Segment slab ``k`` of the scan as every member, write the labels into the
    members' stores and count the slab's envelope."""
    import zarr

    from .memory import release_heap
    from .pipeline import drain, get_method, read_with_context

    segmenters = _band_segmenters(job)
    shared = segmenters[None]
    z0, z1 = job.bounds(k)
    planes, context = read_with_context(job.volume.read, job.volume.shape[0], z0, z1, shared.context_planes)
    deterministic = job.deterministic
    gflops = np.zeros(len(job.runs))
    slab_labels: dict[int, np.ndarray] = {}
    for i, (_, method, lam, passes, _) in enumerate(job.runs):
        seg = shared if passes is None else segmenters[i]
        if seg is not shared or i == deterministic[0]:  # the shared one keeps its caches across members
            seg.set_volume(planes, normalizer=job.normalizer, first_slice=z0, context=context)
        result = drain(seg.run(lam=lam, method=get_method(method)))
        gflops[i] = float(result.gflops_total)
        lab = np.asarray(result.labels, dtype=np.uint8)
        zarr.open_array(job.stores[i], mode="r+")[z0:z1] = lab if job.volume.input_ndim == 3 else lab[0]
        if passes is None:
            slab_labels[i] = lab
        del result
    envelope = None
    if job.envelope:
        parts = [slab_labels[i] for i in deterministic]
        if job.labels is not None:
            parts.insert(0, validate_phase_labels(job.labels.read(z0, z1), require_all=False))
        envelope = PhaseEnvelope()
        envelope.start(job.volume.input_shape, len(parts))
        envelope.add_slab(z0, parts)
    del slab_labels, planes, context
    release_heap()
    return BandSlab(int(k), gflops, envelope)


def band_member_metrics(job: BandJob, i: int, axis: int, metric_kwargs: dict) -> tuple[int, MicrostructureMetrics]:
    """Metrics of member ``i``, read from its store a slab at a time (τ solved here, in
    columns that fit this process: a dask worker's memory limit, where it has one)."""
    import zarr

    from .steps import run_steps

    # A cheap segmentation may miss a phase entirely: its metrics are still defined.
    labels = as_volume(zarr.open_array(job.stores[i], mode="r"))
    return i, run_steps(metrics_steps(labels, axis, require_all_phases=False, **metric_kwargs))


def band_steps(
    image: ArrayLike | Volume,
    bundle: Bundle,
    axis: int,
    *,
    lams: Sequence[float | None] = DEFAULT_BAND_LAMS,
    methods: Sequence[str] = DEFAULT_BAND_METHODS,
    mc_samples: int = 0,
    mc_passes: int | None = None,
    seed: int = 0,
    segment_device: str = "cpu",
    batch_size: int | None = None,
    segment_precision: str = "fp32",
    shape: tuple[int, ...] | None = None,
    labels: ArrayLike | Volume | None = None,
    envelope: PhaseEnvelope | None = None,
    slab: int | None = None,
    executor: Any = None,
    blend_borders: bool = False,
    **metric_kwargs,
) -> Generator[tuple[str, int, int], None, list[BandMember]]:
    """Segment ``image`` at every λ in ``lams``, with ``methods`` everywhere and as
    ``mc_samples`` f0 dropout samples, a slab of planes at a time; compute the metrics of
    each.

    Parameters
    ----------
    image : array or Volume (Z, Y, X) or (Y, X)
        The grey scan (a Volume or a Zarr / dask array is read a slab at a time).
    bundle : Bundle
    axis : int
    lams : sequence of float or None
        None is the bundle's default λ.
    methods : sequence of str
        Single models (f0, f1, f2) run on every patch.
    mc_samples : int
        Number of single-pass MC-dropout samples of f0.
    mc_passes : int or None
        MC passes of f0's analysis for the λ / single-model segmentations (None: the bundle's).
    seed : int
        Dropout seed of the λ segmentations; MC samples use ``seed + 1 ... seed + N``.
    segment_device, batch_size, segment_precision
        Passed to :class:`PaserSegmenter` as ``device``, ``batch_size`` and ``precision``
        (``device`` in ``metric_kwargs`` is TauFactor's).
    shape : tuple or None
        Shape the labels must have (the main segmentation's); checked before any work.
    labels : array or Volume, optional
        The main segmentation, added to ``envelope`` with the members (checked values).
    envelope : PhaseEnvelope or None
        If given, filled with ``labels`` and every PaSeR and single-model member.
    slab : int or None
        Planes per slab (default: about 128 MB of engine state, as ``segment``).
    executor : LocalExecutor, DaskExecutor or None
        None or a LocalExecutor: everything runs here (a LocalExecutor runs τ's columns
        as tasks). A DaskExecutor runs the slabs (:func:`band_slab`) and then every
        member's metrics (:func:`band_member_metrics`) as tasks on its cluster: the
        workers load the bundle from ``bundle.path`` and read and write the temporary
        folder, so both must be on a file system they share.
    blend_borders : bool
        Segment the PaSeR and single-model members with their patches blended across
        their borders (as ``segment`` does by default): the band of labels made that way.
    **metric_kwargs
        Passed to :func:`metrics_steps` (voxel_size, cb_diffusivity, tortuosity, ...).

    Yields
    ------
    (stage, done, total)
        Text of the current step, and the units of work done out of ``total``: one per
        slab segmented (every member at once, in the order they finish), then one per
        member's metrics.

    Returns
    -------
    list of BandMember
    """
    import tempfile

    import zarr

    from .bundle import check_blendable
    from .memory import release_heap
    from .pipeline import DEFAULT_BATCH_SIZE
    from .streaming import LocalExecutor, check_volume, default_slab, fit_bundle_normalizer

    volume = as_volume(image)
    out_shape = volume.input_shape
    if shape is not None and tuple(out_shape) != tuple(shape):
        raise PaserInputError(f"the band image has shape {tuple(out_shape)} but the labels have shape {tuple(shape)}")
    if mc_samples < 0:
        raise PaserInputError(f"MC samples must be >= 0, got {mc_samples}")
    runs = _member_runs(bundle, lams, methods, mc_samples, seed)
    if not runs:
        raise PaserInputError("the band is empty: give λ values, methods or MC samples")
    here = executor is None or isinstance(executor, LocalExecutor)
    if not here and bundle.path is None:
        raise PaserInputError("a band on a dask cluster needs a bundle loaded from a folder the workers can read")
    check_volume(volume, bundle.patch_size)
    if blend_borders:  # before any work
        check_blendable(bundle)
    main_labels = phase_label_volume(labels) if labels is not None and envelope is not None else None
    total = len(runs)
    step = int(slab) if slab else default_slab(volume.shape, bundle.patch_size, blend_borders=blend_borders)
    normalizer = fit_bundle_normalizer(volume, bundle, slab=step)
    with tempfile.TemporaryDirectory(prefix="napari-paser-band-") as tmp:
        stores = tuple(f"{tmp}/member{i}.zarr" for i in range(total))
        for path in stores:
            zarr.open_array(path, mode="w", shape=tuple(out_shape), dtype="uint8",
                            chunks=(1,) * (len(out_shape) - 2) + tuple(out_shape[-2:]))
        job = BandJob(volume, tuple(runs), normalizer, step, stores, labels=main_labels, envelope=envelope is not None,
                      bundle_path=None if bundle.path is None else str(bundle.path), mc_passes=mc_passes, seed=seed,
                      batch_size=batch_size or DEFAULT_BATCH_SIZE, device=segment_device, precision=segment_precision,
                      blend_borders=bool(blend_borders), bundle=bundle if here else None)
        slabs = job.num_slabs
        units = slabs + total  # progress: every slab segmented, then every member's metrics
        if envelope is not None:
            envelope.start(out_shape, len(job.deterministic) + (main_labels is not None))
        per_slab: dict[int, np.ndarray] = {}
        yield f"segmenting {volume.shape[0]} planes as {total} members", 0, units
        for out in (executor or LocalExecutor()).map(band_slab, job, range(slabs), ordered=False):
            per_slab[out.k] = out.gflops
            if envelope is not None and out.envelope is not None:
                envelope.merge(out.envelope)
            yield f"segmented {len(per_slab)} of {slabs} slabs", len(per_slab), units
        gflops = np.zeros(total)
        for k in range(slabs):  # in slab order: the same sums whatever finished first
            gflops += per_slab[k]
        job.release()
        release_heap()
        found: dict[int, MicrostructureMetrics] = {}
        if here:  # step by step: each member's stages show, and closing the generator stops between them
            for i, (name, *_) in enumerate(runs):
                gen = metrics_steps(as_volume(zarr.open_array(stores[i], mode="r")), axis, require_all_phases=False,
                                    executor=executor, **metric_kwargs)
                found[i] = yield from relay_steps(gen, functools.partial(_metrics_stage, name=name, done=slabs + i, units=units))
        else:  # every member at once, one task each
            for i, metrics in executor.map(band_member_metrics, job, range(total), axis, metric_kwargs, ordered=False):
                found[i] = metrics
                yield f"metrics of {len(found)} of {total} members", slabs + len(found), units
        members = [BandMember(name, lam if method == "paser" else None, float(gflops[i]), found[i])
                   for i, (name, method, lam, _, _) in enumerate(runs)]
    yield "band done", units, units
    return members
