"""3-D electrode microstructure at twice the output resolution (numpy/scipy, no torch).

Phases: 0 pore, 1 carbon-binder, 2 nickel active material. Nickel is a Boolean model of
overlapping ellipsoids (log-normal radii) whose size follows a smooth spatial field, so
one slice holds both coarse segregated particles and fine interspersed ones; a
morphological closing sinters touching particles into agglomerates. Carbon-binder is
then chosen among the non-nickel voxels by a score that favours thin films on particle
surfaces, bridges at necks and the fine regions, broken up by a noise field; taking the
top-k voxels of that score hits the requested fraction exactly.

Families (``MicrostructureParams.family``) change how the nickel is built:

- ``spheres``: the Boolean model above (near-spherical, log-normal sizes);
- ``agglomerates``: primaries scattered around cluster centres and sintered together;
- ``flakes``: oblate particles (one short axis per particle, 3-6x thinner);
- ``intermixed``: like spheres, with the carbon-binder broken into fine grains mixed
  with pore (set through the score weights, see :func:`..synth.sample_params`);
- ``cracked`` (held out of training, for the out-of-family test): large secondary
  particles split by thin pore cracks, as in cycled Ni-rich cathodes.

``gradient`` makes the nickel density change linearly across the rows, like the
through-thickness gradient of a calendered electrode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

PORE, CARBON, NICKEL = 0, 1, 2


@dataclass(frozen=True)
class MicrostructureParams:
    """Geometry of one volume, in high-resolution voxels (half an output pixel)."""

    nickel_fraction: float = 0.55
    carbon_fraction: float = 0.13
    coarse_radius: float = 12.0
    fine_radius: float = 4.5
    radius_sigma: float = 0.3
    aspect_sigma: float = 0.12
    coarse_share: float = 0.5
    region_scale: float = 40.0
    sinter_radius: float = 1.5
    film_thickness: float = 2.5
    bridge_radius: float = 4.0
    film_patchiness: float = 1.0
    fragmentation: float = 0.8
    fine_carbon_bias: float = 1.0
    family: str = "spheres"
    gradient: float = 0.0  # relative change of the particle density across the rows
    flake_ratio: float = 1.0  # long / short axis of flakes
    cluster_spread: float = 0.0  # agglomerates: primaries' spread around a centre, x coarse_radius
    crack_width: float = 0.0  # cracked: half-width of the crack sheets (field units)
    crack_scale: float = 6.0  # cracked: correlation length of the crack field


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma``.

    Large ``sigma`` fields are made on a coarse grid and linearly upsampled, which is
    ~100x cheaper than blurring full-size white noise with a wide kernel.
    """
    factor = max(1, int(sigma // 3))
    small = tuple(-(-s // factor) + 1 for s in shape)
    noise = rng.standard_normal(small).astype(np.float32)
    field = ndi.gaussian_filter(noise, sigma / factor, mode="wrap")
    if factor > 1:
        field = ndi.zoom(field, factor, order=1, mode="nearest", prefilter=False)
    field = np.ascontiguousarray(field[tuple(slice(0, s) for s in shape)])
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def _paint_ellipsoids(vol: np.ndarray, centers: np.ndarray, axes: np.ndarray) -> None:
    """Set to True every voxel inside the axis-aligned ellipsoids (periodic wrap).

    Vectorised per group of equal bounding-box size; chunks keep memory bounded.
    """
    shape = np.array(vol.shape)
    flat = vol.reshape(-1)
    half = np.ceil(axes.max(axis=1)).astype(int)
    for h in np.unique(half):
        sel = np.flatnonzero(half == h)
        grid = np.arange(-h, h + 1)
        offs = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
        chunk = max(1, 2_000_000 // len(offs))
        for start in range(0, len(sel), chunk):
            idx = sel[start : start + chunk]
            base = np.rint(centers[idx]).astype(int)
            frac = (base - centers[idx])[:, None, :]  # sub-voxel centre offset
            d = (offs[None, :, :] + frac) / axes[idx][:, None, :]
            inside = np.einsum("nkc,nkc->nk", d, d) <= 1.0
            pts = (base[:, None, :] + offs[None, :, :])[inside] % shape
            flat[np.ravel_multi_index(pts.T, vol.shape)] = True


def _closing(mask: np.ndarray, radius: float, dist_out: np.ndarray | None = None) -> np.ndarray:
    """Binary closing with a ball, via two Euclidean distance transforms (fast for big r)."""
    if radius <= 0:
        return mask.copy()
    if dist_out is None:
        dist_out = ndi.distance_transform_edt(~mask)
    dilated = dist_out <= radius
    return ndi.distance_transform_edt(dilated) > radius


def _nickel(rng: np.random.Generator, shape: tuple[int, int, int], p: MicrostructureParams, coarse_w: np.ndarray) -> np.ndarray:
    """Overlapping ellipsoids added in batches until the target fraction is reached."""
    vol = np.zeros(shape, bool)
    n_total = vol.size
    # Sintering adds a little solid, so aim slightly lower before closing.
    target = p.nickel_fraction - 0.02
    mean_fine_vol = 4.19 * p.fine_radius**3 * np.exp(4.5 * p.radius_sigma**2)
    filled = 0
    for _ in range(40):
        deficit = target - filled / n_total
        if deficit <= 0:
            break
        # Boolean model: overlap wastes volume, so request extra candidates.
        n = int(max(16, 1.3 * deficit * n_total / mean_fine_vol / max(1e-3, 1 - filled / n_total)))
        centers = rng.random((n, 3)) * np.array(shape)
        if p.cluster_spread > 0:
            # Agglomerates: every primary sits near one of a few cluster centres.
            parents = rng.random((max(1, n // 12), 3)) * np.array(shape)
            spread = p.cluster_spread * p.coarse_radius
            centers = (parents[rng.integers(0, len(parents), n)] + spread * rng.standard_normal((n, 3))) % np.array(shape)
        ci = np.minimum(centers.astype(int), np.array(shape) - 1)
        w = coarse_w[ci[:, 0], ci[:, 1], ci[:, 2]]
        median = np.where(rng.random(n) < w, p.coarse_radius, p.fine_radius)
        radius = median * np.exp(p.radius_sigma * rng.standard_normal(n))
        radius = np.clip(radius, 1.5, 3 * p.coarse_radius)
        # Centre density ~ 1/r^3 keeps the solid fraction uniform across size regions.
        accept = np.minimum(1.0, (p.fine_radius / radius) ** 3)
        if p.gradient != 0:
            ramp = centers[:, 1] / shape[1] - 0.5
            accept = accept * np.clip(1.0 + p.gradient * ramp, 0.05, None) / (1.0 + abs(p.gradient) / 2)
        keep = rng.random(n) < accept
        centers, radius = centers[keep], radius[keep]
        axes = radius[:, None] * np.exp(p.aspect_sigma * rng.standard_normal((len(radius), 3)))
        if p.flake_ratio > 1:
            # Oblate flakes of the same volume: one short axis, chosen per particle.
            thin = rng.integers(0, 3, len(radius))
            axes *= p.flake_ratio ** (1 / 3)
            axes[np.arange(len(radius)), thin] /= p.flake_ratio
        _paint_ellipsoids(vol, centers, axes)
        filled = int(np.count_nonzero(vol))
    return _closing(vol, p.sinter_radius)


def generate_microstructure(rng: np.random.Generator, shape: tuple[int, int, int], params: MicrostructureParams) -> np.ndarray:
    """Phase map of a 3-D electrode.

    Parameters
    ----------
    rng
        Random generator (all randomness comes from it: deterministic per seed).
    shape
        High-resolution (Z, Y, X) grid.
    params
        Geometry parameters.

    Returns
    -------
    np.ndarray
        uint8 (Z, Y, X): 0 pore, 1 carbon-binder, 2 nickel.
    """
    p = params
    region = smooth_field(rng, shape, p.region_scale)
    thr = np.quantile(region, 1.0 - p.coarse_share)
    coarse_w = 1.0 / (1.0 + np.exp(-(region - thr) / 0.25))  # soft coarse/fine map
    nickel = _nickel(rng, shape, p, coarse_w)
    cracks = None
    if p.crack_width > 0:
        # Thin sheets where a smooth field crosses zero, inside the particles only.
        sheet = np.abs(smooth_field(rng, shape, p.crack_scale)) < p.crack_width
        cracks = sheet & nickel & (ndi.distance_transform_edt(nickel) > 2.0)
        nickel &= ~cracks

    dist = ndi.distance_transform_edt(~nickel).astype(np.float32)
    # Necks and concave gaps: what a larger closing would fill.
    bridge = _closing(nickel, p.bridge_radius, dist) & ~nickel
    patches = smooth_field(rng, shape, 8.0)
    grains = smooth_field(rng, shape, 2.5)
    score = (
        -dist / p.film_thickness
        + p.film_patchiness * patches
        + p.fragmentation * grains
        + 1.5 * bridge
        + p.fine_carbon_bias * (1.0 - coarse_w)
    )
    score[nickel] = -np.inf
    if cracks is not None:
        score[cracks] = -np.inf  # binder does not creep into cracks
    k = int(round(p.carbon_fraction * score.size))
    free = score.size - int(np.count_nonzero(nickel)) - (0 if cracks is None else int(np.count_nonzero(cracks)))
    phases = np.where(nickel, np.uint8(NICKEL), np.uint8(PORE))
    if k > 0 and free > 0:
        k = min(k, free)
        flat = score.reshape(-1)
        cut = np.partition(flat, flat.size - k)[flat.size - k]
        phases[(score >= cut) & ~nickel] = CARBON
    return phases


def majority_downsample(phases: np.ndarray, factor: int = 2) -> np.ndarray:
    """Labels on the output grid: majority vote over each ``factor``^3 block.

    Ties are broken towards carbon, then nickel, then pore, so thin binder films that
    fill half a block are not erased.
    """
    z, y, x = (s // factor for s in phases.shape)
    blocks = phases[: z * factor, : y * factor, : x * factor].reshape(z, factor, y, factor, x, factor)
    priority = {PORE: 0, CARBON: 2, NICKEL: 1}
    best = None
    out = np.zeros((z, y, x), np.uint8)
    for cls in (PORE, CARBON, NICKEL):
        votes = (blocks == cls).sum(axis=(1, 3, 5), dtype=np.int16) * 3 + priority[cls]
        if best is None:
            best = votes
        else:
            better = votes > best
            out[better] = cls
            best = np.maximum(best, votes)
    return out
