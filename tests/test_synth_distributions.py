"""The v2 training distribution and the out-of-family test distribution of ``synth``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_paser.errors import PaserInputError
from napari_paser.train.ct_model import CTParams, edge_fringes, encode
from napari_paser.train.microstructure import MicrostructureParams, generate_microstructure
from napari_paser.train.synth import (
    DISTRIBUTIONS,
    TRAIN_FAMILIES,
    generate_volume,
    sample_params,
    sample_params_oof,
    sample_params_v1,
)

TINY = dict(slices=2, size=(64, 64))


def _draws(fn, n=200):
    rng = np.random.default_rng(0)
    return [fn(rng) for _ in range(n)]


def test_v2_draws_every_family_encoding_and_filter():
    draws = _draws(sample_params)
    assert {p.micro.family for p in draws} == set(TRAIN_FAMILIES)
    assert {p.ct.encoding for p in draws} == {"uint8", "uint16", "float32"}
    assert len({p.ct.filter_name for p in draws}) == 5
    contrasts = [p.ct.carbon_contrast for p in draws]
    assert min(contrasts) < 0.08 and max(contrasts) > 0.4  # nearly equal to clear
    assert any(p.micro.gradient != 0 for p in draws) and any(p.ct.phase_contrast > 0 for p in draws)
    assert "cracked" not in {p.micro.family for p in draws}


def test_v2_spans_v1_and_oof_lies_outside_v2():
    v1, v2, oof = _draws(sample_params_v1), _draws(sample_params), _draws(sample_params_oof)
    for key in ("psf_sigma", "carbon_contrast", "photons"):
        lo2, hi2 = min(getattr(p.ct, key) for p in v2), max(getattr(p.ct, key) for p in v2)
        assert lo2 <= min(getattr(p.ct, key) for p in v1) and max(getattr(p.ct, key) for p in v1) <= hi2 * 1.01
    assert min(p.ct.psf_sigma for p in oof) > max(p.ct.psf_sigma for p in v2)
    assert max(p.ct.photons for p in oof) < min(p.ct.photons for p in v2)
    assert max(p.ct.n_angles for p in oof) < min(p.ct.n_angles for p in v2)
    assert min(p.ct.phase_contrast for p in oof) > max(p.ct.phase_contrast for p in v2)
    assert {p.micro.family for p in oof} == {"cracked"}


@pytest.mark.parametrize("distribution", ["v2", "oof"])
def test_generate_is_deterministic_and_labelled(distribution):
    a = generate_volume(11, **TINY, distribution=distribution)
    b = generate_volume(11, **TINY, distribution=distribution)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[0].dtype == np.dtype(a[2]["params"]["ct"]["encoding"])
    assert a[2]["distribution"] == distribution
    assert set(np.unique(a[1])) <= {0, 1, 2}


def test_unknown_distribution_is_a_clear_error():
    with pytest.raises(PaserInputError, match="unknown distribution"):
        generate_volume(0, **TINY, distribution="v3")
    assert set(DISTRIBUTIONS) == {"v1", "v2", "oof"}


@pytest.mark.parametrize("family", [*TRAIN_FAMILIES, "cracked"])
def test_every_family_hits_its_phase_fractions(family):
    params = sample_params(np.random.default_rng(3), family=family).micro
    phases = generate_microstructure(np.random.default_rng(1), (24, 96, 96), params)
    frac = np.bincount(phases.ravel(), minlength=3) / phases.size
    assert frac[1] == pytest.approx(params.carbon_fraction, abs=0.02)
    assert abs(frac[2] - params.nickel_fraction) < 0.12
    if family == "cracked":
        # Cracks are pore inside particles: some pore voxels have nickel on both sides.
        pore = phases == 0
        sandwiched = pore[:, 1:-1, :] & (phases[:, :-2, :] == 2) & (phases[:, 2:, :] == 2)
        assert sandwiched.sum() > 0


def test_flakes_are_thinner_than_spheres():
    base = MicrostructureParams(nickel_fraction=0.3, carbon_fraction=0.1, coarse_share=1.0, coarse_radius=8.0, aspect_sigma=0.0)
    spheres = generate_microstructure(np.random.default_rng(2), (48, 48, 48), base)
    flakes = generate_microstructure(np.random.default_rng(2), (48, 48, 48), dataclasses.replace(base, flake_ratio=5.0))

    def surface_per_volume(ph):
        ni = ph == 2
        faces = sum(np.count_nonzero(np.diff(ni, axis=a)) for a in range(3))
        return faces / max(1, ni.sum())

    assert surface_per_volume(flakes) > 1.3 * surface_per_volume(spheres)


def test_encodings_keep_the_grey_order():
    rec = np.linspace(-0.1, 1.2, 2 * 32 * 32, dtype=np.float32).reshape(2, 32, 32)
    for enc in ("uint8", "uint16", "float32"):
        out = encode(rec, CTParams(encoding=enc, window_low=0.1, window_high=-0.02, mu_scale=3.0))
        assert out.dtype == np.dtype(enc)
        flat = out.astype(np.float64).ravel()
        assert np.all(np.diff(flat) >= 0)  # monotone grey map (clipping allowed)
    assert encode(rec, CTParams(encoding="uint8", window_high=-0.02)).max() == 255  # narrowed window clips


def test_edge_fringes_overshoot_at_edges():
    mu = np.zeros((1, 32, 32), np.float32)
    mu[:, :, 16:] = 1.0
    out = edge_fringes(mu, 0.8)
    assert out.max() > 1.0 and out.min() < 0.0  # bright and dark bands
    assert np.allclose(out[:, :, :10], 0, atol=1e-3) and np.array_equal(edge_fringes(mu, 0.0), mu)


def test_write_dataset_resume_keeps_current_volumes_and_rewrites_missing_ones(tmp_path):
    from napari_paser.train.synth import write_dataset

    write_dataset(tmp_path, 2, 1, (48, 64), seed=5, distribution="v2")
    keep = (tmp_path / "vol0_image.tif").stat().st_mtime_ns
    (tmp_path / "vol1_labels.tif").unlink()
    written = write_dataset(tmp_path, 2, 1, (48, 64), seed=5, distribution="v2", skip_current=True)
    assert {p.name for p in written} == {"vol1_image.tif", "vol1_labels.tif", "vol1.json"}
    assert (tmp_path / "vol0_image.tif").stat().st_mtime_ns == keep
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path, 2, 1, (48, 64), seed=5, distribution="v2")


def test_cli_synth_distribution(tmp_path):
    import argparse
    import json

    from napari_paser.cli.synth import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--out", str(tmp_path), "--slices", "1", "--size", "48x64", "--distribution", "oof"])
    assert args.func(args) == 0
    info = json.loads((tmp_path / "vol0.json").read_text())
    assert info["distribution"] == "oof" and info["params"]["micro"]["family"] == "cracked"
