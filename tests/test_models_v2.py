"""The v2 networks: space-to-depth stems, head-only MC dropout, patch halos, the v2 policy,
dataset-IoU rewards and warm starts; and that v1 bundles still load and run unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import tiny_configs


def _v2_tiny(patch_size=(56, 64)):
    from napari_paser.engine.models import PolicyConfig, UNetConfig

    return {
        "f0": UNetConfig(base_width=4, depth=2, dropout=0.3, stem=4, mc_scope="head"),
        "f1": UNetConfig(base_width=4, depth=2, stem=2, halo=8),
        "f2": UNetConfig(base_width=8, depth=2, halo=8),
        "policy": PolicyConfig(in_channels=6 + 4, width=4, features="v2", blocks=2, grid_context=True, patch_size=patch_size),
    }


def test_stem_and_halo_shapes():
    from napari_paser.engine.models import UNet, UNetConfig

    x = torch.randn(2, 1, 72, 80)
    assert UNet(UNetConfig(base_width=4, depth=2, stem=2, halo=8)).eval()(x).shape == (2, 3, 56, 64)
    assert UNet(UNetConfig(base_width=4, depth=2, stem=4)).eval()(torch.randn(1, 1, 224, 256)).shape == (1, 3, 224, 256)


def test_halo_makes_a_patch_match_the_same_region_of_a_whole_slice_pass():
    """With context the patch model sees what a whole-slice pass sees around the patch,
    so seams between patches nearly vanish (the receptive field is a bit wider than 8)."""
    from napari_paser.engine.models import UNet, UNetConfig
    from napari_paser.engine.patches import patch_windows, patchify, unpatchify

    torch.manual_seed(0)
    net = UNet(UNetConfig(base_width=4, depth=1, halo=8)).eval()  # receptive field < 8 px per side
    plain = UNet(UNetConfig(base_width=4, depth=1)).eval()
    plain.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 112, 128)
    with torch.no_grad():
        patched = unpatchify(net(patch_windows(x, (56, 64), 8)), (2, 2))
        no_context = unpatchify(plain(patchify(x, (56, 64))), (2, 2))
        whole = plain(x)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the slice border
    err_halo = (patched - whole)[inner].abs().max()
    err_plain = (no_context - whole)[inner].abs().max()
    assert err_halo < 0.05 * err_plain


def test_head_mc_dropout_runs_the_unet_once_and_varies_only_the_head():
    from napari_paser.engine.models import UNet, UNetConfig
    from napari_paser.engine.uncertainty import mc_predict

    f0 = UNet(UNetConfig(base_width=4, depth=2, dropout=0.3, stem=4, mc_scope="head")).eval()
    x = torch.randn(1, 1, 112, 128)
    feats = f0.encode(x)
    assert len(feats) == 1 and feats[0].shape == (1, 4, 28, 32)
    prob, ent, f = mc_predict(f0, x, passes=5, seed=3, return_features=True)
    assert prob.shape == (1, 3, 112, 128) and ent.shape == (1, 112, 128) and torch.equal(f, feats[0])
    assert float(ent.max()) > 0 and torch.allclose(prob.sum(1), torch.ones(1, 112, 128), atol=1e-5)
    again = mc_predict(f0, x, passes=5, seed=3)
    assert torch.equal(again[0], prob)  # seeded masks: deterministic
    assert not torch.equal(mc_predict(f0, x, passes=5, seed=4)[0], prob)  # the masks do something


@pytest.mark.parametrize(
    "config",
    [
        dict(base_width=4, depth=2, dropout=0.3, stem=4, mc_scope="head"),
        dict(base_width=4, depth=2, dropout=0.3, stem=2, mc_scope="head", halo=4),
        dict(base_width=3, depth=3, dropout=0.2),  # v1: no stem, dropout in the decoder
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_mc_predict_equals_the_full_resolution_definition(config, channels_last):
    """Softmax, pass mean and entropy on the folded grid then one pixel shuffle give exactly
    the mean softmax of the full-resolution passes (``decode``) and its entropy."""
    from napari_paser.engine.models import UNet, UNetConfig, mc_dropout
    from napari_paser.engine.uncertainty import entropy, mc_predict

    f0 = UNet(UNetConfig(**config)).eval()
    halo = config.get("halo", 0)
    x = torch.randn(2, 1, 64 + 2 * halo, 96 + 2 * halo)
    if channels_last:
        f0 = f0.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    prob, ent, spread = mc_predict(f0, x, passes=5, seed=7, return_spread=True)
    with torch.no_grad(), torch.random.fork_rng(devices=[]), mc_dropout(f0):
        torch.manual_seed(7)
        if f0.config.mc_scope == "head":  # the head's passes draw from their own generator
            logits = f0.unfold(f0.mc_head_logits(f0.encode(x)[-1], 5, torch.Generator().manual_seed(7)))
        else:
            logits = f0.decode([f.repeat(5, 1, 1, 1) for f in f0.encode(x)])
    want = logits.softmax(1).reshape(5, 2, *logits.shape[1:]).mean(0)
    assert prob.shape == want.shape == (2, 3, 64, 96)
    torch.testing.assert_close(prob, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(ent, entropy(want), rtol=0, atol=1e-6)
    want_spread = logits.softmax(1).reshape(5, 2, *logits.shape[1:]).var(0, correction=0).sum(1)
    torch.testing.assert_close(spread, want_spread, rtol=0, atol=1e-6)


def test_head_passes_are_dropout_on_the_features_before_the_head():
    """Each pass is the head on the features with some dropped and the rest scaled by
    1 / (1 - p), as nn.Dropout in training; over many passes the mean is the plain head."""
    from napari_paser.engine.models import UNet, UNetConfig, dropout_keep_mask

    p = 0.3
    f0 = UNet(UNetConfig(base_width=4, depth=2, dropout=p, stem=4, mc_scope="head")).eval()
    with torch.no_grad():
        feats = f0.encode(torch.randn(2, 1, 64, 96))[-1]
        logits = f0.mc_head_logits(feats, 3, torch.Generator().manual_seed(5))
        keep = dropout_keep_mask((3, *feats.shape), p, torch.Generator().manual_seed(5))
        want = f0.head((feats * keep / (1 - p)).reshape(6, *feats.shape[1:]))
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
        assert 0.25 < float((~keep).float().mean()) < 0.35  # the dropout rate
        many = f0.mc_head_logits(feats, 2000, torch.Generator().manual_seed(6)).reshape(2000, *f0.head(feats).shape).mean(0)
        torch.testing.assert_close(many, f0.head(feats), rtol=0, atol=0.05)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.2, 0.5, 0.999995, 1.0])
def test_dropout_keep_mask_drops_at_rate_p_reproducibly(p):
    from napari_paser.engine.models import dropout_keep_mask

    keep = dropout_keep_mask((5, 2, 16, 56, 64), p, torch.Generator().manual_seed(3))
    assert keep.shape == (5, 2, 16, 56, 64) and keep.dtype == torch.bool
    assert abs(float((~keep).float().mean()) - p) < 0.005  # 573 440 draws: sd of the rate < 0.0007
    assert torch.equal(keep, dropout_keep_mask((5, 2, 16, 56, 64), p, torch.Generator().manual_seed(3)))
    assert not torch.equal(keep, dropout_keep_mask((5, 2, 16, 56, 64), p, torch.Generator().manual_seed(4))) or p in (0.0, 0.999995, 1.0)
    # every 16-bit lane of the 64-bit words is uniform (a sign bit that never varies would bias one lane)
    lanes = (~keep).reshape(-1)[: keep.numel() // 4 * 4].view(-1, 4).float().mean(0)
    assert float((lanes - p).abs().max()) < 0.01


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_class_argmax_and_class_sum_are_torchs(classes, channels_last):
    from napari_paser.engine.models import class_argmax, class_sum

    prob = torch.softmax(torch.randn(4, classes, 12, 16, generator=torch.Generator().manual_seed(1)) * 3, dim=1)
    prob[0, :, 0, 0] = 0.5  # ties: the first class wins, as with torch.argmax
    prob[1, :, 2, 3] = torch.linspace(0, 1, classes).flip(0) if classes > 1 else 1.0
    if channels_last:
        prob = prob.contiguous(memory_format=torch.channels_last)
    labels = class_argmax(prob)
    assert labels.dtype == torch.uint8 and labels.shape == (4, 12, 16)
    assert torch.equal(labels, prob.argmax(1).to(torch.uint8))
    if classes <= 3:  # torch adds three values in order too; more may be grouped otherwise
        assert torch.equal(class_sum(prob), prob.sum(1, keepdim=True))
    torch.testing.assert_close(class_sum(prob), prob.sum(1, keepdim=True), rtol=1e-6, atol=0)


def test_double_conv_folds_batch_norm_only_in_eval_mode():
    """Eval: batch norm folded into the convolutions gives the unfolded block's output.
    Training: the block is the plain sequence (batch statistics, running stats updated)."""
    from torch import nn

    from napari_paser.engine.models import DoubleConv

    torch.manual_seed(0)
    block = DoubleConv(3, 8)
    with torch.no_grad():
        for norm in (block[1], block[4]):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 16, 20)
    block.eval()
    torch.testing.assert_close(block(x), nn.Sequential.forward(block, x), rtol=1e-5, atol=1e-5)
    reference = copy.deepcopy(block).train()
    block.train()
    torch.testing.assert_close(block(x), nn.Sequential.forward(reference, x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(block[1].running_mean, reference[1].running_mean)


@pytest.mark.parametrize("stem,planes", [(2, 3), (4, 5), (4, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_space_to_depth_stem_as_one_strided_convolution(stem, planes, channels_last):
    """The stem's first convolution on the pixels equals PixelUnshuffle then the 3x3
    convolution, in values and in gradients."""
    from napari_paser.engine.models import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(base_width=8, depth=2, stem=stem, planes=planes)).eval()
    x = torch.randn(2, planes, 32, 48)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    got = net._stem_in(x)
    want = net.inc(net.unshuffle(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    (g_got,) = torch.autograd.grad(got.square().sum(), net.inc[0].weight)
    (g_want,) = torch.autograd.grad(net.inc(net.unshuffle(x)).square().sum(), net.inc[0].weight)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stem,planes", [(2, 1), (2, 5), (3, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_refiner_first_convolution_as_one_strided_convolution(stem, planes, channels_last):
    """The refiner's first convolution on the pixels equals PixelUnshuffle then its 3x3
    convolution, in values and in gradients; UNet.refine keeps a channels-last input's
    layout (where the engine's argmax of f0's labels is fast)."""
    import torch.nn.functional as F

    from napari_paser.engine.models import Refiner, UNet, UNetConfig

    torch.manual_seed(0)
    refiner = Refiner(6, stem=stem, planes=planes)
    torch.nn.init.normal_(refiner.body[-1].weight)  # it starts at zero: make the correction count
    image, prob = torch.randn(2, planes, 24, 36), torch.softmax(torch.randn(2, 3, 24, 36), 1)
    if channels_last:
        refiner = refiner.to(memory_format=torch.channels_last)
        image, prob = (t.contiguous(memory_format=torch.channels_last) for t in (image, prob))

    def unshuffled(weight):
        logp = prob.clamp_min(1e-4).log()
        x = F.pixel_unshuffle(torch.cat([image, logp], dim=1), stem)
        return logp + F.pixel_shuffle(refiner.body[1:](F.conv2d(x, weight, refiner.body[0].bias, padding=1)), stem)

    got = refiner(image, prob)
    torch.testing.assert_close(got, unshuffled(refiner.body[0].weight), rtol=1e-5, atol=1e-5)
    (g_got,) = torch.autograd.grad(refiner(image, prob).square().sum(), refiner.body[0].weight)
    (g_want,) = torch.autograd.grad(unshuffled(refiner.body[0].weight).square().sum(), refiner.body[0].weight)
    torch.testing.assert_close(g_got, g_want, rtol=1e-3, atol=1e-5 * float(g_want.abs().max()))  # sums in another order

    f0 = UNet(UNetConfig(base_width=4, depth=1, planes=planes, refine_width=6, refine_stem=stem, refine_planes=planes)).eval()
    if channels_last:
        f0 = f0.to(memory_format=torch.channels_last)
    with torch.no_grad():
        refined = f0.refine(image, prob)
    assert refined.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(refined.sum(1), torch.ones(2, 24, 36))


def test_head_mc_costs_a_fraction_of_decoder_mc_in_flops():
    from napari_paser.engine.flops import unet_flops
    from napari_paser.engine.models import UNetConfig

    head = unet_flops(UNetConfig(base_width=16, depth=2, stem=4, mc_scope="head", dropout=0.2), (224, 256))
    assert head["decode"] < 0.05 * head["encode"]  # a 1x1 conv per pass


def test_patch_windows_match_numpy_reflection():
    from napari_paser.engine.patches import patch_windows, patchify

    x = torch.arange(112 * 128, dtype=torch.float32).reshape(1, 1, 112, 128)
    w = patch_windows(x, (56, 64), 8)
    assert w.shape == (4, 1, 72, 80)
    assert torch.equal(w[:, :, 8:-8, 8:-8], patchify(x, (56, 64)))
    ref = np.pad(x[0, 0].numpy(), 8, mode="reflect")
    assert np.array_equal(w[3, 0].numpy(), ref[56 : 56 + 72, 64 : 64 + 80])


def test_v2_policy_features_and_gains_shapes():
    from napari_paser.engine.models import PolicyNet
    from napari_paser.engine.uncertainty import analyse_slices

    cfg = _v2_tiny()
    from napari_paser.engine.models import UNet

    f0 = UNet(cfg["f0"]).eval()
    prob, ent, feats = analyse_slices(f0, cfg["policy"], torch.rand(2, 1, 112, 128), 3, seed=0)
    assert feats.shape == (2, 10, 28, 32)
    std = feats[:, 5]
    assert float(std.min()) >= 0
    gains = PolicyNet(cfg["policy"]).eval().gains(feats)
    assert gains.shape == (2, 2, 2, 2)


def test_pipeline_with_v2_networks_runs_and_charges_halo_flops():
    from napari_paser.engine.bundle import Bundle
    from napari_paser.engine.flops import unet_flops
    from napari_paser.engine.pipeline import segment

    b = Bundle.from_configs(_v2_tiny(), seed=0, meta={"name": "v2-tiny"}).eval()
    img = np.random.default_rng(0).normal(size=(2, 112, 128)).astype(np.float32)
    r = segment(img, b, lam=0.0)
    assert r.labels.shape == img.shape and r.labels.max() <= 2
    f2 = segment(img, b, method="f2")
    assert f2.gflops_total == pytest.approx(2 * 4 * unet_flops(b.f2.config, (72, 80))["total"] / 1e9, rel=1e-6)


def test_v2_bundle_round_trip(tmp_path):
    from napari_paser.engine.bundle import Bundle, load_bundle, save_bundle

    b = Bundle.from_configs(_v2_tiny(), seed=1, meta={"name": "v2-tiny"}).eval()
    loaded = load_bundle(save_bundle(b, tmp_path / "b"))
    assert loaded.f1.config == b.f1.config and loaded.policy.config == b.policy.config
    x = torch.randn(1, 1, 72, 80)
    assert torch.equal(loaded.f1(x), b.f1(x))


def test_v1_bundle_still_loads_and_runs():
    """The v1 networks (no stem, no halo, decoder MC dropout, v1 policy) are unchanged."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle

    b = load_bundle(resolve_bundle("paser-synth-quick"))
    assert b.f2.config.halo == 0 and b.f0.config.mc_scope == "decoder" and b.policy.config.features == "v1"


def test_copy_matching_weights_copies_whole_networks_only():
    from napari_paser.engine.bundle import Bundle, copy_matching_weights

    src = Bundle.from_configs(tiny_configs(), seed=0)
    cfg = tiny_configs()
    cfg["f2"].halo = 8  # same weights, other input
    dst = Bundle.from_configs(cfg, seed=1)
    dst_f0 = {k: v.clone() for k, v in dst.f0.state_dict().items()}
    cfg2 = _v2_tiny()
    other = Bundle.from_configs(cfg2, seed=1)
    assert set(copy_matching_weights(dst, src)) == {"f0", "f1", "f2", "policy"}
    assert torch.equal(dst.f2.head.weight, src.f2.head.weight)
    assert copy_matching_weights(other, src) == ["f2"]  # f0, f1 have stems, the policy other inputs
    assert dst_f0.keys() == dst.f0.state_dict().keys()


def test_dataset_gain_is_the_first_order_change_of_dataset_iou():
    """Summing the linearised gains of a few patches predicts the real change of the pooled IoU."""
    from napari_paser.engine.metrics import mean_iou
    from napari_paser.train.rewards import RewardCache

    rng = np.random.default_rng(0)
    n, gy, gx, c = 4, 2, 2, 3
    conf = rng.integers(50, 400, size=(n, 3, gy, gx, c, c))
    cache = RewardCache(torch.zeros(n, 1, 1, 1), torch.from_numpy(conf).int())
    gain = cache.dataset_gain().numpy()
    n_patches = n * gy * gx
    base = conf[:, 0].sum((0, 1, 2))
    # Route one patch to f2: the true change of the pooled IoU vs the prediction.
    i, y, x = 1, 0, 1
    routed = base - conf[i, 0, y, x] + conf[i, 2, y, x]
    true = mean_iou(routed) - mean_iou(base)
    assert gain[i, 1, y, x] / n_patches == pytest.approx(true, rel=0.05, abs=1e-4)
    assert torch.equal(cache.gain_target("patch_iou"), cache.delta)
    with pytest.raises(ValueError):
        cache.gain_target("nope")


def test_v2_policy_flops_are_counted_on_the_pooled_features():
    """The v2 policy runs on features pooled by ``pool``; charging it on full-resolution
    inputs overstated PaSeR's cost by pool² (a real bug once)."""
    from torch.utils.flop_counter import FlopCounterMode

    from napari_paser.engine.flops import policy_flops
    from napari_paser.engine.models import PolicyNet, UNet
    from napari_paser.engine.uncertainty import analyse_slices

    cfg = _v2_tiny()
    feats = analyse_slices(UNet(cfg["f0"]).eval(), cfg["policy"], torch.rand(1, 1, 112, 128), 2, seed=0)[2]
    policy = PolicyNet(cfg["policy"]).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        policy.gains(feats)
    assert policy_flops(cfg["policy"], (112, 128)) == counter.get_total_flops()


class _GainTable:
    """A stand-in for a reward cache whose true gains are known functions of the features."""

    def __init__(self, features: torch.Tensor, gains: torch.Tensor):
        self.features, self._gains = features, gains

    def gain_target(self, kind: str) -> torch.Tensor:
        return self._gains

    def __len__(self) -> int:
        return len(self.features)


def _entropy_gains(n: int, seed: int, patch_cells: int = 4):
    """Features on a 2x2 patch grid whose f1/f2 gains grow with the patch's mean entropy (channel 3)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, 6, 2 * patch_cells, 2 * patch_cells, generator=g)
    ent = F.avg_pool2d(feats[:, 3:4], patch_cells)
    gains = torch.cat([0.02 * ent, 0.08 * ent - 0.01], dim=1)
    return feats, gains


def test_regression_policy_learns_the_gains_and_routes_by_them(tmp_path):
    """The regression objective fits the cached gains: on unseen features the predicted
    gains track the truth, and routing cost falls as λ rises."""
    from napari_paser.engine.bundle import Bundle
    from napari_paser.engine.models import PolicyConfig
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext, train_policy

    configs = tiny_configs(patch_size=(16, 16))
    configs["policy"] = PolicyConfig(in_channels=6, width=4, features="v2", pool=4, patch_size=(16, 16), grid_context=True, linear_skip=True)
    bundle = Bundle.from_configs(configs, seed=0)
    cfg = get_preset("quick").replace(policy_objective="regression", policy_steps=300, policy_batch=16, policy_lr=1e-2, warmup=0.0)
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp_path / "ck", {}), seed=0, log=lambda s: None, progress=False)
    history = train_policy(ctx, bundle, [_GainTable(*_entropy_gains(64, seed=1))])
    assert history["loss"][-1] < 0.2 * history["loss"][0]

    feats, truth = _entropy_gains(32, seed=2)
    with torch.no_grad():
        pred = bundle.policy.eval().gains(feats)
    for k in range(2):
        r = np.corrcoef(pred[:, k].ravel().numpy(), truth[:, k].ravel().numpy())[0, 1]
        assert r > 0.9
    costs = bundle.costs()
    spent = [float(costs[bundle.policy.logits(pred, lam, costs).argmax(1)].sum()) for lam in (0.0, 0.05, 0.2, 1.0)]
    assert spent == sorted(spent, reverse=True) and spent[0] > spent[-1] == 0.0


def test_unknown_policy_objective_is_refused(tmp_path):
    from napari_paser.engine.bundle import Bundle
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext, train_policy

    bundle = Bundle.from_configs(tiny_configs(), seed=0)
    cfg = get_preset("quick").replace(policy_objective="bandit")
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp_path / "ck", {}), seed=0, log=lambda s: None, progress=False)
    with pytest.raises(ValueError, match="policy objective"):
        train_policy(ctx, bundle, [_GainTable(*_entropy_gains(4, seed=0))])


def test_policy_without_f0_features_reads_six_channels_and_round_trips(tmp_path):
    """``f0_features=False`` (the v2.6 policy): f0's feature maps are left out of the
    policy's input, the FLOPs are still counted on what it reads, and the choice
    survives saving the bundle."""
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    from napari_paser.engine.bundle import Bundle, load_bundle, save_bundle
    from napari_paser.engine.flops import policy_flops
    from napari_paser.engine.models import PolicyNet, UNet
    from napari_paser.engine.uncertainty import analyse_slices

    cfg = _v2_tiny()
    cfg["policy"] = dataclasses.replace(cfg["policy"], in_channels=6, f0_features=False)
    feats = analyse_slices(UNet(cfg["f0"]).eval(), cfg["policy"], torch.rand(1, 1, 112, 128), 2, seed=0)[2]
    assert feats.shape[1] == 6
    policy = PolicyNet(cfg["policy"]).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        policy.gains(feats)
    assert policy_flops(cfg["policy"], (112, 128)) == counter.get_total_flops()
    save_bundle(Bundle.from_configs(cfg, seed=0), tmp_path / "b")
    assert load_bundle(tmp_path / "b").policy.config.f0_features is False


def _noise_table(n, seed):
    """Gains with a weak real signal (the entropy channel) under much noise."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, 6, 8, 8, generator=g)
    gains = 0.02 * F.avg_pool2d(feats[:, 3:4], 4).repeat(1, 2, 1, 1) + 0.05 * torch.randn(n, 2, 2, 2, generator=g)
    return _GainTable(feats, gains)


def _noisy_policy_setup(folder, **cfg_changes):
    from napari_paser.engine.bundle import Bundle
    from napari_paser.engine.models import PolicyConfig
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext

    configs = tiny_configs(patch_size=(16, 16))
    configs["policy"] = PolicyConfig(in_channels=6, width=16, features="v2", pool=4, patch_size=(16, 16), blocks=2, grid_context=True)
    bundle = Bundle.from_configs(configs, seed=0)
    cfg = get_preset("quick").replace(policy_objective="regression", policy_steps=400, policy_batch=8, policy_lr=1e-2,
                                      warmup=0.0, weight_decay=0.0, policy_eval_every=20, **cfg_changes)
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(folder, {}), seed=0, log=lambda s: None, progress=False)
    return bundle, ctx


def test_regression_policy_keeps_the_weights_best_on_held_out_volumes(tmp_path):
    """Gains that are noise: the fit memorises its few examples and the error on held-out
    ones rises again. The policy must end with the weights of the lowest held-out
    error, not the last ones."""
    from napari_paser.train.stages import train_policy

    bundle, ctx = _noisy_policy_setup(tmp_path / "ck")
    fit, held = _noise_table(12, seed=1), _noise_table(32, seed=2)
    history = train_policy(ctx, bundle, [fit], holdout=[held])

    steps, errors = zip(*history["holdout_error"])
    assert list(steps) == list(range(20, 401, 20))
    assert history["best_step"] == steps[int(np.argmin(errors))] < 400
    # The folded policy's error on the held-out gains, standardised as in the fit.
    flat = fit.gain_target("dataset_iou").transpose(0, 1).reshape(2, -1)
    mean, spread = flat.mean(1).view(1, -1, 1, 1), flat.std(1).view(1, -1, 1, 1)
    with torch.no_grad():
        pred = bundle.policy.eval().gains(held.features)
    error = float((((pred - mean) / spread - (held.gain_target("dataset_iou") - mean) / spread) ** 2).mean())
    assert error == pytest.approx(min(errors), abs=1e-4)
    assert error < errors[-1]


def test_early_stopping_survives_an_interrupted_fit(tmp_path):
    """Interrupted after its best step and resumed from a partial checkpoint, the fit ends
    with the same best step and weights as an uninterrupted one."""
    from napari_paser.train.stages import train_policy

    fit, held = _noise_table(12, seed=1), _noise_table(32, seed=2)
    bundle, ctx = _noisy_policy_setup(tmp_path / "a", checkpoint_every=50)
    ref = train_policy(ctx, bundle, [fit], holdout=[held])
    assert ref["best_step"] < 300  # so the interruption below comes after it

    def interrupt(steps_done):
        if steps_done == 330:
            raise KeyboardInterrupt

    first, ctx_b = _noisy_policy_setup(tmp_path / "b", checkpoint_every=50)
    with pytest.raises(KeyboardInterrupt):
        train_policy(ctx_b, first, [fit], holdout=[held], stop=interrupt)
    resumed, ctx_b = _noisy_policy_setup(tmp_path / "b", checkpoint_every=50)
    out = train_policy(ctx_b, resumed, [fit], holdout=[held])
    assert out["best_step"] == ref["best_step"] and out["holdout_error"] == ref["holdout_error"]
    for name, value in bundle.policy.state_dict().items():
        assert torch.allclose(value, resumed.policy.state_dict()[name]), name


def _linear_policy_setup(folder, policy_holdout=0.0):
    from napari_paser.engine.bundle import Bundle
    from napari_paser.engine.models import PolicyConfig
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext

    configs = tiny_configs(patch_size=(16, 16))
    configs["policy"] = PolicyConfig(in_channels=6, width=4, features="v2", pool=4, patch_size=(16, 16), grid_context=True, linear_skip=True)
    bundle = Bundle.from_configs(configs, seed=0)
    cfg = get_preset("quick").replace(policy_objective="linear", policy_holdout=policy_holdout)
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(folder, {}), seed=0, log=lambda s: None, progress=False)
    return bundle, ctx


def test_linear_policy_is_the_ridge_fit_and_survives_saving(tmp_path):
    """Gains that are a linear function of a patch mean: the closed-form policy predicts
    them on unseen features (the network's head adds nothing), and a saved bundle
    predicts the same."""
    from napari_paser.engine.bundle import load_bundle, save_bundle
    from napari_paser.train.stages import train_policy

    bundle, ctx = _linear_policy_setup(tmp_path / "ck")
    history = train_policy(ctx, bundle, [_GainTable(*_entropy_gains(40, seed=1))])
    assert min(history["corr_fit"]) > 0.999

    feats, truth = _entropy_gains(16, seed=2)
    with torch.no_grad():
        pred = bundle.policy.eval().gains(feats)
        assert torch.allclose(pred, truth, atol=1e-4)
        assert float(bundle.policy.head(torch.randn(2, 8, 2, 2)).abs().max()) == 0.0
    save_bundle(bundle, tmp_path / "b")
    with torch.no_grad():
        again = load_bundle(tmp_path / "b").policy.eval().gains(feats)
    assert torch.allclose(again, pred, atol=1e-6)


def test_choosing_a_ridge_penalty_needs_one_to_choose_from():
    from napari_paser.train.linear_policy import choose_ridge

    table = (np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least one penalty"):
        choose_ridge(table, [table], penalties=[])


def test_linear_policy_chooses_its_penalty_on_held_out_volumes(tmp_path):
    """Few noisy examples: the penalty kept is the one with the lowest error on the held-out
    volumes, and the policy predicts with it."""
    from napari_paser.train.linear_policy import fit_ridge, held_out_error, patch_table
    from napari_paser.train.stages import train_policy

    bundle, ctx = _linear_policy_setup(tmp_path / "ck", policy_holdout=0.5)
    fit, held = _noise_table(6, seed=1), _noise_table(32, seed=2)
    history = train_policy(ctx, bundle, [fit], holdout=[held])
    penalties, errors = zip(*history["penalty_errors"])
    assert history["penalty"] == penalties[int(np.argmin(errors))]
    assert history["penalty"] > 0  # 24 noisy patches for 7 coefficients: an unpenalised fit memorises them
    x, y = patch_table(bundle.policy, [fit], "dataset_iou")
    xh, yh = patch_table(bundle.policy, [held], "dataset_iou")
    assert held_out_error(fit_ridge(x, y, history["penalty"]), [(xh, yh)]) < held_out_error(fit_ridge(x, y, 0.0), [(xh, yh)])
    with torch.no_grad():
        pred = bundle.policy.eval().gains(held.features).permute(0, 2, 3, 1).reshape(-1, 2).double().numpy()
    assert float(((pred - yh) ** 2).mean()) == pytest.approx(min(errors), rel=1e-3)


@pytest.mark.parametrize("stem", [1, 2])
def test_f0_refiner_starts_as_the_identity_and_sets_f0s_prediction_only(tiny_bundle, stem):
    """A refiner added to a warm-started f0 leaves its prediction as it was; trained, it
    changes f0's labels in the engine, while the entropy and the policy's gains still come
    from the MC mean; its FLOPs are charged once per slice."""
    from napari_paser.engine.bundle import Bundle, copy_matching_weights
    from napari_paser.engine.flops import CostModel, refine_flops
    from napari_paser.engine.models import UNetConfig
    from napari_paser.engine.pipeline import PaserSegmenter

    configs = tiny_configs()
    configs["f0"] = UNetConfig(**{**configs["f0"].to_dict(), "refine_width": 4, "refine_stem": stem})
    refined = Bundle.from_configs(configs, seed=1, meta={"name": "refined", "version": "0"}).eval()
    assert copy_matching_weights(refined, tiny_bundle) == ["f0", "f1", "f2", "policy"]

    image = torch.rand(1, 1, 56, 64)
    prob = torch.softmax(torch.randn(1, 3, 56, 64), 1)
    out = refined.f0.refine(image, prob)
    assert torch.equal(out.argmax(1), prob.argmax(1)) and torch.allclose(out, prob, atol=1e-3)
    assert tiny_bundle.f0.refine(image, prob) is prob  # no refiner: the MC mean itself

    volume = np.random.default_rng(0).random((2, 112, 128)).astype(np.float32)
    plain, ref = PaserSegmenter(tiny_bundle, mc_passes=2), PaserSegmenter(refined, mc_passes=2)
    for seg in (plain, ref):
        seg.set_volume(volume)
    assert np.array_equal(plain.compose(0, routing=np.zeros((2, 2), np.uint8)), ref.compose(0, routing=np.zeros((2, 2), np.uint8)))
    with torch.no_grad():
        refined.f0.refiner.body[-1].bias.copy_(torch.tensor([0.0, 0.0, 30.0]).repeat_interleave(stem * stem))  # class-major, as pixel_shuffle
    ref = PaserSegmenter(refined, mc_passes=2)
    ref.set_volume(volume)
    assert (ref.compose(0, routing=np.zeros((2, 2), np.uint8)) == 2).all()
    np.testing.assert_allclose(ref.gains(0), plain.gains(0), atol=1e-6)
    np.testing.assert_allclose(ref.entropy(0), plain.entropy(0), atol=1e-6)

    with_refiner, without = CostModel.measure(refined, (112, 128), 2), CostModel.measure(tiny_bundle, (112, 128), 2)
    assert with_refiner.f0_refine == refine_flops(refined.f0.config, (112, 128)) > 0 == without.f0_refine
    assert with_refiner.f0_mc == without.f0_mc + with_refiner.f0_refine
    from napari_paser.engine.models import Refiner

    with pytest.raises(ValueError, match="refiner"):
        Refiner(0)


def test_a_refiner_that_reads_neighbouring_planes_takes_the_centre_ones_of_f0s_input(tmp_path):
    """With ``refine_planes`` 3 under an f0 that reads 5 planes, the refiner sees the slice
    and one plane on each side (not the outer two), in the engine as in ``UNet.refine``;
    the bundle round-trips and its FLOPs grow with the planes read."""
    from napari_paser.engine.bundle import Bundle, load_bundle, save_bundle
    from napari_paser.engine.flops import refine_flops
    from napari_paser.engine.models import Refiner, UNet, UNetConfig
    from napari_paser.engine.pipeline import PaserSegmenter

    configs = tiny_configs()
    configs["f0"] = UNetConfig(**{**configs["f0"].to_dict(), "planes": 5, "refine_width": 4, "refine_stem": 2, "refine_planes": 3})
    bundle = Bundle.from_configs(configs, seed=2, meta={"name": "planes", "version": "0"}).eval()
    refiner = bundle.f0.refiner
    assert refiner.planes == 3 and refiner.body[0].in_channels == (3 + 3) * 4
    with torch.no_grad():
        refiner.body[-1].weight.normal_(0, 1.0)  # no longer the identity
    prob = torch.softmax(torch.randn(1, 3, 56, 64), 1)
    x = torch.rand(1, 5, 56, 64)
    base = bundle.f0.refine(x, prob)
    for plane, matters in ((0, False), (1, True), (2, True), (3, True), (4, False)):
        moved = x.clone()
        moved[:, plane] += 1.0
        assert torch.equal(bundle.f0.refine(moved, prob), base) != matters, plane

    one = UNetConfig(**{**configs["f0"].to_dict(), "refine_planes": 1})
    assert refine_flops(bundle.f0.config, (112, 128)) > refine_flops(one, (112, 128)) > 0

    volume = np.random.default_rng(0).random((4, 112, 128)).astype(np.float32)
    loaded = load_bundle(save_bundle(bundle, tmp_path / "planes")).eval()
    assert loaded.f0.config.refine_planes == 3
    segs = [PaserSegmenter(b, mc_passes=2) for b in (bundle, loaded)]
    for seg in segs:
        seg.set_volume(volume)
    routing = np.zeros((2, 2), np.uint8)
    assert np.array_equal(segs[0].compose(1, routing=routing), segs[1].compose(1, routing=routing))
    with pytest.raises(ValueError, match="planes"):
        Refiner(4, planes=2)
    with pytest.raises(ValueError, match="too many"):
        UNet(UNetConfig(**{**configs["f0"].to_dict(), "planes": 1}))
