"""Microstructure metrics on structures with known answers (small arrays, no models)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import channels
from napari_paser.engine.metrics_report import csv_text, metric_ranges, profile_range, report_dict
from napari_paser.engine.microstructure import (
    compute_metrics,
    interfacial_areas,
    metrics_steps,
    phase_profiles,
    phase_surface_areas,
    validate_phase_labels,
    volume_fractions,
)
from napari_paser.engine.tortuosity import tortuosity, tortuosity_steps
from napari_paser.errors import PaserInputError

pytest.importorskip("taufactor")


def layered(shape=(10, 12, 14), axis=1):
    """Three slabs perpendicular to ``axis``: pore, carbon-binder, nickel (4 / 4 / rest planes)."""
    lab = np.zeros(shape, np.uint8)
    idx = [slice(None)] * 3
    idx[axis] = slice(4, 8)
    lab[tuple(idx)] = 1
    idx[axis] = slice(8, None)
    lab[tuple(idx)] = 2
    return lab


def random_electrode(shape=(24, 20, 22), seed=3):
    """Smooth random three-phase structure (about 45 % pore, 15 % carbon-binder)."""
    field = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)
    lo, hi = np.quantile(field, [0.45, 0.60])
    return np.where(field < lo, 0, np.where(field < hi, 1, 2)).astype(np.uint8)


def test_volume_fractions_are_exact_and_profile_follows_axis():
    lab = random_electrode()
    counts = np.bincount(lab.ravel(), minlength=3)
    assert list(volume_fractions(lab).values()) == [c / lab.size for c in counts]
    prof = phase_profiles(layered(axis=1), 1)
    assert prof.shape == (3, 12)
    np.testing.assert_array_equal(prof[0], [1] * 4 + [0] * 8)
    np.testing.assert_array_equal(prof[2], [0] * 8 + [1] * 4)


@pytest.mark.parametrize("method", ["marching_cubes", "faces"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_plane_interfaces_have_exact_area(method, axis):
    vs = (2.0, 0.5, 1.5)
    lab = layered(axis=axis)
    others = [a for a in range(3) if a != axis]
    plane = lab.shape[others[0]] * lab.shape[others[1]] * vs[others[0]] * vs[others[1]]
    areas = phase_surface_areas(lab, vs, method)
    np.testing.assert_allclose(areas, [plane, 2 * plane, plane], rtol=1e-9)
    inter = interfacial_areas(areas)
    np.testing.assert_allclose([inter[(0, 1)], inter[(0, 2)], inter[(1, 2)]], [plane, 0.0, plane], rtol=1e-9, atol=1e-9)


def test_slabs_do_not_change_marching_cubes_area(monkeypatch):
    import napari_paser.engine.microstructure as ms

    lab = random_electrode(shape=(20, 16, 18))
    whole = phase_surface_areas(lab, (1.0, 1.0, 1.0))
    monkeypatch.setattr(ms, "SLAB_VOXELS", 3 * 16 * 18)  # 3 planes a slab
    np.testing.assert_allclose(phase_surface_areas(lab, (1.0, 1.0, 1.0)), whole, rtol=1e-9)


def test_block_checkerboard_face_count_and_fractions():
    i, j, k = np.indices((8, 8, 8))
    lab = (((i // 4 + j // 4 + k // 4) % 2) * 2).astype(np.uint8)
    assert volume_fractions(lab) == {"pore": 0.5, "carbon-binder": 0.0, "nickel": 0.5}
    # one internal plane of 8 x 8 faces per axis, every face between pore and nickel
    inter = interfacial_areas(phase_surface_areas(lab, (1.0, 1.0, 1.0), "faces"))
    assert inter[(0, 2)] == 3 * 64 and inter[(0, 1)] == 0 and inter[(1, 2)] == 0


def test_marching_cubes_is_closer_than_face_counting_on_a_sphere():
    z, y, x = np.indices((22, 22, 22)) - 10.5
    r = 8.0
    lab = np.where(z * z + y * y + x * x < r * r, 2, 0).astype(np.uint8)
    exact = 4 * math.pi * r * r
    mc = phase_surface_areas(lab, None)[2] / exact
    faces = phase_surface_areas(lab, None, "faces")[2] / exact
    assert abs(mc - 1) < 0.12 and faces > 1.4


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_straight_channels_have_tau_one(axis):
    lab = channels(axis)
    res = tortuosity(lab, axis)
    assert res.converged and abs(res.tau - 1) <= 0.02
    assert res.effective_diffusivity == pytest.approx(res.volume_fraction / res.tau)
    both = tortuosity(lab, axis, cb_diffusivity=0.5)
    assert abs(both.tau - 1) <= 0.02
    # pore conducts with D = 1, carbon-binder with 0.5: D_eff = ε_pore + 0.5 ε_cb when τ = 1
    eps = volume_fractions(lab)
    assert both.effective_diffusivity == pytest.approx(eps["pore"] + 0.5 * eps["carbon-binder"], rel=0.02)


def test_anisotropic_voxels():
    # TauFactor 1.2.1's AnisotropicSolver loses all flux for such voxels; ours is fixed.
    for axis in range(3):
        assert abs(tortuosity(channels(axis), axis, voxel_size=(0.5, 0.25, 0.25)).tau - 1) <= 0.02
    lab = random_electrode()
    iso = tortuosity(lab, 1).tau
    assert tortuosity(lab, 1, voxel_size=(1.0, 1.0, 1.0001)).tau == pytest.approx(iso, rel=1e-3)


def test_tau_matches_taufactor_run_directly():
    import taufactor

    lab = random_electrode()
    ours = tortuosity(lab, 1)
    mask = np.ascontiguousarray(np.moveaxis(lab == 0, 1, 0)).astype(np.uint8)
    with contextlib.redirect_stdout(io.StringIO()):
        direct = float(taufactor.Solver(mask, device="cpu").solve(verbose=False)[0])
    assert ours.converged and 1.0 < ours.tau < 10
    assert abs(ours.tau - direct) <= 0.03 * direct


def test_no_path_means_infinite_tau_and_json_null():
    lab = layered(axis=0)  # the nickel slab blocks every path along axis 0
    met = compute_metrics(lab, 0, voxel_size=(1.0, 1.0, 1.0))
    assert met.values["tortuosity_factor.pore"] == math.inf
    assert met.values["effective_diffusivity.pore"] == 0.0
    rep = json.loads(json.dumps(report_dict(met)))
    assert rep["tortuosity_factor.pore"] is None
    assert rep["volume_fraction.pore"] == pytest.approx(4 / 10)


def test_metrics_keys_units_and_2d_input():
    lab = channels(2)
    met = compute_metrics(lab, 2, voxel_size=(0.5, 0.5, 0.5), cb_diffusivity=0.2)
    for key in ("volume_fraction.pore", "volume_fraction.carbon-binder", "volume_fraction.nickel",
                "specific_surface_area.nickel", "interfacial_area.pore/carbon-binder", "interfacial_area.pore/nickel",
                "interfacial_area.carbon-binder/nickel", "tortuosity_factor.pore", "effective_diffusivity.pore",
                "tortuosity_factor.pore+carbon-binder", "effective_diffusivity.pore+carbon-binder"):
        assert key in met.values and key in met.units
    assert met.units["specific_surface_area.nickel"] == "1/µm"
    assert met.positions[0] == 0.25 and len(met.positions) == lab.shape[2]
    plane = np.full((12, 16), 2, np.uint8)
    plane[2:4], plane[8] = 0, 1  # straight channels along the columns
    flat = compute_metrics(plane, 1)  # (Y, X): one plane
    assert flat.units["specific_surface_area.nickel"] == "1/voxel"
    assert abs(flat.values["tortuosity_factor.pore"] - 1) <= 0.02


@pytest.mark.parametrize(
    "labels, axis, message",
    [
        (np.full((4, 5, 6), 3, np.uint8), 0, "outside {0, 1, 2}"),
        (np.array([[[0, 1], [2, -1]]]), 0, "outside {0, 1, 2}"),
        (np.zeros((4, 5, 6), np.uint8), 0, "absent"),
        (layered(), 3, "out of range"),
        (layered(), -4, "out of range"),
        (np.zeros((3, 4, 5, 6), np.uint8), 0, "shape"),
        (layered().astype(float) + 0.5, 0, "whole numbers"),
    ],
)
def test_bad_input_is_one_clear_error(labels, axis, message):
    with pytest.raises(PaserInputError, match=message.replace("{", r"\{").replace("}", r"\}")):
        compute_metrics(labels, axis, tortuosity=False)


@pytest.mark.parametrize("method", ["marching_cubes", "faces"])
@pytest.mark.parametrize("voxel_size", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, math.nan, 1.0)])
def test_surface_areas_refuse_a_voxel_size_that_is_not_three_positive_numbers(voxel_size, method):
    with pytest.raises(PaserInputError, match="voxel size must be three"):
        phase_surface_areas(layered(), voxel_size, method)


def test_any_integer_dtype_is_accepted():
    lab = layered()
    for dtype in (np.int64, np.uint16, np.float32):
        assert validate_phase_labels(lab.astype(dtype)).dtype == np.uint8


def test_cancel_stops_a_solve_between_steps():
    lab = random_electrode(shape=(40, 20, 20), seed=5)
    gen = tortuosity_steps(lab, 0, conv_crit=1e-9, iter_limit=10**6)  # would run for long
    first = next(gen)
    assert first.iteration == 100 and 0 <= first.fraction < 1
    gen.close()  # cancel: no exception, generator finished
    with pytest.raises(StopIteration):
        next(gen)
    steps = metrics_steps(lab, 0)
    stages = [next(steps).stage for _ in range(3)]
    steps.close()
    assert stages[:2] == ["volume fractions", "surface areas"] and stages[2].startswith("tortuosity")


def test_ranges_and_csv():
    a = compute_metrics(layered(), 1, tortuosity=False)
    b = compute_metrics(np.where(layered() == 1, 0, layered()).astype(np.uint8), 1, tortuosity=False, require_all_phases=False)
    rng = metric_ranges([a, b])
    assert rng["volume_fraction.pore"] == (4 / 12, 8 / 12)
    text = csv_text(a, rng)
    assert text.splitlines()[0] == "metric,value,min,max,unit"
    assert "volume_fraction.pore,0.33333333,0.33333333,0.66666667,1" in text
    assert "porosity_profile[11]" in text
    rep = report_dict(a, band=[("other", b)])
    assert rep["ranges"]["volume_fraction.pore"] == [4 / 12, 8 / 12]
    assert rep["porosity_profile"]["max"][5] == 1.0 and rep["band"][0]["name"] == "other"


def test_envelope_widens_fraction_ranges_to_voxelwise_bounds():
    from napari_paser.engine.metrics_band import PhaseEnvelope

    # Two segmentations with the same porosity (1/2) that disagree on half their pore voxels.
    a = np.array([[[0, 0, 2, 2], [1, 1, 2, 2]]], dtype=np.uint8)
    b = np.array([[[0, 2, 0, 2], [1, 1, 2, 2]]], dtype=np.uint8)
    ma, mb = (compute_metrics(x, 2, tortuosity=False) for x in (a, b))
    assert metric_ranges([ma, mb])["volume_fraction.pore"] == (0.25, 0.25)
    env = PhaseEnvelope()
    env.add_slab(0, [a, b])
    rng = metric_ranges([ma, mb], env)
    assert rng["volume_fraction.pore"] == (1 / 8, 3 / 8)
    assert rng["volume_fraction.carbon-binder"] == (0.25, 0.25)
    assert rng["volume_fraction.nickel"] == (3 / 8, 5 / 8)
    assert rng["specific_surface_area.nickel"] == metric_ranges([ma, mb])["specific_surface_area.nickel"]
    lo, hi = profile_range([ma, mb], env)  # along the columns: pore in column 0 always, 1 and 2 sometimes
    np.testing.assert_allclose(lo, [0.5, 0, 0, 0])
    np.testing.assert_allclose(hi, [0.5, 0.5, 0.5, 0])
    with pytest.raises(PaserInputError, match="cannot join an envelope"):
        env.add_slab(0, [a[:, :1], b[:, :1]])
    with pytest.raises(PaserInputError, match="holds 2 segmentations"):
        env.add_slab(0, [a])
    # slab by slab, the same counts as at once
    stack_a, stack_b = np.concatenate([a, b, a]), np.concatenate([b, b, a])
    whole, slabs = PhaseEnvelope(), PhaseEnvelope()
    whole.add_slab(0, [stack_a, stack_b])
    slabs.start(stack_a.shape, 2)
    slabs.add_slab(0, [stack_a[:2], stack_b[:2]])
    slabs.add_slab(2, [stack_a[2:], stack_b[2:]])
    assert slabs.fraction_ranges() == whole.fraction_ranges()
    for axis in range(3):
        for got, want in zip(slabs.profile_range(axis), whole.profile_range(axis)):
            np.testing.assert_array_equal(got, want)


def test_missing_taufactor_is_one_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "taufactor", None)  # import now raises ImportError
    with pytest.raises(PaserInputError, match=r"napari-paser\[metrics\]"):
        compute_metrics(layered(), 1)
    assert compute_metrics(layered(), 1, tortuosity=False).values["volume_fraction.pore"] == pytest.approx(1 / 3)


def test_metrics_modules_do_not_import_torch(fresh_python):
    out = fresh_python(
        "import sys\n"
        "import napari_paser.engine.microstructure, napari_paser.engine.metrics_report, napari_paser.cli.metrics\n"
        "import napari_paser.napari_ui._metrics_jobs\n"
        "print('torch' in sys.modules)\n"
    )
    assert out.strip() == "False"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_lazily_read_volume_gives_the_same_metrics_reading_a_slab_at_a_time(monkeypatch, axis):
    import napari_paser.engine.microstructure as ms
    from napari_paser.io_sources import ArrayVolume

    lab = random_electrode(shape=(20, 16, 18))
    reads = []

    class Counting(ArrayVolume):
        def _read(self, z0, z1):
            reads.append(z1 - z0)
            return super()._read(z0, z1)

    monkeypatch.setattr(ms, "SLAB_VOXELS", 4 * 16 * 18)  # 4 planes a slab
    for method in ("marching_cubes", "faces"):
        reads.clear()
        lazy = compute_metrics(Counting(lab), axis, voxel_size=(2.0, 0.5, 0.5), tortuosity=False, surface_method=method)
        whole = compute_metrics(lab, axis, voxel_size=(2.0, 0.5, 0.5), tortuosity=False, surface_method=method)
        assert lazy.values == whole.values and np.array_equal(lazy.profiles, whole.profiles)
        assert max(reads) <= 5  # 4 planes, and one shared with the next slab when meshing
