"""Training: split by volume, rewards, augmentation, a smoke run of every stage, resume.

No test trains a real model: tiny networks, a handful of steps, small slices.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_configs


def _volume(i: int, slices: int = 3, shape=(112, 128)):
    """A labelled toy volume: bright discs (nickel), dark stripes (carbon), pore rest."""
    from napari_paser.train.datasets import make_volume

    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros((slices, *shape), np.uint8)
    for z in range(slices):
        for cy, cx in rng.integers(0, min(shape), size=(6, 2)):
            lab[z][(yy - cy) ** 2 + (xx - cx) ** 2 < 250] = 2
        lab[z][((yy + 5 * z) % 22) < 3] = 1
    img = np.choose(lab, [20.0, 90.0, 200.0]) + rng.normal(0, 15, lab.shape)
    return make_volume(f"v{i}", img.astype(np.float32), lab)


def _tiny_cfg(**kw):
    from napari_paser.train.presets import get_preset

    base = dict(
        f2_steps=12, f1_steps=8, f0_steps=4, policy_steps=10, ft_steps=3,
        patch_batch=8, f0_batch=2, ft_batch=2, policy_batch=4, rl_copies=2, checkpoint_every=2,
        f2_lr=3e-3, f1_lr=3e-3,
    )
    base.update(kw)
    return get_preset("quick").replace(**base)


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12])
def test_split_by_volume_never_shares_a_volume(n):
    from napari_paser.train.datasets import split_volumes

    split = split_volumes(n, {"pretrain": 0.5, "rl": 0.2, "finetune": 0.15, "val": 0.15}, seed=3)
    assert set().union(*split.values()) == set(range(n))
    assert all(split[s] for s in ("pretrain", "rl", "finetune"))
    # Validation never shares a volume with any training split.
    assert not set(split["val"]) & set(split["pretrain"] + split["rl"] + split["finetune"])
    if n >= 5:  # enough volumes: four disjoint splits
        seen = [i for s in split.values() for i in s]
        assert len(seen) == len(set(seen)) == n
    if n == 1:
        assert split["val"] == []


def test_split_is_seeded_and_respects_given_validation():
    from napari_paser.train.datasets import split_volumes

    fr = {"pretrain": 0.5, "rl": 0.2, "finetune": 0.15, "val": 0.15}
    assert split_volumes(8, fr, 1) == split_volumes(8, fr, 1)
    assert split_volumes(8, fr, 1, has_validation=True)["val"] == []


def test_make_volume_rejects_bad_labels():
    from napari_paser.errors import PaserInputError
    from napari_paser.train.datasets import make_volume

    img = np.random.default_rng(0).random((2, 60, 70)).astype(np.float32)
    with pytest.raises(PaserInputError):
        make_volume("x", img, np.full((2, 60, 70), 3, np.uint8))
    with pytest.raises(PaserInputError):
        make_volume("x", img, np.zeros((2, 60, 71), np.uint8))


# --------------------------------------------------------------------------- rewards


def test_patch_iou_excludes_absent_classes_and_padding():
    from napari_paser.train.rewards import iou_from_confusion, patch_confusion

    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    truth[0, :2, 2:] = 1  # patch (0,1) is all class 1
    pred = truth.clone()
    pred[0, 0, 0] = 2  # one wrong pixel in patch (0,0)
    conf = patch_confusion(pred, truth, (2, 2))
    iou = iou_from_confusion(conf)[0]
    # Patch (0,0): class 0 IoU 3/4, class 2 IoU 0/1 (present in prediction), class 1 absent.
    assert iou[0, 0] == pytest.approx((0.75 + 0.0) / 2)
    assert iou[0, 1] == pytest.approx(1.0)  # only class 1, perfect
    truth[0, 2:, :] = 255  # padding is ignored
    conf = patch_confusion(pred, truth, (2, 2))
    assert int(conf[0, 1].sum()) == 0


def test_reinforce_loss_prefers_the_better_model():
    """Policy gradient steps on a fixed reward table move routing towards f2 where it helps."""
    from napari_paser.engine.models import PolicyConfig, PolicyNet
    from napari_paser.train.rewards import reinforce_loss, sample_actions

    torch.manual_seed(0)
    policy = PolicyNet(PolicyConfig(width=4, patch_size=(8, 8)))
    feats = torch.randn(6, 5, 16, 16)
    delta = torch.zeros(6, 2, 2, 2)
    delta[:, 1] = 0.5  # f2 gains a lot everywhere, f1 nothing
    costs = torch.tensor([0.0, 0.05, 0.2])
    lam = torch.zeros(6)
    opt = torch.optim.Adam(policy.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    fracs = []
    for _ in range(40):
        gains = policy.gains(feats)
        logits = policy.logits(gains, lam, costs)
        actions = sample_actions(logits, 1.0, g)
        loss, stats = reinforce_loss(gains, logits, actions, delta, lam, costs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        fracs.append(stats["f2"])
    assert np.mean(fracs[-10:]) > np.mean(fracs[:10])
    # Cost never rises with lambda (one policy serves all lambdas).
    with torch.no_grad():
        gains = policy.gains(feats)
        prev = None
        for lam_v in np.linspace(0, 1, 11):
            cost = costs[policy.logits(gains, float(lam_v), costs).argmax(1)].sum()
            assert prev is None or cost <= prev + 1e-6
            prev = cost


# --------------------------------------------------------------------------- augmentation


def test_augmentations_keep_shapes_and_labels():
    from napari_paser.train.augment import AugmentConfig, augment_batch
    from napari_paser.train.datasets import SliceBank

    bank = SliceBank([_volume(0), _volume(1)], (56, 64))
    g = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(impulse=0.02, impulse_prob=1.0)
    x, y = bank.sample_patches(5, cfg, g, impulse=True)
    assert x.shape == (5, 1, 56, 64) and y.shape == (5, 56, 64)
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}
    xs, ys = bank.sample_slices(3, cfg, g)
    assert xs.shape[0] == 3 and xs.shape[-2] % 56 == 0 and xs.shape[-1] % 64 == 0 and ys.shape == xs.shape[:1] + xs.shape[2:]
    # A square image rotated: labels move with the pixels.
    img = torch.arange(16.0).view(1, 1, 4, 4)
    lab = torch.arange(16).view(1, 4, 4)
    a, b = augment_batch(img, lab, AugmentConfig(contrast=0, offset=0, noise=0, blur=0), torch.Generator().manual_seed(3))
    assert torch.equal(a[0, 0].long(), b[0])


# --------------------------------------------------------------------------- stages


@pytest.fixture
def toy_volumes():
    return [_volume(i) for i in range(5)]


def test_smoke_run_every_stage_writes_a_loadable_bundle(toy_volumes, tmp_path):
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.train.runner import STAGES, train

    result = train(toy_volumes, tmp_path / "b", _tiny_cfg(), configs=tiny_configs(), seed=0, progress=False, echo=False)
    h = result.report["history"]
    assert set(STAGES) <= set(h)
    assert h["pretrain_f2"]["loss"][-1] < h["pretrain_f2"]["loss"][0]
    assert h["pretrain_f1"]["loss"][-1] < h["pretrain_f1"]["loss"][0]
    b = load_bundle(tmp_path / "b")
    assert 0.0 <= b.default_lam <= 1.0
    assert b.meta["training"]["seed"] == 0 and "default_lam_rule" in b.meta
    report = json.loads((tmp_path / "b" / "training_report.json").read_text())
    v = report["validation"]
    assert set(v["models"]) == {"f0", "f1", "f2"}
    costs = [r["flops_ratio"] for r in v["curve"]]
    assert all(a >= b - 1e-9 for a, b in zip(costs, costs[1:]))  # cost never rises with λ
    assert (tmp_path / "b" / "loss_curves.png").stat().st_size > 0
    assert (tmp_path / "b" / "patch_fractions.png").stat().st_size > 0
    # Splits are by volume.
    split = report["split"]
    names = [n for s in split.values() for n in s]
    assert len(names) == len(set(names)) == len(toy_volumes)


def test_resume_after_interrupted_stage(toy_volumes, tmp_path, monkeypatch):
    import napari_paser.train.runner as runner

    cfg = _tiny_cfg()
    out = tmp_path / "b"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "finetune_joint", boom)
    with pytest.raises(KeyboardInterrupt):
        runner.train(toy_volumes, out, cfg, configs=tiny_configs(), seed=0, progress=False, echo=False)
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["done"] == ["pretrain_f2", "pretrain_f1", "pretrain_f0", "refine_f0", "policy"]
    monkeypatch.undo()
    # The finished stages must not run again.
    monkeypatch.setattr(runner, "pretrain_patch_model", boom)
    monkeypatch.setattr(runner, "pretrain_f0", boom)
    monkeypatch.setattr(runner, "train_policy", boom)
    result = runner.train(toy_volumes, out, cfg, configs=tiny_configs(), seed=0, progress=False, echo=False)
    assert (out / "manifest.json").is_file()
    assert "finetune" in result.report["history"]
    # Another λ rule re-chooses λ on the finished networks: nothing is trained again.
    again = runner.train(toy_volumes, out, cfg.replace(lam_flops_margin=0.5), configs=tiny_configs(), seed=0, progress=False, echo=False)
    rule = again.report["default_lam_rule"]
    assert again.report["config"]["lam_flops_margin"] == 0.5
    assert "0.5 x 0.3 x f2" in rule or rule.startswith("no lambda met the FLOP budget")
    # Another preset in the same folder is refused rather than mixed.
    from napari_paser.errors import PaserInputError

    with pytest.raises(PaserInputError):
        runner.train(toy_volumes, out, cfg.replace(f2_steps=99), configs=tiny_configs(), seed=0, progress=False, echo=False)


def test_run_loop_resumes_inside_a_stage_exactly(tmp_path):
    """Interrupted at step 3 with checkpoints every 2 steps: the rerun starts at step 2
    and ends with the same weights as an uninterrupted run."""
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.stages import StageContext, run_loop

    def run(folder, fail_at=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        ctx = StageContext(cfg=_tiny_cfg(checkpoint_every=2), device=torch.device("cpu"),
                           ckpt=Checkpointer(folder, {"x": 1}), progress=False, log=lambda s: None)
        g = ctx.generator("s")
        seen = []

        def step(i):
            if i == fail_at:
                raise KeyboardInterrupt
            seen.append(i)
            x = torch.randn(4, 3, generator=g)
            loss = (model(x) - torch.rand(4, 1)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"loss": float(loss.detach())}

        run_loop(ctx, "s", 6, {"m": model}, {"o": (opt, 1e-2)}, step, g)
        return model, seen, ctx.ckpt

    ref, _, fresh = run(tmp_path / "a")
    assert fresh.resumed_seconds == {}
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", fail_at=3)
    resumed, seen, ckpt = run(tmp_path / "b")
    assert seen == [2, 3, 4, 5]
    assert ckpt.resumed_seconds["s"] > 0  # the interrupted run's time counts toward the stage's minutes
    assert torch.allclose(ref.weight, resumed.weight) and torch.allclose(ref.bias, resumed.bias)


def test_init_fine_tunes_an_existing_bundle(tiny_bundle, tmp_path):
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.train.runner import train

    vol = _volume(7, slices=4)
    res = train([vol], tmp_path / "ft", _tiny_cfg(preset="init"), init=tiny_bundle, seed=1, progress=False, echo=False)
    b = load_bundle(tmp_path / "ft")
    assert b.default_lam == tiny_bundle.default_lam  # one volume: no validation, λ kept
    assert res.report["split"]["val"] == []
    assert b.meta["training"]["init"] is not None
    for k in ("f0", "f1", "f2"):  # weights moved
        before = dict(getattr(tiny_bundle, k).named_parameters())
        assert any(not torch.equal(before[n], p) for n, p in getattr(b, k).named_parameters())


def test_warm_start_continues_only_the_stages_with_steps(toy_volumes, tiny_bundle, tmp_path):
    """As the v2.2 preset does: f2 and f0 kept from the warm start (zero steps), f1
    trained on, the policy re-fitted."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.train.runner import train

    cfg = _tiny_cfg(f2_steps=0, f0_steps=0, ft_steps=0)
    res = train(toy_volumes, tmp_path / "c", cfg, configs=tiny_configs(), warm_start=tiny_bundle, seed=0, progress=False, echo=False)
    b = load_bundle(tmp_path / "c")
    assert res.report["history"]["pretrain_f2"] == {"step": []}
    for k, moved in (("f0", False), ("f2", False), ("f1", True), ("policy", True)):
        before = getattr(tiny_bundle, k).state_dict()
        after = getattr(b, k).state_dict()
        same = all(torch.equal(before[n], after[n]) for n in before)
        assert same != moved, k


def test_a_preset_that_keeps_the_policy_network_refuses_a_run_that_copied_none(toy_volumes, tmp_path):
    """As v2.24 does, without a warm start: no policy was copied, so the run stops before any work."""
    from napari_paser.errors import PaserInputError
    from napari_paser.train.runner import train

    cfg = _tiny_cfg(policy_objective="dense", policy_slice_level=True, policy_keep_network=True)
    with pytest.raises(PaserInputError, match="no policy was copied"):
        train(toy_volumes, tmp_path / "k", cfg, configs=tiny_configs(), seed=0, progress=False, echo=False)
    assert not (tmp_path / "k" / "checkpoints").exists()


def test_a_fused_preset_fits_the_policy_with_f0_fused_and_ships_the_weights(toy_volumes, tiny_bundle, tmp_path):
    """As v2.18 does: the networks kept, f0 fused into f1 / f2 before the reward caches,
    and the weights in the trained bundle's manifest."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.train.presets import TrainConfig, get_preset
    from napari_paser.train.runner import train

    assert get_preset("v2.18").f0_fusion == (0.30, 0.25) and get_preset("v2.16").f0_fusion == (0.0, 0.0)
    cfg = _tiny_cfg(f2_steps=0, f1_steps=0, f0_steps=0, ft_steps=0, f0_fusion=(0.3, 0.25))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    train(toy_volumes, tmp_path / "fused", cfg, configs=tiny_configs(), warm_start=tiny_bundle, seed=0, progress=False, echo=False)
    fused = load_bundle(tmp_path / "fused")
    assert fused.fusion == (0.3, 0.25)
    assert json.loads((tmp_path / "fused" / "manifest.json").read_text())["f0_fusion"] == {"f1": 0.3, "f2": 0.25}
    assert tiny_bundle.fusion == (0.0, 0.0)  # the warm start is copied, not changed


def test_an_f0_that_reads_planes_trains_from_a_one_plane_warm_start(toy_volumes, tiny_bundle, tmp_path):
    """As the v2.7 preset does: f0 widened to 3 planes (started as the one-plane f0 on the
    planes' mean), trained on samples that carry the planes; f1, f2 keep reading one,
    in every stage (the joint fine-tuning too)."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.models import UNetConfig, centre_planes, with_planes
    from napari_paser.engine.pipeline import PaserSegmenter
    from napari_paser.train.runner import train

    configs = tiny_configs()
    configs["f0"] = UNetConfig(**{**configs["f0"].to_dict(), "planes": 3})
    cfg = _tiny_cfg(f2_steps=0, f1_steps=0, f0_steps=3, ft_steps=2, policy_steps=2)
    res = train(toy_volumes, tmp_path / "p", cfg, configs=configs, warm_start=tiny_bundle, seed=0, progress=False, echo=False)
    assert len(res.report["history"]["pretrain_f0"]["loss"]) == 3 and len(res.report["history"]["finetune"]["loss"]) == 2
    b = load_bundle(tmp_path / "p")
    assert "f0" in b.meta["training"]["warm_start"]["models"]
    assert (b.f0.config.planes, b.f1.config.planes, b.f2.config.planes) == (3, 1, 1)
    widened = with_planes(tiny_bundle.f0, 3).state_dict()
    assert not torch.equal(b.f0.state_dict()["inc.0.weight"], widened["inc.0.weight"])  # trained on
    seg = PaserSegmenter(b, mc_passes=2)
    seg.set_volume(toy_volumes[0].image)
    assert seg.result().labels.shape == toy_volumes[0].image.shape
    x = torch.arange(5.0).view(1, 5, 1, 1)
    assert centre_planes(x, 3).flatten().tolist() == [1.0, 2.0, 3.0] and centre_planes(x, 5) is x
    with pytest.raises(ValueError, match="centre planes"):
        centre_planes(x, 2)


def test_extra_volumes_join_pretraining_or_the_policy_split_only(toy_volumes, tiny_bundle, tmp_path):
    """More data for the patch models leaves the RL and validation volumes as they were."""
    from napari_paser.train.runner import train

    cfg = _tiny_cfg(f2_steps=0, f0_steps=0, f1_steps=2, ft_steps=0, policy_steps=2)
    kw = dict(configs=tiny_configs(), warm_start=tiny_bundle, seed=0, progress=False, echo=False)
    plain = train(toy_volumes, tmp_path / "plain", cfg, **kw).report["split"]
    extra = [_volume(20 + i, slices=2) for i in range(2)]
    more = train(toy_volumes, tmp_path / "more", cfg, extra_pretrain=extra, **kw).report["split"]
    assert more["pretrain"] == plain["pretrain"] + ["v20", "v21"]
    assert {k: v for k, v in more.items() if k != "pretrain"} == {k: v for k, v in plain.items() if k != "pretrain"}
    # Volumes for the policy only: they join the RL split and nothing else.
    rl_more = train(toy_volumes, tmp_path / "rl", cfg, extra_rl=extra, **kw).report["split"]
    assert rl_more["rl"] == plain["rl"] + ["v20", "v21"]
    assert {k: v for k, v in rl_more.items() if k != "rl"} == {k: v for k, v in plain.items() if k != "rl"}


def test_cli_train_on_tiff_stacks(tmp_path):
    import argparse

    tifffile = pytest.importorskip("tifffile")
    from napari_paser.cli import train as cli_train

    paths = []
    for i in range(4):
        v = _volume(10 + i, slices=2)
        img, lab = tmp_path / f"s{i}_image.tif", tmp_path / f"s{i}_labels.tif"
        tifffile.imwrite(img, (v.image * 1000).astype(np.uint16))
        tifffile.imwrite(lab, v.labels)
        paths.append((img, lab))
    (tmp_path / "extra").mkdir()
    v = _volume(30, slices=2)
    tifffile.imwrite(tmp_path / "extra" / "more_image.tif", (v.image * 1000).astype(np.uint16))
    tifffile.imwrite(tmp_path / "extra" / "more_labels.tif", v.labels)
    (tmp_path / "extra_rl").mkdir()
    v = _volume(31, slices=2)
    tifffile.imwrite(tmp_path / "extra_rl" / "rl_image.tif", (v.image * 1000).astype(np.uint16))
    tifffile.imwrite(tmp_path / "extra_rl" / "rl_labels.tif", v.labels)
    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--preset", "init",
         "--scale", "0.01", "--seed", "2", "--no-progress", "--extra-pretrain", str(tmp_path / "extra"),
         "--extra-rl", str(tmp_path / "extra_rl")]
    )
    # Tiny architecture through --init: a real preset's networks would make this slow.
    from napari_paser.engine.bundle import Bundle, save_bundle

    save_bundle(Bundle.from_configs(tiny_configs(), seed=0), tmp_path / "init")
    args.init = str(tmp_path / "init")
    assert args.func(args) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["training"]["seed"] == 2 and "--data" in manifest["training"]["command"]
    assert manifest["training"]["data"]["pretrain"][-1] == "more_image" and "more_image" not in manifest["training"]["data"]["val"]
    assert manifest["training"]["data"]["rl"][-1] == "rl_image" and "--extra-rl" in manifest["training"]["command"]
    bad = parser.parse_args(["train", "--out", str(tmp_path / "x")])
    from napari_paser.errors import PaserInputError

    with pytest.raises(PaserInputError):
        bad.func(bad)


def test_load_data_dir_reads_the_paper_layout_by_volume(tmp_path):
    from napari_paser.train.datasets import load_data_dir
    from napari_paser.train.paper_layout import write_paper_layout

    vols = {"train": [], "validation": []}
    for i in range(3):
        v = _volume(20 + i, slices=2, shape=(56, 64))
        vols["train" if i < 2 else "validation"].append((v.image, v.labels))
    write_paper_layout(tmp_path, vols)
    train, val = load_data_dir(tmp_path)
    assert len(train) == 2 and all(v.num_slices == 2 for v in train)
    assert val is not None and len(val) == 1
    assert set(np.unique(train[0].labels)) <= {0, 1, 2}


def test_default_lambda_rule():
    from napari_paser.train.validation import choose_default_lam

    curve = [
        {"lam": 0.0, "iou_ratio": 1.00, "flops_ratio": 0.60},
        {"lam": 0.1, "iou_ratio": 0.99, "flops_ratio": 0.20},
        {"lam": 0.2, "iou_ratio": 0.98, "flops_ratio": 0.10},
        {"lam": 0.5, "iou_ratio": 0.90, "flops_ratio": 0.03},
    ]
    assert choose_default_lam(curve, 0.97, 0.30)[0] == 0.1
    assert choose_default_lam(curve, 0.995, 0.30)[0] == 0.1  # IoU unreachable: best within the budget
    assert choose_default_lam(curve, 0.97, 0.01)[0] == 0.5  # budget unreachable: cheapest


def test_policy_holdout_takes_whole_volumes_and_never_all():
    from napari_paser.train.runner import split_policy_holdout

    vols = [_volume(i, slices=1, shape=(16, 16)) for i in range(10)]
    fit, held = split_policy_holdout(vols, 0.2, seed=0)
    assert len(held) == 2 and len(fit) == 8
    assert {v.name for v in fit}.isdisjoint(v.name for v in held) and len(fit) + len(held) == 10
    assert [v.name for v in split_policy_holdout(vols, 0.2, seed=0)[1]] == [v.name for v in held]  # seeded
    assert split_policy_holdout(vols, 0.0, seed=0) == (vols, [])
    assert split_policy_holdout(vols[:1], 0.5, seed=0) == (vols[:1], [])
    assert len(split_policy_holdout(vols[:3], 1.0, seed=0)[0]) == 1  # at least one volume is fitted on


def test_regression_policy_with_holdout_reports_disjoint_splits(toy_volumes, tmp_path):
    """A run with ``policy_holdout``: the held-out RL volumes are named in the report,
    apart from those the policy is fitted on, and the early stopping is in the history
    and the loss figure."""
    from napari_paser.train.runner import train

    cfg = _tiny_cfg(policy_objective="regression", policy_holdout=0.5, policy_eval_every=2, ft_steps=0,
                    splits={"pretrain": 0.3, "rl": 0.5, "finetune": 0.1, "val": 0.1})
    res = train(toy_volumes, tmp_path / "h", cfg, configs=tiny_configs(), seed=0, progress=False, echo=False)
    split = res.report["split"]
    assert len(split["rl_holdout"]) >= 1 and len(split["rl"]) >= 1
    names = [n for s in split.values() for n in s]
    assert len(names) == len(set(names)) == len(toy_volumes)
    h = res.report["history"]["policy"]
    assert [s for s, _ in h["holdout_error"]] == list(range(2, cfg.policy_steps + 1, 2))
    assert h["best_step"] in [s for s, _ in h["holdout_error"]]
    assert (tmp_path / "h" / "loss_curves.png").stat().st_size > 0


def test_patch_cross_entropy_is_the_labelled_cross_entropy_of_each_patch():
    import torch.nn.functional as F

    from napari_paser.train.stages import labelled_cross_entropy, patch_cross_entropy

    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 9)
    y = torch.randint(0, 3, (3, 8, 9))
    w = torch.tensor([1.5, 2.0, 0.4])
    y[1, :4] = 255
    y[2] = 255
    per = patch_cross_entropy(x, y, w)
    for i in range(2):
        assert per[i].item() == pytest.approx(labelled_cross_entropy(x[i : i + 1], y[i : i + 1], w).item(), rel=1e-5)
    assert per[2].item() == 0.0
    full = torch.randint(0, 3, (3, 8, 9))
    assert patch_cross_entropy(x, full).mean().item() == pytest.approx(F.cross_entropy(x, full).item(), rel=1e-5)


def test_focus_weights_favour_the_patches_the_teacher_gets_wrong():
    from napari_paser.engine.models import UNet
    from napari_paser.train.stages import focus_weights, patch_cross_entropy

    torch.manual_seed(0)
    teacher = UNet(tiny_configs()["f1"]).eval()
    with torch.no_grad():
        teacher.head.weight.mul_(50.0)  # a confident teacher
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        pred = teacher(x).argmax(1)
    y = torch.stack([pred[0], (pred[1] + 1) % 3])  # right on the first patch, wrong on the second
    w = focus_weights(teacher, x, y, power=2.0)
    with torch.no_grad():
        ce = patch_cross_entropy(teacher(x), y)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[1] > w[0]
    assert (w[1] / w[0]).item() == pytest.approx((ce[1] / ce[0]).item() ** 2, rel=1e-4)
    assert torch.allclose(focus_weights(teacher, x, y, power=0.0), torch.ones(2))


def test_distillation_loss_is_the_kl_from_the_teacher():
    from napari_paser.train.stages import distillation_loss

    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 5, 6)
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(teacher + 7.0, teacher).item() == pytest.approx(0.0, abs=1e-6)  # softmax ignores a shift
    student = torch.randn(2, 3, 5, 6)
    p, q = teacher.softmax(1), student.softmax(1)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    assert distillation_loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(student, teacher).item() > 0


def test_an_f1_of_another_shape_learns_from_the_warm_starts_f1(toy_volumes, tiny_bundle, tmp_path):
    """As v2.25 does: f1's shape changed, so its weights cannot be copied; it trains on the
    labels and on the warm start's f1 as a teacher, and comes closer to the teacher than
    the same steps on the labels alone bring it."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.models import UNetConfig
    from napari_paser.train.datasets import SliceBank
    from napari_paser.train.runner import train
    from napari_paser.train.stages import distillation_loss

    configs = tiny_configs()
    configs["f1"] = UNetConfig(base_width=8, depth=1, stem=2)  # another shape: nothing of f1 is copied
    teacher = tiny_bundle.f1.eval()
    with torch.no_grad():
        teacher.head.weight.mul_(4.0)  # a teacher with opinions
    gaps = {}
    for distill in (0.0, 0.9):
        cfg = _tiny_cfg(f2_steps=0, f0_steps=0, ft_steps=0, policy_steps=0, f1_steps=30, f1_distill=distill)
        res = train(toy_volumes, tmp_path / f"d{distill}", cfg, configs=configs, warm_start=tiny_bundle, seed=0, progress=False, echo=False)
        b = load_bundle(tmp_path / f"d{distill}")
        assert "f1" not in b.meta["training"]["warm_start"]["models"]
        assert all(np.isfinite(res.report["history"]["pretrain_f1"]["loss"]))
        x = torch.stack(SliceBank(toy_volumes[:2], (56, 64)).images[:4])[:, :, :56, :64].float()
        with torch.no_grad():
            gaps[distill] = distillation_loss(b.f1(x), teacher(x)).item()
    assert gaps[0.9] < gaps[0.0]


def test_distilling_f1_needs_a_warm_start_whose_f1_has_another_shape(toy_volumes, tiny_bundle, tmp_path):
    from napari_paser.errors import PaserInputError
    from napari_paser.train.runner import train

    cfg = _tiny_cfg(f1_distill=0.5)
    with pytest.raises(PaserInputError, match="teacher"):
        train(toy_volumes, tmp_path / "none", cfg, configs=tiny_configs(), seed=0, progress=False, echo=False)
    with pytest.raises(PaserInputError, match="teacher"):  # the same shape: f1 copied, it would teach itself
        train(toy_volumes, tmp_path / "same", cfg, configs=tiny_configs(), warm_start=tiny_bundle, seed=0, progress=False, echo=False)
    assert not (tmp_path / "none" / "checkpoints").exists() and not (tmp_path / "same" / "checkpoints").exists()
    with pytest.raises(ValueError, match="between 0 and 1"):
        train(toy_volumes, tmp_path / "w", _tiny_cfg(f1_distill=1.5), configs=tiny_configs(), seed=0, progress=False, echo=False)


def test_a_warm_started_f1_trains_on_with_a_teacher_given(toy_volumes, tiny_bundle, tmp_path):
    """As v2.26 does: the warm start holds the new f1 (copied), another bundle teaches it;
    the teacher is named in the manifest, and a teacher reading another halo is refused."""
    import copy

    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.models import UNet, UNetConfig
    from napari_paser.errors import PaserInputError
    from napari_paser.train.runner import train

    cfg = _tiny_cfg(f2_steps=0, f0_steps=0, ft_steps=0, policy_steps=0, f1_steps=4, f1_distill=0.5)
    teacher = copy.deepcopy(tiny_bundle)
    teacher.meta["name"] = "the-teacher"
    train(toy_volumes, tmp_path / "t", cfg, configs=tiny_configs(), warm_start=tiny_bundle, teacher=teacher, seed=0,
          progress=False, echo=False)
    b = load_bundle(tmp_path / "t")
    assert "f1" in b.meta["training"]["warm_start"]["models"]
    assert b.meta["training"]["f1_teacher"] == "the-teacher"
    before, after = tiny_bundle.f1.state_dict(), b.f1.state_dict()
    assert not all(torch.equal(before[n], after[n]) for n in before)  # trained on
    teacher.f1 = UNet(UNetConfig(**{**tiny_bundle.f1.config.to_dict(), "halo": 8}))
    with pytest.raises(PaserInputError, match="halo"):
        train(toy_volumes, tmp_path / "h", cfg, configs=tiny_configs(), warm_start=tiny_bundle, teacher=teacher, seed=0,
              progress=False, echo=False)


def test_a_focused_f2_trains_from_a_warm_start_and_f1_stays(toy_volumes, tiny_bundle, tmp_path):
    """As the v2.11 preset does: f2 trained on with every patch weighted by f1's error."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.train.runner import train

    cfg = _tiny_cfg(f1_steps=0, f0_steps=0, ft_steps=0, f2_focus=2.0)
    res = train(toy_volumes, tmp_path / "s", cfg, configs=tiny_configs(), warm_start=tiny_bundle, seed=0, progress=False, echo=False)
    b = load_bundle(tmp_path / "s")
    assert all(np.isfinite(res.report["history"]["pretrain_f2"]["loss"]))
    for k, moved in (("f1", False), ("f2", True)):
        before, after = getattr(tiny_bundle, k).state_dict(), getattr(b, k).state_dict()
        assert all(torch.equal(before[n], after[n]) for n in before) != moved, k


def test_a_refiner_on_f0_trains_with_f0_frozen(toy_volumes, tiny_bundle, tmp_path):
    """As the v2.13 preset does: a refiner added to a warm-started f0 (the identity at
    first) is trained with f0's own weights frozen, and the bundle keeps it."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.models import UNetConfig
    from napari_paser.train.runner import train

    configs = tiny_configs()
    configs["f0"] = UNetConfig(**{**configs["f0"].to_dict(), "refine_width": 4, "refine_stem": 2})
    cfg = _tiny_cfg(f2_steps=0, f1_steps=0, f0_steps=0, refine_steps=3, ft_steps=0, policy_steps=2)
    res = train(toy_volumes, tmp_path / "r", cfg, configs=configs, warm_start=tiny_bundle, seed=0, progress=False, echo=False)
    assert len(res.report["history"]["refine_f0"]["loss"]) == 3
    b = load_bundle(tmp_path / "r")
    assert "f0" in b.meta["training"]["warm_start"]["models"]
    trained = b.f0.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in tiny_bundle.f0.state_dict().items())  # f0 frozen
    assert b.f0.refiner.body[-1].weight.abs().sum() > 0  # moved off its zero start
    # Without a refiner the stage has nothing to do.
    res = train(toy_volumes, tmp_path / "n", cfg, configs=tiny_configs(), warm_start=tiny_bundle, seed=0, progress=False, echo=False)
    assert not res.report["history"].get("refine_f0")


@pytest.mark.parametrize("name, planes, fusion", [("v2.19", 1, (0.35, 0.40)), ("v2.20", 5, (0.35, 0.45))])
def test_a_warm_start_with_a_refiner_keeps_it_and_ships_the_fusion_weights(toy_volumes, tiny_bundle, tmp_path, name, planes, fusion):
    """As the v2.19 and v2.20 presets do: the warm start already holds a trained refiner
    (refine steps 0 keep it as it is; v2.20's reads 5 planes), every network is kept, the
    policy is fitted again and the fusion weights reach the trained bundle."""
    from napari_paser.engine.bundle import Bundle, copy_matching_weights, default_model_configs, load_bundle
    from napari_paser.engine.models import UNetConfig
    from napari_paser.train.presets import get_preset
    from napari_paser.train.runner import train

    preset = get_preset(name)
    assert (preset.arch, preset.refine_steps, preset.f0_fusion) == (name, 0, fusion)
    arch_f0 = default_model_configs(preset.arch)["f0"]
    assert (arch_f0.refine_width, arch_f0.refine_stem, arch_f0.refine_planes) == (32, 2, planes) and arch_f0.planes >= planes
    configs = tiny_configs()
    configs["f0"] = UNetConfig(**{**configs["f0"].to_dict(), "planes": planes, "refine_width": 4, "refine_stem": 2, "refine_planes": planes})
    warm = Bundle.from_configs(configs, seed=1, meta={"name": "refined", "version": "0"}).eval()
    copy_matching_weights(warm, tiny_bundle)
    with torch.no_grad():
        warm.f0.refiner.body[-1].weight.normal_(0, 0.1)  # a refiner that does something
    cfg = _tiny_cfg(f2_steps=0, f1_steps=0, f0_steps=0, refine_steps=0, ft_steps=0, policy_steps=2, f0_fusion=fusion)
    res = train(toy_volumes, tmp_path / "r", cfg, configs=configs, warm_start=warm, seed=0, progress=False, echo=False)
    assert not res.report["history"].get("refine_f0")
    b = load_bundle(tmp_path / "r")
    assert b.fusion == fusion and b.f0.config.refine_planes == planes
    for net in ("f0", "f1", "f2"):
        kept, trained = getattr(warm, net).state_dict(), getattr(b, net).state_dict()
        assert kept.keys() == trained.keys() and all(torch.equal(trained[k], v) for k, v in kept.items()), net
    assert any(k.startswith("refiner.") for k in b.f0.state_dict())


def test_bf16_autocast_only_where_the_cpu_computes_bf16(monkeypatch):
    """Emulated bf16 made a training step of f2 about 12x slower on an AVX2 CPU: there
    the stages and fine-tuning run in fp32 whatever the preset says."""
    import contextlib

    from napari_paser.engine import precision
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext

    ctx = StageContext(cfg=get_preset("quick"), device=torch.device("cpu"), ckpt=None, seed=0, log=print)
    assert ctx.cfg.bf16 and isinstance(precision.bf16_is_fast("cpu"), bool)
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type="cpu": False)
    assert isinstance(ctx.autocast(), contextlib.nullcontext)
    with precision.bf16_autocast("cpu"):
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.float32
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device_type="cpu": True)
    with ctx.autocast():
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.bfloat16
    assert isinstance(ctx.autocast(enabled=False), contextlib.nullcontext)


def test_every_preset_is_described_and_listed_by_the_cli():
    import subprocess
    import sys

    from napari_paser.train.presets import PRESET_NOTES, PRESETS

    assert set(PRESET_NOTES) == set(PRESETS)
    # Like --help, --list-presets needs no other option (train's --out is required).
    out = subprocess.run([sys.executable, "-m", "napari_paser.cli.main", "train", "--list-presets"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if not line.startswith(" ")]
    assert listed == list(PRESETS)


def test_train_help_is_short_and_an_unknown_preset_is_one_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "napari_paser.cli.main", "train"]
    help_text = subprocess.run(cmd + ["--help"], capture_output=True, text=True).stdout
    assert "--list-presets" in help_text and len(help_text) < 4000
    # --help stays fast: the presets (and torch, which they import) load only for --list-presets.
    code = ("import sys\nfrom napari_paser.cli.main import main\ntry:\n    main(['train', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr.strip() == "False"
    image = tmp_path / "scan.tif"
    out = subprocess.run(cmd + ["--images", str(image), "--labels", str(image), "--out", str(tmp_path / "b"),
                                "--preset", "v9"], capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "unknown preset 'v9'" in out.stderr
    assert "quick" in out.stderr and "v2.21" in out.stderr
    out = subprocess.run(cmd + ["--images", str(image), "--labels", str(image), "--out", str(tmp_path / "b"),
                                "--scale", "0"], capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip() == "napari-paser train: error: --scale must be positive"
    assert not (tmp_path / "b").exists()


def test_scale_multiplies_every_stage_and_keeps_switched_off_ones_off():
    from napari_paser.cli.train import _scaled
    from napari_paser.train.presets import get_preset

    cfg = get_preset("v2.14")  # a preset with a stage switched off (refine_steps 0)
    scaled = _scaled(cfg, 0.1)
    steps = [name for name in vars(cfg) if name.endswith("_steps")]
    assert "refine_steps" in steps and "policy_steps" in steps
    for name in steps:
        before, after = getattr(cfg, name), getattr(scaled, name)
        assert after == (max(1, round(before * 0.1)) if before > 0 else 0), name
    assert cfg.refine_steps == 0 and get_preset("init").refine_steps > 0
    assert _scaled(get_preset("init"), 0.1).refine_steps == round(get_preset("init").refine_steps * 0.1)


def test_reward_copies_replay_the_slices_the_reward_caches_score(tiny_bundle, tmp_path):
    """A probe replays a run's reward caches slice for slice: the images ``reward_copies``
    yields are those whose policy input ``cache_rewards`` kept (copy 0 as is, the others
    augmented by the stage's generator)."""
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.datasets import SliceBank
    from napari_paser.train.stages import StageContext, cache_rewards, reward_copies

    bank = SliceBank([_volume(0, slices=2), _volume(1, slices=2)], tiny_bundle.patch_size)
    ctx = StageContext(cfg=_tiny_cfg(), device=torch.device("cpu"), ckpt=Checkpointer(tmp_path / "ck", {}), seed=3, log=lambda s: None, progress=False)
    caches = cache_rewards(ctx, tiny_bundle, bank, copies=2)
    copies = list(reward_copies(ctx, bank, copies=2))
    assert len(caches) == 1 and [(n, len(x)) for n, x, _ in copies] == [(0, 4), (0, 4)]
    (_, plain, _), (_, augmented, _) = copies
    assert torch.equal(plain, bank.stacked()[0])
    assert not torch.allclose(augmented, plain)
    image = caches[0].features[:, 4].float()  # a v1 policy reads the image at full resolution (half precision)
    torch.testing.assert_close(image, torch.cat([plain, augmented])[:, 0], atol=0.02, rtol=0.01)
    assert not torch.allclose(image[4:], plain[:, 0], atol=0.02)


@pytest.mark.parametrize(("extra", "words"), [
    (["--threads", "0"], "--threads must be at least 1"),
    (["--tvd", "1.5"], "--tvd must be in [0, 1]"),
    (["--scale", "-1"], "--scale must be positive"),
    (["--init", "{bundle}", "--warm-start", "{bundle}"], "not both"),
    (["--teacher", "{bundle}-missing"], "no bundle named or found"),
])
def test_train_refuses_bad_options_in_one_line_before_any_work(tmp_path, tiny_bundle_dir, capsys, extra, words):
    import tifffile

    from napari_paser.cli.main import main

    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, np.zeros((2, 56, 64), np.uint16))
    argv = ["train", "--images", str(image), "--labels", str(image), "--out", str(tmp_path / "out")]
    assert main(argv + [a.replace("{bundle}", str(tiny_bundle_dir)) for a in extra]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_train_needs_one_label_file_per_image(tmp_path, capsys):
    from napari_paser.cli.main import main

    argv = ["train", "--images", "a.tif", "b.tif", "--labels", "a_labels.tif", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "same number of files" in capsys.readouterr().err
