"""Monte-Carlo dropout analysis of f0 and the policy's input features.

The encoder of f0 is deterministic, so it runs once; only the decoder (which holds
the dropout layers) runs once per pass, all passes in one batch. Dropout masks come
from a seed per slice, so a slice's result does not depend on what else is analysed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import PolicyConfig, UNet, UNetConfig, class_sum, is_channels_last, mc_dropout

__all__ = ["mc_predict", "mc_estimate", "entropy", "image_residual", "refiner_correction", "policy_features", "analyse_slices", "slice_seed"]


def slice_seed(seed: int, index: int) -> int:
    """Seed of the dropout masks of slice ``index`` (stable across runs and orders)."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63 - 1)


def entropy(prob: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) of probabilities along ``dim``."""
    return -(prob * torch.log(prob.clamp_min(1e-8))).sum(dim)


def mc_estimate(config: UNetConfig, passes: int | None) -> str:
    """How an engine estimates f0's MC mean: the bundle's way (``config.mc_estimate``)
    unless a number of ``passes`` is asked for, which are then sampled."""
    return config.mc_estimate if passes is None else "sampled"


@torch.no_grad()
def mc_predict(
    f0: UNet, x: torch.Tensor, passes: int = 5, seed: int | None = 0, *, return_features: bool = False,
    return_spread: bool = False, estimate: str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Mean softmax and its entropy over ``passes`` MC-dropout passes of f0.

    Parameters
    ----------
    f0 : UNet
        Model in eval mode with dropout layers in its decoder.
    x : Tensor (B, 1, rows, columns)
        Normalised slices, sizes divisible by ``2**depth``.
    passes : int
        Number of stochastic decoder passes (1 with no dropout gives the plain output).
        Unused with ``estimate="moments"``.
    seed : int or None
        Seed for the dropout masks; ``None`` uses the global RNG.
    return_features : bool
        Also return f0's deterministic features (the last tensor of ``f0.encode``).
    return_spread : bool
        Also return how much the passes disagree: the variance over the passes of each
        class's probability, summed over the classes (0 with one pass).
    estimate : {"sampled", "moments"}, optional
        Sample the passes, or compute their limit in closed form (``mc_scope="head"``);
        default: ``f0.config.mc_estimate``.

    Returns
    -------
    mean_prob : Tensor (B, classes, rows, columns)
    entropy : Tensor (B, rows, columns)
    features : Tensor, only with ``return_features``
    spread : Tensor (B, rows, columns), only with ``return_spread``
    """
    if passes < 1:
        raise ValueError("passes must be at least 1")
    feats = f0.encode(x)
    b = x.shape[0]
    # The output layout follows the network's: with channels_last the class argmax over
    # pixels is about 10x faster on a CPU.
    channels_last = is_channels_last(feats[-1])
    c = f0.config.num_classes
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if (estimate or f0.config.mc_estimate) == "moments":
        if return_spread:
            raise ValueError("the closed-form MC mean has no passes to disagree: the spread needs mc_estimate='sampled'")
        folded = f0.mc_head_moments(feats[-1])
    else:
        if f0.config.mc_scope == "head":
            generator = torch.Generator(device=x.device).manual_seed(seed) if seed is not None else None
            logits = f0.mc_head_logits(feats[-1], passes, generator)
        else:
            # Repeat shared features once per pass: (passes * B, ...), pass-major.
            rep = [f.repeat(passes, 1, 1, 1) for f in feats]
            with torch.random.fork_rng(devices=[]), mc_dropout(f0):
                if seed is not None:
                    torch.manual_seed(seed)
                logits = f0.decode_folded(rep).contiguous()
        # Softmax, mean over passes and entropy on the folded output grid (classes x stem²
        # channels), then one pixel shuffle: per pixel the same arithmetic as at full
        # resolution (the shuffle only moves values), with less memory traffic on a CPU.
        _, k, h, w = logits.shape
        per_pass = logits.float().reshape(passes, b, c, k // c, h, w).softmax(2)
        folded = per_pass.mean(0)
    _, _, sub, h, w = folded.shape
    prob = f0.unfold(folded.reshape(b, c * sub, h, w)).contiguous(memory_format=layout)
    ent = f0.unfold(entropy(folded))[:, 0]
    out = (prob, ent) + ((feats[-1],) if return_features else ())
    if return_spread:
        out += (f0.unfold(per_pass.var(0, correction=0).sum(1))[:, 0],)
    return out


def image_residual(x: torch.Tensor, mean_prob: torch.Tensor, ent: torch.Tensor) -> torch.Tensor:
    """Where the image departs from what f0's labels predict, where f0 is unsure.

    Each class's mean intensity in the slice is taken under f0's probabilities; the
    image f0's labels predict is their probability-weighted mix, and the squared
    difference from the slice is weighted by f0's entropy (alone it also flags noise and
    fringes far from any boundary). The class means are measured in every slice, so the
    map follows a scanner's contrast where f0's confidence does not: on scans unlike
    the training data it tracks the gains of f1 and f2 over f0 better than the entropy
    does (``benchmarks/probe_results.md``).

    Parameters
    ----------
    x : Tensor (B, 1, rows, columns)
        Normalised slices.
    mean_prob : Tensor (B, classes, rows, columns)
        f0's probabilities (the MC mean).
    ent : Tensor (B, rows, columns)
        Their entropy.

    Returns
    -------
    Tensor (B, 1, rows, columns)
    """
    b = x.shape[0]
    # Pixels by classes: with the engine's channels-last probabilities a view, and both
    # sums over the pixels become matrix products (about 3x faster on a CPU).
    prob = mean_prob.permute(0, 2, 3, 1).reshape(b, -1, mean_prob.shape[1])
    image = x.to(prob.dtype).reshape(b, 1, -1)
    class_mean = torch.bmm(image, prob) / prob.sum(1, keepdim=True).clamp_min(1e-6)  # (B, 1, classes)
    expected = torch.bmm(prob, class_mean.transpose(1, 2)).view(b, 1, -1)
    return (image - expected).square_().mul_(ent.reshape(b, 1, -1).to(prob.dtype)).view(x.shape)


def refiner_correction(mean_prob: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
    """How far f0's refiner moved its prediction: KL(refined ‖ MC mean) per pixel (nats).

    The refiner moves f0's boundaries part of the way; where it moves them most, f1 and
    f2 still gain most over the refined prediction. Over the refined f0 this ranks their
    true gains better than f0's entropy in both test families
    (``benchmarks/probe_refined_ranking.py``).

    Parameters
    ----------
    mean_prob : Tensor (B, classes, rows, columns)
        f0's probabilities (the MC mean).
    refined : Tensor (B, classes, rows, columns)
        The refined probabilities (:meth:`~napari_paser.engine.models.UNet.refine`).

    Returns
    -------
    Tensor (B, 1, rows, columns)
    """
    # Both clipped at 1e-6 (as benchmarks/probe_scan_shift.py measures it): a class f0 rules out adds at most ~14 nats.
    q = refined.float().clamp_min(1e-6)
    return class_sum(q * (q.log() - mean_prob.float().clamp_min(1e-6).log()))


ENTROPY_CHANNEL = 3  # of the policy's input: f0's mean softmax (0-2), its entropy (3), the image (4), ...


def policy_features(
    x: torch.Tensor,
    mean_prob: torch.Tensor,
    ent: torch.Tensor,
    f0_features: torch.Tensor | None = None,
    config: PolicyConfig | None = None,
    spread: torch.Tensor | None = None,
    refined: torch.Tensor | None = None,
) -> torch.Tensor:
    """Input of the policy.

    ``v1`` policies (and ``config=None``): f0's mean softmax (3), its entropy (1) and the
    image (1) at full resolution. ``v2``: the same plus the local standard deviation of
    the image, average-pooled by ``config.pool``, then (with ``config.refiner_kl``) the
    :func:`refiner_correction` of f0's ``refined`` prediction, then (with ``config.mc_spread``) the
    MC passes' ``spread`` (:func:`mc_predict`), then (with ``config.image_residual``)
    the :func:`image_residual` of f0's prediction, and (unless ``config.f0_features`` is
    False) f0's finest features resized to that grid (they come for free with f0's
    analysis).
    """
    if config is None or config.features != "v2":
        return torch.cat([mean_prob, ent.unsqueeze(1), x], dim=1)
    p = config.pool
    maps = [ent.unsqueeze(1), x, x * x]
    if config.refiner_kl:
        if refined is None:
            raise ValueError("this policy reads how far f0's refiner moved its prediction: pass refined (UNet.refine)")
        maps.append(refiner_correction(mean_prob, refined).to(x.dtype))
    if config.mc_spread:
        if spread is None:
            raise ValueError("this policy reads the spread of f0's MC passes: pass spread (mc_predict(..., return_spread=True))")
        maps.append(spread.unsqueeze(1).to(x.dtype))
    if config.image_residual:
        maps.append(image_residual(x, mean_prob, ent))
    # Pooled before they are concatenated: a full-resolution concatenation would copy
    # every channel once more.
    rest = F.avg_pool2d(torch.cat(maps, dim=1), p)
    mean, mean_sq = rest[:, 1:2], rest[:, 2:3]
    std = (mean_sq - mean * mean).clamp_min(0).sqrt()
    parts = [F.avg_pool2d(mean_prob, p), rest[:, :2], std, rest[:, 3:]]  # then the KL, the spread and the residual, if read
    if f0_features is not None and config.f0_features:
        f = f0_features.float()
        if f.shape[-2:] != rest.shape[-2:]:
            f = F.adaptive_avg_pool2d(f, (rest.shape[-2], rest.shape[-1]))
        parts.append(f)
    return torch.cat(parts, dim=1)


def analyse_slices(f0: UNet, policy_config: PolicyConfig, x: torch.Tensor, passes: int, seed: int | None) -> tuple[torch.Tensor, ...]:
    """f0's MC-dropout analysis of ``x`` and the policy's input: (prob, entropy, features).

    ``x`` is (N, planes, rows, columns) as f0 reads it; the policy's image channel is the
    centre plane (the slice itself). ``prob`` is f0's prediction: the MC mean, refined
    when f0 has a refiner (:meth:`UNet.refine`, which reads the centre planes it needs);
    the entropy and the policy's input are those of the MC mean (with how far the
    refiner moved it, if the policy reads that).
    """
    prob, ent, feats, *spread = mc_predict(f0, x, passes, seed=seed, return_features=True, return_spread=policy_config.mc_spread)
    refined = f0.refine(x, prob)
    c = x.shape[1] // 2
    centre = x[:, c : c + 1]
    features = policy_features(centre, prob.float(), ent.float(), feats, policy_config, spread[0] if spread else None, refined)
    return refined, ent, features
