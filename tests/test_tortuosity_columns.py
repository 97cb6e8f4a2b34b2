"""Tortuosity of volumes too big for one solve: columns, their plan and their combination."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_paser.cli.main import main
from napari_paser.engine import tortuosity_columns as columns
from napari_paser.engine.metrics_report import report_dict, tortuosity_notes
from napari_paser.engine.microstructure import compute_metrics, metrics_steps
from napari_paser.engine.steps import run_steps
from napari_paser.engine.tortuosity import tortuosity
from napari_paser.engine.tortuosity_columns import (
    MIN_COLUMN_WIDTH,
    ColumnJob,
    ColumnPlan,
    plan_columns,
    read_box,
    solve_bytes,
    tortuosity_columns_steps,
)
from napari_paser.errors import PaserInputError
from napari_paser.io_sources import as_volume

pytest.importorskip("taufactor")

GIB = 1 << 30


def random_electrode(shape, seed=3):
    """Smooth random three-phase structure (about 45 % pore, 15 % carbon-binder)."""
    field = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)
    lo, hi = np.quantile(field, [0.45, 0.60])
    return np.where(field < lo, 0, np.where(field < hi, 1, 2)).astype(np.uint8)


def walled_halves():
    """Straight pore and carbon-binder channels beside a random electrode, with a nickel
    wall between them: no flux crosses from one half to the other."""
    a = np.full((24, 16, 20), 2, np.uint8)
    a[:, ::4, ::4] = 0
    a[:, 2::4, 2::4] = 1
    b = random_electrode((24, 17, 20))
    b[:, 0, :] = 2
    return np.concatenate([a, b], axis=1)


def covered(plan: ColumnPlan, shape) -> np.ndarray:
    count = np.zeros(shape, int)
    for box in plan.boxes:
        count[box] += 1
    return count


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_columns_tile_the_volume_once_and_span_the_flux_axis(axis):
    shape = (70, 90, 110)
    plan = plan_columns(shape, axis, width=40, budget=64 * GIB)
    assert plan.width == 40 and plan.axis == axis
    np.testing.assert_array_equal(covered(plan, shape), 1)
    for box in plan.boxes:
        assert box[axis] == slice(0, shape[axis])
        assert all(s.stop - s.start <= 40 for a, s in enumerate(box) if a != axis)
    cross = [math.ceil(shape[a] / 40) for a in range(3) if a != axis]
    assert len(plan.boxes) == cross[0] * cross[1]


def test_the_whole_volume_is_one_solve_when_it_fits_and_columns_when_it_does_not():
    shape = (200, 300, 400)
    whole = solve_bytes(200 * 300 * 400)
    assert plan_columns(shape, 0, budget=whole).width is None
    assert len(plan_columns(shape, 0, budget=whole).boxes) == 1
    plan = plan_columns(shape, 0, budget=whole // 3)
    assert plan.width is not None and len(plan.boxes) > 1
    # the widest columns that fit: one voxel wider would not
    assert solve_bytes(200 * plan.width**2) <= whole // 3 < solve_bytes(200 * (plan.width + 1) ** 2)
    # carbon-binder conducting needs the bigger solver, so narrower columns
    assert plan_columns(shape, 0, multi_phase=True, budget=whole // 3).width < plan.width
    # a volume thinner than the square that fits gets columns as long across as fit
    thin = plan_columns((200, 40, 4000), 0, budget=whole // 3)
    assert thin.width > 40 and len(thin.boxes) > 1 and solve_bytes(200 * 40 * thin.width) <= whole // 3
    assert all(b[1] == slice(0, 40) for b in thin.boxes)
    # a width as wide as the volume is the whole volume
    assert plan_columns(shape, 0, width=400, budget=whole).width is None


def test_impossible_plans_are_clear_errors():
    with pytest.raises(PaserInputError, match=f"at least {MIN_COLUMN_WIDTH}"):
        plan_columns((50, 100, 100), 0, width=MIN_COLUMN_WIDTH - 1)
    with pytest.raises(PaserInputError, match="even columns of 32 voxels"):
        plan_columns((5000, 100, 100), 0, budget=solve_bytes(5000 * 31 * 31))
    with pytest.raises(PaserInputError, match="narrower columns"):
        plan_columns((100, 400, 400), 0, width=400, budget=solve_bytes(100 * 400 * 400) // 4)


def test_read_box_reads_only_a_few_planes_at_a_time(monkeypatch):
    monkeypatch.setattr(columns, "_READ_VOXELS", 3 * 40 * 50)
    lab = np.arange(17 * 40 * 50).reshape(17, 40, 50)
    vol = as_volume(lab)
    reads = []
    real = type(vol).read
    monkeypatch.setattr(type(vol), "read", lambda self, z0, z1: reads.append(z1 - z0) or real(self, z0, z1))
    box = (slice(2, 17), slice(5, 30), slice(10, 50))
    np.testing.assert_array_equal(read_box(vol, box), lab[box])
    assert max(reads) == 3 and sum(reads) == 15


@pytest.mark.parametrize("cb", [None, 0.3])
def test_columns_in_parallel_give_the_whole_volume_when_no_flux_crosses_them(cb):
    vol = walled_halves()
    whole = tortuosity(vol, 0, cb_diffusivity=cb, conv_crit=1e-3)
    halves = ColumnPlan(0, 17, [(slice(0, 24), slice(0, 16), slice(0, 20)), (slice(0, 24), slice(16, 33), slice(0, 20))])
    cols = run_steps(tortuosity_columns_steps(ColumnJob(as_volume(vol), 0, halves, cb_diffusivity=cb, conv_crit=1e-3)))
    assert cols.column_width == 17 and len(cols.column_taus) == 2
    assert cols.column_taus[0] == pytest.approx(1.0, abs=1e-5)  # straight channels
    assert cols.column_taus[1] > 1.5  # the random half is tortuous, so the mean is weighted
    assert cols.tau == pytest.approx(whole.tau, rel=1e-5)
    assert cols.effective_diffusivity == pytest.approx(whole.effective_diffusivity, rel=1e-5)
    assert cols.volume_fraction == pytest.approx(whole.volume_fraction, rel=1e-12)
    assert cols.converged


def test_walls_between_columns_only_raise_tau_and_less_for_wider_columns():
    lab = random_electrode((40, 96, 96), seed=5)
    whole = compute_metrics(lab, 0).tortuosity["pore"]
    narrow = compute_metrics(lab, 0, tortuosity_width=32).tortuosity["pore"]
    wide = compute_metrics(lab, 0, tortuosity_width=48).tortuosity["pore"]
    assert whole.column_width is None and whole.column_taus == ()
    assert len(narrow.column_taus) == 9 and narrow.column_width == 32
    assert len(wide.column_taus) == 4
    assert whole.tau < wide.tau < narrow.tau
    assert min(narrow.column_taus) < narrow.tau < max(narrow.column_taus)
    assert narrow.volume_fraction == pytest.approx(whole.volume_fraction, rel=1e-12)


def test_metrics_solve_columns_and_never_the_whole_volume_when_it_does_not_fit(monkeypatch):
    lab = random_electrode((40, 70, 64), seed=7)
    budget = solve_bytes(40 * 40 * 40)
    monkeypatch.setattr(columns, "memory_budget", lambda device=None: budget)
    monkeypatch.setattr("napari_paser.engine.microstructure.memory_budget", lambda device=None: budget)
    solved = []
    real = columns.tortuosity_steps
    monkeypatch.setattr(columns, "tortuosity_steps", lambda labels, axis, **kw: solved.append(labels.shape) or real(labels, axis, **kw))
    fractions = []
    gen = metrics_steps(lab, 0)
    metrics = run_steps(gen, lambda step: fractions.append(step.fraction) if step.stage.startswith("tortuosity") else None)
    res = metrics.tortuosity["pore"]
    assert res.column_width == 40 and len(solved) == 4
    assert all(math.prod(s) <= 40 * 40 * 40 for s in solved)
    assert fractions == sorted(fractions) and fractions[-1] < 1
    report = report_dict(metrics)
    assert report["tortuosity"]["pore"]["column_width"] == 40
    assert len(report["tortuosity"]["pore"]["column_tau"]) == 4
    (note,) = tortuosity_notes(metrics)
    assert note.startswith("τ (pore) solved in 4 columns up to 40 voxels across")


def test_a_2d_image_is_cut_along_its_other_axis():
    lab = random_electrode((1, 60, 80), seed=2)[0]
    whole = compute_metrics(lab, 1).tortuosity["pore"]
    cols = compute_metrics(lab, 1, tortuosity_width=32).tortuosity["pore"]
    assert cols.axis == 1 and whole.axis == 1
    assert len(cols.column_taus) == 2  # 60 rows in two columns, each 80 long along axis 1
    assert cols.tau >= whole.tau


def test_cli_tau_width_reports_the_columns(tmp_path, capsys):
    import tifffile

    lab = random_electrode((30, 64, 70), seed=11)
    tifffile.imwrite(tmp_path / "phases.tif", lab)
    out = tmp_path / "m.json"
    assert main(["metrics", str(tmp_path / "phases.tif"), "--tau-width", "35", "--json", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "τ (pore) solved in 4 columns up to 35 voxels across" in err
    report = json.loads(out.read_text())
    assert report["tortuosity"]["pore"]["column_width"] == 35
    assert report["tortuosity_factor.pore"] == pytest.approx(compute_metrics(lab, 0, tortuosity_width=35).values["tortuosity_factor.pore"])
    assert main(["metrics", str(tmp_path / "phases.tif"), "--tau-width", "8", "--quiet"]) == 2
    assert "at least 32 voxels" in capsys.readouterr().err


def test_columns_as_tasks_give_the_same_result_with_progress_after_each():
    from napari_paser.engine.streaming import LocalExecutor

    lab = random_electrode((30, 64, 70), seed=11)
    here = compute_metrics(lab, 0, tortuosity_width=35, cb_diffusivity=0.2)
    fractions = []
    gen = metrics_steps(lab, 0, tortuosity_width=35, cb_diffusivity=0.2, executor=LocalExecutor())
    tasks = run_steps(gen, lambda step: fractions.append(step.fraction) if step.stage == "tortuosity (pore)" else None)
    assert tasks.values == here.values
    assert tasks.tortuosity["pore+carbon-binder"].column_taus == here.tortuosity["pore+carbon-binder"].column_taus
    assert fractions == [0.25, 0.5, 0.75, 1.0]


def test_cli_solves_columns_on_a_dask_cluster(tmp_path, capsys):
    """Workers open the labels from their path and solve their columns; nothing differs."""
    import tifffile

    lab = random_electrode((30, 64, 70), seed=11)
    tifffile.imwrite(tmp_path / "phases.tif", lab)
    out = tmp_path / "m.json"
    assert main(["metrics", str(tmp_path / "phases.tif"), "--tau-width", "35", "--workers", "2", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    here = compute_metrics(lab, 0, tortuosity_width=35)
    assert report["tortuosity_factor.pore"] == here.values["tortuosity_factor.pore"]
    assert report["tortuosity"]["pore"]["column_tau"] == list(here.tortuosity["pore"].column_taus)
    assert main(["metrics", str(tmp_path / "phases.tif"), "--workers", "0", "--quiet"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_in_a_dask_worker_a_solve_fits_the_workers_memory_limit():
    """A band member's τ is planned on its worker: within the worker's share of the node."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from napari_paser.engine.memory import physical_memory
    from napari_paser.engine.tortuosity_columns import memory_budget

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit="1GiB", dashboard_address=None) as cluster:
        with Client(cluster) as client:
            assert client.submit(memory_budget, "cpu", pure=False).result() == (1 << 30) // 2
    assert memory_budget("cpu") == physical_memory() // 2
