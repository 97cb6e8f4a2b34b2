"""f0 fused into the output of the patch models (``Bundle.fusion``), defined once.

A patch that f1 or f2 segments takes the argmax of (1 - w) p_f + w p_f0, p_f0 being f0's
MC-mean probabilities kept as bytes (``p × 255``, rounded): the engine stores them so, and
the training stages' reward caches and the probes must fuse exactly as it does.
"""

from __future__ import annotations

import torch

__all__ = ["to_bytes", "fuse_f0"]


def to_bytes(prob: torch.Tensor) -> torch.Tensor:
    """Probabilities in [0, 1] as uint8 (× 255, rounded): how f0's are kept for fusion."""
    return (prob.float() * 255).round_().to(torch.uint8)


def fuse_f0(prob: torch.Tensor, f0_bytes: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - w) ``prob`` + w p_f0, with p_f0 = ``f0_bytes`` / 255 (same shape, classes on axis 1).

    ``prob`` is a patch model's softmax (float32); the result is on its device, and its
    argmax over axis 1 is the fused labels.
    """
    p0 = f0_bytes.to(prob.device, torch.float32).mul_(weight / 255)
    return prob.mul(1 - weight).add_(p0)
