"""The dense routing policy: cell confusions, cell gains and the fit (issue 11)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_paser.engine.bundle import Bundle, default_model_configs, load_bundle, save_bundle
from napari_paser.engine.metrics import dataset_iou_gains, dataset_iou_weights, mean_iou
from napari_paser.engine.models import PolicyConfig, PolicyNet
from napari_paser.train.dense_policy import TIE_BELOW, fit_dense_policy, holdout_correlation, tie_f2_gains
from napari_paser.train.rewards import RewardCache, cell_confusion, patch_confusion

PATCH = (56, 64)


def _random_cache(seed: int, slices: int = 4, signal: bool = True, f2_like_f1: bool = False) -> RewardCache:
    """Slices of 112 x 128 (2 x 2 patches) whose f1 / f2 fix f0 where f0's entropy is high
    (f2 more of it, unless ``f2_like_f1``: then as much as f1, at other pixels)."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, 3, (slices, 112, 128), generator=g)
    hard = F.interpolate(torch.rand(slices, 1, 14, 16, generator=g), size=(112, 128), mode="nearest")[:, 0]
    wrong = torch.rand(slices, 112, 128, generator=g) < hard  # f0 errs where it is hard
    f0 = torch.where(wrong, (truth + 1) % 3, truth)
    f1 = torch.where(wrong & (torch.rand(slices, 112, 128, generator=g) < 0.6), (truth + 2) % 3, truth)
    f2_misses = 0.6 if f2_like_f1 else 0.3
    f2 = torch.where(wrong & (torch.rand(slices, 112, 128, generator=g) < f2_misses), (truth + 2) % 3, truth)
    preds = [f0, f1, f2]
    conf = torch.stack([patch_confusion(p, truth, PATCH) for p in preds], 1).int()
    cells = torch.stack([cell_confusion(p, truth, 4) for p in preds], 1)
    prob = torch.full((slices, 3, 28, 32), 1 / 3)
    ent = F.avg_pool2d(hard[:, None], 4) if signal else torch.rand(slices, 1, 28, 32, generator=g)
    feats = torch.cat([prob, ent, torch.zeros(slices, 2, 28, 32)], 1).half()
    return RewardCache(feats, conf, cells)


def test_cell_confusion_sums_to_the_patch_confusion():
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (2, 112, 128), generator=g)  # 3: padding, not counted
    pred = torch.randint(0, 3, (2, 112, 128), generator=g)
    cells = cell_confusion(pred, truth, 4)
    assert cells.shape == (2, 9, 28, 32) and cells.dtype == torch.uint8
    per_patch = F.avg_pool2d(cells.float(), (14, 16), divisor_override=1)  # (2, 9, 2, 2)
    expected = patch_confusion(pred, truth, PATCH).reshape(2, 2, 2, 9).permute(0, 3, 1, 2)
    assert torch.equal(per_patch.long(), expected)


def test_dataset_iou_weights_are_the_derivative_of_the_mean_iou():
    conf = np.array([[500, 20, 5], [30, 200, 10], [4, 15, 800]], float)
    w = dataset_iou_weights(conf)
    for t, p in ((0, 0), (1, 2), (2, 1)):
        bumped = conf.copy()
        bumped[t, p] += 1
        assert mean_iou(bumped) - mean_iou(conf) == pytest.approx(w[t, p], rel=0.02, abs=1e-7)


def test_a_patch_gain_is_the_mean_of_its_cells_gains():
    cache = _random_cache(0)
    cells = cache.cell_gain()
    assert cells.shape == (4, 2, 28, 32)
    torch.testing.assert_close(F.avg_pool2d(cells, (14, 16)), cache.dataset_gain(), rtol=1e-4, atol=1e-5)
    n, gy, gx = 4, 2, 2
    np.testing.assert_allclose(cache.dataset_gain().numpy(), dataset_iou_gains(cache.conf.numpy()) * n * gy * gx, rtol=1e-5)


def test_dense_policy_gains_are_patch_means_of_its_cells_and_survive_saving(tmp_path):
    configs = default_model_configs("v2.9")
    bundle = Bundle.from_configs(configs, seed=0)
    policy = bundle.policy.eval()
    assert policy.config.head == "dense" and not hasattr(policy, "stem")
    feats = torch.rand(2, 6, 56, 64)
    cells = policy.cell_gains(feats)
    assert cells.shape == (2, 2, 56, 64)
    torch.testing.assert_close(policy.gains(feats), F.avg_pool2d(cells, (14, 16)))
    again = load_bundle(save_bundle(bundle, tmp_path / "b")).policy.eval()
    assert again.config.head == "dense"
    torch.testing.assert_close(again.gains(feats), policy.gains(feats))


def test_a_patch_policy_has_no_cells():
    with pytest.raises(ValueError, match="only a dense policy"):
        PolicyNet(PolicyConfig(in_channels=6, features="v2")).cell_gains(torch.rand(1, 6, 56, 64))
    with pytest.raises(ValueError, match="unknown policy head"):
        PolicyNet(PolicyConfig(head="pixels"))


def test_fit_dense_policy_learns_which_patches_gain():
    torch.manual_seed(0)
    fit = [_random_cache(s) for s in range(4)]
    held = [_random_cache(10)]
    policy = PolicyNet(PolicyConfig(in_channels=6, width=8, features="v2", f0_features=False, head="dense", dense_layers=2))
    history = fit_dense_policy(policy, fit, held, steps=200, batch=4, eval_every=50, seed=0)
    assert history["best_step"] in (50, 100, 150, 200)
    assert min(history["corr_holdout"]) > 0.8  # the entropy channel says where f0 errs
    # the gains come out on the scale of the true ones, not standardised
    with torch.no_grad():
        pred = policy.gains(held[0].features.float())
    true = held[0].dataset_gain()
    assert abs(float(pred.mean() - true.mean())) < 0.5 * float(true.abs().mean())
    # with an input that says nothing, nothing is learnt
    noise = fit_dense_policy(policy, [_random_cache(s, signal=False) for s in range(4)], [_random_cache(10, signal=False)],
                             steps=200, batch=4, eval_every=50, seed=0)
    assert max(noise["corr_holdout"]) < 0.5


def test_fit_dense_policy_needs_cells():
    policy = PolicyNet(PolicyConfig(in_channels=6, features="v2", head="dense"))
    cache = _random_cache(0)
    with pytest.raises(ValueError, match="no cell confusions"):
        fit_dense_policy(policy, [RewardCache(cache.features, cache.conf)], steps=2)
    with pytest.raises(ValueError, match="head='dense'"):
        fit_dense_policy(PolicyNet(PolicyConfig(in_channels=6, features="v2")), [cache], steps=2)
    assert holdout_correlation(policy, [cache])  # runs on a cache without cells too


def _tiny_dense_bundle():
    from conftest import tiny_configs

    configs = tiny_configs()
    configs["policy"] = PolicyConfig(in_channels=6, width=4, features="v2", f0_features=False, head="dense", dense_layers=1)
    return Bundle.from_configs(configs, seed=0).eval()


def test_a_dense_bundle_caches_the_confusions_of_its_cells():
    from napari_paser.train.rewards import build_reward_cache

    bundle = _tiny_dense_bundle()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 112, 128, generator=g)
    labels = torch.randint(0, 3, (3, 112, 128), generator=g)
    cache = build_reward_cache(bundle, images, labels)
    assert cache.cells.shape == (3, 3, 9, 28, 32)
    per_patch = F.avg_pool2d(cache.cells.flatten(0, 1).float(), (14, 16), divisor_override=1).reshape(3, 3, 9, 2, 2)
    assert torch.equal(per_patch.permute(0, 1, 3, 4, 2).reshape(cache.conf.shape).int(), cache.conf)
    bundle.policy.config.head = "patch"  # a patch-level policy's cache keeps no cells
    assert build_reward_cache(bundle, images, labels).cells is None


def test_the_policy_stage_fits_a_dense_policy(tmp_path):
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext, train_policy

    bundle = _tiny_dense_bundle()
    cfg = get_preset("v2.9").replace(policy_steps=100, policy_eval_every=50, policy_batch=4)
    assert cfg.policy_objective == "dense"
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp_path / "ck", {}), seed=0, log=lambda s: None, progress=False)
    history = train_policy(ctx, bundle, [_random_cache(s) for s in range(3)], holdout=[_random_cache(9)])
    assert history["best_step"] in (50, 100) and len(history["holdout_r"]) == 2
    assert min(history["corr_holdout"]) > 0.5


@pytest.fixture(scope="module")
def plain_fit():
    """Four fit caches, a held-out one, and a policy fitted on them with the defaults."""
    fit, held = [_random_cache(s) for s in range(4)], [_random_cache(10)]
    plain = PolicyNet(PolicyConfig(in_channels=6, width=8, features="v2", f0_features=False, head="dense", dense_layers=2))
    fit_dense_policy(plain, fit, held, steps=100, batch=4, eval_every=50, seed=0)
    return fit, held, plain


@pytest.mark.parametrize(
    "setting",
    [{"patch_weight": 20.0}, {"corr_weight": 1.0, "volumes_per_batch": 2}, {"input_jitter": 0.5}, {"target": "mean"}, {"target": "f1"},
     {"centre": 1.0}],
    ids=["error on the patch means", "correlation over two volumes", "jittered inputs", "the models' mean gain", "f1's gain",
         "the gains within each slice"],
)
def test_fit_dense_policy_with_another_setting_still_learns(plain_fit, setting):
    fit, held, plain = plain_fit
    other = PolicyNet(plain.config)
    history = fit_dense_policy(other, fit, held, steps=100, batch=4, eval_every=50, seed=0, **setting)
    assert min(history["corr_holdout"]) > 0.8  # the entropy channel still ranks the gains
    # same seed, same batches: only the setting makes the weights differ
    assert not torch.equal(plain.output_layer.weight, other.output_layer.weight)
    # the squared error stays, so the gains keep the true ones' scale for λ
    with torch.no_grad():
        pred = other.gains(held[0].features.float())
    true = held[0].dataset_gain()
    assert abs(float(pred.mean() - true.mean())) < 0.5 * float(true.abs().mean())


def test_holdout_correlation_within_slices_ignores_each_slices_level(plain_fit):
    """Within slices, r judges only the ranking inside each slice: a level added to a
    slice's predicted gains changes the pooled r and not this one."""
    _, held, plain = plain_fit
    pooled, within = holdout_correlation(plain, held), holdout_correlation(plain, held, within_slices=True)
    true = held[0].dataset_gain().double()
    with torch.no_grad():
        pred = plain.gains(held[0].features.float()).double()
    centred = [(pred - pred.mean((2, 3), keepdim=True))[:, k].flatten() for k in range(2)]
    true_c = [(true - true.mean((2, 3), keepdim=True))[:, k].flatten() for k in range(2)]
    assert within == pytest.approx([float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(centred, true_c)], abs=1e-6)

    class Levelled(torch.nn.Module):  # the same ranking, each slice raised by 10 x its mean entropy
        def __init__(self, net):
            super().__init__()
            self.net = net

        def gains(self, x):
            return self.net.gains(x) + 10 * x[:, 3:4].mean((2, 3), keepdim=True)

    levelled = Levelled(plain)
    assert holdout_correlation(levelled, held, within_slices=True) == pytest.approx(within, abs=1e-5)  # float32 sums
    assert holdout_correlation(levelled, held) != pytest.approx(pooled, abs=1e-3)
    assert pooled != pytest.approx(within, abs=1e-3)


def test_fit_dense_policy_refuses_more_volumes_than_slices_per_batch():
    with pytest.raises(ValueError, match="volumes_per_batch"):
        fit_dense_policy(PolicyNet(PolicyConfig(in_channels=6, width=8, features="v2", f0_features=False, head="dense")),
                         [_random_cache(0)], steps=2, batch=4, volumes_per_batch=5)
    with pytest.raises(ValueError, match="target must be"):
        fit_dense_policy(PolicyNet(PolicyConfig(in_channels=6, width=8, features="v2", f0_features=False, head="dense")),
                         [_random_cache(0)], steps=2, batch=4, target="f2")
    with pytest.raises(ValueError, match="centre must be"):
        fit_dense_policy(PolicyNet(PolicyConfig(in_channels=6, width=8, features="v2", f0_features=False, head="dense")),
                         [_random_cache(0)], steps=2, batch=4, centre=1.5)


@pytest.mark.parametrize(
    "config",
    [
        PolicyConfig(in_channels=6, width=8, features="v2", f0_features=False, head="dense", dense_layers=2),
        PolicyConfig(in_channels=6, width=8, features="v2", f0_features=False, linear_skip=True),
        default_model_configs("v2.16")["policy"],
    ],
    ids=["dense", "patch head with a linear skip", "dense with the image-residual prior"],
)
def test_tying_makes_the_last_models_gains_a_line_of_the_firsts(config):
    torch.manual_seed(0)
    policy = PolicyNet(config).eval()
    if config.image_residual:
        policy.residual_weight.copy_(torch.tensor([0.3, -0.2]))
    feats = torch.rand(2, config.in_channels, 56, 64)
    with torch.no_grad():
        before = policy.gains(feats)
        policy.tie_last_gains_(1.5, 0.25)
        after = policy.gains(feats)
    torch.testing.assert_close(after[:, 0], before[:, 0])
    torch.testing.assert_close(after[:, 1], 1.5 * before[:, 0] + 0.25)
    with pytest.raises(ValueError, match="two models after f0"):
        PolicyNet(replace(config, num_models=2)).tie_last_gains_(1.0, 0.0)


def test_f2s_gains_stay_the_policys_own_where_it_knows_where_f2_beats_f1(plain_fit):
    fit, held, plain = plain_fit  # f2 fixes more of f0's errors than f1, where f0 is unsure
    policy = PolicyNet(plain.config)
    policy.load_state_dict(plain.state_dict())
    record = tie_f2_gains(policy.eval(), fit, held)
    assert not record["tied"] and record["difference_r_holdout"] >= TIE_BELOW
    assert torch.equal(policy.output_layer.weight, plain.output_layer.weight)
    with pytest.raises(ValueError, match="held-out volumes"):
        tie_f2_gains(policy, fit, [])


def test_jittered_inputs_scale_each_slice_and_channel_but_the_class_probabilities():
    from napari_paser.train.dense_policy import N_CLASS_INPUTS, jitter_inputs

    x = torch.rand(3, 7, 8, 10) + 0.1
    out = jitter_inputs(x, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :N_CLASS_INPUTS], x[:, :N_CLASS_INPUTS])
    ratio = out[:, N_CLASS_INPUTS:] / x[:, N_CLASS_INPUTS:]
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))  # one factor per slice and channel
    assert ratio[..., 0, 0].std() > 0.1  # and they differ
    torch.testing.assert_close(jitter_inputs(x, 0.0, torch.Generator()), x)


def _dense_policy_variant(arch: str, inputs: int) -> tuple[Bundle, torch.Tensor]:
    """A bundle of ``arch`` (v2.9's networks, another dense policy) and the 5-slice image
    on which its reward cache and the engine were checked to give the policy ``inputs``
    channels on the 4x4-pixel cell grid."""
    from napari_paser.engine.pipeline import PaserSegmenter
    from napari_paser.train.presets import get_preset
    from napari_paser.train.rewards import build_reward_cache

    configs = default_model_configs(arch)
    assert configs["policy"].in_channels == inputs
    assert {k: v.to_dict() for k, v in configs.items() if k != "policy"} == {k: v.to_dict() for k, v in default_model_configs("v2.9").items() if k != "policy"}
    assert get_preset(arch).arch == arch and get_preset(arch).policy_objective == "dense"
    bundle = Bundle.from_configs(configs, seed=0).eval()
    image = torch.rand(5, 112, 128)
    cache = build_reward_cache(bundle, image[:, None].expand(-1, 5, -1, -1).contiguous(), torch.randint(0, 3, (5, 112, 128)), mc_passes=2)
    assert cache.features.shape == (5, inputs, 28, 32) and cache.cells is not None
    seg = PaserSegmenter(bundle, mc_passes=2)
    seg.set_volume(image.numpy())
    seg.analyse(2)
    assert seg.gains(2).shape == (2, 2, 2) and np.isfinite(seg.gains(2)).all()
    return bundle, image


def test_a_dense_policy_reads_f0s_features_in_the_engine_and_its_reward_caches():
    """v2.12: the policy's 22 inputs are f0's probabilities, entropy, the image's mean and
    spread and f0's 16 finest feature channels."""
    bundle, _ = _dense_policy_variant("v2.12", 22)
    assert bundle.policy.config.f0_features


def test_a_dense_policy_reads_the_spread_of_f0s_mc_passes_in_the_engine_and_its_reward_caches():
    """v2.15: a seventh input, how much f0's MC passes disagree, after the image's spread;
    the engine and the reward caches compute it the same way."""
    from napari_paser.engine.uncertainty import analyse_slices, mc_predict, policy_features

    bundle, image = _dense_policy_variant("v2.15", 7)
    config = bundle.policy.config
    assert config.mc_spread
    planes = image[:, None].expand(-1, 5, -1, -1).contiguous()
    prob, ent, feats, spread = mc_predict(bundle.f0, planes[:1], 3, seed=1, return_features=True, return_spread=True)
    assert spread.shape == (1, 112, 128) and float(spread.min()) >= 0 and float(spread.max()) > 0
    assert float(mc_predict(bundle.f0, planes[:1], 1, seed=1, return_spread=True)[2].abs().max()) == 0  # one pass: no spread
    x = planes[:1, 2:3]
    inputs = policy_features(x, prob, ent, feats, config, spread)
    assert inputs.shape == (1, 7, 28, 32)
    torch.testing.assert_close(inputs[:, 6:7], F.avg_pool2d(spread[:, None], 4))
    torch.testing.assert_close(analyse_slices(bundle.f0, config, planes[:1], 3, 1)[2], inputs)
    with pytest.raises(ValueError, match="spread of f0's MC passes"):
        policy_features(x, prob, ent, feats, config)


def test_the_image_residual_is_what_f0s_labels_leave_unexplained_where_f0_is_unsure():
    from napari_paser.engine.uncertainty import image_residual

    g = torch.Generator().manual_seed(0)
    prob = torch.softmax(3 * torch.randn(2, 3, 16, 24, generator=g), 1)
    x = torch.randn(2, 1, 16, 24, generator=g)
    ent = torch.rand(2, 16, 24, generator=g)
    res = image_residual(x, prob, ent)
    assert res.shape == (2, 1, 16, 24)
    p, xv = prob.double().numpy(), x.double().numpy()
    for b in range(2):
        means = [(p[b, c] * xv[b, 0]).sum() / p[b, c].sum() for c in range(3)]  # each class's mean intensity
        expected = sum(p[b, c] * means[c] for c in range(3))
        np.testing.assert_allclose(res[b, 0].numpy(), (xv[b, 0] - expected) ** 2 * ent[b].numpy(), rtol=1e-4, atol=1e-6)
    # One intensity per class, and labels that say so: nothing left to explain.
    labels = torch.randint(0, 3, (1, 16, 24), generator=g)
    one_hot = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    image = torch.tensor([-1.0, 0.2, 1.5])[labels][:, None]
    assert float(image_residual(image, one_hot, torch.ones(1, 16, 24)).abs().max()) < 1e-10
    # f0 certain everywhere: nothing either, however wrong the image looks.
    assert float(image_residual(x[:1], prob[:1], torch.zeros(1, 16, 24)).abs().max()) == 0


def test_a_dense_policy_adds_the_calibrated_image_residual_to_its_gains():
    """v2.16: a seventh input, the image residual, that the network does not read; a
    prior set from reward caches adds it to every cell's gains."""
    from napari_paser.engine.uncertainty import analyse_slices, image_residual, mc_predict, policy_features
    from napari_paser.train.dense_policy import calibrate_residual_prior

    bundle, image = _dense_policy_variant("v2.16", 7)
    policy, config = bundle.policy, bundle.policy.config
    assert config.image_residual and config.dense_inputs == 6 and config.residual_channel == 6
    planes = image[:, None].expand(-1, 5, -1, -1).contiguous()
    prob, ent, feats = mc_predict(bundle.f0, planes[:1], 3, seed=1, return_features=True)
    x = planes[:1, 2:3]
    inputs = policy_features(x, prob, ent, feats, config)
    assert inputs.shape == (1, 7, 28, 32)
    torch.testing.assert_close(inputs[:, 6:7], F.avg_pool2d(image_residual(x, prob, ent), 4))
    torch.testing.assert_close(analyse_slices(bundle.f0, config, planes[:1], 3, 1)[2], inputs)

    # Until calibrated the gains are the network's alone.
    c = policy.patch_cells()
    network = F.avg_pool2d(policy.dense(inputs[:, :6]), c)
    torch.testing.assert_close(policy.gains(inputs), network)
    caches = [_random_cache(s) for s in range(3)]
    for cache in caches:  # a residual channel that varies
        cache.features = torch.cat([cache.features, torch.rand(len(cache), 1, 28, 32).half()], 1)
    prior = calibrate_residual_prior(policy, caches, standing=3.0)
    with torch.no_grad():
        net = torch.cat([F.avg_pool2d(policy.dense(k.features[:, :6].float()), c) for k in caches]).double()
    res = torch.cat([F.avg_pool2d(k.features[:, 6:7].float(), c) for k in caches]).double()
    assert prior["residual_offset"] == pytest.approx(float(res.mean()), rel=1e-4)
    for k in range(2):  # three times the network's spread over the residual's
        assert prior["residual_weight"][k] == pytest.approx(3.0 * float(net[:, k].std() / res.std()), rel=1e-3)
    # Only a patch's excess over the offset adds to its gains: the others keep the network's.
    excess = (F.avg_pool2d(inputs[:, 6:7], c) - policy.residual_offset).clamp_min(0)
    torch.testing.assert_close(policy.gains(inputs), network + policy.residual_weight.view(1, 2, 1, 1) * excess)
    quiet = inputs.clone()
    quiet[:, 6] = 0.5 * float(policy.residual_offset)  # below the offset everywhere
    torch.testing.assert_close(policy.gains(quiet), F.avg_pool2d(policy.dense(quiet[:, :6]), c))
    loud = inputs.clone()
    loud[:, 6] = float(policy.residual_offset) + 0.01
    lift = policy.gains(loud) - F.avg_pool2d(policy.dense(loud[:, :6]), c)
    torch.testing.assert_close(lift, (0.01 * policy.residual_weight).view(1, 2, 1, 1).expand_as(lift), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(policy.cell_gains(inputs), policy.dense(inputs[:, :6]))  # the network's cells

    # Fitting the network again starts without the prior.
    fit_dense_policy(policy, caches, steps=5, batch=2, eval_every=5)
    assert float(policy.residual_weight.abs().max()) == 0 and float(policy.residual_offset) == 0
    with pytest.raises(ValueError, match="prior of a dense 'v2' policy"):
        PolicyNet(PolicyConfig(in_channels=7, features="v2", head="patch", image_residual=True))
    with pytest.raises(ValueError, match="does not read the image residual"):
        calibrate_residual_prior(PolicyNet(PolicyConfig(in_channels=6, width=8, features="v2", f0_features=False, head="dense", dense_inputs=6)), caches)


def test_the_policy_stage_calibrates_the_image_residual_after_fitting(tmp_path):
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext, train_policy

    bundle = Bundle.from_configs(default_model_configs("v2.16"), seed=0)
    cfg = get_preset("v2.16").replace(policy_steps=50, policy_eval_every=50, policy_batch=4)
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp_path / "ck", {}), seed=0, log=lambda s: None, progress=False)
    caches = [_random_cache(s) for s in range(3)] + [_random_cache(9)]
    for cache in caches:  # the residual tracks the hard regions, as the entropy does here
        cache.features = torch.cat([cache.features, cache.features[:, 3:4]], 1)
    history = train_policy(ctx, bundle, caches[:3], holdout=caches[3:])
    weight = history["residual_prior"]["residual_weight"]
    assert len(weight) == 2 and min(weight) > 0
    torch.testing.assert_close(bundle.policy.residual_weight, torch.tensor(weight), rtol=1e-4, atol=0)
    assert len(history["corr_holdout_with_residual"]) == 2


def test_the_policy_stage_ties_f2s_gains_to_f1s_where_they_differ_by_chance(tmp_path):
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext, train_policy

    bundle = _tiny_dense_bundle()
    cfg = get_preset("v2.22").replace(policy_steps=100, policy_eval_every=50, policy_batch=4)
    assert cfg.policy_objective == "dense" and cfg.policy_tie_f2
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp_path / "ck", {}), seed=0, log=lambda s: None, progress=False)
    caches = [_random_cache(s, slices=8, f2_like_f1=True) for s in range(6)]  # f2 gains what f1 gains, elsewhere
    history = train_policy(ctx, bundle, caches[:4], holdout=caches[4:])
    tie = history["tie_f2"]
    assert tie["tied"] and tie["difference_r_holdout"] < TIE_BELOW
    with torch.no_grad():
        gains = bundle.policy.gains(caches[4].features.float())
    torch.testing.assert_close(gains[:, 1], tie["slope"] * gains[:, 0] + tie["intercept"], rtol=1e-3, atol=1e-6)
    assert history["corr_holdout_tied"][0] == pytest.approx(history["corr_holdout"][0], abs=1e-4)  # f1's gains as fitted
    with pytest.raises(ValueError, match="policy_tie_f2"):
        train_policy(replace(ctx, cfg=cfg.replace(policy_objective="regression")), bundle, caches[:4], holdout=caches[4:])


def test_the_refiners_correction_is_the_kl_of_the_refined_from_the_mc_mean():
    from napari_paser.engine.uncertainty import refiner_correction

    g = torch.Generator().manual_seed(0)
    prob = torch.softmax(3 * torch.randn(2, 3, 16, 24, generator=g), 1)
    refined = torch.softmax(3 * torch.randn(2, 3, 16, 24, generator=g), 1)
    kl = refiner_correction(prob, refined)
    assert kl.shape == (2, 1, 16, 24) and float(kl.min()) >= 0
    p, q = prob.double().numpy().clip(1e-6), refined.double().numpy().clip(1e-6)  # clipped as the probe measured it
    np.testing.assert_allclose(kl[:, 0].numpy(), (q * (np.log(q) - np.log(p))).sum(1), rtol=1e-4, atol=1e-5)
    # A refiner that leaves f0's prediction alone moved nothing.
    assert float(refiner_correction(prob, prob).abs().max()) == 0


@torch.no_grad()
def test_a_v2_21_policy_reads_how_far_the_refiner_moved_f0():
    """v2.21: v2.20's networks; the policy's seventh input, which its dense network reads,
    is the refiner's KL correction; with an image-residual prior the residual moves to the eighth."""
    from napari_paser.engine.pipeline import PaserSegmenter
    from napari_paser.engine.uncertainty import analyse_slices, image_residual, mc_predict, policy_features, refiner_correction
    from napari_paser.train.presets import get_preset
    from napari_paser.train.rewards import build_reward_cache

    configs = default_model_configs("v2.21")
    assert {k: v.to_dict() for k, v in configs.items() if k != "policy"} == {k: v.to_dict() for k, v in default_model_configs("v2.20").items() if k != "policy"}
    assert get_preset("v2.21").arch == "v2.21" and get_preset("v2.21").policy_objective == "dense"
    config = configs["policy"]
    assert config.refiner_kl and config.dense_inputs == 7 and config.in_channels == 7 and not config.image_residual
    config = configs["policy"] = replace(config, in_channels=8, image_residual=True)  # the residual's place checked too
    assert config.residual_channel == 7
    bundle = Bundle.from_configs(configs, seed=0).eval()
    # A refiner that moves f0's prediction (an untrained one returns it).
    torch.nn.init.normal_(bundle.f0.refiner.body[-1].weight, std=0.5, generator=torch.Generator().manual_seed(1))
    image = torch.rand(5, 112, 128, generator=torch.Generator().manual_seed(2))
    planes = image[None]  # f0 reads 5 planes: slice 2 and two on each side
    prob, ent, feats = mc_predict(bundle.f0, planes, 2, seed=1, return_features=True)
    refined = bundle.f0.refine(planes, prob)
    x = planes[:, 2:3]
    inputs = policy_features(x, prob, ent, feats, config, refined=refined)
    assert inputs.shape == (1, 8, 28, 32)
    correction = F.avg_pool2d(refiner_correction(prob, refined), 4)
    assert float(correction.mean()) > 1e-3
    torch.testing.assert_close(inputs[:, 6:7], correction)
    torch.testing.assert_close(inputs[:, 7:8], F.avg_pool2d(image_residual(x, prob, ent), 4))
    out = analyse_slices(bundle.f0, config, planes, 2, 1)
    torch.testing.assert_close(out[0], refined)
    torch.testing.assert_close(out[2], inputs)
    with pytest.raises(ValueError, match="pass refined"):
        policy_features(x, prob, ent, feats, config)

    # The dense network reads the correction: moving it moves the gains.
    moved = inputs.clone()
    moved[:, 6] += 1.0
    assert not torch.allclose(bundle.policy.gains(moved), bundle.policy.gains(inputs))

    # The reward cache and the engine give the policy the same eight inputs.
    cache = build_reward_cache(bundle, image[:, None].expand(-1, 5, -1, -1).contiguous(), torch.randint(0, 3, (5, 112, 128)), mc_passes=2)
    assert cache.features.shape == (5, 8, 28, 32)
    seg = PaserSegmenter(bundle, mc_passes=2)
    seg.set_volume(image.numpy())
    seg.analyse(2)
    assert seg.gains(2).shape == (2, 2, 2) and np.isfinite(seg.gains(2)).all()

    # Only an f0 with a refiner can be asked how far it moved.
    no_refiner = default_model_configs("v2.16")
    no_refiner["policy"] = config
    with pytest.raises(ValueError, match="f0 has no refiner"):
        Bundle.from_configs(no_refiner, seed=0)
    with pytest.raises(ValueError, match="input of a 'v2' policy"):
        PolicyNet(PolicyConfig(in_channels=6, refiner_kl=True))


KL_POLICY = PolicyConfig(in_channels=7, width=8, features="v2", f0_features=False, head="dense", dense_inputs=7, dense_layers=2, refiner_kl=True)


def _kl_bundle(policy: PolicyConfig = KL_POLICY, seed: int = 0) -> Bundle:
    """A tiny bundle whose f0 has a refiner and whose policy reads the refiner's KL."""
    from conftest import tiny_configs

    configs = tiny_configs()
    configs["f0"] = replace(configs["f0"], refine_width=4)
    return Bundle.from_configs({**configs, "policy": policy}, seed=seed).eval()


@torch.no_grad()
def _policy_with_slice_level(quantile: float | None = None) -> tuple[PolicyNet, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A KL policy, random slice inputs, the gains before and after a slice level is set, and the level's weight and offset."""
    torch.manual_seed(0)
    policy = PolicyNet(KL_POLICY).eval()
    feats = torch.rand(3, 7, 56, 64)
    before = policy.gains(feats)
    weight, offset = torch.tensor([0.5, -0.2]), torch.tensor([0.01, 0.02])
    policy.set_slice_level_(weight, offset, quantile=quantile)
    return policy, feats, before, weight, offset


@torch.no_grad()
def test_a_slice_level_keeps_the_networks_ranking_within_a_slice_and_reads_the_level_from_the_kl(tmp_path):
    policy, feats, before, weight, offset = _policy_with_slice_level()
    after = policy.gains(feats)
    assert policy.config.slice_level and policy.config.kl_channel == 6
    torch.testing.assert_close(after - after.mean((2, 3), keepdim=True), before - before.mean((2, 3), keepdim=True))
    torch.testing.assert_close(after.mean((2, 3)), weight * feats[:, 6].mean((1, 2))[:, None] + offset)
    assert not torch.allclose(after.mean((2, 3)), before.mean((2, 3)))

    # Saved and loaded with the bundle's policy (the level is part of its state).
    bundle = _kl_bundle()
    bundle.policy.load_state_dict(policy.state_dict(), strict=False)  # the network; the level buffers are new
    bundle.policy.set_slice_level_(weight, offset)
    loaded = load_bundle(save_bundle(bundle, tmp_path / "level"))
    assert loaded.policy.config.slice_level
    torch.testing.assert_close(loaded.policy.gains(feats), after)

    # Tied and rescaled afterwards, exactly as the whole output.
    policy.tie_last_gains_(1.5, 0.25)
    tied = policy.gains(feats)
    torch.testing.assert_close(tied[:, 0], after[:, 0])
    torch.testing.assert_close(tied[:, 1], 1.5 * after[:, 0] + 0.25)
    scale, mean = torch.tensor([2.0, 3.0]), torch.tensor([0.1, -0.1])
    policy.rescale_gains_(scale, mean)
    torch.testing.assert_close(policy.gains(feats), scale.view(1, 2, 1, 1) * tied + mean.view(1, 2, 1, 1))

    # Cleared, the network sets the level again; the level is no longer in its state.
    policy.clear_slice_level_()
    assert not policy.config.slice_level and "level_weight" not in policy.state_dict()
    assert not torch.allclose(policy.gains(feats).mean((2, 3)), weight * feats[:, 6].mean((1, 2))[:, None] + offset)
    with pytest.raises(ValueError, match="refiner's KL"):
        PolicyNet(replace(KL_POLICY, refiner_kl=False, in_channels=6, dense_inputs=6)).set_slice_level_(weight, offset)


@torch.no_grad()
def test_a_warm_start_copies_a_policy_with_its_slice_level():
    from napari_paser.engine.bundle import copy_matching_weights

    source = _kl_bundle()
    source.policy.set_slice_level_(torch.tensor([0.5, -0.2]), torch.tensor([0.01, 0.02]), quantile=0.9)
    fresh = _kl_bundle(seed=1)  # a preset's policy: no slice level yet
    assert "policy" in copy_matching_weights(fresh, source)
    assert fresh.policy.config.slice_level and fresh.policy.config.slice_level_quantile == 0.9
    feats = torch.rand(2, 7, 56, 64)
    torch.testing.assert_close(fresh.policy.gains(feats), source.policy.gains(feats), rtol=0, atol=0)


def _kl_cache(seed: int, slices: int = 8, f2_like_f1: bool = False) -> RewardCache:
    """A :func:`_random_cache` whose seventh input, the refiner's KL, is the same in every
    cell of a slice and a line of how much f1 gains on the slice."""
    cache = _random_cache(seed, slices, f2_like_f1=f2_like_f1)
    level = cache.dataset_gain().mean((2, 3))[:, 0]
    kl = (3.0 * level + 0.1).view(-1, 1, 1, 1).expand(-1, 1, 28, 32)
    return RewardCache(torch.cat([cache.features.float(), kl], 1).half(), cache.conf, cache.cells)


@torch.no_grad()
def test_fit_slice_level_fits_the_line_of_a_slices_mean_gain_on_its_mean_kl():
    from napari_paser.train.dense_policy import fit_slice_level

    caches = [_kl_cache(s) for s in range(3)]
    policy = PolicyNet(KL_POLICY).eval()
    record = fit_slice_level(policy, caches, holdout=[_kl_cache(7)])
    # The KL is a line of f1's gain per slice (up to the cache's half precision)
    assert record["r_fit"][0] == pytest.approx(1.0, abs=1e-3)
    assert record["weight"][0] == pytest.approx(1 / 3, rel=0.02) and record["offset"][0] == pytest.approx(-0.1 / 3, rel=0.02)
    assert len(record["corr_holdout"]) == 2
    for cache in caches:  # every slice's gains of f1 have its true mean gain as their level
        level = policy.gains(cache.features.float()).mean((2, 3))[:, 0]
        torch.testing.assert_close(level, cache.dataset_gain().mean((2, 3))[:, 0], atol=2e-3, rtol=0.02)
    with pytest.raises(ValueError, match="refiner's KL"):
        fit_slice_level(PolicyNet(replace(KL_POLICY, refiner_kl=False, in_channels=6, dense_inputs=6)), [_random_cache(0)])


@torch.no_grad()
def test_a_slice_level_read_from_a_quantile_of_the_kl(tmp_path):
    from napari_paser.train.dense_policy import fit_slice_level

    policy, feats, before, weight, offset = _policy_with_slice_level(quantile=0.9)
    after = policy.gains(feats)
    q90 = torch.quantile(feats[:, 6].flatten(1), 0.9, dim=1)
    assert policy.config.slice_level_quantile == 0.9
    torch.testing.assert_close(after.mean((2, 3)), weight * q90[:, None] + offset)
    torch.testing.assert_close(after - after.mean((2, 3), keepdim=True), before - before.mean((2, 3), keepdim=True))
    assert not torch.allclose(after.mean((2, 3)), weight * feats[:, 6].mean((1, 2))[:, None] + offset)
    # Saved and loaded with the quantile in the policy's config.
    bundle = _kl_bundle()
    bundle.policy.load_state_dict(policy.state_dict(), strict=False)
    bundle.policy.set_slice_level_(weight, offset, quantile=0.9)
    loaded = load_bundle(save_bundle(bundle, tmp_path / "quantile"))
    assert loaded.policy.config.slice_level_quantile == 0.9
    torch.testing.assert_close(loaded.policy.gains(feats), after)
    # Cleared, the quantile goes with the level; a quantile outside (0, 1) is refused.
    policy.clear_slice_level_()
    assert policy.config.slice_level_quantile is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        policy.set_slice_level_(weight, offset, quantile=1.0)

    # Fitted: the line is in the slices' quantile, not their mean. A cache whose KL is
    # one value per slice except for a few cells that differ from slice to slice at random:
    # the quantile follows the gain exactly, the mean does not.
    caches = []
    for seed in range(3):
        cache = _kl_cache(seed)
        kl = cache.features[:, 6:7].float().clone()
        g = torch.Generator().manual_seed(seed)
        kl[:, :, :2] = torch.rand(len(kl), 1, 2, kl.shape[-1], generator=g) * 50  # 2 of 28 rows: they leave the median alone
        caches.append(RewardCache(torch.cat([cache.features[:, :6].float(), kl], 1).half(), cache.conf, cache.cells))
    record = fit_slice_level(policy, caches, quantile=0.5)
    mean_record = fit_slice_level(PolicyNet(KL_POLICY).eval(), caches)
    assert record["quantile"] == 0.5 and record["r_fit"][0] == pytest.approx(1.0, abs=1e-3)
    assert mean_record["quantile"] is None and mean_record["r_fit"][0] < 0.5


def test_the_policy_stage_reads_each_slices_level_from_the_kl_after_tying(tmp_path):
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext, train_policy

    bundle = _kl_bundle(replace(KL_POLICY, width=4, dense_layers=1))
    cfg = get_preset("v2.23").replace(policy_steps=100, policy_eval_every=50, policy_batch=4)
    assert cfg.policy_tie_f2 and cfg.policy_slice_level and cfg.arch == get_preset("v2.22").arch
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp_path / "ck", {}), seed=0, log=lambda s: None, progress=False)
    caches = [_kl_cache(s, f2_like_f1=True) for s in range(6)]  # f2 gains what f1 gains, elsewhere: tied
    history = train_policy(ctx, bundle, caches[:4], holdout=caches[4:])
    level = history["slice_level"]
    assert bundle.policy.config.slice_level and level["r_fit"][0] > 0.99 and len(level["corr_holdout"]) == 2
    with torch.no_grad():
        feats = caches[4].features.float()
        gains = bundle.policy.gains(feats)
    weight, offset = torch.tensor(level["weight"]), torch.tensor(level["offset"])
    torch.testing.assert_close(gains.mean((2, 3)), weight * feats[:, 6].mean((1, 2))[:, None] + offset, atol=1e-5, rtol=1e-4)
    assert history["tie_f2"]["tied"]  # and within a slice f2's gains still rank as f1's
    centred = gains - gains.mean((2, 3), keepdim=True)
    torch.testing.assert_close(centred[:, 1], history["tie_f2"]["slope"] * centred[:, 0], atol=1e-5, rtol=1e-3)
    # Kept, the network (and its tie) stay as they are and only the level is fitted again.
    network = {k: v.clone() for k, v in bundle.policy.state_dict().items() if k.startswith("dense.")}
    kept = train_policy(replace(ctx, cfg=cfg.replace(policy_keep_network=True, policy_slice_level_quantile=0.9)), bundle, caches[:4], holdout=caches[4:])
    assert kept["kept_network"] and kept["slice_level"]["quantile"] == 0.9 and bundle.policy.config.slice_level_quantile == 0.9
    for k, v in network.items():
        torch.testing.assert_close(bundle.policy.state_dict()[k], v, rtol=0, atol=0)
    with torch.no_grad():
        kept_gains = bundle.policy.gains(feats)
    torch.testing.assert_close(kept_gains - kept_gains.mean((2, 3), keepdim=True), centred)
    with pytest.raises(ValueError, match="policy_keep_network"):
        train_policy(replace(ctx, cfg=cfg.replace(policy_keep_network=True, policy_slice_level=False)), bundle, caches[:4], holdout=caches[4:])
    # Fitting the network again clears the level: the network sets it until it is fitted anew.
    fit_dense_policy(bundle.policy, caches[:4], steps=2)
    assert not bundle.policy.config.slice_level
    with pytest.raises(ValueError, match="policy_slice_level"):
        train_policy(replace(ctx, cfg=cfg.replace(policy_objective="regression", policy_tie_f2=False)), bundle, caches[:4], holdout=caches[4:])
