"""Synthetic battery-electrode micro-CT volumes with ground-truth phase labels.

``generate_volume`` builds a 3-D microstructure at twice the output resolution
(:mod:`.microstructure`), scans it with a parallel-beam CT model (:mod:`.ct_model`) and
labels each output voxel by majority vote of its 2x2x2 high-resolution block.

Parameters are drawn per volume from a named *distribution* (:data:`DISTRIBUTIONS`):

- ``v1``: the first generator (one sphere-packing family, one narrow CT model, uint16);
  kept so the in-family test set stays the one earlier bundles were measured on;
- ``v2``: the training distribution: four microstructure families, electrode-scale
  gradients, thin to thick binder films, and a CT model whose every knob is drawn over
  a wide range (blur, dose, read noise, reconstruction filter, rings, streaks, phase
  contrast fringes, cupping, binder/pore contrast from nearly equal to clear) written
  as uint8, uint16 or float32 with an arbitrary window;
- ``oof``: the out-of-family test: a microstructure family that ``v2`` never draws
  (cracked secondary particles) scanned by a "scanner" outside ``v2``'s ranges
  (sparse views, wider blur, stronger fringes, lower dose). Nothing is tuned on it.

Labels are uint8: 0 pore, 1 carbon-binder, 2 nickel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import CLASS_NAMES
from ..errors import PaserInputError
from ..io import write_tiff
from .ct_model import CTParams, attenuation_map, block_mean, edge_fringes, encode, scan
from .microstructure import MicrostructureParams, generate_microstructure, majority_downsample

DEFAULT_SIZE = (224, 256)
MIN_SLICES = 16
"""Fewest slices the generator makes whole by default; thinner volumes are cut from the middle of one this deep."""


@dataclass(frozen=True)
class VolumeParams:
    """Everything that differs between synthetic volumes."""

    micro: MicrostructureParams = field(default_factory=MicrostructureParams)
    ct: CTParams = field(default_factory=CTParams)
    voxel_size_um: float = 0.7  # output voxel edge length

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable nested dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VolumeParams":
        """Inverse of :meth:`to_dict` (unknown keys are rejected)."""
        try:
            return cls(
                micro=MicrostructureParams(**d.get("micro", {})),
                ct=CTParams(**d.get("ct", {})),
                voxel_size_um=float(d.get("voxel_size_um", 0.7)),
            )
        except TypeError as err:
            raise PaserInputError(f"bad synthetic-volume parameters: {err}") from None


def sample_params_v1(rng: np.random.Generator) -> VolumeParams:
    """Draw the parameters of one volume from the first (``v1``) distribution.

    Particle sizes, phase fractions, binder contrast, grey-value offset/gain, dose and
    blur all vary, so a model must generalise across volumes.

    Parameters
    ----------
    rng
        Random generator.

    Returns
    -------
    VolumeParams
    """
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    micro = MicrostructureParams(
        nickel_fraction=u(0.49, 0.61),
        carbon_fraction=u(0.10, 0.17),
        coarse_radius=u(12.0, 20.0),
        fine_radius=u(4.0, 6.5),
        radius_sigma=u(0.2, 0.35),
        aspect_sigma=u(0.05, 0.18),
        coarse_share=u(0.35, 0.65),
        region_scale=u(30.0, 50.0),
        sinter_radius=u(1.0, 2.0),
        film_thickness=u(3.0, 5.0),
        bridge_radius=u(3.0, 5.0),
        film_patchiness=u(0.8, 1.5),
        fragmentation=u(0.15, 0.35),
        fine_carbon_bias=u(0.6, 1.4),
    )
    ct = CTParams(
        carbon_contrast=u(0.18, 0.30),
        pore_level=u(0.0, 0.06),
        nickel_texture=u(0.03, 0.08),
        carbon_texture=u(0.08, 0.2),
        shading=u(0.02, 0.06),
        psf_sigma=u(0.8, 1.5),
        mean_attenuation=u(1.0, 2.0),
        photons=float(np.exp(rng.uniform(np.log(30000), np.log(120000)))),
        read_noise=u(2.0, 8.0),
        ring_strength=u(0.002, 0.01),
        streak_probability=u(0.03, 0.15),
        cupping=u(0.04, 0.14),
        n_angles=int(rng.integers(180, 257)),
        offset=u(6000.0, 20000.0),
        gain=u(15000.0, 35000.0),
    )
    return VolumeParams(micro=micro, ct=ct, voxel_size_um=u(0.5, 1.0))


TRAIN_FAMILIES = ("spheres", "agglomerates", "flakes", "intermixed")
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def _encoding(rng: np.random.Generator, u) -> dict[str, Any]:
    """File encoding of one volume: uint8 / uint16 / float32 with its window."""
    kind = str(rng.choice(["uint8", "uint16", "float32"], p=[0.3, 0.45, 0.25]))
    gain = u(2000.0, 40000.0)
    return {
        "encoding": kind,
        "gain": gain,
        "offset": u(0.0, 65535.0 - 1.4 * gain),
        "window_low": u(-0.03, 0.3),
        "window_high": u(-0.03, 0.3),
        "mu_scale": float(np.exp(rng.uniform(np.log(0.2), np.log(30.0)))),
    }


def sample_params(rng: np.random.Generator, family: str | None = None) -> VolumeParams:
    """Draw the parameters of one volume from the training (``v2``) distribution.

    Parameters
    ----------
    rng
        Random generator.
    family
        One of :data:`TRAIN_FAMILIES` (or ``cracked``); drawn when None.

    Returns
    -------
    VolumeParams
    """
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    fam = family or str(rng.choice(TRAIN_FAMILIES, p=[0.35, 0.2, 0.2, 0.25]))
    coarse = u(8.0, 24.0)
    micro: dict[str, Any] = dict(
        nickel_fraction=u(0.40, 0.65),
        carbon_fraction=u(0.07, 0.22),
        coarse_radius=coarse,
        fine_radius=u(3.0, 7.0),
        radius_sigma=u(0.15, 0.4),
        aspect_sigma=u(0.03, 0.25),
        coarse_share=u(0.2, 0.8),
        region_scale=u(25.0, 60.0),
        sinter_radius=u(0.5, 2.5),
        film_thickness=u(1.5, 6.0),
        bridge_radius=u(2.0, 6.0),
        film_patchiness=u(0.5, 1.8),
        fragmentation=u(0.1, 0.5),
        fine_carbon_bias=u(0.4, 1.6),
        family=fam,
        gradient=u(-1.2, 1.2) if rng.random() < 0.4 else 0.0,
    )
    if fam == "agglomerates":
        micro.update(cluster_spread=u(0.6, 1.5), sinter_radius=u(1.5, 3.5), fine_radius=u(2.5, 4.5))
    elif fam == "flakes":
        micro.update(flake_ratio=u(3.0, 6.0))
    elif fam == "intermixed":
        micro.update(fragmentation=u(0.8, 1.8), fine_carbon_bias=u(1.2, 2.2), film_thickness=u(1.0, 3.0), carbon_fraction=u(0.12, 0.25))
    elif fam == "cracked":
        micro.update(crack_width=u(0.03, 0.07), crack_scale=u(4.0, 8.0), coarse_radius=u(18.0, 26.0), coarse_share=u(0.6, 0.9))
    ct = dict(
        carbon_contrast=u(0.04, 0.45),
        pore_level=u(0.0, 0.1),
        nickel_texture=u(0.02, 0.12),
        carbon_texture=u(0.05, 0.3),
        shading=u(0.0, 0.08),
        psf_sigma=u(0.5, 2.2),
        mean_attenuation=u(0.6, 2.5),
        photons=float(np.exp(rng.uniform(np.log(8000), np.log(300000)))),
        read_noise=u(1.0, 15.0),
        ring_strength=u(0.0, 0.02),
        streak_probability=u(0.0, 0.3),
        cupping=u(0.0, 0.25),
        n_angles=int(rng.integers(120, 361)),
        filter_name=str(rng.choice(FILTERS)),
        phase_contrast=u(0.0, 0.6) if rng.random() < 0.5 else 0.0,
        **_encoding(rng, u),
    )
    return VolumeParams(micro=MicrostructureParams(**micro), ct=CTParams(**ct), voxel_size_um=u(0.3, 2.0))


def sample_params_oof(rng: np.random.Generator) -> VolumeParams:
    """Draw the parameters of one out-of-family test volume (see the module docstring).

    The family (``cracked``) is never drawn by :func:`sample_params`; the scanner lies
    outside its ranges: 60-100 views (v2: 120-360), blur 2.3-2.8 (v2: ≤ 2.2), fringes
    0.7-0.9 (v2: ≤ 0.6), 4000-7000 photons (v2: ≥ 8000), float32 export.
    """
    base = sample_params(rng, family="cracked")
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    ct = replace(
        base.ct,
        n_angles=int(rng.integers(60, 101)),
        psf_sigma=u(2.3, 2.8),
        phase_contrast=u(0.7, 0.9),
        photons=u(4000.0, 7000.0),
        filter_name="hann",
        encoding="float32",
    )
    return replace(base, ct=ct)


DISTRIBUTIONS = {"v1": sample_params_v1, "v2": sample_params, "oof": sample_params_oof}


def phase_fractions(labels: np.ndarray) -> dict[str, float]:
    """Fraction of voxels per phase, keyed by class name."""
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=3)[:3]
    return {name: float(c) / max(1, labels.size) for name, c in zip(CLASS_NAMES, counts)}


def generate_volume(
    seed: int,
    slices: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    params: VolumeParams | None = None,
    distribution: str = "v2",
    depth: int = MIN_SLICES,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One synthetic micro-CT volume and its labels.

    Parameters
    ----------
    seed
        Seeds everything: the same seed (and arguments) gives identical bytes.
    slices
        Number of output slices Z (>= 1).
    size
        Output slice size (Y, X), each >= 16.
    params
        Fixed parameters; drawn from the seed and ``distribution`` when None.
    distribution
        ``v1``, ``v2`` or ``oof`` (:data:`DISTRIBUTIONS`).
    depth
        A volume of fewer slices is the middle of the ``depth``-slice volume of the same
        seed (see Notes); :data:`MIN_SLICES` by default.

    Returns
    -------
    image : np.ndarray
        (Z, Y, X) reconstruction: uint16, uint8 or float32 (``params.ct.encoding``).
    labels : np.ndarray
        uint8 (Z, Y, X): 0 pore, 1 carbon-binder, 2 nickel.
    info : dict
        JSON-serialisable: ``seed``, ``params``, ``fractions``, ``voxel_size_um``
        (plane, row, column) and ``shape``.

    Notes
    -----
    The microstructure is periodic in every axis (particles wrap around the volume's
    faces; its smooth fields are filtered with wrap-around). A volume thinner than its
    larger particles would wrap them onto themselves and make its planes more alike than
    a real scan's, so a volume of fewer than ``depth`` (:data:`MIN_SLICES`) slices is the
    middle of the ``depth``-slice volume of the same seed (``info["cut_from"]`` says
    where). For the first generator, labels equal the next plane's on 90.5 % of the
    voxels of an 8-slice volume made whole, against 87.7 % with 16 slices and 87.3 %
    with 32 (median of 12 seeds, ``benchmarks/probe_check_level.py``).
    """
    ny, nx = (int(s) for s in size)
    if int(slices) < 1 or ny < 16 or nx < 16:
        raise PaserInputError(f"need at least 1 slice of 16x16 or more, got {slices} x {ny}x{nx}")
    if int(slices) < int(depth):
        return _middle_of(generate_volume(seed, int(depth), size, params, distribution, depth), int(slices))
    _, micro_ss, ct_ss = _streams(seed)
    params_drawn = params is None
    if params is None:
        params = draw_params(seed, distribution)
    hi_shape = (2 * int(slices), 2 * ny, 2 * nx)
    phases = generate_microstructure(np.random.default_rng(micro_ss), hi_shape, params.micro)
    labels = majority_downsample(phases, 2)
    ct_rng = np.random.default_rng(ct_ss)
    mu = block_mean(attenuation_map(ct_rng, phases, params.ct), 2)
    del phases
    mu = edge_fringes(mu, params.ct.phase_contrast)
    image = encode(scan(ct_rng, mu, params.ct), params.ct)
    v = float(params.voxel_size_um)
    info = {
        "seed": int(seed),
        "shape": list(image.shape),
        "voxel_size_um": [v, v, v],
        "params": params.to_dict(),
        "fractions": phase_fractions(labels),
        "classes": {str(i): n for i, n in enumerate(CLASS_NAMES)},
        "distribution": distribution if params_drawn else "fixed",
        "image_encoding": {
            "uint16": "uint16 grey = offset + gain * attenuation relative to nickel",
            "uint8": "uint8 grey window over the attenuation range",
            "float32": "float32 attenuation in 1/cm",
        }[params.ct.encoding],
    }
    return image, labels, info


def _middle_of(volume: tuple[np.ndarray, np.ndarray, dict[str, Any]], slices: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The middle ``slices`` planes of a generated volume, its record made to match."""
    image, labels, info = volume
    first = (image.shape[0] - slices) // 2
    image = np.ascontiguousarray(image[first : first + slices])
    labels = np.ascontiguousarray(labels[first : first + slices])
    info = {**info, "shape": list(image.shape), "fractions": phase_fractions(labels),
            "cut_from": {"slices": int(volume[0].shape[0]), "first": int(first)}}
    return image, labels, info


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent random streams of a volume: parameters, microstructure, scan."""
    return np.random.SeedSequence(int(seed)).spawn(3)


def draw_params(seed: int, distribution: str = "v2") -> VolumeParams:
    """The parameters :func:`generate_volume` draws for ``seed`` (cheap: no volume is made)."""
    if distribution not in DISTRIBUTIONS:
        raise PaserInputError(f"unknown distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[distribution](np.random.default_rng(_streams(seed)[0]))


def volume_seed(seed: int, index: int) -> int:
    """Seed of volume ``index`` of a data set made with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def volume_names(volumes: int, name: str | None = None) -> list[str]:
    """File stems: ``volK`` by default; ``name`` alone for one volume, else ``nameK``."""
    if name is None:
        return [f"vol{k}" for k in range(volumes)]
    if volumes == 1:
        return [name]
    return [f"{name}{k}" for k in range(volumes)]


def write_dataset(
    out_dir: str | Path,
    volumes: int,
    slices: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    *,
    name: str | None = None,
    overwrite: bool = False,
    compress: bool = True,
    distribution: str = "v2",
    skip_current: bool = False,
    workers: int = 1,
) -> list[Path]:
    """Generate volumes and write ``<stem>_image.tif``, ``<stem>_labels.tif``, ``<stem>.json``.

    Parameters
    ----------
    out_dir
        Output folder (created).
    volumes, slices, size, seed
        Number of volumes, slices per volume, slice size (Y, X) and base seed; volume K
        uses :func:`volume_seed` ``(seed, K)``.
    name
        File stem (see :func:`volume_names`).
    overwrite
        Replace existing files instead of raising ``FileExistsError``.
    compress
        zlib-compress the TIFFs.
    distribution
        Parameter distribution (:data:`DISTRIBUTIONS`).
    skip_current
        Keep volumes whose files exist and match this generator (resume an interrupted
        run); implies replacing the stale ones.
    workers
        Processes generating volumes at once (each volume is drawn from its own seed,
        so the files do not depend on this).

    Returns
    -------
    list of Path
        Every file written, in order.
    """
    if volumes < 1:
        raise PaserInputError(f"--volumes must be at least 1, got {volumes}")
    out = Path(out_dir)
    stems = volume_names(volumes, name)
    targets = [out / f"{s}{suffix}" for s in stems for suffix in ("_image.tif", "_labels.tif", ".json")]
    overwrite = overwrite or skip_current
    if not overwrite:
        for t in targets:
            if t.exists():
                raise FileExistsError(f"{t} exists (use --overwrite)")
    jobs = [(stem, volume_seed(seed, k), {"seed": int(seed), "index": k}) for k, stem in enumerate(stems)
            if not (skip_current and is_current(out, stem, volume_seed(seed, k), distribution))]
    options: dict[str, Any] = {"distribution": distribution, "overwrite": overwrite, "compress": compress}
    if workers <= 1 or len(jobs) <= 1:
        return [path for stem, seed_k, info in jobs for path in write_volume(out, stem, seed_k, slices, size, dataset=info, **options)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(write_volume, out, stem, seed_k, slices, size, dataset=info, **options) for stem, seed_k, info in jobs]
        return [path for future in futures for path in future.result()]


# Bumped whenever the generator's output changes for the same parameters, so data sets
# written before are recognised as stale (2: phase-contrast fringes in-plane only;
# 3: volumes of fewer than MIN_SLICES slices cut from a deeper one).
GENERATOR_VERSION = 3


def is_current(out: Path, stem: str, seed: int, distribution: str) -> bool:
    """True if ``stem``'s files exist and its record matches what this generator makes for ``seed``."""
    js = Path(out) / f"{stem}.json"
    if not (js.is_file() and (Path(out) / f"{stem}_image.tif").is_file() and (Path(out) / f"{stem}_labels.tif").is_file()):
        return False
    info = json.loads(js.read_text())
    params = draw_params(seed, distribution)
    if info.get("params") != params.to_dict():
        return False
    version = info.get("generator", 1)
    # Version 2 changed only volumes with phase-contrast fringes, version 3 only thin ones.
    fringes_current = version >= 2 or params.ct.phase_contrast == 0
    thin_current = version >= 3 or int(info.get("shape", [0])[0]) >= MIN_SLICES
    return fringes_current and thin_current


def write_volume(
    out: Path, stem: str, seed: int, slices: int, size: tuple[int, int] = DEFAULT_SIZE, *,
    distribution: str = "v2", dataset: dict | None = None, overwrite: bool = False, compress: bool = True,
) -> list[Path]:
    """Generate one volume and write ``<stem>_image.tif``, ``<stem>_labels.tif`` and ``<stem>.json``."""
    image, labels, info = generate_volume(seed, slices, size, distribution=distribution)
    info["generator"] = GENERATOR_VERSION
    if dataset is not None:
        info["dataset"] = dataset
    vs = tuple(info["voxel_size_um"])
    written = [
        write_tiff(out / f"{stem}_image.tif", image, voxel_size=vs, metadata=info, overwrite=overwrite, compress=compress),
        write_tiff(out / f"{stem}_labels.tif", labels, voxel_size=vs,
                   metadata={"classes": info["classes"], "fractions": info["fractions"]}, overwrite=overwrite, compress=compress),
    ]
    js = out / f"{stem}.json"
    js.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return written + [js]


__all__ = [
    "DEFAULT_SIZE",
    "MIN_SLICES",
    "DISTRIBUTIONS",
    "TRAIN_FAMILIES",
    "sample_params_oof",
    "sample_params_v1",
    "VolumeParams",
    "generate_volume",
    "phase_fractions",
    "sample_params",
    "volume_names",
    "volume_seed",
    "write_dataset",
]
