"""PaSeR on a lazily read stack with a bounded cache: the napari widget's big-stack engine.

:class:`PaserSegmenter` keeps every slice's analysis and patch outputs, about 13 bytes per
voxel once a stack is segmented (18 with a bundle that fuses f0 into f1 / f2). :class:`WindowedSegmenter` keeps only what is tiny per
slice (the two switch points of every patch, so routing and λ-for-TVD work on every
analysed slice) and the full engine state of the few most recently used slices, so
re-routing the visible slice for a new λ runs only the patches it has not run yet.
Other slices are analysed again when composed anew (deterministic: same labels).

It answers the calls the widget's jobs make (``analyse``, ``entropy``, ``routing``,
``compose``, ``is_cached``, ``lam_for_tvd``, ``result``) like :class:`PaserSegmenter`;
``result`` returns a :class:`StreamResult` without label volumes (they are on disk).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generator, Iterable

import numpy as np
import torch

from ..errors import PaserInputError
from ..io_sources import ArrayVolume, Volume
from .bundle import Bundle, bundle_record
from .flops import CostModel
from .methods import charge, get_method
from .patches import grid_shape
from .pipeline import DEFAULT_BATCH_SIZE, DEFAULT_PRECISION, PaserSegmenter, read_with_context, run_summary
from .routing import MODEL_NAMES, SlicewiseRouting, route_from_switch_points, switch_points, tvd_at
from .streaming import check_volume, fit_bundle_normalizer

__all__ = ["WindowedSegmenter", "StreamResult", "DEFAULT_WINDOW"]

DEFAULT_WINDOW = 4
"""Slices whose full engine state is kept (the visible one and the last few run)."""


@dataclass
class StreamResult:
    """What a run over a stack cost, without its label volume (see ``SegmentationResult``)."""

    routing: np.ndarray
    patch_size: tuple[int, int]
    lam: float | None
    tvd: float | None
    method: str
    gflops_total: float
    gflops_per_slice: np.ndarray
    gflops_f2_everywhere: float
    route_fraction: dict[str, float]
    bundle: dict
    tvd_target: float | None = None

    def report(self) -> dict:
        """JSON-serialisable summary."""
        return run_summary(self, [int(self.routing.shape[0])])


class WindowedSegmenter(SlicewiseRouting):
    """PaSeR (``method="paser"``) over a lazily read stack, a few slices' state at a time.

    Parameters
    ----------
    bundle : Bundle
    volume : Volume or array_like
        The stack; anything with ``shape``/``dtype``/slicing is wrapped in an
        :class:`~napari_paser.io_sources.ArrayVolume` (dask and zarr arrays stay lazy).
    mc_passes, seed, device, batch_size, precision, blend_borders
        As :class:`PaserSegmenter`.
    window : int
        Slices whose engine state is kept.

    Raises
    ------
    PaserInputError
        If the stack is unusable (read once, slab by slab, for its intensity statistics).
    """

    def __init__(
        self,
        bundle: Bundle,
        volume,
        mc_passes: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        window: int = DEFAULT_WINDOW,
        precision: str = DEFAULT_PRECISION,
        blend_borders: bool = False,
    ):
        self.bundle = bundle
        self.volume = volume if isinstance(volume, Volume) else ArrayVolume(volume)
        self.patch_size: tuple[int, int] = tuple(int(s) for s in bundle.patch_size)  # type: ignore[assignment]
        check_volume(self.volume, self.patch_size)
        self._normalizer = fit_bundle_normalizer(self.volume, bundle)
        self.blend_borders = bool(blend_borders)
        self._make = lambda: PaserSegmenter(bundle, mc_passes=mc_passes, seed=seed, device=device, batch_size=batch_size,
                                            precision=precision, blend_borders=blend_borders)
        probe = self._make()
        self.mc_passes, self.mc_estimate = probe.mc_passes, probe.mc_estimate
        self.shape: tuple[int, int, int] = tuple(int(s) for s in self.volume.shape)  # type: ignore[assignment]
        self.input_ndim = self.volume.input_ndim
        self.grid: tuple[int, int] = grid_shape(self.shape[1:], self.patch_size)
        padded = (self.grid[0] * self.patch_size[0], self.grid[1] * self.patch_size[1])
        self.cost_model = CostModel.measure(bundle, padded, self.mc_passes, self.mc_estimate)
        self._costs = bundle.costs().double().numpy()
        z = self.shape[0]
        self._analysed = np.zeros(z, dtype=bool)
        self._s1 = np.zeros((z, *self.grid))
        self._s2 = np.zeros((z, *self.grid))
        self.window = max(1, int(window))
        self._states: OrderedDict[int, PaserSegmenter] = OrderedDict()

    @property
    def num_slices(self) -> int:
        return self.shape[0]

    def _check_slice(self, z: int) -> int:
        z = int(z)
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} out of range for a stack of {self.shape[0]} slices")
        return z

    def _state(self, z: int) -> PaserSegmenter:
        """Engine state of slice ``z`` (built from its plane; least recently used dropped)."""
        z = self._check_slice(z)
        if z in self._states:
            self._states.move_to_end(z)
            return self._states[z]
        seg = self._make()
        slab, context = read_with_context(self.volume.read, self.shape[0], z, z + 1, seg.context_planes)
        seg.set_volume(slab, normalizer=self._normalizer, first_slice=z, context=context)
        self._states[z] = seg
        while len(self._states) > self.window:
            self._states.popitem(last=False)
        return seg

    # ----------------------------------------------------------------- analysis
    def is_analysed(self, z: int) -> bool:
        return bool(self._analysed[self._check_slice(z)])

    def analyse(self, z: int) -> None:
        """f0's analysis of slice ``z``; its switch points are kept after its state goes."""
        z = self._check_slice(z)
        seg = self._state(z)
        seg.analyse(0)
        if not self._analysed[z]:
            self._s1[z], self._s2[z] = switch_points(seg.gains(0), self._costs)
            self._analysed[z] = True

    def analyse_slices(self, zs: Iterable[int]) -> Generator[int, None, None]:
        """Analyse the slices ``zs`` one at a time (each is its own engine state here, built
        from its plane); yields each once it is analysed, as
        :meth:`PaserSegmenter.analyse_slices` does."""
        for z in zs:
            self.analyse(z)
            yield z

    def entropy(self, z: int) -> np.ndarray:
        return self._state(z).entropy(0)

    # ----------------------------------------------------------------- composing
    def is_cached(self, z: int, routing: np.ndarray) -> bool:
        z = self._check_slice(z)
        return z in self._states and self._states[z].is_cached(0, routing)

    def compose(self, z: int, lam: float | None = None, routing: np.ndarray | None = None) -> np.ndarray:
        """Labels (Y, X) of slice ``z`` for ``lam`` or an explicit ``routing``."""
        z = self._check_slice(z)
        r = self.routing(lam, z) if routing is None else routing
        return self._state(z).compose(0, routing=r)

    # ----------------------------------------------------------------- totals
    def result(self, lam: float | None = None, tvd: float | None = None, method: str = "paser") -> StreamResult:
        """Routing and cost of every slice (all must be analysed), without labels."""
        if method != "paser":
            raise PaserInputError("the windowed engine runs method 'paser' only")
        if tvd is not None and lam is not None:
            raise PaserInputError("give either lam or tvd, not both")
        idx = self._analysed_slices(range(self.shape[0]))
        lam = self.lam_for_tvd(tvd) if tvd is not None else self._lam(lam)
        routing = route_from_switch_points(self._s1, self._s2, lam).astype(np.uint8)
        cm = self.cost_model
        paser = get_method("paser")
        flops = np.array([charge(cm, paser, r == 1, r == 2)[0] for r in routing], dtype=np.float64)
        counts = np.bincount(routing.reshape(-1), minlength=3)
        f2_all = len(idx) * self.grid[0] * self.grid[1] * cm.patch[2] / 1e9
        return StreamResult(
            routing=routing,
            patch_size=self.patch_size,
            lam=lam,
            tvd=tvd_at(self._s1, self._s2, lam),
            method="paser",
            gflops_total=float(flops.sum()) / 1e9,
            gflops_per_slice=flops / 1e9,
            gflops_f2_everywhere=f2_all,
            route_fraction={name: float(c) / max(int(counts.sum()), 1) for name, c in zip(MODEL_NAMES, counts)},
            bundle=bundle_record(self.bundle, fused=True, blend_borders=self.blend_borders),
            tvd_target=None if tvd is None else float(tvd),
        )
