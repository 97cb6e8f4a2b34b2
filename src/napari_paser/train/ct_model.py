"""Low-resolution parallel-beam micro-CT forward model (numpy/scipy/skimage, no torch).

High-resolution phase map -> attenuation with intra-phase texture -> point-spread blur ->
2x block average onto the output grid -> per-slice radon transform -> photon counts with
per-detector-bin gain errors (rings, identical for all slices, as on a real detector),
occasional bad projections (streaks), Poisson and read noise -> log -> filtered
back-projection -> crop -> beam-hardening cupping -> grey values.

Propagation-based phase contrast adds bright/dark fringes at edges (a Laplacian term,
:func:`edge_fringes`); the reconstruction filter is a parameter. The file encoding is
one of what scanners export (:func:`encode`): uint16 with an arbitrary offset and gain,
uint8 through a grey window (possibly clipping), or float32 attenuation in 1/cm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import iradon, radon

from .microstructure import CARBON, NICKEL, PORE, smooth_field


@dataclass(frozen=True)
class CTParams:
    """Scanner and material parameters of one volume."""

    carbon_contrast: float = 0.25  # carbon attenuation as a fraction of pore -> nickel
    pore_level: float = 0.03  # pore attenuation relative to nickel (1.0)
    nickel_texture: float = 0.05
    carbon_texture: float = 0.15
    shading: float = 0.04  # slow multiplicative variation of the attenuation
    psf_sigma: float = 1.2  # in high-resolution voxels
    mean_attenuation: float = 1.5  # mean line integral across the field (Beer-Lambert)
    photons: float = 6000.0  # I0 per detector bin and angle
    read_noise: float = 4.0  # detector read noise, in counts
    ring_strength: float = 0.01  # relative std of detector-bin gains
    streak_probability: float = 0.1  # per slice
    cupping: float = 0.1  # beam-hardening dip at the rotation centre, relative to nickel
    n_angles: int = 200
    offset: float = 12000.0  # output grey value of zero attenuation
    gain: float = 25000.0  # output grey values per unit (nickel) attenuation
    filter_name: str = "shepp-logan"  # filtered back-projection filter
    phase_contrast: float = 0.0  # strength of the edge fringes
    encoding: str = "uint16"  # uint16 | uint8 | float32
    window_low: float = 0.0  # uint8: window edges, as fractions of the robust range
    window_high: float = 0.0  #   beyond (>0) or inside (<0) it
    mu_scale: float = 1.0  # float32: attenuation of nickel in 1/cm


def attenuation_map(rng: np.random.Generator, phases: np.ndarray, p: CTParams) -> np.ndarray:
    """Relative attenuation on the high-resolution grid (nickel ~ 1, pore ~ ``pore_level``)."""
    carbon_level = p.pore_level + p.carbon_contrast * (1.0 - p.pore_level)
    levels = np.zeros(3, np.float32)
    levels[PORE], levels[CARBON], levels[NICKEL] = p.pore_level, carbon_level, 1.0
    mu = levels[phases]
    grain = smooth_field(rng, phases.shape, 1.0)
    # Texture: grain contrast inside nickel, nanoporosity inside the binder.
    tex = np.zeros(3, np.float32)
    tex[CARBON], tex[NICKEL] = p.carbon_texture, p.nickel_texture
    mu *= 1.0 + tex[phases] * grain
    mu *= 1.0 + p.shading * smooth_field(rng, phases.shape, 30.0)
    np.maximum(mu, 0.0, out=mu)
    return ndi.gaussian_filter(mu, p.psf_sigma, mode="nearest")


def edge_fringes(mu: np.ndarray, strength: float, sigma: float = 1.0) -> np.ndarray:
    """Attenuation with phase-contrast fringes: ``mu - strength * sigma² ∇²G_σ(mu)``, per slice.

    Propagation-based phase contrast adds the Laplacian of the phase to the intensity,
    so edges get a bright and a dark band (overshoot) after reconstruction.
    """
    if strength <= 0:
        return mu
    # In-plane Laplacian of Gaussian only (gaussian_laplace with sigma 0 on an axis
    # would add a meaningless second derivative along it).
    s = (0.0, sigma, sigma)
    lap = ndi.gaussian_filter(mu, s, order=(0, 2, 0), mode="nearest") + ndi.gaussian_filter(mu, s, order=(0, 0, 2), mode="nearest")
    return (mu - strength * sigma**2 * lap).astype(np.float32)


def block_mean(vol: np.ndarray, factor: int = 2) -> np.ndarray:
    """Average over ``factor``^3 blocks (detector pixel and slice-thickness integration)."""
    z, y, x = (s // factor for s in vol.shape)
    v = vol[: z * factor, : y * factor, : x * factor]
    return v.reshape(z, factor, y, factor, x, factor).mean(axis=(1, 3, 5), dtype=np.float32)


def _crop_window(shape: tuple[int, int], size: int) -> tuple[slice, slice]:
    """Where skimage's ``radon(circle=False)`` placed the image inside its padded square."""
    diagonal = np.sqrt(2) * max(shape)
    pads = [int(np.ceil(diagonal - s)) for s in shape]
    out = []
    for s, pad in zip(shape, pads):
        before = (s + pad) // 2 - s // 2
        before += (size - (s + pad)) // 2  # iradon output_size may differ by rounding
        out.append(slice(before, before + s))
    return out[0], out[1]


def scan(rng: np.random.Generator, mu: np.ndarray, p: CTParams) -> np.ndarray:
    """Simulated reconstruction of a (Z, Y, X) relative attenuation volume.

    Parameters
    ----------
    rng
        Random generator for noise, rings and streaks.
    mu
        Relative attenuation on the output grid.
    p
        Scanner parameters.

    Returns
    -------
    np.ndarray
        float32 (Z, Y, X) reconstruction in relative units (nickel ~ 1).
    """
    nz, ny, nx = mu.shape
    theta = np.linspace(0.0, 180.0, p.n_angles, endpoint=False)
    # Physical scale: mean line integral through the padded field ~ mean_attenuation.
    path = 0.5 * (ny + nx)
    scale = p.mean_attenuation / max(1e-6, float(mu.mean()) * path)
    n_bins = radon(np.zeros((ny, nx), np.float32), theta[:1], circle=False).shape[0]
    # Detector gains are a property of the detector: the same for every slice -> rings.
    gains = 1.0 + p.ring_strength * rng.standard_normal(n_bins)
    bad = rng.random(n_bins) < 0.02  # a few strongly miscalibrated bins
    gains[bad] *= 1.0 + 2.0 * p.ring_strength * rng.standard_normal(int(bad.sum()))
    gains = np.clip(gains, 0.5, 1.5)[:, None]
    out = np.empty(mu.shape, np.float32)
    window = None
    for z in range(nz):
        sino = radon(mu[z].astype(np.float64) * scale, theta, circle=False)
        expected = p.photons * gains * np.exp(-sino)
        counts = rng.poisson(expected).astype(np.float64)
        counts += p.read_noise * rng.standard_normal(counts.shape)
        if rng.random() < p.streak_probability:
            # A flickering source or a hit by a stray photon burst spoils a few views.
            views = rng.integers(0, p.n_angles, size=int(rng.integers(1, 4)))
            counts[:, views] *= rng.uniform(0.6, 1.5, size=len(views))
        line = -np.log(np.maximum(counts, 1.0) / p.photons)
        rec = iradon(line, theta, output_size=n_bins, circle=False, filter_name=p.filter_name)
        if window is None:
            window = _crop_window((ny, nx), rec.shape[0])
        out[z] = rec[window] / scale
    # Beam hardening: long paths through the centre harden the beam -> darker centre.
    yy, xx = np.mgrid[:ny, :nx]
    r2 = ((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) / (0.25 * (ny**2 + nx**2))
    out -= np.float32(p.cupping) * (1.0 - r2).astype(np.float32)
    return out


def to_uint16(rec: np.ndarray, p: CTParams) -> np.ndarray:
    """Map relative attenuation to uint16 grey values with the volume's offset and gain."""
    grey = np.rint(p.offset + p.gain * rec)
    return np.clip(grey, 0, 65535).astype(np.uint16)


def encode(rec: np.ndarray, p: CTParams) -> np.ndarray:
    """Grey values of a reconstruction as the scanner would export them (``p.encoding``).

    - ``uint16``: ``offset + gain * rec`` (:func:`to_uint16`);
    - ``uint8``: a grey window around the 0.1-99.9 % range, widened or narrowed at each
      end by ``window_low`` / ``window_high`` of that range (narrowing clips);
    - ``float32``: attenuation coefficients, ``mu_scale * rec`` (1/cm, negative values kept).
    """
    if p.encoding == "uint16":
        return to_uint16(rec, p)
    if p.encoding == "uint8":
        lo, hi = (float(v) for v in np.percentile(rec[:, ::4, ::4], [0.1, 99.9]))
        span = hi - lo
        lo, hi = lo - p.window_low * span, hi + p.window_high * span
        grey = np.rint((rec - lo) * (255.0 / (hi - lo)))
        return np.clip(grey, 0, 255).astype(np.uint8)
    if p.encoding == "float32":
        return (np.float32(p.mu_scale) * rec).astype(np.float32)
    raise ValueError(f"unknown encoding {p.encoding!r}")
