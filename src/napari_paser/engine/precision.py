"""Whether bf16 autocast pays on this machine, and the context that applies it.

On a CPU with AVX-512 or AMX, oneDNN computes bf16 convolutions natively and training
f2 under bf16 autocast took about half the time of fp32 on the development machine. On
a CPU with AVX2 only, PyTorch emulates them: one training step of f2 (16 patches, one
thread) took 21-25 s against 1.7-2.0 s in fp32, so there autocast stays off.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ..errors import PaserInputError

__all__ = ["PRECISIONS", "bf16_is_fast", "bf16_autocast", "check_precision"]

PRECISIONS = ("fp32", "bf16")
"""Precisions of the f1/f2 patch batches at inference (f0's analysis always runs in fp32)."""


@functools.cache
def bf16_is_fast(device_type: str = "cpu") -> bool:
    """True if bf16 autocast speeds up convolutions on ``device_type`` here.

    CPUs: oneDNN's own check for native bf16 (AVX-512 or AMX). Other devices: True
    (their autocast is what the caller asked for).
    """
    if device_type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def bf16_autocast(device_type: str = "cpu", enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device_type`` when ``enabled`` and :func:`bf16_is_fast`; else a
    context that does nothing (fp32)."""
    if enabled and bf16_is_fast(device_type):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_precision(precision: str, device: str) -> str:
    """``precision`` for the f1/f2 patches on ``device``, if this machine runs it well.

    bf16 on a CPU without native bf16 would be emulated, many times slower than fp32,
    so it is refused before any work starts.

    Raises
    ------
    PaserInputError
        An unknown precision, or bf16 on a CPU without AVX-512 BF16 or AMX.
    """
    if precision not in PRECISIONS:
        raise PaserInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "bf16" and not bf16_is_fast(device_type):
        raise PaserInputError("bf16 needs a GPU or a CPU with native bf16 (AVX-512 BF16 or AMX); this CPU would "
                              "emulate it, many times slower than fp32")
    return precision
