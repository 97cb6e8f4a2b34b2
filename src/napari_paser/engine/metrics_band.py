"""How much the segmentation's cost changes the metrics: a band of segmentations.

The same scan is segmented at several cost weights λ (one :class:`PaserSegmenter`, so
re-routing reuses its caches: only patches no earlier λ needed are run), with single
models everywhere (by default f2, the most expensive segmentation PaSeR can give) and,
on request, as single Monte-Carlo dropout samples of f0 (one f0 decoder pass with its own dropout
mask, seeds 1..N). Each segmentation's metrics are computed at once and its labels
dropped, so memory holds one label volume at a time besides the segmenter's caches.

Every segmentation agrees with the others on most voxels and the band's members share
the networks' biases, so the spread of their volume fractions understates how uncertain
a fraction is. A :class:`PhaseEnvelope` therefore also records, voxel by voxel, which
phases the deterministic members (PaSeR at every λ, single models) give: a phase's
fraction lies between the voxels all of them give it and the voxels any of them gives
it. Single-pass dropout samples stay out of it: they differ voxel by voxel with f0's
noise, which would bound that noise rather than the segmentation's choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generator, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..errors import PaserInputError
from .memory import physical_memory
from .microstructure import MicrostructureMetrics, metrics_steps
from .steps import relay_steps

if TYPE_CHECKING:  # torch only once a band is computed
    from .bundle import Bundle

__all__ = [
    "DEFAULT_BAND_LAMS",
    "DEFAULT_BAND_METHODS",
    "BandMember",
    "PhaseEnvelope",
    "band_memory",
    "check_band_fits",
    "parse_lams",
    "parse_methods",
    "band_steps",
]

DEFAULT_BAND_LAMS = (0.0, None, 0.1, 0.3, 1.0)
"""λ of the default band; None is the bundle's default λ (λ = 1 is f0 alone, λ = 0 the most expensive routing)."""

DEFAULT_BAND_METHODS = ("f2",)
"""Single models run on every patch in the default band."""

BAND_BYTES_PER_VOXEL = 30
"""Peak memory of a band per voxel besides its scan: the labels and the envelope, the
segmenter's caches and a second segmenter while the f0 MC samples run. Measured with the
default band on 1024² uint16 scans (``benchmarks/bench_memory.py band``): the peak grew by
31.2 bytes per voxel from 8 to 16 planes, 2 of them the scan's."""


def band_memory(shape: Sequence[int], scan_dtype: np.dtype | type = np.uint16) -> int:
    """Estimated peak bytes of a band over a scan of ``shape`` and ``scan_dtype``."""
    return int(np.prod(shape)) * (BAND_BYTES_PER_VOXEL + np.dtype(scan_dtype).itemsize)


def check_band_fits(shape: Sequence[int], scan_dtype: np.dtype | type = np.uint16) -> None:
    """Refuse a band that would take more than three quarters of the RAM.

    Raises
    ------
    PaserInputError
        Saying how much it would need and what to do instead.
    """
    ram = physical_memory()
    need = band_memory(shape, scan_dtype)
    if ram is not None and need > ram * 3 // 4:
        raise PaserInputError(
            f"a band over {'x'.join(str(int(n)) for n in shape)} voxels would hold about {need / 2**30:.1f} GiB in memory, "
            f"more than three quarters of this machine's {ram / 2**30:.1f} GiB: compute the band on a crop of the scan "
            "and of its labels")


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
    """Per voxel, the phases every added segmentation gives it and the phases any gives it.

    Two uint8 bit fields of the volume's shape (bit ``c`` is phase ``c``), updated plane
    by plane, so adding a segmentation needs no full-size temporary.

    Examples
    --------
    >>> env = PhaseEnvelope()
    >>> env.add(np.array([[0, 0, 2, 2]]))
    >>> env.add(np.array([[0, 2, 2, 2]]))
    >>> env.fraction_ranges()["volume_fraction.pore"]
    (0.25, 0.5)
    """

    def __init__(self) -> None:
        self._every: np.ndarray | None = None
        self._any: np.ndarray | None = None
        self._ndim = 3
        self.count = 0

    def add(self, labels: np.ndarray) -> None:
        """Add one segmentation (labels in {0, 1, 2}, the shape of the first one added)."""
        lab = np.asarray(labels)
        ndim = lab.ndim
        lab = lab[None] if lab.ndim == 2 else lab
        if self._every is None:
            self._ndim = ndim
            self._every = np.full(lab.shape, 0b111, dtype=np.uint8)
            self._any = np.zeros(lab.shape, dtype=np.uint8)
        elif lab.shape != self._every.shape:
            raise PaserInputError(f"a segmentation of shape {lab.shape} cannot join an envelope of shape {self._every.shape}")
        for z in range(lab.shape[0]):
            bits = np.left_shift(np.uint8(1), lab[z].astype(np.uint8, copy=False))
            self._every[z] &= bits
            self._any[z] |= bits
        self.count += 1

    def _counts(self, phase: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Voxels of ``phase`` in every / in any segmentation, per plane perpendicular to
        ``axis`` of the stored 3-D volume (plane by plane: no full-size temporary)."""
        if self._every is None:
            raise RuntimeError("the envelope is empty: add a segmentation first")
        keep = None if axis == 0 else 2 - axis  # axis 1 (rows): sum each plane's columns
        lo = np.array([((plane >> phase) & 1).sum(axis=keep) for plane in self._every])
        hi = np.array([((plane >> phase) & 1).sum(axis=keep) for plane in self._any])
        return (lo, hi) if axis == 0 else (lo.sum(axis=0), hi.sum(axis=0))

    def fraction_ranges(self) -> dict[str, tuple[float, float]]:
        """``{"volume_fraction.<phase>": (lowest, highest)}`` over the voxel-wise envelope."""
        from .. import CLASS_NAMES

        n = self._every.size if self._every is not None else 0
        out = {}
        for c, name in enumerate(CLASS_NAMES):
            lo, hi = self._counts(c, 0)
            out[f"volume_fraction.{name}"] = (float(lo.sum()) / n, float(hi.sum()) / n)
        return out

    def profile_range(self, axis: int, phase: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest fraction of ``phase`` (default pore) in every plane
        perpendicular to ``axis`` of the labels as added (0 or 1 for a 2-D image)."""
        axis = int(axis) + (3 - self._ndim)
        lo, hi = self._counts(phase, axis)
        per_plane = self._every.size / self._every.shape[axis]
        return lo / per_plane, hi / per_plane


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


def band_steps(
    image: ArrayLike,
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
    shape: tuple[int, ...] | None = None,
    envelope: PhaseEnvelope | None = None,
    **metric_kwargs,
) -> Generator[tuple[str, int, int], None, list[BandMember]]:
    """Segment ``image`` at every λ in ``lams`` and as ``mc_samples`` f0 dropout samples;
    compute the metrics of each.

    Parameters
    ----------
    image : array (Z, Y, X) or (Y, X)
        The grey scan.
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
    segment_device, batch_size
        Passed to :class:`PaserSegmenter` (``device`` in ``metric_kwargs`` is TauFactor's).
    shape : tuple or None
        Shape the labels must have (the main segmentation's); checked before any work.
    envelope : PhaseEnvelope or None
        If given, the labels of every PaSeR and single-model member are added to it.
    **metric_kwargs
        Passed to :func:`metrics_steps` (voxel_size, cb_diffusivity, tortuosity, ...).

    Yields
    ------
    (stage, done, total)
        Text of the current step and the number of band members finished.

    Returns
    -------
    list of BandMember
    """
    from .pipeline import DEFAULT_BATCH_SIZE, PaserSegmenter

    check_band_fits(np.shape(image), getattr(image, "dtype", np.float32))
    img = np.asarray(image)
    if shape is not None and tuple(img.shape) != tuple(shape):
        raise PaserInputError(f"the band image has shape {img.shape} but the labels have shape {tuple(shape)}")
    if mc_samples < 0:
        raise PaserInputError(f"MC samples must be >= 0, got {mc_samples}")
    total = len(lams) + len(methods) + mc_samples
    if total == 0:
        raise PaserInputError("the band is empty: give λ values, methods or MC samples")
    members: list[BandMember] = []
    bs = batch_size or DEFAULT_BATCH_SIZE
    runs: list[tuple[str, float | None, int, int | None, str]] = []
    for lam in lams:
        runs.append(("paser", lam, seed, None, ""))
    for method in methods:
        runs.append((method, None, seed, None, f"{method} everywhere"))
    for k in range(mc_samples):
        runs.append(("f0", None, seed + 1 + k, 1, f"f0 MC sample {k + 1}"))
    seg = None
    for method, lam, s, passes, name in runs:
        if passes is None:  # PaSeR and single models share one segmenter and its caches
            if seg is None:
                seg = PaserSegmenter(bundle, mc_passes=mc_passes, seed=s, device=segment_device, batch_size=bs)
                seg.set_volume(img)
            this = seg
        if method == "paser":
            lam_value = bundle.default_lam if lam is None else lam
            name = f"paser λ={lam_value:.4g}" + (" (default)" if lam is None else "")
        elif passes is None:
            lam_value = None
        else:
            this = PaserSegmenter(bundle, mc_passes=passes, seed=s, device=segment_device, batch_size=bs)
            this.set_volume(img)
            lam_value = None
        run = this.run(lam=lam_value if method == "paser" else None, method=method)

        def segmenting(progress: tuple[int, int]) -> tuple[str, int, int]:
            done, todo = progress
            return f"{name}: segmenting {done}/{todo}", len(members), total

        result = yield from relay_steps(run, segmenting)
        labels = result.labels[0] if img.ndim == 2 else result.labels
        if envelope is not None and passes is None:
            envelope.add(labels)
        # A cheap segmentation may miss a phase entirely: its metrics are still defined.
        gen = metrics_steps(labels, axis, require_all_phases=False, **metric_kwargs)
        metrics = yield from relay_steps(gen, lambda step: (f"{name}: {step.stage}", len(members), total))
        members.append(BandMember(name, lam_value, float(result.gflops_total), metrics))
        del labels, result
    yield "band done", total, total
    return members
