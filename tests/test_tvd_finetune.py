"""TVD fine-tuning (paper: pre-train at λ = 0, then raise λ until the TVD threshold).

A synthetic reward table with complementary models: every 8x8 patch has a "kind" k and
model k is the only one that segments it perfectly; the kind is visible in the policy's
features. No segmentation network runs, so the whole file takes a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_configs

PS = (8, 8)


def _cache(n: int, seed: int):
    """A RewardCache of n 16x16 slices (2x2 patches) and the kind of every patch."""
    from napari_paser.train.rewards import RewardCache, patch_confusion

    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 3, (n, 2, 2), generator=g)
    kind_px = kind.repeat_interleave(PS[0], 1).repeat_interleave(PS[1], 2)
    feats = torch.randn(n, 5, 16, 16, generator=g) * 0.1
    feats[:, 0] += kind_px.float() - 1.0
    truth = torch.randint(0, 3, (n, 16, 16), generator=g)
    wrong = {0: (0.0, 0.2, 0.3), 1: (0.3, 0.0, 0.1), 2: (0.4, 0.2, 0.0)}  # error rate of f0/f1/f2 per kind
    confs = []
    for m in range(3):
        rate = torch.tensor([wrong[k][m] for k in range(3)])[kind_px]
        flip = torch.rand(n, 16, 16, generator=g) < rate
        pred = torch.where(flip, (truth + 1) % 3, truth)
        confs.append(patch_confusion(pred, truth, PS))
    return RewardCache(feats.half(), torch.stack(confs, 1).int()), kind


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Tiny bundle whose policy is pre-trained at λ = 0 on the synthetic table."""
    from napari_paser.engine.bundle import Bundle
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext
    from napari_paser.train.tvd_finetune import pretrain_at_zero

    bundle = Bundle.from_configs(tiny_configs(PS), seed=0, meta={"name": "tvd-test", "version": "0"}).eval()
    cfg = get_preset("quick").replace(policy_steps=150, policy_batch=16, policy_lr=1e-2, checkpoint_every=10**9,
                                      epochs=None, aux_weight=20.0, alpha=(0.7, 0.95))
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp_path_factory.mktemp("ck"), {"t": 1}),
                       seed=0, log=lambda s: None, progress=False)
    train, _ = _cache(96, 1)
    val, val_kind = _cache(48, 2)
    pretrain_at_zero(ctx, bundle, [train], "lam0")
    bundle.eval()
    return ctx, bundle, [train], val.features, val_kind


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_pretraining_at_zero_learns_the_expert_routing(pretrained):
    from napari_paser.train.tvd_finetune import assignment

    _, bundle, _, val, kind = pretrained
    a = assignment(bundle.policy, val, 0.0, bundle.costs())
    assert a.shape == tuple(kind.shape)
    assert np.mean(a == kind.numpy()) > 0.8


def test_finetune_stops_once_the_tvd_threshold_is_reached(pretrained):
    from napari_paser.train.tvd_finetune import assignment, assignment_tvd, finetune_to_tvd

    ctx, bundle, caches, val, _ = pretrained
    ref = _state(bundle.policy)
    tau, steps = 0.10, 200
    r = finetune_to_tvd(ctx, bundle, caches, val, tau, lam_max=1.0, steps=steps, eval_every=1, lr=1e-3)
    # TVD 0 before the first step; λ rises linearly; stopped at the first evaluation at or over τ.
    assert r.trace[0] == {"step": 0, "lam": 0.0, "tvd": 0.0, "changed": 0.0}
    lams = [t["lam"] for t in r.trace]
    assert all(b >= a for a, b in zip(lams, lams[1:])) and lams[-1] > 0
    assert r.reached and r.tvd >= tau and 0 < r.steps < steps
    assert all(t["tvd"] < tau for t in r.trace[:-1])
    assert r.lam == pytest.approx(1.0 * r.steps / steps)
    # The returned policy, run at the λ it reached, has that TVD from the λ = 0 routing.
    ref_assign = assignment(bundle.policy, val, 0.0, bundle.costs())
    assert assignment_tvd(assignment(r.policy, val, r.lam, bundle.costs()), ref_assign) == pytest.approx(r.tvd)
    # The reference (λ = 0) policy is untouched and the result is a separate copy.
    assert r.policy is not bundle.policy
    assert all(torch.equal(v, bundle.policy.state_dict()[k]) for k, v in ref.items())
    assert any(not torch.equal(v, r.policy.state_dict()[k]) for k, v in ref.items() if v.is_floating_point())


def test_zero_threshold_keeps_the_pretrained_policy(pretrained):
    from napari_paser.train.tvd_finetune import finetune_to_tvd

    ctx, bundle, caches, val, _ = pretrained
    r = finetune_to_tvd(ctx, bundle, caches, val, 0.0, lam_max=1.0, steps=50)
    assert (r.steps, r.lam, r.tvd, r.reached) == (0, 0.0, 0.0, True)
    assert all(torch.equal(v, bundle.policy.state_dict()[k]) for k, v in r.policy.state_dict().items())


def test_thresholds_share_one_deterministic_trajectory(pretrained):
    """Same seed and ramp: a larger τ stops later on the same path; reruns are identical."""
    from napari_paser.train.tvd_finetune import finetune_to_tvd

    ctx, bundle, caches, val, _ = pretrained
    kw = dict(lam_max=1.0, steps=200, eval_every=2, lr=1e-3)
    small = finetune_to_tvd(ctx, bundle, caches, val, 0.05, **kw)
    big = finetune_to_tvd(ctx, bundle, caches, val, 0.20, **kw)
    again = finetune_to_tvd(ctx, bundle, caches, val, 0.20, **kw)
    assert small.steps <= big.steps and small.trace == big.trace[: len(small.trace)]
    assert big.trace == again.trace
    assert all(torch.equal(v, again.policy.state_dict()[k]) for k, v in big.policy.state_dict().items())


def test_ramp_ending_before_the_threshold_is_reported(pretrained):
    from napari_paser.train.tvd_finetune import finetune_to_tvd

    ctx, bundle, caches, val, _ = pretrained
    r = finetune_to_tvd(ctx, bundle, caches, val, 1.0, lam_max=0.0, steps=7, eval_every=3)
    assert not r.reached and r.steps == 7 and r.lam == 0.0
    assert [t["step"] for t in r.trace] == [0, 3, 6, 7]
