"""Baselines in the engine: IDK cascade routing and FLOPs, random policy, CLI wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_paser import io
from napari_paser.cli.main import main
from napari_paser.engine.baselines import cascade_routing, idk_method, idk_thresholds, random_method, random_routing
from napari_paser.engine.pipeline import METHODS, PaserSegmenter, get_method


def stack(shape=(2, 112, 128), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, shape).astype(np.uint16)


@pytest.fixture
def seg(tiny_bundle):
    s = PaserSegmenter(tiny_bundle, mc_passes=2)
    s.set_volume(stack())
    return s


def test_methods_registered():
    assert {"paser", "f0", "f1", "f2", "idk", "random"} <= set(METHODS)
    assert get_method("idk").charged is not METHODS["f1"].charged


def test_cascade_routing_rule_and_monotone():
    rng = np.random.default_rng(1)
    e0, e1 = rng.random((4, 5)), rng.random((4, 5))
    r = cascade_routing(e0, e1, 0.5, 0.5)
    assert ((r == 0) == (e0 < 0.5)).all()
    assert ((r == 2) == ((e0 >= 0.5) & (e1 >= 0.5))).all()
    # f1's entropy is only read where the patch reached f1 (NaN elsewhere is fine).
    e1_nan = np.where(e0 >= 0.5, e1, np.nan)
    assert (cascade_routing(e0, e1_nan, 0.5, 0.5) == r).all()
    # Lower thresholds never send a patch to a smaller model.
    grid = np.linspace(0, 1, 7)
    for a0 in grid:
        for a1 in grid:
            base = cascade_routing(e0, e1, a0, a1)
            assert (cascade_routing(e0, e1, a0 - 0.1, a1) >= base).all()
            assert (cascade_routing(e0, e1, a0, a1 - 0.1) >= base).all()
    assert (cascade_routing(e0, e1, -1, -1) == 2).all() and (cascade_routing(e0, e1, 2, 2) == 0).all()


def test_cascade_in_pipeline_monotone_and_flops(seg):
    zs = range(seg.num_slices)
    for z in zs:
        seg.analyse(z)
    e0 = np.stack([seg.patch_entropy(z, 0) for z in zs])
    qs = [float(e0.min()), *np.quantile(e0, [0.3, 0.7]), float(e0.max()) + 1e-3]
    sent_up = []
    for a0 in qs[::-1]:
        res = seg.result(method=_register(idk_method((a0, float(np.median(e0))), name="idk-test")))
        cm = seg.cost_model
        n1 = int((res.routing >= 1).sum())  # f1 ran on every patch that reached it
        n2 = int((res.routing == 2).sum())
        expect = len(res.slices) * cm.f0_mc + n1 * cm.patch[1] + n2 * cm.patch[2]  # no policy
        assert res.gflops_total == pytest.approx(expect / 1e9)
        assert res.gflops_total <= len(res.slices) * cm.f0_mc / 1e9 + res.gflops_f2_everywhere * 2
        sent_up.append(n1)
        # Patches kept by f0 are exactly those under the threshold.
        assert ((res.routing == 0) == (e0 < a0)).all()
    assert sent_up == sorted(sent_up) and sent_up[0] == 0 and sent_up[-1] == e0.size


def test_idk_default_thresholds_stack_and_bundle(seg, tiny_bundle):
    res = seg.result(method="idk")
    a0, a1 = idk_thresholds(seg)
    e0 = np.stack([seg.patch_entropy(z, 0) for z in range(seg.num_slices)])
    assert a0 == pytest.approx(float(e0.mean()))
    assert ((res.routing == 0) == (e0 < a0)).all()
    assert 0 < res.route_fraction["f0"] < 1
    # Thresholds stored in the bundle manifest take precedence.
    tiny_bundle.meta["idk"] = {"thresholds": [-1.0, -1.0], "lam_idk": 0.01, "tuned_on": "test"}
    s2 = PaserSegmenter(tiny_bundle, mc_passes=2)
    s2.set_volume(stack())
    assert idk_thresholds(s2) == (-1.0, -1.0)
    assert s2.result(method="idk").route_fraction["f2"] == 1.0


def test_random_policy_deterministic_and_fractions(seg):
    a = random_routing((40, 50), (1, 1, 1), seed=3, z=0)
    assert (a == random_routing((40, 50), (1, 1, 1), seed=3, z=0)).all()
    assert not (a == random_routing((40, 50), (1, 1, 1), seed=3, z=1)).all()
    frac = np.bincount(a.ravel(), minlength=3) / a.size
    assert frac == pytest.approx([1 / 3] * 3, abs=0.03)
    b = random_routing((40, 50), (0.8, 0.2, 0.0), seed=0, z=0)
    assert (b != 2).all() and np.mean(b == 0) == pytest.approx(0.8, abs=0.03)
    with pytest.raises(ValueError):
        random_routing((2, 2), (0, 0, 0), 0, 0)
    r1 = seg.result(method="random")
    r2 = seg.result(method="random", slices=[1, 0])
    assert (r1.routing[1] == r2.routing[0]).all()  # per slice, independent of order
    cm = seg.cost_model
    n1, n2 = int((r1.routing == 1).sum()), int((r1.routing == 2).sum())
    assert r1.gflops_total == pytest.approx((2 * cm.f0_mc + n1 * cm.patch[1] + n2 * cm.patch[2]) / 1e9)
    # No f0 in the mix: no f0 analysis charged.
    r3 = seg.result(method=_register(random_method((0, 1, 1), name="random-no-f0")))
    assert r3.route_fraction["f0"] == 0
    assert r3.gflops_total == pytest.approx((int((r3.routing == 1).sum()) * cm.patch[1] + int((r3.routing == 2).sum()) * cm.patch[2]) / 1e9)


def _register(method):
    from napari_paser.engine.pipeline import register_method

    register_method(method)
    return method.name


def test_segment_and_evaluate_cli_offer_baselines(tmp_path, tiny_bundle_dir, capsys):
    img = io.write_tiff(tmp_path / "img.tif", stack())
    lab = io.write_tiff(tmp_path / "lab.tif", (stack(seed=1) % 3).astype(np.uint8))
    for method in ("idk", "random"):
        out, rep = tmp_path / f"{method}.tif", tmp_path / f"{method}.json"
        rc = main(["segment", str(img), "-o", str(out), "--bundle", str(tiny_bundle_dir), "--method", method,
                   "--mc-passes", "2", "--report", str(rep), "--quiet"])
        assert rc == 0
        assert io.read_stack(out)[0].shape == (2, 112, 128)
        assert json.loads(rep.read_text())["method"] == method
    capsys.readouterr()
    js = tmp_path / "eval.json"
    rc = main(["evaluate", "--images", str(img), "--labels", str(lab), "--bundle", str(tiny_bundle_dir),
               "--mc-passes", "2", "--json", str(js), "--quiet"])
    stdout = capsys.readouterr().out
    assert rc == 0
    methods = [r["method"] for r in json.loads(js.read_text())["methods"]]
    assert {"paser", "f0", "f1", "f2", "idk", "random"} <= set(methods)
    assert "idk" in stdout and "random" in stdout
