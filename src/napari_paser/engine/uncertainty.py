"""Monte-Carlo dropout analysis of f0 and the policy's input features.

The encoder of f0 is deterministic, so it runs once; only the decoder (which holds
the dropout layers) runs once per pass, all passes in one batch. Dropout masks come
from a seed per slice, so a slice's result does not depend on what else is analysed.
"""

from __future__ import annotations

import torch

from .models import UNet, mc_dropout

__all__ = ["mc_predict", "entropy", "policy_features", "slice_seed"]


def slice_seed(seed: int, index: int) -> int:
    """Seed of the dropout masks of slice ``index`` (stable across runs and orders)."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63 - 1)


def entropy(prob: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) of probabilities along ``dim``."""
    return -(prob * torch.log(prob.clamp_min(1e-8))).sum(dim)


@torch.no_grad()
def mc_predict(f0: UNet, x: torch.Tensor, passes: int = 5, seed: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax and its entropy over ``passes`` MC-dropout passes of f0.

    Parameters
    ----------
    f0 : UNet
        Model in eval mode with dropout layers in its decoder.
    x : Tensor (B, 1, rows, columns)
        Normalised slices, sizes divisible by ``2**depth``.
    passes : int
        Number of stochastic decoder passes (1 with no dropout gives the plain output).
    seed : int or None
        Seed for the dropout masks; ``None`` uses the global RNG.

    Returns
    -------
    mean_prob : Tensor (B, classes, rows, columns)
    entropy : Tensor (B, rows, columns)
    """
    if passes < 1:
        raise ValueError("passes must be at least 1")
    feats = f0.encode(x)
    b = x.shape[0]
    # Repeat shared features once per pass: (passes * B, ...), pass-major.
    rep = [f.repeat(passes, 1, 1, 1) for f in feats]
    with torch.random.fork_rng(devices=[]), mc_dropout(f0):
        if seed is not None:
            torch.manual_seed(seed)
        logits = f0.decode(rep)
    prob = logits.float().softmax(1).reshape(passes, b, *logits.shape[1:]).mean(0)
    return prob, entropy(prob)


def policy_features(x: torch.Tensor, mean_prob: torch.Tensor, ent: torch.Tensor) -> torch.Tensor:
    """Input of the policy: f0's mean softmax (3), its entropy (1) and the image (1)."""
    return torch.cat([mean_prob, ent.unsqueeze(1), x], dim=1)
