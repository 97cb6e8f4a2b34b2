"""Data augmentation for training on normalised slices (torch, batched, seeded).

Everything takes a ``torch.Generator`` so a run (and a resumed run) is reproducible.
Images are (B, 1, rows, columns) float tensors already normalised per volume; labels
are (B, rows, columns) int64 class maps. Geometric transforms move both; intensity
transforms touch the image only.

Why these transforms: scans of other instruments differ in contrast, offset, noise
and sharpness, and the phases have no preferred orientation, so a model trained on a
few synthetic volumes generalises only if it has seen that variety.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "geometric", "intensity", "salt_and_pepper", "augment_batch"]


@dataclass
class AugmentConfig:
    """Strength of every augmentation (0 or ``False`` switches one off).

    Attributes
    ----------
    flips : bool
        Random horizontal and vertical flips (and so 180° rotations).
    rot90 : bool
        Random 90° rotations where the crop is square.
    contrast : float
        Gain drawn log-uniformly from ``[1/(1+contrast), 1+contrast]`` around 0.5.
    offset : float
        Additive offset drawn from ``[-offset, offset]``.
    noise : float
        Largest standard deviation of additive Gaussian noise.
    noise_prob : float
        Probability that a sample gets Gaussian noise.
    blur : float
        Largest Gaussian blur sigma in pixels.
    blur_prob : float
        Probability that a sample is blurred.
    impulse : float
        Largest fraction of salt-and-pepper pixels (0: off). Used for f1/f2 only, as in
        the paper: f0 and the policy never see impulse noise.
    impulse_prob : float
        Probability that a sample gets salt-and-pepper noise.
    """

    flips: bool = True
    rot90: bool = True
    contrast: float = 0.35
    offset: float = 0.1
    noise: float = 0.06
    noise_prob: float = 0.5
    blur: float = 1.2
    blur_prob: float = 0.3
    impulse: float = 0.0
    impulse_prob: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def geometric(
    image: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and, for square inputs, 90° rotations; the same for image and labels."""
    b = image.shape[0]
    if cfg.flips:
        fy = torch.rand(b, generator=g) < 0.5
        fx = torch.rand(b, generator=g) < 0.5
        image = torch.where(fy.view(-1, 1, 1, 1), image.flip(-2), image)
        labels = torch.where(fy.view(-1, 1, 1), labels.flip(-2), labels)
        image = torch.where(fx.view(-1, 1, 1, 1), image.flip(-1), image)
        labels = torch.where(fx.view(-1, 1, 1), labels.flip(-1), labels)
    if cfg.rot90 and image.shape[-1] == image.shape[-2]:
        # Flips already give 180°; a transpose completes the eight symmetries of a square.
        tr = torch.rand(b, generator=g) < 0.5
        image = torch.where(tr.view(-1, 1, 1, 1), image.transpose(-1, -2), image)
        labels = torch.where(tr.view(-1, 1, 1), labels.transpose(-1, -2), labels)
    return image, labels


def _gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (sigma 0 leaves it unchanged)."""
    radius = int(max(1, torch.ceil(3 * sigma.max()).item()))
    t = torch.arange(-radius, radius + 1, dtype=image.dtype)
    s = sigma.clamp_min(1e-3).view(-1, 1).to(image.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, K)
    b, c, h, w = image.shape
    x = F.pad(image.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    kx = k.repeat_interleave(c, 0).view(b * c, 1, 1, -1)
    ky = k.repeat_interleave(c, 0).view(b * c, 1, -1, 1)
    x = F.conv2d(x, kx, groups=b * c)
    x = F.conv2d(x, ky, groups=b * c)
    return x.view(b, c, h, w)


def intensity(image: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Contrast/offset jitter, blur and Gaussian noise, drawn per sample."""
    b = image.shape[0]
    view = (-1, 1, 1, 1)
    if cfg.blur > 0 and cfg.blur_prob > 0:
        sigma = _uniform(b, 0.3, cfg.blur, g) * (torch.rand(b, generator=g) < cfg.blur_prob)
        if bool((sigma > 0).any()):
            image = _gaussian_blur(image, sigma)
    if cfg.contrast > 0:
        log_gain = _uniform(b, -1.0, 1.0, g) * torch.log1p(torch.tensor(cfg.contrast))
        image = (image - 0.5) * log_gain.exp().view(view) + 0.5
    if cfg.offset > 0:
        image = image + _uniform(b, -cfg.offset, cfg.offset, g).view(view)
    if cfg.noise > 0 and cfg.noise_prob > 0:
        std = _uniform(b, 0.0, cfg.noise, g) * (torch.rand(b, generator=g) < cfg.noise_prob)
        image = image + std.view(view) * torch.randn(image.shape, generator=g)
    return image


def salt_and_pepper(image: torch.Tensor, fraction: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Set a ``fraction`` (per sample) of pixels to the sample's minimum or maximum."""
    b = image.shape[0]
    flat = image.reshape(b, -1)
    lo = flat.min(1).values.view(-1, 1)
    hi = flat.max(1).values.view(-1, 1)
    u = torch.rand(flat.shape, generator=g)
    f = fraction.view(-1, 1).to(image.dtype)
    out = torch.where(u < f / 2, lo, flat)
    out = torch.where((u >= f / 2) & (u < f), hi, out)
    return out.view_as(image)


def augment_batch(
    image: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, *, impulse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric then intensity augmentation (and impulse noise if ``impulse``)."""
    image, labels = geometric(image, labels, cfg, g)
    image = intensity(image, cfg, g)
    if impulse and cfg.impulse > 0 and cfg.impulse_prob > 0:
        b = image.shape[0]
        frac = _uniform(b, 0.0, cfg.impulse, g) * (torch.rand(b, generator=g) < cfg.impulse_prob)
        image = salt_and_pepper(image, frac, g)
    return image.contiguous(), labels.contiguous()
