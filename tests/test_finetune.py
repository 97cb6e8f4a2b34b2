"""Sparse labels, the fast fine-tuning of a bundle to one scan, its CLI, and bad training input.

Tiny networks, tiny stacks, budgets of a few seconds: these check behaviour, not accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_paser.errors import PaserInputError


def _scan(slices=3, shape=(112, 128), seed=0):
    """A toy scan: bright discs (nickel), dark stripes (carbon-binder), pore elsewhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros((slices, *shape), np.uint8)
    for z in range(slices):
        for cy, cx in rng.integers(0, min(shape), size=(6, 2)):
            lab[z][(yy - cy) ** 2 + (xx - cx) ** 2 < 200] = 2
        lab[z][((yy + 5 * z) % 22) < 3] = 1
    img = np.choose(lab, [20.0, 90.0, 200.0]) + rng.normal(0, 12, lab.shape)
    return img.astype(np.float32), lab


# --------------------------------------------------------------------------- sparse labels


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.full((2, 60, 70), 255, np.uint8), "no labelled pixel"),
        (np.where(np.arange(60 * 70).reshape(1, 60, 70) % 3 == 0, 1, 255).repeat(2, 0).astype(np.uint8), "only carbon-binder"),
        (np.full((2, 60, 70), 3, np.uint8), "outside {0, 1, 2, 255}: 3"),
        (np.zeros((2, 60, 71), np.uint8), "do not match the image shape"),
        (np.zeros((2, 60, 70), bool), "not class indices"),
    ],
)
def test_bad_training_labels_are_one_clear_error(labels, message):
    from napari_paser.train.sparse_labels import validate_training_labels

    with pytest.raises(PaserInputError) as err:
        validate_training_labels(labels, (2, 60, 70))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_sparse_labels_with_unlabelled_slices_are_accepted():
    from napari_paser.train.sparse_labels import labelled_slices, validate_training_labels

    lab = np.full((4, 60, 70), 255, np.uint8)
    lab[2, :10, :10], lab[2, 30:, 30:] = 0, 2
    out = validate_training_labels(lab, (4, 60, 70))
    assert out.dtype == np.uint8 and labelled_slices(out) == [2]


def test_held_out_split_is_disjoint_by_tiles_and_keeps_every_phase_in_training():
    from napari_paser.train.sparse_labels import UNLABELLED, simulate_strokes, split_held_out

    _, truth = _scan(2)
    lab = simulate_strokes(truth, 0.3, seed=1)
    train, held = split_held_out(lab, 0.2, block=(28, 32), seed=0)
    lab_px, train_px, held_px = lab != UNLABELLED, train != UNLABELLED, held != UNLABELLED
    assert not (train_px & held_px).any() and np.array_equal(train_px | held_px, lab_px)
    assert np.array_equal(train[train_px], lab[train_px]) and np.array_equal(held[held_px], lab[held_px])
    assert 0.05 < held_px.sum() / lab_px.sum() < 0.45
    assert set(np.unique(train[train_px])) == set(np.unique(lab[lab_px]))
    # Whole tiles: no 28x32 tile holds pixels of both sides.
    for z in range(2):
        for y in range(0, 112, 28):
            for x in range(0, 128, 32):
                assert not (train_px[z, y : y + 28, x : x + 32].any() and held_px[z, y : y + 28, x : x + 32].any())


def test_simulated_strokes_cover_the_fraction_with_true_classes():
    from napari_paser.train.sparse_labels import UNLABELLED, simulate_strokes

    _, truth = _scan(2)
    lab = simulate_strokes(truth, 0.15, seed=3)
    painted = lab != UNLABELLED
    assert 0.14 <= painted.mean() <= 0.2
    assert np.array_equal(lab[painted], truth[painted])
    assert np.array_equal(simulate_strokes(truth, 0.15, seed=3), lab)  # seeded


def test_make_volume_accepts_255_and_rejects_an_unlabelled_volume():
    from napari_paser.train.datasets import make_volume

    img, lab = _scan(2)
    sparse = lab.copy()
    sparse[0] = 255
    assert make_volume("s", img, sparse).labels[0].max() == 255
    with pytest.raises(PaserInputError, match="no labelled pixel"):
        make_volume("s", img, np.full_like(lab, 255))
    with pytest.raises(PaserInputError, match="255"):
        make_volume("s", img, np.full_like(lab, 7))


def test_slice_bank_samples_where_labels_are_and_skips_unlabelled_slices():
    import torch

    from napari_paser.train.augment import AugmentConfig
    from napari_paser.train.datasets import SliceBank, make_volume

    img, lab = _scan(3)
    full = SliceBank([make_volume("f", img, lab)], (56, 64))
    assert not full.sparse and len(full) == 3
    sparse = np.full_like(lab, 255)
    sparse[1, 50:53, 60:63] = lab[1, 50:53, 60:63]
    sparse[1, 10, 10] = 1 - min(1, lab[1, 10, 10])
    bank = SliceBank([make_volume("s", img, sparse)], (56, 64))
    assert bank.sparse and len(bank) == 1  # the two unlabelled slices are left out
    g = torch.Generator().manual_seed(0)
    aug = AugmentConfig(flips=True, rot90=True, contrast=0, offset=0, noise=0, blur=0)
    _, y = bank.sample_patches(16, aug, g)
    assert all(bool((yi != 255).any()) for yi in y)  # every crop holds a labelled pixel
    _, y = bank.sample_patches(8, aug, g, halo=4)
    assert y.shape[-2:] == (56, 64)


def test_labelled_cross_entropy_equals_cross_entropy_on_full_labels_and_ignores_255():
    import torch
    import torch.nn.functional as F

    from napari_paser.train.stages import labelled_cross_entropy

    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 9)
    y = torch.randint(0, 3, (4, 8, 9))
    w = torch.tensor([1.5, 2.0, 0.4])
    assert labelled_cross_entropy(x, y, w).item() == F.cross_entropy(x, y, weight=w).item()
    ys = y.clone()
    ys[:, :4] = 255
    keep = ys != 255
    expected = F.cross_entropy(x.permute(0, 2, 3, 1)[keep], y[keep])
    assert labelled_cross_entropy(x, ys).item() == pytest.approx(expected.item(), rel=1e-6)
    zero = labelled_cross_entropy(x.requires_grad_(), torch.full_like(y, 255))
    assert zero.item() == 0.0 and torch.isfinite(zero)
    zero.backward()
    assert torch.all(x.grad == 0)


# --------------------------------------------------------------------------- fine-tuning


def _fast_cfg(**kw):
    from napari_paser.train.finetune import FinetuneConfig

    base = dict(budget_s=4.0, batch=4, f0_batch=1, evaluations=2, threads=1)
    base.update(kw)
    return FinetuneConfig(**base)


def test_finetune_adapts_a_copy_keeps_the_best_and_records_the_run(tiny_bundle):
    import torch

    from napari_paser.train.finetune import finetune
    from napari_paser.train.sparse_labels import simulate_strokes

    img, lab = _scan(3)
    sparse = np.full_like(lab, 255)
    sparse[:2] = simulate_strokes(lab[:2], 0.2, seed=0)
    before = {k: v.clone() for k, v in tiny_bundle.f2.state_dict().items()}
    tiny_bundle.fusion = (0.3, 0.25)  # chosen for the shipped networks, kept for the adapted ones
    tiny_bundle.meta["f0_fusion_rule"] = "development sets"
    seen = []
    res = finetune(tiny_bundle, img, sparse, _fast_cfg(), callback=lambda m: seen.append(m.stage))
    assert all(torch.equal(before[k], v) for k, v in tiny_bundle.f2.state_dict().items())  # input untouched
    assert tiny_bundle.fusion == (0.3, 0.25) and res.bundle.fusion == (0.3, 0.25)
    assert res.bundle.meta["f0_fusion_rule"] == "development sets"
    assert seen[0] == "prepare" and seen[-1] == "done" and "train" in seen and "lambda" in seen
    assert not res.cancelled and res.seconds < 30
    for m in ("f0", "f1", "f2"):
        assert res.held_out_iou["best"][m] >= res.held_out_iou["start"][m]
        assert len(res.history["iou"][m]) == len(res.history["eval_time"]) >= 2
    rec = res.bundle.meta["finetune"]
    assert rec["labelled_slices"] == [0, 1] and rec["held_out_pixels"] > 0 and rec["from"] == "tiny-test"
    assert 0.0 <= res.bundle.default_lam <= 1.0
    assert sum(rec["steps"].values()) > 0


def test_finetune_keeps_f0_fusion_through_saving_unless_told_not_to(tiny_bundle, tmp_path):
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.train.finetune import finetune, save_finetuned

    img, lab = _scan(3)
    sparse = np.full_like(lab, 255)
    sparse[:2] = lab[:2]
    tiny_bundle.fusion = (0.3, 0.25)
    kept = finetune(tiny_bundle, img, sparse, _fast_cfg(budget_s=2.0))
    assert load_bundle(save_finetuned(kept, tmp_path / "kept")).fusion == (0.3, 0.25)
    off = finetune(tiny_bundle, img, sparse, _fast_cfg(budget_s=2.0, keep_fusion=False))
    assert off.bundle.fusion == (0.0, 0.0) and off.bundle.meta["finetune"]["config"]["keep_fusion"] is False
    assert load_bundle(save_finetuned(off, tmp_path / "off")).fusion == (0.0, 0.0)


class _CountingVolume:
    """An in-memory scan behind the Volume interface that records the planes read."""

    def __new__(cls, data):
        from napari_paser.io_sources import ArrayVolume

        class Counting(ArrayVolume):
            def _read(self, z0, z1):
                self.read_planes.update(range(z0, z1))
                return super()._read(z0, z1)

        volume = Counting(data)
        volume.read_planes = set()
        return volume


def test_a_lazily_read_scan_trains_on_the_same_data_and_keeps_only_the_planes_it_uses(tiny_bundle):
    import copy

    import torch

    from napari_paser.train.finetune import FinetuneConfig, _compute_shares, _prepare, _scan_batches

    img, lab = _scan(60, shape=(60, 70))
    sparse = np.full(lab.shape, 255, np.uint8)
    sparse[[0, 30, 31]] = lab[[0, 30, 31]]
    in_memory = _prepare(copy.deepcopy(tiny_bundle), img, sparse, FinetuneConfig(planes=5))
    volume, painted = _CountingVolume(img), _CountingVolume(sparse)
    lazy = _prepare(copy.deepcopy(tiny_bundle), volume, painted, FinetuneConfig(planes=5))
    for name in ("x", "x_planes", "held", "held_patches", "weight"):
        assert torch.equal(getattr(in_memory, name), getattr(lazy, name)), name
    for bank in ("bank", "planes_bank"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(in_memory, bank).images, getattr(lazy, bank).images))
    assert len(lazy.planes_bank) == 3 and lazy.planes_bank.images[0].shape[0] == 5
    # The normaliser's pass reads every plane once, slab by slab; only the painted planes
    # and their two neighbours on each side are kept.
    assert volume.read_planes == painted.read_planes == set(range(60))
    assert lazy.scan.planes_kept == [0, 1, 2, 28, 29, 30, 31, 32, 33] and lazy.slices == [0, 30, 31]
    _scan_batches(tiny_bundle, "f0", lazy)  # batch-norm statistics: 8 evenly spaced slices
    _compute_shares(tiny_bundle, lazy, 0, max_slices=4)  # λ's compute shares: 4 more
    assert lazy.scan.planes_kept == [0, 1, 2, 28, 29, 30, 31, 32, 33]  # read, used, let go


def test_a_dask_image_layer_trains_on_the_same_data(tiny_bundle):
    """What napari holds for a stack opened lazily (a folder of slices, HDF5, Zarr)."""
    import copy

    import torch

    da = pytest.importorskip("dask.array")
    from napari_paser.train.finetune import FinetuneConfig, _prepare

    img, lab = _scan(4)
    sparse = np.where(np.arange(4)[:, None, None] == 2, lab, 255).astype(np.uint8)
    in_memory = _prepare(copy.deepcopy(tiny_bundle), img, sparse, FinetuneConfig(planes=3))
    lazy = _prepare(copy.deepcopy(tiny_bundle), da.from_array(img, chunks=(1, 56, 64)), da.from_array(sparse), FinetuneConfig(planes=3))
    assert torch.equal(in_memory.x_planes, lazy.x_planes) and torch.equal(in_memory.held, lazy.held)
    assert lazy.slices == [2] and lazy.scan.planes_kept == [1, 2, 3]


def test_batch_norm_statistics_and_compute_shares_cost_no_more_on_large_slices(tiny_bundle, monkeypatch):
    import copy

    from napari_paser.train import finetune as ft

    calls = []
    real = ft._policy_gains
    monkeypatch.setattr(ft, "_policy_gains", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    for shape, patches, slices in (((112, 128), 4 * 4, 16), ((224, 320), 64, 12), ((640, 768), 64, 1)):
        img, lab = _scan(20, shape=shape)
        sparse = np.where(np.arange(20)[:, None, None] == 9, lab, 255).astype(np.uint8)
        bundle = copy.deepcopy(tiny_bundle)
        data = ft._prepare(bundle, img, sparse, ft.FinetuneConfig(planes=1))
        assert sum(len(b) for b in ft._scan_batches(bundle, "f2", data)) == patches  # 4 slices, at most 64 patches
        calls.clear()
        ft._compute_shares(bundle, data, 0)
        assert len(calls) == slices  # as many as hold 16 slices of 224x256 pixels (at most 16, at least 1)


def test_shifted_policy_gains_have_the_measured_mean_gain(tiny_bundle):
    import copy

    from napari_paser.engine.metrics import dataset_iou_gains
    from napari_paser.train.finetune import FinetuneConfig, _held_out_table, _prepare, _shift_policy

    img, lab = _scan(2)
    bundle = copy.deepcopy(tiny_bundle)
    data = _prepare(bundle, img, lab, FinetuneConfig())
    gains, confs, _ = _held_out_table(bundle, data, 0)
    shift = np.array(_shift_policy(bundle, data, gains, confs)["shift"])
    after, _, _ = _held_out_table(bundle, data, 0)
    np.testing.assert_allclose(after - gains, np.broadcast_to(shift.reshape(1, 2, 1, 1), gains.shape), atol=1e-5)  # a pure shift
    held = after.transpose(0, 2, 3, 1).reshape(-1, 2)[data.held_patches.numpy()]
    measured = dataset_iou_gains(confs[:, :, None, None])[:, :, 0, 0] * len(confs)
    np.testing.assert_allclose(held.mean(0), measured.mean(0), atol=1e-5)


def _slice_level_bundle():
    """A tiny bundle whose f0 has a (moving) refiner and whose dense policy reads its KL,
    with a slice level (PolicyConfig.slice_level)."""
    from dataclasses import replace

    import torch

    from conftest import tiny_configs
    from napari_paser.engine.bundle import Bundle
    from napari_paser.engine.models import PolicyConfig

    configs = tiny_configs()
    configs["f0"] = replace(configs["f0"], refine_width=4)
    configs["policy"] = PolicyConfig(in_channels=7, width=4, features="v2", f0_features=False, head="dense", dense_inputs=7,
                                     dense_layers=1, refiner_kl=True)
    bundle = Bundle.from_configs(configs, seed=0).eval()
    torch.nn.init.normal_(bundle.f0.refiner.body[-1].weight, std=0.5, generator=torch.Generator().manual_seed(1))
    bundle.policy.set_slice_level_(torch.tensor([0.2, 0.3]), torch.tensor([0.01, 0.02]))
    return bundle


def test_a_slice_level_policy_is_shifted_through_its_level_and_dropped_by_the_entropy_rule():
    """The level of a slice-level policy's gains is its KL line: the "shift" rule moves that
    line (shifting the network's output would be centred away), and the "entropy" rule,
    which sets every patch's gain, clears it."""
    from napari_paser.engine.metrics import dataset_iou_gains
    from napari_paser.train.finetune import FinetuneConfig, _fit_policy_to_entropy, _held_out_table, _prepare, _shift_policy

    img, lab = _scan(2)
    bundle = _slice_level_bundle()
    data = _prepare(bundle, img, lab, FinetuneConfig())
    gains, confs, feats = _held_out_table(bundle, data, 0)
    assert float(feats[:, 6].float().std()) > 0  # the refiner moves f0: the KL differs between cells
    shift = np.array(_shift_policy(bundle, data, gains, confs)["shift"])
    after, _, _ = _held_out_table(bundle, data, 0)
    np.testing.assert_allclose(after - gains, np.broadcast_to(shift.reshape(1, 2, 1, 1), gains.shape), atol=1e-5)
    held = after.transpose(0, 2, 3, 1).reshape(-1, 2)[data.held_patches.numpy()]
    measured = dataset_iou_gains(confs[:, :, None, None])[:, :, 0, 0] * len(confs)
    np.testing.assert_allclose(held.mean(0), measured.mean(0), atol=1e-5)
    np.testing.assert_allclose(bundle.policy.level_offset.numpy(), np.array([0.01, 0.02]) + shift, atol=1e-6)

    _fit_policy_to_entropy(bundle, data, feats, gains, confs)
    assert not bundle.policy.config.slice_level and "level_offset" not in bundle.policy.state_dict()


@pytest.mark.parametrize("image_residual", [False, True])
def test_entropy_fitted_policy_ranks_by_f0_entropy_at_its_level(tiny_bundle, tmp_path, image_residual):
    import copy

    import torch
    import torch.nn.functional as F

    from napari_paser.engine.bundle import load_bundle, save_bundle
    from napari_paser.engine.metrics import dataset_iou_gains
    from napari_paser.engine.models import PolicyConfig, PolicyNet
    from napari_paser.train.finetune import ENTROPY_CHANNEL, FinetuneConfig, _fit_policy_to_entropy, _held_out_table, _prepare

    img, lab = _scan(2)
    bundle = copy.deepcopy(tiny_bundle)
    if image_residual:  # a dense policy whose gains add the image residual: the rule drops it too
        bundle.policy = PolicyNet(PolicyConfig(in_channels=7, width=4, features="v2", f0_features=False, head="dense", dense_inputs=6,
                                               dense_layers=1, image_residual=True)).eval()
        bundle.policy.residual_weight.fill_(5.0)
    assert bundle.policy.skip is None  # the fit adds the linear path it needs
    data = _prepare(bundle, img, lab, FinetuneConfig())
    gains, confs, feats = _held_out_table(bundle, data, 0)
    fit = _fit_policy_to_entropy(bundle, data, feats, gains, confs)
    after, _, _ = _held_out_table(bundle, data, 0)
    measured = (dataset_iou_gains(confs[:, :, None, None])[:, :, 0, 0] * len(confs)).mean(0)
    trained = gains.transpose(0, 2, 3, 1).reshape(-1, 2)[data.held_patches.numpy()].mean(0)
    # f1: the trained policy's level; f2: f1's plus f2's measured gain over f1
    measured_level = np.array([trained[0], trained[0] + measured[1] - measured[0]])
    held = after.transpose(0, 2, 3, 1).reshape(-1, 2)[data.held_patches.numpy()]
    np.testing.assert_allclose(held.mean(0), measured_level, atol=1e-5)
    np.testing.assert_allclose(fit["mean_gain"], measured_level, atol=1e-5)
    np.testing.assert_allclose(fit["measured_gain"], measured, atol=1e-5)
    # every patch: the level times its mean f0 entropy over the held-out patches' mean
    pool, ps = bundle.policy.config.pool, bundle.patch_size
    entropy = feats[:, ENTROPY_CHANNEL : ENTROPY_CHANNEL + 1].float()
    if not image_residual:  # v1 inputs are at full resolution, v2's on the cell grid
        entropy = F.avg_pool2d(entropy, pool)
    entropy = F.avg_pool2d(entropy, (ps[0] // pool, ps[1] // pool))
    expected = measured_level.reshape(1, 2, 1, 1) * entropy.numpy() / fit["mean_entropy"]
    np.testing.assert_allclose(after, expected, atol=1e-4)
    assert entropy.std() > 0  # the check above ranks patches, not a constant
    if image_residual:
        assert float(bundle.policy.residual_weight.abs().max()) == 0
    # the adapted policy is saved and loaded as any other
    loaded = load_bundle(save_bundle(bundle, tmp_path / "fitted"))
    with torch.no_grad():
        np.testing.assert_allclose(loaded.policy.eval().gains(feats.float()).numpy(), after, atol=1e-6)


@pytest.mark.parametrize("share", [0.05, 0.3])
def test_adapted_lambda_keeps_the_validated_compute_share(tiny_bundle, share):
    from napari_paser.train.finetune import finetune

    img, lab = _scan(2)
    tiny_bundle.meta["validation"] = {"paser_flops_ratio": share}
    res = finetune(tiny_bundle, img, lab, _fast_cfg(evaluations=1))
    rec = res.bundle.meta["finetune"]
    assert rec["validated_flops_ratio"] == share and "validated" in rec["default_lam"]["rule"]
    assert rec["policy_fit"]["rule"] == "entropy" and len(rec["policy_fit"]["mean_gain"]) == 2
    curve = {row["lam"]: row for row in rec["lam_curve"]}
    lam = res.bundle.default_lam
    within = [v for v, row in curve.items() if row["flops_ratio"] <= share]
    assert lam == (min(within) if within else max(curve))  # the cheapest λ that fits, or the cheapest λ at all
    # GFLOPs fall as λ rises, so every smaller λ costs more than the share
    assert all(row["flops_ratio"] > share for v, row in curve.items() if v < lam)
    held = finetune(tiny_bundle, img, lab, _fast_cfg(evaluations=1, lam_rule="held_out")).bundle.meta["finetune"]
    assert held["default_lam"]["rule"].startswith("best held-out IoU")


def test_finetune_stops_when_asked_and_still_returns_a_usable_bundle(tiny_bundle, tmp_path):
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.pipeline import segment
    from napari_paser.train.finetune import finetune, save_finetuned, unique_bundle_folder

    img, lab = _scan(2)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    res = finetune(tiny_bundle, img, lab, _fast_cfg(budget_s=60.0), stop=stop)
    assert res.cancelled and res.seconds < 30
    folder = unique_bundle_folder(tmp_path, "scan-paser-ft")
    assert folder.name == "scan-paser-ft"
    save_finetuned(res, folder)
    assert unique_bundle_folder(tmp_path, "scan-paser-ft").name == "scan-paser-ft-2"
    with pytest.raises(FileExistsError):
        save_finetuned(res, folder)
    loaded = load_bundle(folder)
    assert loaded.name == "scan-paser-ft" and loaded.meta["finetune"]["cancelled"] is True
    assert segment(img, loaded).labels.shape == img.shape


def test_auto_budget_scales_with_labelled_area():
    from napari_paser.train.finetune import auto_budget

    assert 60.0 < auto_budget(1000) < 65.0
    assert auto_budget(224 * 256) == pytest.approx(90.0)
    assert auto_budget(4 * 224 * 256, 4) == auto_budget(50 * 224 * 256, 50) == 180.0
    # Strokes over 15 % of 4 slices count as the 4 slices; a few dots in 4 slices do not.
    assert auto_budget(int(0.15 * 4 * 224 * 256), 4) == 180.0
    assert auto_budget(500, 4) < 65.0


def test_finetune_rejects_bad_labels_before_training(tiny_bundle):
    from napari_paser.train.finetune import finetune

    img, lab = _scan(2)
    with pytest.raises(PaserInputError, match="only nickel"):
        finetune(tiny_bundle, img, np.where(lab == 2, 2, 255).astype(np.uint8), _fast_cfg())
    with pytest.raises(PaserInputError, match="do not match"):
        finetune(tiny_bundle, img, lab[:1], _fast_cfg())


# --------------------------------------------------------------------------- CLI


def _write(tmp_path, name, data):
    from napari_paser.io import write_tiff

    return str(write_tiff(tmp_path / name, data))


def test_cli_finetune_writes_a_new_bundle_beside_the_image_and_never_replaces_one(tiny_bundle_dir, tmp_path, capsys):
    from napari_paser.cli.main import main
    from napari_paser.train.sparse_labels import simulate_strokes

    img, lab = _scan(2)
    image = _write(tmp_path, "scan.tif", img)
    labels = _write(tmp_path, "strokes.tif", simulate_strokes(lab, 0.2, seed=0))
    args = ["finetune", image, "--labels", labels, "--bundle", str(tiny_bundle_dir), "--budget", "3", "--threads", "1", "--quiet"]
    assert main(args) == 0
    assert "held-out mean IoU" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "scan-paser-ft" / "manifest.json").read_text())
    assert manifest["name"] == "scan-paser-ft" and manifest["finetune"]["budget_s"] == 3.0
    assert main(args) == 0  # a second run gets a new folder
    assert (tmp_path / "scan-paser-ft-2" / "manifest.json").is_file()
    assert main(args + ["--out", str(tmp_path / "scan-paser-ft")]) == 2
    assert "already holds a bundle" in capsys.readouterr().err


def test_cli_finetune_reads_an_hdf5_scan_and_names_the_bundle_after_its_file(tiny_bundle_dir, tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    from napari_paser.cli.main import main
    from napari_paser.train.sparse_labels import simulate_strokes

    img, lab = _scan(2)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["exchange/data"] = img
    labels = _write(tmp_path, "strokes.tif", simulate_strokes(lab, 0.2, seed=0))
    spec = f"{tmp_path / 'scan.h5'}:/exchange/data"
    args = ["finetune", spec, "--labels", labels, "--bundle", str(tiny_bundle_dir), "--budget", "2", "--threads", "1", "--quiet"]
    assert main(args) == 0
    assert (tmp_path / "scan-paser-ft" / "manifest.json").is_file()
    assert main(args[:1] + [spec, "--labels", _write(tmp_path, "small.tif", lab[:, :100])] + args[4:]) == 2
    assert "do not match the image shape" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda lab: np.where(lab == 0, 0, 255).astype(np.uint8), "only pore"),
        (lambda lab: np.where(lab == 1, 7, lab).astype(np.uint8), "outside {0, 1, 2, 255}"),
        (lambda lab: lab[:, :100], "do not match the image shape"),
        (lambda lab: np.full_like(lab, 255), "no labelled pixel"),
    ],
)
def test_cli_bad_training_labels_end_in_one_line(tiny_bundle_dir, tmp_path, capsys, make, message):
    from napari_paser.cli.main import main

    img, lab = _scan(2)
    image = _write(tmp_path, "scan.tif", img)
    labels = _write(tmp_path, "bad.tif", make(lab))
    for args in (
        ["finetune", image, "--labels", labels, "--bundle", str(tiny_bundle_dir), "--budget", "2"],
        ["evaluate", "--images", image, "--labels", _write(tmp_path, "truth.tif", lab), "--methods", "rf", "--rf-train-labels", labels],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "scan-paser-ft").exists()


def test_cli_train_init_accepts_sparse_labels(tiny_bundle_dir, tmp_path):
    from napari_paser.cli.main import main
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.train.sparse_labels import simulate_strokes

    img, lab = _scan(3)
    sparse = simulate_strokes(lab, 0.25, seed=0)
    sparse[2] = 255  # a whole unlabelled slice
    image = _write(tmp_path, "scan.tif", img)
    labels = _write(tmp_path, "sparse.tif", sparse)
    out = tmp_path / "init-bundle"
    rc = main(["train", "--images", image, "--labels", labels, "--init", str(tiny_bundle_dir), "--out", str(out),
               "--scale", "0.01", "--threads", "1", "--no-progress"])
    assert rc == 0
    bundle = load_bundle(out)
    assert all(np.isfinite(p.detach().numpy()).all() for m in bundle.models().values() for p in m.parameters())


def test_finetune_handles_v2_networks_stem_halo_and_head_dropout():
    """The v2 bundle's shapes: f0 with a space-to-depth stem and head MC dropout, f1/f2 with a halo."""
    from napari_paser.engine.bundle import Bundle
    from napari_paser.engine.models import PolicyConfig, UNetConfig
    from napari_paser.engine.pipeline import segment
    from napari_paser.train.finetune import finetune

    configs = {
        "f0": UNetConfig(base_width=4, depth=2, dropout=0.2, stem=4, mc_scope="head"),
        "f1": UNetConfig(base_width=4, depth=2, stem=2, halo=8),
        "f2": UNetConfig(base_width=6, depth=2, halo=8),
        "policy": PolicyConfig(in_channels=10, width=4, features="v2", blocks=2, grid_context=True),
    }
    bundle = Bundle.from_configs(configs, seed=0, meta={"name": "tiny-v2"}).eval()
    img, lab = _scan(2)
    res = finetune(bundle, img, lab, _fast_cfg())
    assert all(n > 0 for n in res.bundle.meta["finetune"]["steps"].values())
    assert res.held_out_iou["best"]["f2"] >= res.held_out_iou["start"]["f2"]
    assert segment(img, res.bundle).labels.shape == img.shape


def test_cli_finetune_on_the_corrected_labels_of_a_region_reads_that_region(tiny_bundle_dir, tmp_path, capsys):
    from napari_paser import io
    from napari_paser.cli.main import main
    from napari_paser.train.sparse_labels import simulate_strokes

    img, lab = _scan(2)
    bigger = np.pad(img, ((1, 0), (0, 9), (5, 0)), mode="reflect")
    box = [[1, 1 + img.shape[0]], [0, img.shape[1]], [5, 5 + img.shape[2]]]  # where segment --roi put them
    labels = io.write_tiff(tmp_path / "box.tif", simulate_strokes(lab, 0.2, seed=0), metadata={"napari_paser": {"roi": box}})
    image = io.write_tiff(tmp_path / "scan.tif", bigger)
    args = ["finetune", str(image), "--labels", str(labels), "--bundle", str(tiny_bundle_dir), "--budget", "2", "--threads", "1", "--quiet"]
    assert main(args) == 0
    assert "fine-tuning reads that box" in capsys.readouterr().err
    assert (tmp_path / "scan-paser-ft" / "manifest.json").is_file()


def test_the_scans_batch_norm_statistics_are_kept_only_where_the_held_out_iou_does_not_drop(tiny_bundle, monkeypatch):
    import copy

    import torch

    from napari_paser.train import finetune as ft

    def shift_statistics(model, batches):  # stands in for re-estimating them on the scan
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.add_(1.0)

    after = {"f0": 0.5, "f1": 0.3, "f2": 0.7}  # held-out IoU with the scan's statistics
    monkeypatch.setattr(ft, "_adabn", shift_statistics)
    monkeypatch.setattr(ft, "_scan_batches", lambda bundle, name, data: [])
    monkeypatch.setattr(ft, "_score", lambda bundle, name, data, seed: after[name])
    before = {m: copy.deepcopy(getattr(tiny_bundle, m).state_dict()) for m in ft.MODELS}
    scores = {"f0": 0.5, "f1": 0.4, "f2": 0.6}
    assert ft._adapt_batch_norm(tiny_bundle, None, 0, scores) == {"f0": True, "f1": False, "f2": True}  # level counts as kept
    assert scores == {"f0": 0.5, "f1": 0.4, "f2": 0.7}
    for m, kept in (("f1", False), ("f2", True)):
        state = tiny_bundle.models()[m].state_dict()
        same = all(torch.equal(state[k], before[m][k]) for k in state)
        assert same is not kept
