"""How much the segmentation's cost changes the metrics: a band of segmentations.

The same scan is segmented at several cost weights λ (one :class:`PaserSegmenter`, so
re-routing reuses its caches: only patches no earlier λ needed are run), with single
models everywhere (by default f2, the most expensive segmentation PaSeR can give) and,
on request, as single Monte-Carlo dropout samples of f0 (one f0 decoder pass with its own dropout
mask, seeds 1..N). Each segmentation's metrics are computed at once and its labels
dropped, so memory holds one label volume at a time besides the segmenter's caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Sequence

import numpy as np

from ..errors import PaserInputError
from .microstructure import MicrostructureMetrics, metrics_steps

__all__ = ["DEFAULT_BAND_LAMS", "DEFAULT_BAND_METHODS", "BandMember", "parse_lams", "parse_methods", "band_steps"]

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
    image,
    bundle,
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
        try:
            while True:
                d, t = next(run)
                yield f"{name}: segmenting {d}/{t}", len(members), total
        except StopIteration as stop:
            result = stop.value
        finally:
            run.close()
        labels = result.labels[0] if img.ndim == 2 else result.labels
        # A cheap segmentation may miss a phase entirely: its metrics are still defined.
        gen = metrics_steps(labels, axis, require_all_phases=False, **metric_kwargs)
        try:
            while True:
                step = next(gen)
                yield f"{name}: {step.stage}", len(members), total
        except StopIteration as stop:
            metrics = stop.value
        finally:
            gen.close()  # also when the caller cancels: stops a TauFactor solve at once
        members.append(BandMember(name, lam_value, float(result.gflops_total), metrics))
        del labels, result
    yield "band done", total, total
    return members
