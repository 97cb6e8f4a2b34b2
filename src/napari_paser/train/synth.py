"""Synthetic battery-electrode micro-CT volumes with ground-truth phase labels.

``generate_volume`` builds a 3-D microstructure at twice the output resolution
(:mod:`.microstructure`), scans it with a parallel-beam CT model (:mod:`.ct_model`) and
labels each output voxel by majority vote of its 2x2x2 high-resolution block.

Images are uint16 (like most CT exports): grey = offset + gain * attenuation, with the
offset and gain drawn per volume, so tools must normalise intensities per volume.
Labels are uint8: 0 pore, 1 carbon-binder, 2 nickel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import CLASS_NAMES
from ..errors import PaserInputError
from ..io import write_tiff
from .ct_model import CTParams, attenuation_map, block_mean, scan, to_uint16
from .microstructure import MicrostructureParams, generate_microstructure, majority_downsample

DEFAULT_SIZE = (224, 256)


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


def sample_params(rng: np.random.Generator) -> VolumeParams:
    """Draw the parameters of one volume.

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


def phase_fractions(labels: np.ndarray) -> dict[str, float]:
    """Fraction of voxels per phase, keyed by class name."""
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=3)[:3]
    return {name: float(c) / max(1, labels.size) for name, c in zip(CLASS_NAMES, counts)}


def generate_volume(
    seed: int,
    slices: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    params: VolumeParams | None = None,
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
        Fixed parameters; drawn from the seed with :func:`sample_params` when None.

    Returns
    -------
    image : np.ndarray
        uint16 (Z, Y, X) reconstruction.
    labels : np.ndarray
        uint8 (Z, Y, X): 0 pore, 1 carbon-binder, 2 nickel.
    info : dict
        JSON-serialisable: ``seed``, ``params``, ``fractions``, ``voxel_size_um``
        (plane, row, column) and ``shape``.
    """
    ny, nx = (int(s) for s in size)
    if int(slices) < 1 or ny < 16 or nx < 16:
        raise PaserInputError(f"need at least 1 slice of 16x16 or more, got {slices} x {ny}x{nx}")
    ss = np.random.SeedSequence(int(seed))
    param_ss, micro_ss, ct_ss = ss.spawn(3)
    if params is None:
        params = sample_params(np.random.default_rng(param_ss))
    hi_shape = (2 * int(slices), 2 * ny, 2 * nx)
    phases = generate_microstructure(np.random.default_rng(micro_ss), hi_shape, params.micro)
    labels = majority_downsample(phases, 2)
    ct_rng = np.random.default_rng(ct_ss)
    mu = block_mean(attenuation_map(ct_rng, phases, params.ct), 2)
    del phases
    image = to_uint16(scan(ct_rng, mu, params.ct), params.ct)
    v = float(params.voxel_size_um)
    info = {
        "seed": int(seed),
        "shape": list(image.shape),
        "voxel_size_um": [v, v, v],
        "params": params.to_dict(),
        "fractions": phase_fractions(labels),
        "classes": {str(i): n for i, n in enumerate(CLASS_NAMES)},
        "image_encoding": "uint16 grey = offset + gain * attenuation relative to nickel",
    }
    return image, labels, info


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
    if not overwrite:
        for t in targets:
            if t.exists():
                raise FileExistsError(f"{t} exists (use --overwrite)")
    written: list[Path] = []
    for k, stem in enumerate(stems):
        image, labels, info = generate_volume(volume_seed(seed, k), slices, size)
        info["dataset"] = {"seed": int(seed), "index": k}
        vs = tuple(info["voxel_size_um"])
        written.append(write_tiff(out / f"{stem}_image.tif", image, voxel_size=vs, metadata=info,
                                  overwrite=overwrite, compress=compress))
        written.append(write_tiff(out / f"{stem}_labels.tif", labels, voxel_size=vs,
                                  metadata={"classes": info["classes"], "fractions": info["fractions"]},
                                  overwrite=overwrite, compress=compress))
        js = out / f"{stem}.json"
        js.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        written.append(js)
    return written


__all__ = [
    "DEFAULT_SIZE",
    "VolumeParams",
    "generate_volume",
    "phase_fractions",
    "sample_params",
    "volume_names",
    "volume_seed",
    "write_dataset",
]
