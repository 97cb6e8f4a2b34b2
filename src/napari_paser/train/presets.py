"""Training presets: how long, how fast and with which settings each stage runs.

``quick`` trains the whole pipeline on a 2-core CPU in about half an hour (bf16
autocast and channels_last for the UNets: measured about 2x faster for f2 on a CPU with
AVX-512; where bf16 is emulated, autocast stays off, see ``engine.precision``);
``paper`` follows the paper (Adam 1e-4, batch 32, 200 epochs per stage) for a GPU;
``init`` is the short fine-tuning of an existing bundle on a few labelled slices.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field, replace

from .augment import AugmentConfig

__all__ = ["TrainConfig", "get_preset", "describe_presets", "PRESETS", "PRESET_NOTES"]


@dataclass
class TrainConfig:
    """Every knob of a training run.

    Step counts are optimiser steps; if ``epochs`` is set, each stage instead runs
    ``epochs`` passes over its split (the paper's schedule), counted in items of that
    stage (patches for f1/f2, slices for f0 and the policy).
    """

    preset: str = "quick"
    arch: str = "quick"  # network sizes (engine.bundle.default_model_configs)
    epochs: int | None = None
    # Stage 1: f2 and f1 on random augmented patches.
    patch_batch: int = 32
    f2_steps: int = 1800
    f1_steps: int = 1000
    f2_lr: float = 1e-3
    f1_lr: float = 2e-3
    # f1 only: weight of the warm-start bundle's f1 as a teacher (its softmax, KL) in f1's
    # loss, beside the labels' cross entropy; for an f1 of another shape, which cannot
    # copy the warm start's weights (0: labels only).
    f1_distill: float = 0.0
    # f2 only: weight each patch's loss by f1's cross entropy on it to this power (0:
    # every patch alike), so f2 learns most where f1 fails and its gains over f1 gather
    # on the few patches a router can afford to send to it.
    f2_focus: float = 0.0
    # Stage 2: f0 on whole patch grids, CE + β·MSE to f2's stitched logits.
    f0_steps: int = 500
    f0_batch: int = 4
    f0_lr: float = 3e-3
    beta: float = 0.01
    # Stage 2b: f0's refiner (arch with ``refine_width``) on whole slices, f0 frozen,
    # cross entropy of the refined MC mean.
    refine_steps: int = 3000
    refine_batch: int = 4
    refine_lr: float = 2e-3
    # Stage 3: policy by REINFORCE over cached per-patch rewards.
    rl_copies: int = 4
    policy_steps: int = 1200  # 0 keeps the warm-started policy (no reward caches)
    policy_batch: int = 32
    policy_lr: float = 2e-3
    alpha: tuple[float, float] = (0.7, 0.95)
    lam_power: float = 2.0
    aux_weight: float = 20.0
    # Per-patch gain the policy learns: the paper's per-patch IoU ("patch_iou") or the
    # first-order change of the volume's IoU ("dataset_iou", what users measure).
    reward: str = "patch_iou"
    # How the policy learns: "reinforce" (the paper's, sampled actions) or "regression"
    # (every model's gain is cached for every patch, so the best λ-conditioned router is
    # the best gain predictor: mean squared error on the gains, early-stopped on held-out
    # volumes), or "linear" (a ridge regression of the gains on the patch means of the
    # policy's inputs, closed form, in the policy's linear skip), or "dense" (a policy
    # with a dense head fitted on the gains of the cells of its pooled grid).
    policy_objective: str = "reinforce"
    # Regression, linear and dense: share of the RL volumes held out of the fit; the
    # policy keeps the weights (regression, measured every ``policy_eval_every`` steps;
    # dense: the best correlation of its gains with the true ones) or the ridge penalty
    # (linear) with the lowest error on them (0: no hold-out).
    policy_holdout: float = 0.0
    policy_eval_every: int = 100
    # Dense: tie the fitted policy's f2 gains to its f1 gains if on the held-out volumes it
    # cannot tell where f2 beats f1 (train.dense_policy.tie_f2_gains).
    policy_tie_f2: bool = False
    # Dense: read each slice's level of gains from its mean refiner KL, by a line fitted on
    # the RL volumes, not from the network (train.dense_policy.fit_slice_level).
    policy_slice_level: bool = False
    # Dense, with policy_slice_level: read the level from this quantile of the slice's
    # refiner KL over its cells instead of their mean.
    policy_slice_level_quantile: float | None = None
    # Dense, with policy_slice_level: keep the warm-started policy network (its ranking,
    # tie included) and fit only its slice level; the run needs a warm-started policy.
    policy_keep_network: bool = False
    # Stage 4: joint fine-tuning of f1, f2 (on routed patches) and the policy.
    ft_steps: int = 150
    ft_batch: int = 8
    ft_lr: float = 1e-4
    ft_policy_lr: float = 5e-4
    ft_alpha: tuple[float, float] = (0.95, 1.0)
    ft_max_patches: int = 48
    # Everything else.
    mc_passes: int = 5
    weight_decay: float = 1e-4
    warmup: float = 0.05
    splits: dict = field(default_factory=lambda: {"pretrain": 0.5, "rl": 0.2, "finetune": 0.15, "val": 0.15})
    bf16: bool = True  # only where the device computes bf16 natively (engine.precision)
    channels_last: bool = True
    checkpoint_every: int = 200
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(impulse=0.02, impulse_prob=0.3))
    # The default λ's rule on the validation volumes (train.validation.choose_default_lam):
    # IoU ≥ iou_ratio_target × f2's within lam_flops_margin × flops_ratio_target × its
    # GFLOPs. The margin leaves room for scans on which the policy sends more patches up.
    iou_ratio_target: float = 0.97
    flops_ratio_target: float = 0.30
    lam_flops_margin: float = 0.8
    tvd: float | None = None
    # f0's weights in the f1 / f2 patch outputs (engine.bundle.Bundle.fusion), set on the
    # bundle before the reward caches are built, so the policy learns the gains of the
    # fused patches the engine composes; (0, 0) keeps the bundle's own.
    f0_fusion: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alpha"] = list(self.alpha)
        d["ft_alpha"] = list(self.ft_alpha)
        d["f0_fusion"] = list(self.f0_fusion)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["augment"] = AugmentConfig(**d["augment"])
        d["alpha"] = tuple(d["alpha"])
        d["ft_alpha"] = tuple(d["ft_alpha"])
        d["f0_fusion"] = tuple(d.get("f0_fusion", (0.0, 0.0)))
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return replace(self, **changes)


PRESETS: dict[str, TrainConfig] = {
    "quick": TrainConfig(),
    # The v2 bundle: v2 networks, the wide synthetic distribution, rewards in dataset IoU.
    # About an hour on 2 CPU cores with f2 warm-started from the v1 bundle.
    "v2": TrainConfig(
        preset="v2",
        arch="v2",
        f2_steps=600,
        f2_lr=5e-4,
        f1_steps=1200,
        f1_lr=2e-3,
        f0_steps=1200,
        f0_batch=8,
        f0_lr=3e-3,
        beta=0.0,
        rl_copies=2,
        policy_steps=2000,
        policy_batch=32,
        reward="dataset_iou",
        ft_steps=0,
        # No joint fine-tuning stage, so its split keeps one volume only; the rest
        # goes to pre-training, which gains most from variety.
        splits={"pretrain": 0.62, "rl": 0.2, "finetune": 0.0, "val": 0.12},
        iou_ratio_target=0.99,
        flops_ratio_target=0.25,
        augment=AugmentConfig(contrast=0.5, offset=0.15, noise=0.08, noise_prob=0.5, blur=1.5, blur_prob=0.35,
                              impulse=0.02, impulse_prob=0.3),
    ),
    "paper": TrainConfig(
        preset="paper",
        arch="paper",
        epochs=200,
        f2_lr=1e-4,
        f1_lr=1e-4,
        f0_lr=1e-4,
        policy_lr=1e-4,
        ft_lr=1e-4,
        ft_policy_lr=1e-4,
        f0_batch=32,
        ft_batch=32,
        rl_copies=1,
        bf16=False,
        checkpoint_every=1000,
        splits={"pretrain": 1 / 3, "rl": 1 / 3, "finetune": 1 / 3, "val": 0.05},
    ),
    # Fine-tuning an existing bundle on a few labelled slices: lower learning rates, a few
    # hundred steps. f0's refiner, where the bundle has one, keeps the default 3 000 steps:
    # from paser-synth-v2.21 on out-of-family volume 9101 (slices 0-3 labelled, one torch
    # thread) they took 6.6 of the run's 12.6 min and lifted PaSeR on slices 8-15 to 0.7192
    # mean IoU, against 0.7057 with 300 steps at lr 4e-4 (6.6 min in all) and 0.7017 with
    # the refiner kept as shipped (6.0 min); the shipped bundle scores 0.6401.
    "init": TrainConfig(
        preset="init",
        f2_steps=250,
        f1_steps=250,
        f2_lr=2e-4,
        f1_lr=4e-4,
        f0_steps=150,
        f0_lr=5e-4,
        rl_copies=4,
        policy_steps=600,
        policy_lr=1e-3,
        ft_steps=60,
        warmup=0.1,
        checkpoint_every=100,
    ),
}

# v2's data and networks trained longer: f2, f1 and f0 continue from the v2 bundle (warm
# start; about 50 min on 2 CPU cores), and the policy (smaller, with a linear skip) learns
# its gains by regression.
PRESETS["v2.1"] = PRESETS["v2"].replace(
    preset="v2.1",
    arch="v2.1",
    f2_steps=3500,
    f2_lr=3e-4,
    f1_steps=2000,
    f1_lr=1e-3,
    f0_steps=3000,
    f0_lr=1.5e-3,
    rl_copies=4,
    policy_steps=3000,
    policy_lr=1e-3,
    policy_objective="regression",
    checkpoint_every=100,
)

# v2.1 with the cheap networks trained longer: f1 about eight times (it had seen only
# about 100 000 patches) and f0 four times; f2 is kept from the v2.1 bundle (warm start)
# and the policy is re-fitted to the new f0's features and f1's gains. About an hour on
# 2 CPU cores.
PRESETS["v2.2"] = PRESETS["v2.1"].replace(
    preset="v2.2",
    f2_steps=0,
    f0_steps=12000,
    f1_steps=15000,
    f1_lr=1e-3,
    checkpoint_every=250,
)

# v2.2 with f1 continued on more volumes (``train --extra-pretrain``: 36 more v2 volumes
# beside v2.2's 31 pre-training ones; the RL and validation volumes unchanged): f0 and
# f2 kept, the policy re-fitted to the new f1's gains. 25 minutes on 2 CPU cores.
PRESETS["v2.5"] = PRESETS["v2.2"].replace(
    preset="v2.5",
    f0_steps=0,
    f1_steps=8000,
    f1_lr=5e-4,
)

# v2.5's networks (all kept) with a policy that generalises. v2.5's policy, fitted 3 000
# steps on 10 RL volumes, tracked the true gains with r = 0.94 on them and 0.10 on the
# validation volumes. This one reads f0's output statistics but not f0's feature maps,
# is fitted on 4x the RL volumes (``train --extra-rl``: 30 fresh ones; 2 augmented
# copies each instead of 4), and keeps the weights with the lowest error on a fifth of
# them held out of the fit. 11 minutes on 2 CPU cores once the data exist.
PRESETS["v2.6"] = PRESETS["v2.5"].replace(
    preset="v2.6",
    arch="v2.6",
    f1_steps=0,
    rl_copies=2,
    policy_holdout=0.2,
    # On the in-family development volumes (8001-8004) this policy spent 1.47 x the
    # GFLOPs it spent on the validation volumes at the same λ (0.274 vs 0.186 x f2's at
    # λ 0.010): a 0.8 margin did not cover that.
    lam_flops_margin=0.6,
)

# v2.6 with an f0 that reads 5 planes (arch v2.7): the shipped f0 widened (each plane
# starts with the centre plane's weights / 5) and trained on for 6 000 steps of the same
# data; f1 and f2 kept, the policy re-fitted to the new f0 as v2.6's was.
PRESETS["v2.7"] = PRESETS["v2.6"].replace(
    preset="v2.7",
    arch="v2.7",
    f0_steps=6000,
    f0_lr=1e-3,
)


# v2.7's networks (all kept) with the policy fitted in closed form: a ridge regression
# of the gains on the patch means of its 6 input channels (f0's probabilities and
# entropy, the image's mean and local spread), the penalty chosen on the held-out RL
# volumes. Same RL volumes and reward caches as v2.7; a few minutes once they exist.
PRESETS["v2.8"] = PRESETS["v2.7"].replace(
    preset="v2.8",
    f0_steps=0,
    policy_objective="linear",
)

# v2.7's networks (all kept) with a dense policy (arch v2.9): a small convolutional
# network predicts the gain of every 4x4-pixel cell from f0's probabilities and entropy
# and the image's local mean and spread, fitted on the cells' gains (224 targets per patch) with early stopping on the held-out
# RL volumes. The reward caches are rebuilt (they hold the cells' confusions).
PRESETS["v2.9"] = PRESETS["v2.8"].replace(
    preset="v2.9",
    arch="v2.9",
    policy_objective="dense",
    policy_steps=3000,
    policy_batch=16,
    policy_lr=2e-3,
    policy_eval_every=250,
)


# v2.9 with f2 widened to read the 2 planes above and below its slice (arch v2.10, mean
# init) and trained on for 1 500 steps of the pre-training volumes; f0 and f1 kept, the
# reward caches rebuilt for the new f2 and the dense policy re-fitted to its gains.
PRESETS["v2.10"] = PRESETS["v2.9"].replace(
    preset="v2.10",
    arch="v2.10",
    f2_steps=1500,
    f2_lr=5e-4,
)


# v2.10's networks with f2 trained on as a specialist (preset only; arch v2.10): 1 000
# more steps with every patch's loss weighted by f1's cross entropy on it squared, so
# that f2's lead over f1 gathers where f1 fails. With v2.10's f2 even oracle routing
# reached only 0.983 x f2's IoU within 25 % of its GFLOPs on the development volumes:
# its gains were spread over every patch (benchmarks/probe_results.md).
PRESETS["v2.11"] = PRESETS["v2.10"].replace(
    preset="v2.11",
    f2_steps=1000,
    f2_lr=3e-4,
    f2_focus=2.0,
)


# v2.9's networks (all kept) with a dense policy that also reads f0's finest features
# (arch v2.12); the reward caches are rebuilt (they hold the new input) and the policy
# fitted as v2.9's.
PRESETS["v2.12"] = PRESETS["v2.9"].replace(preset="v2.12", arch="v2.12")


# v2.9's networks and policy (all kept) with a refiner on f0's prediction (arch v2.13),
# trained 3 000 steps on the pre-training volumes with f0 frozen; the default λ is chosen
# again on the validation split. The policy still reads f0's unrefined MC mean and
# predicts the gains over the unrefined f0 (benchmarks/probe_f0_refiner.py scored this
# pairing on the development volumes).
PRESETS["v2.13"] = PRESETS["v2.9"].replace(preset="v2.13", arch="v2.13", policy_steps=0)


# v2.13's networks and refiner (all kept) with the dense policy re-fitted as v2.9's to the
# gains over the refined f0 (reward caches rebuilt).
PRESETS["v2.14"] = PRESETS["v2.9"].replace(preset="v2.14", arch="v2.13", refine_steps=0)


# v2.9's networks (all kept) with a dense policy that also reads the spread of f0's MC
# passes (arch v2.15); the reward caches are rebuilt (they hold the new input) and the
# policy fitted as v2.9's.
PRESETS["v2.15"] = PRESETS["v2.9"].replace(preset="v2.15", arch="v2.15")


# v2.9's networks (all kept) and its dense policy network, fitted again as v2.9's (the
# reward caches are rebuilt: they hold the image residual); a prior calibrated on the
# same caches adds a patch's excess of image residual over their mean (arch v2.16).
PRESETS["v2.16"] = PRESETS["v2.9"].replace(preset="v2.16", arch="v2.16")


# v2.16's networks and policy network, fitted again on five times the RL volumes
# (``train --extra-rl data/synth_rl_large``: v2.16's 30 extra volumes and 160 fresh ones
# of 8 slices, a quarter from v1's generator; a fifth of all RL volumes held out for the
# early stopping), twice as many steps; the residual prior is calibrated again. The
# dense policy memorised its first 10 volumes, and 40 gave it its first lead over f0's
# entropy; this asks how far more volumes take that lead. Meant for a GPU
# (``train --device cuda``): the reward caches run f1 and f2 on over 3 000 slices.
PRESETS["v2.17"] = PRESETS["v2.16"].replace(preset="v2.17", policy_steps=6000)


# v2.16's networks and policy network with f0 fused into f1 / f2 as 2.16.1 ships them
# (0.30 / 0.25, chosen by benchmarks/probe_f0_fusion.py): the reward caches are built from
# the fused patches, so the dense policy and the residual prior are fitted again, as
# v2.16's, to the gains that routing a patch realises.
PRESETS["v2.18"] = PRESETS["v2.16"].replace(preset="v2.18", f0_fusion=(0.30, 0.25))


# v2.16's networks and policy network with a refiner on f0's prediction (arch v2.19),
# warm-started from a bundle that holds the refiner (``probe_refiner_gain.py --save``:
# trained 3 000 steps on 36 fresh volumes with f0 frozen; refine_steps 0 keeps it), and
# the refined f0 fused into f1 / f2 at 0.35 / 0.40 (chosen by probe_f0_fusion on that
# bundle). The reward caches are built from the refined f0 and the fused patches, so the
# dense policy and the residual prior are fitted again, as v2.16's, to the gains that
# routing a patch realises over the refined f0.
PRESETS["v2.19"] = PRESETS["v2.16"].replace(preset="v2.19", arch="v2.19", refine_steps=0, f0_fusion=(0.35, 0.40))


# v2.19 with a refiner that also reads the two planes on each side of the slice (arch
# v2.20), warm-started from a bundle that holds it (``probe_refiner_gain.py --refiners
# 2:32:5 --steps 6000 --save``; refine_steps 0 keeps it); the refined f0 fused into f1 / f2
# at 0.35 / 0.45 (chosen by probe_f0_fusion on that bundle); the dense policy and the
# residual prior fitted again to the gains over the refined f0.
PRESETS["v2.20"] = PRESETS["v2.19"].replace(preset="v2.20", arch="v2.20", f0_fusion=(0.35, 0.45))


# v2.20's networks (all kept: warm-started from it) with a dense policy whose network also
# reads how far the refiner moved f0's prediction (arch v2.21), fitted as v2.20's, without
# the image-residual prior.
PRESETS["v2.21"] = PRESETS["v2.20"].replace(preset="v2.21", arch="v2.21")


# v2.21's networks (all kept: warm-started from it) and policy network, fitted as v2.21's,
# with its f2 gains tied to its f1 gains if on the held-out RL volumes it cannot tell where
# f2 beats f1 (train.dense_policy.TIE_BELOW).
PRESETS["v2.22"] = PRESETS["v2.21"].replace(preset="v2.22", policy_tie_f2=True)


# v2.22's networks and policy network, fitted and tied as v2.22's, with each slice's level
# of gains read from its mean refiner KL instead of the network (train.dense_policy.
# fit_slice_level): the network's level, learnt from RL volumes of many scanners, does not
# carry over between scans of one generator (benchmarks/probe_results.md).
PRESETS["v2.23"] = PRESETS["v2.22"].replace(preset="v2.23", policy_slice_level=True)

# v2.23's networks and policy network, all kept (warm-started from it), with each slice's
# level read from the 90th percentile of its refiner KL over its cells instead of their
# mean (benchmarks/probe_results.md, "Which statistic of a slice's refiner KL…").
PRESETS["v2.24"] = PRESETS["v2.23"].replace(preset="v2.24", policy_keep_network=True, policy_slice_level_quantile=0.9)

# v2.24's f0, f2 and refiner (warm-started from it) with an f1 of the same FLOPs that runs
# nearer f2's rate on a CPU (arch v2.25: width 48 on 4x4 pixel blocks instead of 24 on
# 2x2), trained 6 000 steps on the pre-training volumes half on the labels and half on
# v2.24's f1 as a teacher; the reward caches rebuilt and the dense policy fitted, tied and
# levelled as v2.24's. Not shipped: after its 6 000 steps the new f1 took 0.70-0.77 x the old
# one's seconds but stayed 0.011 / 0.010 below its IoU with f0 fused in, in and out of
# family (benchmarks/probe_results.md).
PRESETS["v2.25"] = PRESETS["v2.23"].replace(
    preset="v2.25",
    arch="v2.25",
    f1_steps=6000,
    f1_lr=2e-3,
    f1_distill=0.5,
    policy_slice_level_quantile=0.9,
    checkpoint_every=250,
)
# v2.25's f1 trained on: warm-started from a bundle that holds it (v2.24 with the f1 of the
# v2.25 run, written by ``benchmarks/probe_f1_candidate.py --save``), 4 000 more steps at
# half the learning rate with v2.24's f1 still the teacher (``train --teacher``); the
# policy fitted as v2.25's. After v2.25's 6 000 steps the loss was still falling. Not
# shipped: with f0 fused in it stayed 0.010 below v2.24's f1 in family (0.003 out of family).
PRESETS["v2.26"] = PRESETS["v2.25"].replace(preset="v2.26", f1_steps=4000, f1_lr=1e-3)

# v2.24's networks and policy network (all warm-started from it) with f0's MC-dropout mean
# in closed form instead of 5 sampled passes (arch v2.27): the refiner, trained on the
# sampled means, trained on for 1 500 steps at a quarter of its learning rate on the
# closed-form ones; the reward caches rebuilt and each slice's level fitted again as
# v2.24's (benchmarks/probe_results.md, "Would f0's MC-dropout mean in closed form…").
PRESETS["v2.27"] = PRESETS["v2.24"].replace(preset="v2.27", arch="v2.27", refine_steps=1500, refine_lr=5e-4)

# v2.24's networks and policy network with f0's MC-dropout mean in closed form (arch v2.27)
# and a refiner trained for it from the start, as v2.20's was for 5 sampled passes
# (warm-started from a bundle that holds it, ``probe_refiner_gain.py --refiners 2:32:5
# --steps 6000 --save`` on the closed-form means; refine_steps 0 keeps it); the reward
# caches rebuilt and each slice's level fitted again as v2.24's. On the development volumes
# its f0 is 0.004 above v2.24's in family (benchmarks/probe_results.md).
PRESETS["v2.28"] = PRESETS["v2.24"].replace(preset="v2.28", arch="v2.27")

# v2.28's networks (all warm-started from it) with the dense policy network fitted again,
# tied and levelled as v2.23's and v2.24's: v2.28 kept v2.24's network, fitted on the
# inputs of 5 sampled MC passes and of v2.24's refiner, while it now reads the closed-form
# mean and the KL of a refiner trained for it.
PRESETS["v2.29"] = PRESETS["v2.28"].replace(preset="v2.29", policy_keep_network=False)

# What each preset trains, and from what: one line each for `napari-paser train --list-presets`.
PRESET_NOTES: dict[str, str] = {
    "quick": "small networks, the whole pipeline on a 2-core CPU in about 30 min",
    "v2": "the v2 bundle's networks and schedule on the wide v2 synthetic data (~1 h CPU with --warm-start)",
    "v2.1": "v2 trained longer, from the v2 bundle (~1 h CPU), with a regression-trained policy",
    "v2.2": (
        "v2.1 with f1 trained 8x and f0 4x longer, f2 kept, the policy re-fitted (~1 h CPU, --warm-start "
        "paser-synth-v2.1)"
    ),
    "v2.5": (
        "v2.2 with f1 continued on --extra-pretrain volumes, f0 and f2 kept, the policy re-fitted (~25 "
        "min CPU, --warm-start paser-synth-v2.2)"
    ),
    "v2.6": (
        "v2.5's networks kept, a policy on f0's output statistics fitted on --extra-rl volumes too and "
        "early-stopped on held-out ones (~11 min CPU once the data exist, --warm-start paser-synth-v2.5)"
    ),
    "v2.7": (
        "v2.6 with an f0 that reads 5 planes, widened from v2.6's and trained on, the policy re-fitted "
        "(~40 min CPU, --warm-start paser-synth-v2.6)"
    ),
    "v2.8": (
        "v2.7's networks with a closed-form linear policy (ridge on patch means; minutes once v2.7's "
        "reward caches exist, --warm-start runs/paser-synth-v2.7)"
    ),
    "v2.9": (
        "v2.7's networks with a dense policy fitted on the gains of 4x4-pixel cells (~20 min CPU, reward "
        "caches rebuilt, --warm-start runs/paser-synth-v2.7)"
    ),
    "v2.10": (
        "v2.9 with an f2 that reads 5 planes, widened from v2.9's and trained on, the policy re-fitted "
        "(~40 min CPU, --warm-start src/napari_paser/models/paser-synth-v2.9)"
    ),
    "v2.11": (
        "v2.10's networks with f2 trained on as a specialist, each patch's loss weighted by f1's cross "
        "entropy on it squared, the policy re-fitted (~35 min CPU, --warm-start runs/paser-synth-v2.10)"
    ),
    "v2.12": (
        "v2.9's networks with a dense policy that also reads f0's finest features, the reward caches "
        "rebuilt (~25 min CPU, --warm-start src/napari_paser/models/paser-synth-v2.9)"
    ),
    "v2.13": (
        "v2.9's networks and policy with a refiner on f0's prediction trained with f0 frozen, the default "
        "λ chosen again (~10 min CPU once the data exist, --warm-start "
        "src/napari_paser/models/paser-synth-v2.9)"
    ),
    "v2.14": (
        "v2.13's networks and refiner with the dense policy re-fitted to the gains over the refined f0, "
        "the reward caches rebuilt (~15 min CPU once the data exist, --warm-start runs/paser-synth-v2.13)"
    ),
    "v2.15": (
        "v2.9's networks with a dense policy that also reads how much f0's MC passes disagree, the reward "
        "caches rebuilt (~25 min CPU once the data exist, --warm-start "
        "src/napari_paser/models/paser-synth-v2.9)"
    ),
    "v2.16": (
        "v2.9's networks and dense policy with the image residual added to its gains by a calibrated "
        "prior, the reward caches rebuilt (~25 min CPU once the data exist, --warm-start "
        "src/napari_paser/models/paser-synth-v2.9)"
    ),
    "v2.17": (
        "v2.16's networks with its policy network fitted again on five times the RL volumes (--extra-rl "
        "data/synth_rl_large; about a minute on a GPU with --device cuda once the data exist, "
        "--warm-start src/napari_paser/models/paser-synth-v2.16)"
    ),
    "v2.18": (
        "v2.16 with f0 fused into f1 / f2 at 0.30 / 0.25 and the policy fitted to the fused gains, the "
        "reward caches rebuilt (~25 min CPU once the data exist, --warm-start "
        "src/napari_paser/models/paser-synth-v2.16)"
    ),
    "v2.19": (
        "v2.16 with a refiner on f0's prediction (kept from --warm-start runs/paser-synth-v2.16-refined, "
        "which scripts/train_bundled_model_v2_19.sh makes), the refined f0 fused into f1 / f2 at 0.35 / "
        "0.40 and the policy fitted to the gains over it, the reward caches rebuilt (~12 min CPU once the "
        "data exist)"
    ),
    "v2.20": (
        "v2.19 with a refiner that also reads the two planes on each side of the slice (kept from "
        "--warm-start runs/paser-synth-v2.16-refined5p, which scripts/train_bundled_model_v2_20.sh "
        "makes), fused into f1 / f2 at 0.35 / 0.45, the policy fitted to the gains over it (~13 min CPU "
        "once the data exist)"
    ),
    "v2.21": (
        "v2.20's networks with the dense policy also reading how far the refiner moved f0's prediction "
        "and no image-residual prior, the reward caches rebuilt (~9 min CPU once the data exist, "
        "--warm-start src/napari_paser/models/paser-synth-v2.20)"
    ),
    "v2.22": (
        "v2.21's networks and policy network, fitted again, with its f2 gains tied to its f1 gains if on "
        "the held-out RL volumes it cannot tell where f2 beats f1 (~7 min CPU once the data exist, "
        "--warm-start src/napari_paser/models/paser-synth-v2.21)"
    ),
    "v2.23": (
        "v2.22's networks and policy, fitted and tied again, with each slice's level of gains read from its "
        "mean refiner KL by a line fitted on the RL volumes (~7 min CPU once the data exist, --warm-start "
        "src/napari_paser/models/paser-synth-v2.22)"
    ),
    "v2.24": (
        "v2.23's networks and policy network, all kept, with each slice's level of gains read from the 90th "
        "percentile of its refiner KL (~15 min CPU once the data exist, the reward caches rebuilt, --warm-start "
        "src/napari_paser/models/paser-synth-v2.23)"
    ),
    "v2.25": (
        "v2.24's f0, f2 and refiner with an f1 of the same FLOPs on 4x4 pixel blocks, trained on the labels "
        "and on v2.24's f1 as a teacher, the policy fitted again (~50 min for f1 on 2 CPU cores, not shipped, "
        "--warm-start src/napari_paser/models/paser-synth-v2.24)"
    ),
    "v2.26": (
        "v2.25's f1 trained on for 4 000 more steps with v2.24's f1 still the teacher, the policy fitted again "
        "(--warm-start a bundle holding v2.25's f1, --teacher paser-synth-v2.24)"
    ),
    "v2.27": (
        "v2.24's networks and policy network with f0's MC-dropout mean in closed form, the refiner trained on "
        "for it and each slice's level fitted again (~25 min CPU once the data exist, --warm-start "
        "src/napari_paser/models/paser-synth-v2.24)"
    ),
    "v2.28": (
        "v2.24's networks and policy network with f0's MC-dropout mean in closed form and a refiner trained for "
        "it, each slice's level fitted again (~10 min CPU once the data exist, --warm-start a bundle holding "
        "the refiner: scripts/train_bundled_model_v2_28.sh makes it)"
    ),
    "v2.29": (
        "v2.28's networks with the dense policy network fitted again on the closed-form mean's inputs, tied and "
        "levelled as v2.24's (--warm-start src/napari_paser/models/paser-synth-v2.28)"
    ),
    "paper": "the paper's network sizes and schedule (Adam 1e-4, batch 32, 200 epochs a stage; GPU)",
    "init": (
        "fine-tuning of the --init bundle on a few labelled slices (the default with --init; a 16-slice "
        "volume from paser-synth-v2.21: 12.6 min on one core, half of it f0's refiner)"
    ),
}


def describe_presets(width: int = 100) -> str:
    """The preset names, each with what it trains wrapped under it (``train --list-presets``)."""
    pad = max(map(len, PRESETS)) + 2
    return "\n".join(
        textwrap.fill(PRESET_NOTES[name], width, initial_indent=f"{name:<{pad}}", subsequent_indent=" " * pad,
                      break_on_hyphens=False)
        for name in PRESETS
    )


def get_preset(name: str) -> TrainConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig.from_dict(PRESETS[name].to_dict())
