"""PaSeR inference on a stack: analyse -> route(λ) -> compose, with caches.

``PaserSegmenter`` keeps everything that does not depend on λ:

- per slice (``analyse``): f0's MC-dropout mean softmax -> its labels and entropy map,
  and the policy's predicted gains, reduced to two switch points per patch
  (:mod:`.routing`), so re-routing for a new λ is two comparisons per patch;
- per (slice, patch, model): the patch's label map and the mean entropy of that model's
  softmax over the patch, filled on demand. Patches still missing for a request are
  gathered across slices, grouped per model and run in batches.
- with a bundle that fuses f0 into its patch models (``Bundle.fusion``): f0's MC-mean
  probabilities per analysed slice (uint8), and each f1 / f2 patch's fused labels, the
  argmax of (1 - w) p_f + w p_f0. Methods that run f0's analysis (``Method.analyse``:
  PaSeR, f0, the IDK cascade, RandPol when it keeps patches on f0) compose from the
  fused labels; f1 and f2 everywhere from the patch models' own.

Changing λ therefore only runs the patches that no earlier λ needed. Results are
deterministic: argmax routing and dropout masks seeded per slice.

Methods (``method=``) are small :class:`Method` records in :data:`METHODS`; register
more with :func:`register_method` (the baselines add theirs this way).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Sequence, TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..errors import PaserInputError
from .blending import blend_patches
from .bundle import Bundle, blend_width, bundle_record, check_blendable
from .flops import CostModel
from .fusion import fuse_f0, to_bytes
from .methods import METHODS, Method, charge, get_method, register_method  # method records (re-exported)
from .models import class_argmax, class_softmax, set_memory_format_
from .normalize import Normalizer, validate_image
from .patches import grid_shape, pad_to_patches, patch_view
from .routing import MODEL_NAMES, SlicewiseRouting, route_fraction, switch_points, tvd_at
from .side_by_side import one_torch_thread, ordered_map, share_wall, workers_for
from .steps import run_steps
from .uncertainty import entropy as softmax_entropy
from .uncertainty import mc_estimate, mc_predict, policy_features, slice_seed

if TYPE_CHECKING:
    from .windowed import StreamResult

__all__ = [
    "read_with_context",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PRECISION",
    "DEFAULT_CHANNELS_LAST",
    "Method",
    "METHODS",
    "register_method",
    "get_method",
    "SegmentationResult",
    "run_summary",
    "PaserSegmenter",
    "drain",
    "segment",
]

# Chosen by benchmarks/bench_engine.py with the trained bundle paser-synth-quick on the
# 2-core development CPU (batch of 32 patches): bf16 autocast made f1/f2 faster but its
# argmax agreed with fp32 on only 99.86 % of pixels, below the 99.9 % we require, so
# patches run in fp32; channels_last keeps 100 % agreement and was faster for f1
# (39.8 vs 56.6 ms) and f2 (226 vs 282 ms). Re-run the benchmark for a new bundle: it
# prints time and agreement of every combination.
DEFAULT_BATCH_SIZE = 32
DEFAULT_PRECISION = "fp32"
DEFAULT_CHANNELS_LAST = True

Progress = Callable[[int, int], None]


@dataclass
class _Analysis:
    """What f0's analysis of slice ``z`` gives the caches (:meth:`PaserSegmenter._analysis`)."""

    z: int
    labels: np.ndarray
    quantised: np.ndarray | None  # f0's probabilities x 255, if the segmenter keeps them
    entropy: np.ndarray
    gains: np.ndarray
    seconds_f0: float
    seconds_policy: float


@dataclass
class _Patches:
    """What a patch model's batch gives the caches (:meth:`PaserSegmenter._patch_outputs`)."""

    chunk: np.ndarray  # (k, 3): (z, gy, gx) of each patch
    labels: np.ndarray
    entropy: np.ndarray
    fused: np.ndarray | None  # labels with f0 fused in, for the patches of ``fused_rows``
    fused_rows: np.ndarray | None
    window: np.ndarray | None  # probabilities x 255 over the whole windows, when blending
    seconds: float  # per patch


R = TypeVar("R")  # what a drained generator returns


# --------------------------------------------------------------------------- result


@dataclass
class SegmentationResult:
    """Labels of a stack and what they cost.

    Attributes
    ----------
    labels : ndarray (Z, Y, X) uint8
    entropy : ndarray (Z, Y, X) float32 or None
        f0's MC-dropout entropy (nats); None when the slices were not analysed
        (methods f1 / f2 do not need the analysis).
    routing : ndarray (Z, GY, GX) uint8
        Model per patch: 0 f0, 1 f1, 2 f2.
    patch_size : tuple of int
    lam : float or None
        Cost weight used (None for methods without λ).
    tvd : float or None
        Total variation between this routing distribution and the λ = 0 one, over
        these slices (PaSeR only).
    method : str
    gflops_total, gflops_per_slice, gflops_f2_everywhere : float, ndarray, float
        FLOPs the method costs when run alone on these slices (see :mod:`.flops`).
    route_fraction : dict
        Fraction of patches per model.
    seconds : float
        Wall-clock seconds of the call that produced this result.
    compute_seconds : float
        Measured compute time of the calls the method is charged for (shared caches
        make ``seconds`` depend on what ran before; this does not).
    bundle : dict
        ``{"name": ..., "version": ...}``, and ``"f0_fusion"`` (f0's weights in the f1 / f2
        patches) when the labels were composed with f0 fused in.
    tvd_target : float or None
        The TVD budget λ was chosen for, if any.
    slices : list of int
        Slice indices of the input stack.
    """

    labels: np.ndarray
    entropy: np.ndarray | None
    routing: np.ndarray
    patch_size: tuple[int, int]
    lam: float | None
    tvd: float | None
    method: str
    gflops_total: float
    gflops_per_slice: np.ndarray
    gflops_f2_everywhere: float
    route_fraction: dict[str, float]
    seconds: float
    compute_seconds: float
    bundle: dict
    tvd_target: float | None = None
    slices: list[int] = field(default_factory=list)

    def report(self) -> dict:
        """JSON-serialisable summary (no arrays except per-slice GFLOPs)."""
        return {
            **run_summary(self, list(self.labels.shape)),
            "seconds": self.seconds,
            "compute_seconds": self.compute_seconds,
            "slices": [int(z) for z in self.slices],
        }


def run_summary(result: SegmentationResult | StreamResult, shape: list[int]) -> dict:
    """The report fields every run result shares (method, knobs, bundle, grid, GFLOPs, routing).

    ``result`` has the attributes of :class:`SegmentationResult` that describe cost and
    routing (label volumes are not needed, so results kept on disk can use it too).
    """
    r = result
    return {
        "method": r.method,
        "lam": r.lam,
        "tvd": r.tvd,
        "tvd_target": r.tvd_target,
        "bundle": dict(r.bundle),
        "shape": shape,
        "patch_size": list(r.patch_size),
        "grid": list(r.routing.shape[1:]),
        "gflops_total": r.gflops_total,
        "gflops_per_slice": [float(v) for v in r.gflops_per_slice],
        "gflops_f2_everywhere": r.gflops_f2_everywhere,
        "flops_ratio_vs_f2": r.gflops_total / r.gflops_f2_everywhere if r.gflops_f2_everywhere else None,
        "route_fraction": dict(r.route_fraction),
    }


# --------------------------------------------------------------------------- segmenter


class PaserSegmenter(SlicewiseRouting):
    """Stateful PaSeR inference on one volume (see the module docstring).

    Parameters
    ----------
    bundle : Bundle
        Networks in eval mode.
    mc_passes : int, optional
        MC-dropout passes of f0, sampled. Default: the bundle's way, its number of
        sampled passes or, for an f0 with ``mc_estimate="moments"``, their limit in
        closed form (:meth:`~.models.UNet.mc_head_moments`).
    seed : int
        Seed of the dropout masks (per slice via :func:`slice_seed`).
    device : str or torch.device
    batch_size : int
        Patches per f1/f2 call.
    precision : {"fp32", "bf16"}
        Precision of the f1/f2 patch batches: "bf16" runs them under ``torch.autocast``
        (f0's MC analysis always runs in fp32).
    channels_last : bool
        Run convolutions of f0/f1/f2 in channels-last memory format.
    blend_borders : bool
        Blend neighbouring patches within the patch models' halo of their borders
        (:mod:`.blending`): no seams between patches, for the memory of every patch
        model's output over its window (about 10 bytes a pixel).
    side_by_side : bool
        With several torch threads on a CPU, analyse several slices, and run several
        batches of patches, at once, the threads shared among them (:mod:`.side_by_side`):
        the same outputs, mostly sooner. False runs one at a time with every thread.
    """

    def __init__(
        self,
        bundle: Bundle,
        mc_passes: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = DEFAULT_PRECISION,
        channels_last: bool = DEFAULT_CHANNELS_LAST,
        blend_borders: bool = False,
        side_by_side: bool = True,
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.bundle = bundle.eval()
        self.device = torch.device(device)
        self.bundle.to(self.device)
        self.mc_passes = int(mc_passes if mc_passes is not None else bundle.mc_passes)
        if self.mc_passes < 1:
            raise PaserInputError(f"mc_passes must be at least 1, got {self.mc_passes}")
        self.mc_estimate = mc_estimate(bundle.f0.config, mc_passes)
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.precision = precision
        self.channels_last = bool(channels_last)
        if self.channels_last:
            # The policy too: its 3x3 convolutions over the cell grid run faster with
            # channels-last weights, whatever the layout of its input.
            for m in (*self.bundle.segmenters(), self.bundle.policy):
                set_memory_format_(m, torch.channels_last)
        self.patch_size: tuple[int, int] = tuple(int(s) for s in bundle.patch_size)  # type: ignore[assignment]
        self._costs = bundle.costs().double().numpy()
        self._fusion = np.array([0.0, *bundle.fusion])  # weight of f0 in each model's patch output
        self._halos = {m: int(net.config.halo) for m, net in enumerate(self.bundle.segmenters()) if m > 0}
        self.blend_borders = bool(blend_borders)
        self.side_by_side = bool(side_by_side)
        self._blend_width = check_blendable(self.bundle) if self.blend_borders else blend_width(self.bundle)
        self._keeps_f0_bytes = bool(self._fusion.any() or self.blend_borders)
        self._volume: np.ndarray | None = None
        self.first_slice = 0

    # ----------------------------------------------------------------- volume
    def set_volume(
        self, image: ArrayLike, *, normalizer: Normalizer | None = None, first_slice: int = 0, context: tuple | None = None
    ) -> None:
        """Validate and take a (Z,Y,X) stack or (Y,X) slice; resets all caches.

        Parameters
        ----------
        image : array_like
            The stack, any real dtype.
        normalizer : Normalizer, optional
            Intensity statistics fitted on a whole stack of which ``image`` is a slab
            (:mod:`.streaming`); the slab is then only checked for its shape, dtype and
            finite values, since one slab of a valid stack may well be constant.
        first_slice : int
            Index of ``image``'s first plane in that stack: dropout masks are seeded by
            the stack's slice index, so a slab gives the labels the whole stack would.
        context : (before, after), optional
            Planes of that stack just before and just after the slab (``(k, Y, X)``
            arrays, up to :attr:`context_planes` each), for patch models that read
            neighbouring planes: with them a slab gives the labels the whole stack would.
            Without them the slab's first and last planes repeat, as at a stack's ends.

        Raises
        ------
        PaserInputError
            If the image is unusable (see :func:`validate_image`).
        """
        if normalizer is None:
            arr = validate_image(image, self.patch_size)
        else:
            arr = _check_slab(image, self.patch_size)
        self.input_ndim = arr.ndim
        vol = arr[None] if arr.ndim == 2 else arr
        norm = self.bundle.normalization
        if normalizer is None:
            normalizer = Normalizer.fit(vol, norm.get("low_percentile", 0.5), norm.get("high_percentile", 99.5))
        self._normalizer = normalizer
        self.first_slice = int(first_slice)
        self._volume = vol
        before, after = context if context is not None else (None, None)
        empty = np.zeros((0, *vol.shape[1:]), dtype=vol.dtype)
        self._before = empty if before is None or len(before) == 0 else _check_slab(before, self.patch_size).reshape(-1, *vol.shape[1:])
        self._after = empty if after is None or len(after) == 0 else _check_slab(after, self.patch_size).reshape(-1, *vol.shape[1:])
        z, h, w = vol.shape
        self.shape: tuple[int, int, int] = (z, h, w)
        self.grid: tuple[int, int] = grid_shape((h, w), self.patch_size)
        ph, pw = self.patch_size
        self.padded_shape = (self.grid[0] * ph, self.grid[1] * pw)
        self.cost_model = CostModel.measure(self.bundle, self.padded_shape, self.mc_passes, self.mc_estimate)
        gy, gx = self.grid
        # np.zeros maps pages lazily: caches of untouched slices cost no memory.
        self._analysed = np.zeros(z, dtype=bool)
        self._entropy = np.zeros((z, h, w), dtype=np.float32)
        self._gains = np.zeros((z, 2, gy, gx), dtype=np.float32)
        self._s1 = np.zeros((z, gy, gx), dtype=np.float64)
        self._s2 = np.zeros((z, gy, gx), dtype=np.float64)
        self._time_f0 = np.zeros(z)
        self._time_policy = np.zeros(z)
        self._plabels = np.zeros((3, z, gy, gx, ph, pw), dtype=np.uint8)
        self._pdone = np.zeros((3, z, gy, gx), dtype=bool)
        self._pentropy = np.full((3, z, gy, gx), np.nan, dtype=np.float32)
        self._ptime = np.zeros((3, z, gy, gx))
        if self._keeps_f0_bytes:  # for fusion, and for patches on f0 to take part in a blend
            self._f0prob = np.zeros((z, gy, gx, 3, ph, pw), dtype=np.uint8)  # f0's probabilities x 255
        if self._fusion.any():
            self._pfused = np.zeros((3, z, gy, gx, ph, pw), dtype=np.uint8)  # model 0's pages are never touched
            self._pfdone = np.zeros((3, z, gy, gx), dtype=bool)
        # With blending: each patch model's probabilities x 255 over every window it ran on.
        self._pwindow = {m: np.zeros((z, gy, gx, 3, ph + 2 * h, pw + 2 * h), dtype=np.uint8)
                         for m, h in self._halos.items()} if self.blend_borders else {}
        self._inputs: OrderedDict[int, np.ndarray] = OrderedDict()
        # The last slice's planes padded by a patch model's halo (batches walk slices in order).
        self._halo_key: tuple[int, int, int] | None = None
        self._halo_input: np.ndarray | None = None

    @property
    def num_slices(self) -> int:
        self._require_volume()
        return self.shape[0]

    @property
    def context_planes(self) -> int:
        """Planes on each side of a slice that the networks read (0 for 2-D networks)."""
        return max(m.config.planes for m in self.bundle.segmenters()) // 2

    def _require_volume(self) -> None:
        if self._volume is None:
            raise RuntimeError("no volume: call set_volume(image) first")

    def _check_slice(self, z: int) -> int:
        self._require_volume()
        z = int(z)
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} out of range for a stack of {self.shape[0]} slices")
        return z

    def _raw_plane(self, z: int) -> np.ndarray:
        """Plane ``z`` of the slab; negative and past-the-end ``z`` read the context planes."""
        n = self.shape[0]
        if z < 0:
            return self._before[len(self._before) + z]
        if z >= n:
            return self._after[z - n]
        assert self._volume is not None  # set with self.shape
        return self._volume[z]

    def _input(self, z: int) -> np.ndarray:
        """Normalised plane padded to whole patches, float32 (small LRU: batches walk slices in order)."""
        if z in self._inputs:
            self._inputs.move_to_end(z)
            return self._inputs[z]
        x = torch.from_numpy(self._normalizer(self._raw_plane(z)))
        padded = pad_to_patches(x, self.patch_size).numpy()
        self._inputs[z] = padded
        while len(self._inputs) > max(4, 2 * self.context_planes + 2):
            self._inputs.popitem(last=False)
        return padded

    def _planes(self, z: int, planes: int) -> np.ndarray:
        """(planes, rows, columns) normalised planes centred on ``z`` (edge planes repeat)."""
        if planes == 1:
            return self._input(z)[None]
        lo, hi = -len(self._before), self.shape[0] + len(self._after) - 1
        idx = np.clip(np.arange(z - planes // 2, z + planes // 2 + 1), lo, hi)
        return np.stack([self._input(int(i)) for i in idx])

    def _patch_window(self, z: int, gy: int, gx: int, halo: int, planes: int = 1) -> np.ndarray:
        """Input of a patch model for patch (gy, gx) of slice ``z``: (planes, rows, columns),
        the patch and ``halo`` pixels of context on every side (the slice reflected at its
        border), on ``planes`` neighbouring planes."""
        ph, pw = self.patch_size
        if halo <= 0 and planes == 1:
            return self._input(z)[None, gy * ph : (gy + 1) * ph, gx * pw : (gx + 1) * pw]
        key = (z, halo, planes)
        if self._halo_key != key:  # built once per slice, not per patch
            stack = self._planes(z, planes)
            self._halo_key = key
            self._halo_input = np.pad(stack, ((0, 0), (halo, halo), (halo, halo)), mode="reflect") if halo > 0 else stack
        assert self._halo_input is not None  # set with self._halo_key
        return self._halo_input[:, gy * ph : (gy + 1) * ph + 2 * halo, gx * pw : (gx + 1) * pw + 2 * halo]

    def _precision_ctx(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # ----------------------------------------------------------------- analysis
    def is_analysed(self, z: int) -> bool:
        return bool(self._analysed[self._check_slice(z)])

    def analyse(self, z: int) -> None:
        """f0 MC-dropout prediction, entropy and policy gains of slice ``z`` (cached)."""
        z = self._check_slice(z)
        if not self._analysed[z]:
            self._store_analysis(self._analysis(self._analysis_input(z)))

    def analyse_slices(self, zs: Iterable[int]) -> Generator[int, None, None]:
        """Analyse the slices ``zs`` (cached ones are not run again), several at once where
        that uses the cores better (:mod:`.side_by_side`).

        Parameters
        ----------
        zs : iterable of int
            Slices, in the order wanted (IndexError for one out of range, before any runs).

        Yields
        ------
        int
            Each slice of ``zs`` once it is analysed, in that order.
        """
        zs = [self._check_slice(z) for z in zs]
        todo = list(dict.fromkeys(z for z in zs if not self._analysed[z]))  # each slice once
        workers = self._workers(len(todo), self.bundle.f0.config.planes * self.padded_shape[0] * self.padded_shape[1])
        if self.bundle.f0.config.mc_scope != "head":
            workers = 1  # its MC passes seed torch's global generator, which threads share
        wall = time.perf_counter()
        results = ordered_map(self._analysis, (self._analysis_input(z) for z in todo), workers)
        stored: list[int] = []
        try:
            for z in zs:
                if not self._analysed[z]:
                    self._store_analysis(next(results))
                    stored.append(z)
                yield z
        finally:
            results.close()
            if workers > 1 and stored:  # the slices' own seconds overlap: charge the wall time they took together
                self._time_f0[stored], self._time_policy[stored] = share_wall(time.perf_counter() - wall, self._time_f0[stored],
                                                                              self._time_policy[stored])

    def _workers(self, pieces: int, pixels: int) -> int:
        """Pieces of work to run at once (:func:`.side_by_side.workers_for`)."""
        return workers_for(pieces, pixels, self.device) if self.side_by_side else 1

    def _analysis_input(self, z: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Slice ``z`` (the policy's image channel) and f0's planes around it, read from
        the volume and the input cache on the calling thread."""
        x = torch.from_numpy(self._input(z))[None, None]
        planes = self.bundle.f0.config.planes
        return z, x, x if planes == 1 else torch.from_numpy(self._planes(z, planes))[None]

    def _analysis(self, inputs: tuple[int, torch.Tensor, torch.Tensor]) -> _Analysis:
        """f0's analysis of one slice from :meth:`_analysis_input`: tensors only, so several
        may run at once."""
        z, x, f0_in = inputs
        f0 = self.bundle.f0
        t0 = time.perf_counter()
        with torch.inference_mode():
            policy_config = self.bundle.policy.config
            f0_in = self._to_device(f0_in)
            prob, ent, f0_feats, *spread = mc_predict(f0, f0_in, self.mc_passes, seed=slice_seed(self.seed, self.first_slice + z),
                                                      return_features=True, return_spread=policy_config.mc_spread,
                                                      estimate=self.mc_estimate)
            prediction = f0.refine(f0_in, prob)  # the MC mean itself without a refiner
            # f0's labels and the bytes fusion keeps are part of what its analysis costs,
            # as a patch model's argmax is of its patches' (_patch_outputs).
            labels = class_argmax(prediction)[0].cpu().numpy()
            quantised = to_bytes(prediction[0]).cpu().numpy() if self._keeps_f0_bytes else None
            t1 = time.perf_counter()
            feats = policy_features(x.to(self.device), prob.float(), ent.float(), f0_feats, policy_config,
                                    spread[0] if spread else None, prediction)
            with one_torch_thread():  # the same gains on a worker as on the calling thread
                gains = self.bundle.policy.gains(feats)
        t2 = time.perf_counter()
        return _Analysis(z, labels, quantised, ent[0].float().cpu().numpy(), gains[0].float().cpu().numpy(), t1 - t0, t2 - t1)

    def _store_analysis(self, a: _Analysis) -> None:
        z = a.z
        h, w = self.shape[1:]
        self._plabels[0, z] = patch_view(a.labels, self.patch_size)
        self._pentropy[0, z] = patch_view(a.entropy, self.patch_size).mean(axis=(-2, -1))
        self._pdone[0, z] = True
        if a.quantised is not None:
            self._f0prob[z] = np.stack([patch_view(q, self.patch_size) for q in a.quantised], axis=2)
        self._entropy[z] = a.entropy[:h, :w]
        self._gains[z] = a.gains
        self._s1[z], self._s2[z] = switch_points(a.gains, self._costs)
        self._time_f0[z], self._time_policy[z] = a.seconds_f0, a.seconds_policy
        self._analysed[z] = True

    def entropy(self, z: int) -> np.ndarray:
        """f0's MC-dropout entropy map (Y, X) of slice ``z`` (analyses it if needed)."""
        self.analyse(z)
        return self._entropy[z]

    def gains(self, z: int) -> np.ndarray:
        """Policy gains (2, GY, GX) of f1 and f2 over f0 for slice ``z``."""
        self.analyse(z)
        return self._gains[z]

    # ----------------------------------------------------------------- patches
    def patch_entropy(self, z: int, model: int) -> np.ndarray:
        """Mean softmax entropy (GY, GX) per patch of ``model`` on slice ``z`` (NaN where not run)."""
        return self._pentropy[int(model), self._check_slice(z)]

    def timings(self, z: int) -> tuple[float, float, np.ndarray]:
        """Measured compute seconds of slice ``z``: f0's analysis, the policy, and every
        patch forward as (3, GY, GX) (0 where a model has not run), as results charge them.
        Slices and batches that ran side by side are each charged their share of the wall
        time they took together (:func:`.side_by_side.share_wall`)."""
        z = self._check_slice(z)
        return float(self._time_f0[z]), float(self._time_policy[z]), self._ptime[:, z].copy()

    def is_cached(self, z: int, routing: np.ndarray) -> bool:
        """True if composing slice ``z`` with ``routing`` runs no network.

        The slice is analysed and every patch that ``routing`` sends to f1 or f2 has
        that model's output cached (fused with f0's, as :meth:`compose` returns it), so a
        GUI may compose it on its own thread at once.
        """
        z = self._check_slice(z)
        if not self.is_analysed(z):
            return False
        routing = self._check_routing(routing)
        return all(bool((self._pfdone if self._fuses(m, True) else self._pdone)[m, z][routing == m].all()) for m in (1, 2))

    def _fuses(self, model: int, fused: bool) -> bool:
        """True if ``model``'s patches are composed from their fused labels."""
        return bool(fused and self._fusion[model] > 0)

    def _missing(self, requests: Iterable[tuple[int, np.ndarray]], model: int, fused: bool = False) -> np.ndarray:
        """(k, 3) array of (z, gy, gx) for the requested patches of ``model`` not cached yet
        (``fused``: not cached with f0 fused in; a patch run before its slice's analysis
        runs again)."""
        done = self._pfdone if self._fuses(model, fused) else self._pdone
        rows = []
        for z, mask in requests:
            gy, gx = np.nonzero(mask & ~done[model, z])
            rows.append(np.stack([np.full_like(gy, z), gy, gx], axis=1))
        return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)

    def _run_patches(self, model: int, todo: np.ndarray) -> Generator[int, None, None]:
        """Run ``model`` on the listed patches in batches, several batches at once where that
        uses the cores better (:mod:`.side_by_side`); yields patches done per batch."""
        net = self.bundle.segmenters()[model]
        chunks = [todo[start : start + self.batch_size] for start in range(0, len(todo), self.batch_size)]
        window = (self.patch_size[0] + 2 * net.config.halo) * (self.patch_size[1] + 2 * net.config.halo)
        workers = self._workers(len(chunks), self.batch_size * net.config.planes * window)
        wall = time.perf_counter()
        results = ordered_map(partial(self._patch_outputs, model), (self._patch_input(model, c) for c in chunks), workers)
        stored: list[np.ndarray] = []
        try:
            for out in results:
                self._store_patches(model, out)
                stored.append(out.chunk)
                yield len(out.chunk)
        finally:
            results.close()
            if workers > 1 and stored:  # the batches' own seconds overlap: charge the wall time they took together
                z, gy, gx = np.concatenate(stored).T
                (self._ptime[model, z, gy, gx],) = share_wall(time.perf_counter() - wall, self._ptime[model, z, gy, gx])

    def _patch_input(self, model: int, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """A batch's windows, and f0's probabilities (bytes) of the patches whose slice f0 has
        analysed where ``model`` fuses them, read on the calling thread."""
        net = self.bundle.segmenters()[model]
        batch = np.stack([self._patch_window(z, gy, gx, net.config.halo, net.config.planes) for z, gy, gx in chunk])
        rows = f0prob = None
        if self._fusion[model] > 0:
            rows = self._analysed[chunk[:, 0]]
            z, gy, gx = chunk[rows].T
            f0prob = self._f0prob[z, gy, gx]
        return chunk, batch, rows, f0prob

    def _patch_outputs(self, model: int, inputs: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]) -> _Patches:
        """``model`` on one batch from :meth:`_patch_input`: tensors only, so several may run at once."""
        chunk, batch, rows, f0prob = inputs
        net = self.bundle.segmenters()[model]
        x = self._to_device(torch.from_numpy(batch))
        t0 = time.perf_counter()
        window: np.ndarray | None = None
        fused: np.ndarray | None = None
        with torch.inference_mode(), self._precision_ctx():
            # Plain layout: the class sums of the entropy and of fusion read it fastest,
            # and class_argmax is as fast in either.
            if self.blend_borders:
                halo = net.config.halo
                probs = class_softmax(net.window_logits(x).float(), channels_last=False)
                prob = probs[..., halo:-halo, halo:-halo]  # what net(x) gives, to the bit
            else:
                prob = class_softmax(net(x).float(), channels_last=False)
        labels = class_argmax(prob).cpu().numpy()
        ent = softmax_entropy(prob).mean(dim=(-2, -1)).cpu().numpy()
        if rows is not None and f0prob is not None and rows.any():
            mixed = fuse_f0(prob[torch.from_numpy(rows).to(prob.device)], torch.from_numpy(f0prob), float(self._fusion[model]))
            fused = class_argmax(mixed).cpu().numpy()
        if self.blend_borders:
            window = to_bytes(probs).cpu().numpy()
        seconds = (time.perf_counter() - t0) / len(chunk)
        return _Patches(chunk, labels, ent, fused, rows if fused is not None else None, window, seconds)

    def _store_patches(self, model: int, out: _Patches) -> None:
        z, gy, gx = out.chunk.T
        if out.fused is not None:
            fz, fy, fx = out.chunk[out.fused_rows].T
            self._pfused[model, fz, fy, fx] = out.fused
            self._pfdone[model, fz, fy, fx] = True
        if out.window is not None:
            self._pwindow[model][z, gy, gx] = out.window
        self._plabels[model, z, gy, gx] = out.labels
        self._pentropy[model, z, gy, gx] = out.entropy
        self._ptime[model, z, gy, gx] = out.seconds
        self._pdone[model, z, gy, gx] = True

    def _ensure(self, requests: Sequence[tuple[int, np.ndarray]], fused: bool = False) -> Generator[tuple[int, int], None, None]:
        """Run every missing (patch, model) pair of ``requests`` = [(z, routing)]; yields
        (done, total). ``fused``: f0 is fused into the patch outputs (its analysis runs first)."""
        if fused and self._fusion.any():
            for z, r in requests:
                if (r > 0).any():
                    self.analyse(z)
        todo = {m: self._missing(((z, r == m) for z, r in requests), m, fused) for m in (1, 2)}
        total = sum(len(t) for t in todo.values())
        done = 0
        for m, t in todo.items():
            for n in self._run_patches(m, t):
                done += n
                yield done, total

    def ensure_patches(self, z: int, model: int, mask: np.ndarray | None = None) -> None:
        """Run ``model`` (1 or 2) on the patches of slice ``z`` selected by ``mask`` (all if None)."""
        z = self._check_slice(z)
        if model == 0:
            self.analyse(z)
            return
        mask = np.ones(self.grid, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        drain(self._run_patches(model, self._missing([(z, mask)], model)))

    def _assemble(self, z: int, routing: np.ndarray, fused: bool = False) -> np.ndarray:
        ph, pw = self.patch_size
        gy, gx = self.grid
        out = self._plabels[0, z].copy()
        for m in (1, 2):
            sel = routing == m
            out[sel] = (self._pfused if self._fuses(m, fused) else self._plabels)[m, z][sel]
        labels = out.swapaxes(1, 2).reshape(gy * ph, gx * pw)
        if self.blend_borders:
            labels = self._blend(z, routing, fused, labels)
        h, w = self.shape[1:]
        return labels[:h, :w]

    def _blend(self, z: int, routing: np.ndarray, fused: bool, labels: np.ndarray) -> np.ndarray:
        """``labels`` of slice ``z`` blended across the borders between patches (:mod:`.blending`)."""
        f0_bytes = None
        if self._keeps_f0_bytes and self._analysed[z]:
            gy, gx, c, ph, pw = self._f0prob[z].shape
            f0_bytes = self._f0prob[z].transpose(2, 0, 3, 1, 4).reshape(c, gy * ph, gx * pw)
        used = {m: self._pwindow[m][z] for m in (1, 2) if (routing == m).any()}
        fusion = {m: float(self._fusion[m]) for m in (1, 2) if self._fuses(m, fused)}
        return blend_patches(labels, routing, used, self._halos, self.patch_size, self._blend_width, f0_bytes, fusion)

    def _check_routing(self, routing: np.ndarray) -> np.ndarray:
        r = np.asarray(routing)
        if r.shape != self.grid or r.min() < 0 or r.max() > 2:
            raise ValueError(f"routing must be a {self.grid} array of model indices 0..2")
        return r.astype(np.uint8, copy=False)

    def compose(self, z: int, lam: float | None = None, routing: np.ndarray | None = None, *, fused: bool = True) -> np.ndarray:
        """Labels (Y, X) uint8 of slice ``z`` for ``lam`` or an explicit ``routing``.

        Runs only the (patch, model) pairs not cached yet, batched per model. ``fused``
        (PaSeR's output): with a bundle that fuses f0 into its patch models, f0 analyses
        the slice and is fused into every f1 / f2 patch; False gives the patch models'
        own labels (what f1 / f2 everywhere return).
        """
        z = self._check_slice(z)
        r = self.routing(lam, z) if routing is None else self._check_routing(routing)
        if (r == 0).any():
            self.analyse(z)
        drain(self._ensure([(z, r)], fused))
        return self._assemble(z, r, fused)

    # ----------------------------------------------------------------- whole runs
    def _slices(self, slices: Iterable[int] | None) -> list[int]:
        self._require_volume()
        if slices is None:
            return list(range(self.shape[0]))
        return [self._check_slice(z) for z in slices]

    def run(
        self,
        lam: float | None = None,
        tvd: float | None = None,
        method: "str | Method" = "paser",
        slices: Iterable[int] | None = None,
    ) -> Generator[tuple[int, int], None, SegmentationResult]:
        """Segment ``slices`` (all by default); yields ``(done, total)``, returns the result.

        ``tvd`` (PaSeR only) picks λ with :meth:`lam_for_tvd` over these slices; it cannot
        be combined with ``lam``. Use :func:`drain` to get the return value.
        """
        wall0 = time.perf_counter()
        spec = method if isinstance(method, Method) else get_method(method)
        zs = self._slices(slices)
        if tvd is not None and lam is not None:
            raise PaserInputError("give either lam or tvd, not both")
        if tvd is not None and not spec.uses_lam:
            raise PaserInputError(f"method {method!r} has no λ to choose from a TVD")
        n = len(zs)
        total = (n if spec.analyse else 0) + n
        done = 0
        if spec.analyse:
            for _ in self.analyse_slices(zs):
                done += 1
                yield done, total
        if spec.uses_lam:
            lam = self.lam_for_tvd(tvd, zs) if tvd is not None else self._lam(lam)
        else:
            lam = None if lam is None else self._lam(lam)
        routings = [self._check_routing(spec.route(self, z, lam)) for z in zs]
        base = done
        for k, m in self._ensure(list(zip(zs, routings)), spec.analyse):
            done = base + (n * k) // m
            yield done, total
        if done < total:  # everything was cached already
            yield total, total
        return self._result(spec, zs, routings, lam, tvd, time.perf_counter() - wall0)

    def result(self, lam: float | None = None, tvd: float | None = None, method: str = "paser", slices: Iterable[int] | None = None) -> SegmentationResult:
        """Like :meth:`run` without progress: composes from the caches, running what is missing."""
        return drain(self.run(lam=lam, tvd=tvd, method=method, slices=slices))

    def _result(self, spec: Method, zs: list[int], routings: list[np.ndarray], lam, tvd_target, wall: float) -> SegmentationResult:
        cm = self.cost_model
        flops = np.zeros(len(zs))
        compute = 0.0
        for i, (z, r) in enumerate(zip(zs, routings)):
            c1, c2 = spec.charged(self, z, r)
            flops[i], seconds = charge(cm, spec, c1, c2, seconds_analysis=self._time_f0[z], seconds_policy=self._time_policy[z],
                                       seconds_patches=self._ptime[:, z])
            compute += seconds
        routing = np.stack(routings)
        frac = route_fraction(routing)
        idx = np.asarray(zs)
        analysed = bool(self._analysed[idx].all())
        measured_tvd = tvd_at(self._s1[idx], self._s2[idx], lam) if spec.uses_lam else None
        labels = np.stack([self._assemble(z, r, spec.analyse) for z, r in zip(zs, routings)])
        return SegmentationResult(
            labels=labels,
            entropy=self._entropy[idx] if analysed else None,
            routing=routing,
            patch_size=self.patch_size,
            lam=lam,
            tvd=measured_tvd,
            method=spec.name,
            gflops_total=float(flops.sum()) / 1e9,
            gflops_per_slice=flops / 1e9,
            gflops_f2_everywhere=len(zs) * self.grid[0] * self.grid[1] * cm.patch[2] / 1e9,
            route_fraction={name: float(f) for name, f in zip(MODEL_NAMES, frac)},
            seconds=wall,
            compute_seconds=float(compute),
            bundle=bundle_record(self.bundle, fused=spec.analyse, blend_borders=self.blend_borders),
            tvd_target=None if tvd_target is None else float(tvd_target),
            slices=list(zs),
        )


def _check_slab(image, patch_size: tuple[int, int]) -> np.ndarray:
    """Shape, dtype and finiteness of one slab of a validated stack."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) or arr.dtype == bool:
        raise PaserInputError(f"expected a grayscale (Z,Y,X) slab, got shape {arr.shape} and dtype {arr.dtype}")
    if arr.shape[-2] < patch_size[0] or arr.shape[-1] < patch_size[1]:
        raise PaserInputError(f"slices of {arr.shape[-2]}x{arr.shape[-1]} pixels are smaller than one {patch_size[0]}x{patch_size[1]} patch")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise PaserInputError("image contains NaN or infinite values")
    return arr


def read_with_context(
    read: Callable[[int, int], np.ndarray], num_planes: int, z0: int, z1: int, context: int
) -> tuple[np.ndarray, tuple[np.ndarray | None, np.ndarray | None] | None]:
    """Planes ``z0:z1`` of a stack of ``num_planes`` and up to ``context`` planes on each
    side, as :meth:`PaserSegmenter.set_volume` takes them.

    Parameters
    ----------
    read : callable
        ``read(a, b)`` returns planes ``a:b`` of the stack.

    Returns
    -------
    slab : np.ndarray
    context : (before, after) or None
        None when the patch models read one plane (``context`` 0).
    """
    slab = read(z0, z1)
    if context <= 0:
        return slab, None
    before = read(max(0, z0 - context), z0) if z0 > 0 else None
    after = read(z1, min(num_planes, z1 + context)) if z1 < num_planes else None
    return slab, (before, after)


def drain(gen: Generator[Any, Any, R], progress: Progress | None = None) -> R:
    """Exhaust a progress generator (calling ``progress(done, total)``); return its value."""
    return run_steps(gen, None if progress is None else lambda item: progress(*item))


def segment(
    image: ArrayLike,
    bundle: Bundle,
    lam: float | None = None,
    tvd: float | None = None,
    method: str = "paser",
    *,
    mc_passes: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    slices: Iterable[int] | None = None,
    progress: Progress | None = None,
    **options,
) -> SegmentationResult:
    """One-shot segmentation of a (Z,Y,X) stack or (Y,X) slice (labels always (Z,Y,X)).

    ``options`` go to :class:`PaserSegmenter` (batch_size, precision, channels_last).
    """
    seg = PaserSegmenter(bundle, mc_passes=mc_passes, seed=seed, device=device, **options)
    seg.set_volume(image)
    return drain(seg.run(lam=lam, tvd=tvd, method=method, slices=slices), progress)


# The baselines (IDK cascade, random policy) register their methods on import; import
# them here so every user of METHODS (CLI, widget) sees them. At the end of the module:
# baselines imports the names defined above.
from . import baselines as _baselines  # noqa: E402,F401
