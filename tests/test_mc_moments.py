"""f0's MC-dropout mean in closed form (``UNetConfig(mc_estimate="moments")``): what it
approximates, where it applies, and how the engine charges and overrides it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch


def _f0(dropout: float = 0.3, num_classes: int = 3, **changes):
    from napari_paser.engine.models import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(base_width=4, depth=2, dropout=dropout, stem=4, mc_scope="head", num_classes=num_classes, **changes)
    f0 = UNet(config).eval()
    with torch.no_grad():  # logits of a few units, as a trained head gives: the passes then disagree
        f0.head.weight.mul_(4.0)
    return f0


def _sampled_mean(f0, features: torch.Tensor, passes: int, seed: int) -> torch.Tensor:
    logits = f0.mc_head_logits(features, passes, torch.Generator().manual_seed(seed))
    _, k, h, w = logits.shape
    c = f0.config.num_classes
    return logits.reshape(passes, features.shape[0], c, k // c, h, w).softmax(2).mean(0)


@torch.no_grad()
def test_closed_form_is_nearer_many_passes_than_five_are():
    """The limit that sampled passes approach: closer to 4000 passes than 5 or 20 passes are."""
    f0 = _f0()
    features = f0.encode(torch.randn(2, 1, 64, 96))[-1]
    moments = f0.mc_head_moments(features)
    many = _sampled_mean(f0, features, 4000, seed=1)
    assert moments.shape == many.shape == (2, 3, 16, 16, 24)
    torch.testing.assert_close(moments.sum(1), torch.ones(2, 16, 16, 24))
    err = float((moments - many).abs().mean())
    five = float((_sampled_mean(f0, features, 5, seed=2) - many).abs().mean())
    twenty = float((_sampled_mean(f0, features, 20, seed=2) - many).abs().mean())
    assert err < 0.5 * twenty < five


@torch.no_grad()
def test_two_classes_give_the_probit_approximation_of_the_sigmoid():
    """With two classes the closed form is E[sigmoid(gap)] ≈ sigmoid(m / sqrt(1 + πv/8)),
    v the variance of the logits' gap under dropout."""
    p = 0.3
    f0 = _f0(dropout=p, num_classes=2)
    features = f0.encode(torch.randn(1, 1, 32, 32))[-1]
    x = features.reshape(features.shape[1], -1).double()
    w = f0.head.weight.reshape(2, 16, -1).double()
    b = f0.head.bias.reshape(2, 16, 1).double()
    gap_w, gap_b = w[0] - w[1], b[0] - b[1]
    mean = gap_w @ x + gap_b
    variance = p / (1 - p) * (gap_w**2) @ (x**2)
    want = torch.sigmoid(mean / torch.sqrt(1 + math.pi * variance / 8))
    got = f0.mc_head_moments(features)[0, 0].reshape(16, -1).double()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_without_dropout_it_is_the_heads_softmax():
    f0 = _f0(dropout=0.0)
    features = f0.encode(torch.randn(1, 1, 64, 64))[-1]
    logits = f0.head(features)
    want = logits.reshape(1, 3, 16, *logits.shape[-2:]).softmax(1)
    torch.testing.assert_close(f0.mc_head_moments(features), want, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_mc_predict_uses_the_configured_estimate_and_ignores_the_seed():
    from napari_paser.engine.models import UNet
    from napari_paser.engine.uncertainty import entropy, mc_predict

    sampled = _f0()
    closed = UNet(replace(sampled.config, mc_estimate="moments")).eval()
    closed.load_state_dict(sampled.state_dict())
    x = torch.randn(1, 1, 64, 96)
    prob, ent = mc_predict(closed, x, passes=5, seed=3)
    again, _ = mc_predict(closed, x, passes=50, seed=4)
    assert torch.equal(prob, again)  # no masks are drawn: neither the seed nor the passes matter
    torch.testing.assert_close(ent, entropy(prob))
    assert torch.equal(mc_predict(sampled, x, 5, seed=3, estimate="moments")[0], prob)  # asked for by the caller
    assert not torch.equal(mc_predict(closed, x, 5, seed=3, estimate="sampled")[0], prob)
    with pytest.raises(ValueError, match="spread"):
        mc_predict(closed, x, 5, seed=3, return_spread=True)


def test_closed_form_needs_dropout_before_the_linear_head():
    from napari_paser.engine.models import UNet, UNetConfig
    from napari_paser.engine.uncertainty import mc_predict

    with pytest.raises(ValueError, match="mc_scope='head'"):
        UNet(UNetConfig(base_width=4, depth=2, dropout=0.2, mc_estimate="moments"))
    with pytest.raises(ValueError, match="unknown mc_estimate"):
        UNet(UNetConfig(base_width=4, depth=2, dropout=0.2, mc_scope="head", mc_estimate="exact"))
    decoder = UNet(UNetConfig(base_width=4, depth=2, dropout=0.2)).eval()
    with pytest.raises(ValueError, match="mc_scope='head'"):
        mc_predict(decoder, torch.randn(1, 1, 32, 32), 5, estimate="moments")


def test_engine_charges_one_closed_form_and_samples_when_asked(shipped, tmp_path):
    """The engine estimates as the bundle says unless passes are asked for; FLOPs follow;
    the choice survives saving the bundle."""
    import copy

    from napari_paser.engine.bundle import load_bundle, save_bundle
    from napari_paser.engine.flops import moments_flops, unet_flops
    from napari_paser.engine.pipeline import PaserSegmenter

    shipped_bundle, _, volume = shipped
    bundle, sampled = copy.deepcopy(shipped_bundle), copy.deepcopy(shipped_bundle)
    bundle.f0.config = replace(bundle.f0.config, mc_estimate="moments")
    sampled.f0.config = replace(sampled.f0.config, mc_estimate="sampled")
    seg = PaserSegmenter(bundle)
    seg.set_volume(volume)
    assert seg.mc_estimate == "moments"
    cm = seg.cost_model
    assert cm.passes == 1 and cm.f0_decode == moments_flops(bundle.f0.config, seg.padded_shape)
    # The closed form counts two products of the head's size: the mean and the gaps' variances.
    assert cm.f0_decode == 2 * unet_flops(bundle.f0.config, seg.padded_shape)["decode"]
    other_seed = PaserSegmenter(bundle, seed=9)
    other_seed.set_volume(volume)
    np.testing.assert_array_equal(seg.entropy(1), other_seed.entropy(1))

    asked = PaserSegmenter(bundle, mc_passes=3)
    asked.set_volume(volume)
    assert asked.mc_estimate == "sampled" and asked.cost_model.passes == 3
    assert not np.array_equal(asked.entropy(1), seg.entropy(1))

    loaded = load_bundle(save_bundle(bundle, tmp_path / "moments"))
    assert loaded.f0.config.mc_estimate == "moments"
    assert load_bundle(save_bundle(sampled, tmp_path / "sampled")).f0.config.mc_estimate == "sampled"
