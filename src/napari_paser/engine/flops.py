"""FLOPs of the PaSeR networks, measured with ``torch.utils.flop_counter.FlopCounterMode``.

Counts come from running a network on *meta* tensors (shapes only, no arithmetic), so
a measurement is instant and identical to what ``FlopCounterMode`` records on the real
call. They are cached per (architecture config, input shape). Convolution FLOPs are
linear in the batch, so one measurement per shape serves every batch size.

What the pipeline charges (the calls that actually run):

- analysis of a slice: f0's encoder once + its decoder once per MC pass (or its MC mean
  in closed form, once) + its refiner once (if it has one) + the policy;
- a patch routed to f1 or f2: one forward of that model on a patch and its halo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models import PolicyConfig, PolicyNet, Refiner, UNet, UNetConfig

if TYPE_CHECKING:  # the bundle module imports this one
    from .bundle import Bundle

__all__ = ["count_flops", "unet_flops", "moments_flops", "refine_flops", "policy_flops", "patch_input_shape", "CostModel"]


def patch_input_shape(config: UNetConfig, patch_size: tuple[int, int]) -> tuple[int, int]:
    """What a patch model reads for one patch: the patch and its halo on every side."""
    h = int(getattr(config, "halo", 0))
    return int(patch_size[0]) + 2 * h, int(patch_size[1]) + 2 * h


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs that ``FlopCounterMode`` records while ``fn()`` runs."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _key(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


@lru_cache(maxsize=256)
def _unet_flops(config_json: str, shape: tuple[int, int], batch: int) -> tuple[int, int]:
    config = UNetConfig(**json.loads(config_json))
    with torch.device("meta"):
        model = UNet(config).eval()
        x = torch.empty(batch, config.input_channels, *shape)
    holder: dict = {}
    enc = count_flops(lambda: holder.setdefault("f", model.encode(x)))
    dec = count_flops(lambda: model.decode(holder["f"]))
    return enc, dec


def unet_flops(config: UNetConfig, shape: tuple[int, int], batch: int = 1) -> dict[str, int]:
    """Encoder, decoder and total FLOPs of one UNet forward on ``(batch, C, *shape)``."""
    enc, dec = _unet_flops(_key(config), tuple(int(s) for s in shape), int(batch))
    return {"encode": enc, "decode": dec, "total": enc + dec}


@lru_cache(maxsize=64)
def _moments_flops(config_json: str, shape: tuple[int, int]) -> int:
    config = UNetConfig(**json.loads(config_json))
    with torch.device("meta"):
        model = UNet(config).eval()
        features = model.encode(torch.empty(1, config.input_channels, *shape))[-1]
    return count_flops(lambda: model.mc_head_moments(features))


def moments_flops(config: UNetConfig, shape: tuple[int, int]) -> int:
    """FLOPs of f0's closed-form MC mean (:meth:`UNet.mc_head_moments`) on one padded slice."""
    return _moments_flops(_key(config), tuple(int(s) for s in shape))


@lru_cache(maxsize=64)
def _refine_flops(config_json: str, shape: tuple[int, int]) -> int:
    config = UNetConfig(**json.loads(config_json))
    if config.refine_width <= 0:
        return 0
    with torch.device("meta"):  # the refiner alone, not the UNet around it
        refiner = Refiner(config.refine_width, config.refine_stem, config.num_classes, config.refine_planes).eval()
        image = torch.empty(1, config.refine_planes, *shape)
        prob = torch.empty(1, config.num_classes, *shape)
    return count_flops(lambda: refiner(image, prob))


def refine_flops(config: UNetConfig, shape: tuple[int, int]) -> int:
    """FLOPs of :meth:`UNet.refine` on one padded slice of ``shape`` (0 without a refiner)."""
    return _refine_flops(_key(config), tuple(int(s) for s in shape))


@lru_cache(maxsize=64)
def _policy_flops(config_json: str, shape: tuple[int, int]) -> int:
    d = json.loads(config_json)
    d["patch_size"] = tuple(d["patch_size"])
    config = PolicyConfig(**d)
    if config.features == "v2":
        # v2 features reach the policy already pooled (uncertainty.policy_features).
        shape = (shape[0] // config.pool, shape[1] // config.pool)
    with torch.device("meta"):
        policy = PolicyNet(config).eval()
        x = torch.empty(1, config.in_channels, *shape)
    return count_flops(lambda: policy.gains(x))


def policy_flops(config: PolicyConfig, shape: tuple[int, int]) -> int:
    """FLOPs of ``policy.gains`` on one padded slice of ``shape``."""
    return _policy_flops(_key(config), tuple(int(s) for s in shape))


@dataclass(frozen=True)
class CostModel:
    """FLOPs of every call the pipeline makes, for one padded slice shape.

    Attributes
    ----------
    f0_encode, f0_decode : int
        f0 on one whole padded slice (the decoder per MC pass).
    policy : int
        ``policy.gains`` on one slice.
    patch : tuple of int
        One forward of (f0, f1, f2) on one patch (f0's entry is for reference only:
        f0 runs on whole slices).
    passes : int
        MC-dropout passes.
    f0_refine : int
        f0's refiner on one whole padded slice, once after the MC passes (0 without one).
    """

    f0_encode: int
    f0_decode: int
    policy: int
    patch: tuple[int, int, int]
    passes: int
    f0_refine: int = 0

    @classmethod
    def measure(cls, bundle: Bundle, padded_shape: tuple[int, int], passes: int, estimate: str | None = None) -> "CostModel":
        """Measure the networks of ``bundle`` for slices padded to ``padded_shape``, f0's MC
        mean estimated as ``estimate`` (default: its config's ``mc_estimate``) from
        ``passes`` sampled passes or in closed form (then charged as one pass)."""
        f0 = unet_flops(bundle.f0.config, padded_shape)
        patch = tuple(unet_flops(m.config, patch_input_shape(m.config, bundle.patch_size))["total"] for m in bundle.segmenters())
        if (estimate or bundle.f0.config.mc_estimate) == "moments":
            passes, decode = 1, moments_flops(bundle.f0.config, padded_shape)
        else:
            # Decoder FLOPs measured at the batch that runs (passes), not extrapolated.
            decode = (_unet_flops(_key(bundle.f0.config), tuple(padded_shape), int(passes))[1] // passes) if passes else 0
        return cls(
            f0_encode=f0["encode"],
            f0_decode=decode,
            policy=policy_flops(bundle.policy.config, padded_shape),
            patch=patch,  # type: ignore[arg-type]
            passes=int(passes),
            f0_refine=refine_flops(bundle.f0.config, padded_shape),
        )

    @property
    def f0_mc(self) -> int:
        """f0 MC-dropout prediction of one slice: encoder once, decoder per pass, refiner once."""
        return self.f0_encode + self.passes * self.f0_decode + self.f0_refine

    @property
    def f0_naive_mc(self) -> int:
        """What ``passes`` independent full forwards of f0 (and its refiner) would cost."""
        return self.passes * (self.f0_encode + self.f0_decode) + self.f0_refine

    @property
    def analysis(self) -> int:
        """Everything :meth:`PaserSegmenter.analyse` runs for one slice."""
        return self.f0_mc + self.policy

    def slice_flops(self, n_f1: int, n_f2: int, *, analysis: bool = True, policy: bool = True) -> int:
        """FLOPs of one slice with ``n_f1``/``n_f2`` patches sent to f1/f2."""
        total = (self.f0_mc if analysis else 0) + (self.policy if analysis and policy else 0)
        return total + int(n_f1) * self.patch[1] + int(n_f2) * self.patch[2]
