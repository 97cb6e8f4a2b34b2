"""The four stages of PaSeR training (Algorithm 1 of the paper), resumable.

1. :func:`pretrain_patch_model`: f2 and f1 on random augmented patches, weighted CE.
2. :func:`pretrain_f0`: f0 on whole patch grids, ``(1-β)·CE + β·MSE`` to f2's
   stitched patch logits; then :func:`train_f0_refiner`, f0's refiner (if it has one)
   on its frozen MC-dropout mean, CE (not in the paper).
3. :func:`train_policy`: REINFORCE over a reward table cached once with frozen models,
   λ drawn per example so one policy serves every λ (or λ given by a schedule, e.g.
   fixed at 0 or a linear ramp: see :mod:`.tvd_finetune`).
4. :func:`finetune_joint`: alternate CE steps of f1/f2 on the patches the sampled
   actions send to them with REINFORCE steps of the policy.

Every stage runs a fixed number of optimiser steps through :func:`run_loop`, which
shows a progress bar, keeps a short loss history, and saves its progress every
``checkpoint_every`` steps so an interrupted stage continues where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.bundle import Bundle
from ..engine.models import PolicyNet, UNet, centre_planes, set_memory_format_
from ..engine.patches import grid_shape, patch_windows, patchify, unpatchify
from ..engine.precision import bf16_autocast
from ..engine.uncertainty import analyse_slices, mc_predict, slice_seed
from .augment import AugmentConfig, geometric, intensity
from .checkpoint import Checkpointer
from .datasets import IGNORE, SliceBank
from .dense_policy import calibrate_residual_prior, fit_dense_policy, fit_slice_level, holdout_correlation, tie_f2_gains
from .linear_policy import fit_linear_policy
from .presets import TrainConfig
from .rewards import (
    RewardCache,
    build_reward_cache,
    iou_from_confusion,
    patch_confusion,
    reinforce_loss,
    sample_actions,
    sample_lambda,
)

__all__ = [
    "StageContext",
    "run_loop",
    "pretrain_patch_model",
    "pretrain_f0",
    "cache_rewards",
    "train_policy",
    "finetune_joint",
]


@dataclass
class StageContext:
    """What every stage needs besides its data.

    Attributes
    ----------
    cfg : TrainConfig
    device : torch.device
    ckpt : Checkpointer
    seed : int
        Base seed; each stage derives its own generator from it.
    log : callable
        Prints one line (the stage's short log).
    progress : bool
        Show tqdm progress bars.
    class_weights : Tensor, optional
        Cross-entropy weights per class (None: unweighted).
    """

    cfg: TrainConfig
    device: torch.device
    ckpt: Checkpointer
    seed: int = 0
    log: Callable[[str], None] = print
    progress: bool = True
    class_weights: torch.Tensor | None = None

    def generator(self, stage: str) -> torch.Generator:
        """A CPU generator seeded from the run seed and the stage name (stable)."""
        g = torch.Generator()
        g.manual_seed((self.seed * 7919 + sum(ord(c) * 31**i for i, c in enumerate(stage))) % (2**63 - 1))
        return g

    def autocast(self, enabled: bool | None = None) -> contextlib.AbstractContextManager:
        """bf16 autocast where configured and where the device computes bf16 natively
        (:func:`~napari_paser.engine.precision.bf16_autocast`)."""
        return bf16_autocast(self.device.type, self.cfg.bf16 if enabled is None else enabled)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device (channels_last where configured)."""
        x = x.to(self.device, non_blocking=True)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def steps(self, configured: int, items: int, batch: int) -> int:
        """Configured steps, or ``epochs`` passes over ``items`` in batches of ``batch``."""
        if self.cfg.epochs is None:
            return int(configured)
        return max(1, int(self.cfg.epochs) * math.ceil(items / batch))


def _lr_at(base: float, step: int, total: int, warmup: float) -> float:
    """Linear warm-up then cosine decay to 5 % of ``base`` (stateless, so resumable)."""
    w = max(1, int(round(warmup * total)))
    if step < w:
        return base * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def run_loop(
    ctx: StageContext,
    stage: str,
    total: int,
    modules: dict[str, Any],
    optimizers: dict[str, tuple[torch.optim.Optimizer, float]],
    step_fn: Callable[[int], dict[str, float]],
    g: torch.Generator,
    stop: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    """Run ``step_fn(step)`` for steps ``0..total-1``, resuming from a partial checkpoint.

    Parameters
    ----------
    modules : dict
        name -> anything with ``state_dict`` / ``load_state_dict`` (networks, trackers),
        saved in the partial checkpoints.
    optimizers : dict
        name -> (optimiser, base learning rate); the schedule is set before each step.
    step_fn : callable
        Does one optimisation step and returns scalar statistics (``loss`` first).
    stop : callable, optional
        ``stop(steps_done)`` is called after every step; if it returns True the loop
        ends there (early stopping; no partial checkpoint is written for that step).

    Returns
    -------
    dict
        ``{"step": [...], stat: [...]}``: running means at about 60 points.
    """
    from tqdm.auto import tqdm

    history: dict[str, list] = {"step": []}
    start = 0
    spent_before = 0.0  # seconds earlier runs spent in this loop (kept in the partial checkpoint)
    t_loop = time.perf_counter()
    partial = ctx.ckpt.load_partial(stage)
    if partial is not None:
        for k, m in modules.items():
            m.load_state_dict(partial["models"][k])
        for k, (opt, _) in optimizers.items():
            opt.load_state_dict(partial["optimizers"][k])
        g.set_state(partial["generator"])
        torch.set_rng_state(partial["torch_rng"])
        history = partial["history"]
        start = int(partial["step"])
        spent_before = float(partial.get("seconds", 0.0))
        ctx.ckpt.resumed_seconds[stage] = spent_before
        ctx.log(f"[{stage}] resuming at step {start}/{total}")
    every = max(1, total // 60)
    sums: dict[str, float] = {}
    count = 0
    bar = tqdm(range(start, total), initial=start, total=total, desc=stage, disable=not ctx.progress, mininterval=2.0, leave=False)
    for step in bar:
        for opt, base in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = _lr_at(base, step, total, ctx.cfg.warmup)
        stats = step_fn(step)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
        stopping = stop is not None and bool(stop(step + 1))
        if (step + 1) % every == 0 or step + 1 == total or stopping:
            history["step"].append(step + 1)
            for k, v in sums.items():
                history.setdefault(k, []).append(round(v / count, 5))
            bar.set_postfix({k: f"{v / count:.4f}" for k, v in list(sums.items())[:3]})
            sums, count = {}, 0
        if stopping:
            break
        if (step + 1) % ctx.cfg.checkpoint_every == 0 and step + 1 < total:
            ctx.ckpt.save_partial(
                stage,
                {
                    "step": step + 1,
                    "models": {k: m.state_dict() for k, m in modules.items()},
                    "optimizers": {k: opt.state_dict() for k, (opt, _) in optimizers.items()},
                    "generator": g.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "seconds": spent_before + time.perf_counter() - t_loop,
                },
            )
    bar.close()
    return history


def labelled_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy over the labelled pixels: 255 (unlabelled, sparse labels) is ignored.

    Equal to ``F.cross_entropy(logits, target, weight=weight)`` when every pixel is
    labelled; a batch without any labelled pixel gives a zero loss (not NaN).
    """
    if not bool((target != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)


def patch_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-patch :func:`labelled_cross_entropy`: (N,) for logits (N, K, rows, columns).

    A patch without labelled pixels gets 0.
    """
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE, reduction="none")
    labelled = target != IGNORE
    pixel_weight = labelled.float() if weight is None else weight[target.clamp(0, len(weight) - 1)] * labelled
    return ce.sum((1, 2)) / pixel_weight.sum((1, 2)).clamp_min(1e-8)


def focus_weights(teacher: UNet, x: torch.Tensor, target: torch.Tensor, power: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weights (N,) of a batch of patches, mean 1: ``teacher``'s cross entropy on each to ``power``.

    ``teacher`` is in eval mode; ``x`` holds the patches as the trained model reads them,
    the teacher reads their centre planes.
    """
    with torch.no_grad():
        ce = patch_cross_entropy(teacher(centre_planes(x, teacher.config.planes)).float(), target, weight)
    w = ce.clamp_min(1e-6) ** power
    return w / w.mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of KL(teacher ‖ student) between the two softmaxes (temperature 1).

    Soft targets carry what a trained model knows about where a boundary lies between two
    pixels, which a network of a new shape would otherwise learn from the hard labels
    alone. Every pixel counts, labelled or not.
    """
    log_student = F.log_softmax(student_logits.float(), dim=1)
    log_teacher = F.log_softmax(teacher_logits.float(), dim=1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(1).mean()


def _adam(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def _summary(stage: str, history: dict) -> str:
    # Per-step curves only (the policy's early stopping adds (step, error) pairs).
    keys = [k for k, v in history.items() if k != "step" and isinstance(v, list) and len(v) == len(history["step"])]
    if not history["step"]:
        return f"[{stage}] no steps"
    parts = [f"{k} {history[k][0]:.4f} -> {history[k][-1]:.4f}" for k in keys[:3]]
    return f"[{stage}] {history['step'][-1]} steps: " + ", ".join(parts)


# --------------------------------------------------------------------------- stage 1


def pretrain_patch_model(
    ctx: StageContext, model: UNet, stage: str, bank: SliceBank, steps: int, lr: float,
    *, focus_on: UNet | None = None, focus: float = 0.0, teacher: UNet | None = None, distill: float = 0.0,
) -> dict:
    """Stage 1: train a patch model (f1 or f2) with class-weighted cross entropy.

    Patches are random crops at any position of augmented slices (more variety than the
    fixed grid); impulse noise is included, as for the paper's noise experiment where
    f1/f2 (not f0 or the policy) saw noisy data. With ``focus`` > 0 every patch's loss
    is weighted by the cross entropy of ``focus_on`` (a frozen model with the same halo)
    on it to that power (:func:`focus_weights`). With ``distill`` > 0 the loss is
    ``(1 - distill) · CE + distill · KL(teacher ‖ model)`` (:func:`distillation_loss`):
    ``teacher`` is a frozen model with the same halo, for example the network of another
    shape that this one replaces.
    """
    cfg = ctx.cfg
    g = ctx.generator(stage)
    total = ctx.steps(steps, len(bank) * _patches_per_slice(bank), cfg.patch_batch)
    model.to(ctx.device)
    if cfg.channels_last:
        set_memory_format_(model, torch.channels_last)
    opt = _adam(model, lr, cfg.weight_decay)
    weight = None if ctx.class_weights is None else ctx.class_weights.to(ctx.device)
    if focus > 0:
        if focus_on is None or focus_on.config.halo != model.config.halo:
            raise ValueError("focus needs a model to focus on with the same halo as the trained one")
        focus_on.to(ctx.device).eval()
    if not 0.0 <= distill <= 1.0:
        raise ValueError(f"distill is the weight of the teacher's soft targets, between 0 and 1; got {distill}")
    if distill > 0:
        if teacher is None or teacher.config.halo != model.config.halo:
            raise ValueError("distill needs a teacher with the same halo as the trained model")
        teacher.to(ctx.device).eval()

    def step_fn(step: int) -> dict[str, float]:
        model.train()
        x, y = bank.sample_patches(cfg.patch_batch, cfg.augment, g, impulse=True, halo=model.config.halo)
        x, y = ctx.prepare(centre_planes(x, model.config.planes)), y.to(ctx.device)
        with ctx.autocast():
            out = model(x)
            w = focus_weights(focus_on, x, y, focus, weight) if focus_on is not None and focus > 0 else None
        loss = labelled_cross_entropy(out.float(), y, weight) if w is None else (w * patch_cross_entropy(out.float(), y, weight)).mean()
        if teacher is not None and distill > 0:
            with torch.no_grad(), ctx.autocast():
                soft = teacher(centre_planes(x, teacher.config.planes))
            loss = (1.0 - distill) * loss + distill * distillation_loss(out, soft)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = (out.detach().argmax(1) == y).float().mean()
        return {"loss": float(loss.detach()), "acc": float(acc)}

    history = run_loop(ctx, stage, total, {"model": model}, {"opt": (opt, lr)}, step_fn, g)
    set_memory_format_(model, torch.contiguous_format)
    model.eval()
    ctx.log(_summary(stage, history))
    return history


def _patches_per_slice(bank: SliceBank) -> int:
    gy, gx = grid_shape(bank.images[0].shape[-2:], bank.patch_size)
    return gy * gx


# --------------------------------------------------------------------------- stage 2


def pretrain_f0(ctx: StageContext, bundle: Bundle, bank: SliceBank, stage: str = "pretrain_f0") -> dict:
    """Stage 2: f0 on whole patch grids, ``(1-β)·CE + β·MSE(f0 logits, f2 stitched logits)``.

    f2 is frozen; its logits are computed patch by patch (as at inference) and
    stitched. Dropout is active while training, as always for MC-dropout networks.
    """
    cfg = ctx.cfg
    g = ctx.generator(stage)
    f0, f2 = bundle.f0.to(ctx.device), bundle.f2.to(ctx.device).eval()
    if cfg.channels_last:
        set_memory_format_(f2, torch.channels_last)
    total = ctx.steps(cfg.f0_steps, len(bank), cfg.f0_batch)
    opt = _adam(f0, cfg.f0_lr, cfg.weight_decay)
    weight = None if ctx.class_weights is None else ctx.class_weights.to(ctx.device)
    # f0 and the policy never see impulse noise (the paper's noise experiment).
    aug = AugmentConfig(**{**cfg.augment.to_dict(), "impulse": 0.0})
    ps = bundle.patch_size

    def step_fn(step: int) -> dict[str, float]:
        x, y = bank.sample_slices(cfg.f0_batch, aug, g)
        x, y = x.to(ctx.device), y.to(ctx.device)
        stats = {}
        if cfg.beta > 0:
            with torch.no_grad(), ctx.autocast():
                grid = grid_shape(x.shape[-2:], ps)
                windows = patch_windows(centre_planes(x, f2.config.planes), ps, f2.config.halo)
                target = unpatchify(f2(ctx.prepare(windows)).float(), grid)
        f0.train()
        out = f0(centre_planes(x, f0.config.planes))
        ce = labelled_cross_entropy(out, y, weight)
        loss = ce
        if cfg.beta > 0:
            mse = F.mse_loss(out, target)
            loss = (1 - cfg.beta) * ce + cfg.beta * mse
            stats["mse"] = float(mse.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), **stats}

    history = run_loop(ctx, stage, total, {"f0": f0}, {"opt": (opt, cfg.f0_lr)}, step_fn, g)
    set_memory_format_(f2, torch.contiguous_format)
    f0.eval()
    ctx.log(_summary(stage, history))
    return history


def train_f0_refiner(ctx: StageContext, bundle: Bundle, bank: SliceBank, stage: str = "refine_f0") -> dict:
    """Stage 2b: f0's refiner (:class:`~napari_paser.engine.models.Refiner`) with f0 frozen.

    Each step runs f0's MC-dropout analysis on a batch of whole augmented slices, as at
    inference, and fits the refiner by cross entropy of the refined prediction. Nothing
    to do (an empty history) when f0 has no refiner or ``refine_steps`` is 0.
    """
    cfg = ctx.cfg
    f0 = bundle.f0.to(ctx.device)
    refiner = f0.refiner
    if refiner is None or cfg.refine_steps <= 0:
        return {}
    g = ctx.generator(stage)
    total = ctx.steps(cfg.refine_steps, len(bank), cfg.refine_batch)
    opt = _adam(refiner, cfg.refine_lr, 0.0)
    aug = AugmentConfig(**{**cfg.augment.to_dict(), "impulse": 0.0})  # as f0's own stage

    def step_fn(step: int) -> dict[str, float]:
        x, y = bank.sample_slices(cfg.refine_batch, aug, g)
        x, y = x.to(ctx.device), y.to(ctx.device)
        x0 = centre_planes(x, f0.config.planes)
        f0.eval()
        with torch.no_grad():
            prob = mc_predict(f0, x0, cfg.mc_passes, seed=slice_seed(ctx.seed + 2, step))[0]
        refiner.train()
        loss = labelled_cross_entropy(refiner(centre_planes(x, refiner.planes), prob), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    history = run_loop(ctx, stage, total, {"f0": f0}, {"opt": (opt, cfg.refine_lr)}, step_fn, g)
    f0.eval()
    ctx.log(_summary(stage, history))
    return history


# --------------------------------------------------------------------------- stage 3


def reward_copies(ctx: StageContext, bank: SliceBank, copies: int, *, stage: str = "rewards") -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """The slices :func:`cache_rewards` scores, one copy of a group of ``bank`` (slices of
    equal padded size) at a time: ``(group, images, labels)``, ``copies`` per group, drawn
    from the stage's generator, so that a probe replays the exact slices of a run's
    reward caches. One copy at a time, so memory holds one augmented copy, not all.

    Copy 0 is the slice as is; the others are augmented (flips, rotation where square,
    contrast, offset, blur, noise; never impulse noise). Labels outside each slice are
    ignored (``IGNORE``).
    """
    g = ctx.generator(stage)
    aug = AugmentConfig(**{**ctx.cfg.augment.to_dict(), "impulse": 0.0})
    for number, group in enumerate(bank.groups()):
        x, _ = bank.stacked(group)
        y_eval = bank.stacked_eval_labels(group)
        yield number, x, y_eval
        for _ in range(1, max(1, copies)):
            xk, yk = geometric(x, y_eval, aug, g)
            yield number, intensity(xk, aug, g), yk


def cache_rewards(ctx: StageContext, bundle: Bundle, bank: SliceBank, copies: int, *, stage: str = "rewards") -> list[RewardCache]:
    """Per-patch IoU of f0, f1, f2 on ``copies`` versions of every slice of ``bank``.

    Copy 0 is the slice as is; the others are augmented (:func:`reward_copies`), so the
    policy sees more variety than the RL split holds. One cache per slice size.
    """
    bundle.to(ctx.device).eval()
    groups: dict[int, list[RewardCache]] = {}
    index = 0
    for number, xk, yk in reward_copies(ctx, bank, copies, stage=stage):
        part = build_reward_cache(bundle, xk.to(ctx.device), yk.to(ctx.device), mc_passes=ctx.cfg.mc_passes, seed=ctx.seed, first_index=index)
        groups.setdefault(number, []).append(part)
        index += len(xk)
    caches = []
    for parts in groups.values():
        cells = None if parts[0].cells is None else torch.cat([cast(torch.Tensor, p.cells) for p in parts])  # all or none have cells
        caches.append(RewardCache(torch.cat([p.features for p in parts]), torch.cat([p.conf for p in parts]), cells))
    return caches


class _HoldoutTracker:
    """Early stopping of the policy's regression on held-out volumes.

    Measures the mean squared error of the standardised gains on ``caches`` every
    ``every`` steps and keeps a copy of the weights with the lowest. It has a state dict
    like a module, so :func:`run_loop` saves it in its partial checkpoints and a resumed
    fit still ends with the best weights of the whole run.
    """

    def __init__(self, policy: PolicyNet, caches: list[RewardCache], reward: str, mean: torch.Tensor, spread: torch.Tensor, every: int):
        self.policy, self.every = policy, max(1, int(every))
        dev = mean.device
        self.data = [(c.features, ((c.gain_target(reward).to(dev) - mean) / spread)) for c in caches]
        self.best_error, self.best_step = float("inf"), 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.errors: list[list[float]] = []

    @torch.no_grad()
    def error(self) -> float:
        was_training = self.policy.training
        self.policy.eval()
        dev = next(self.policy.parameters()).device
        total, count = 0.0, 0
        for feats, target in self.data:
            for i in range(0, len(feats), 64):
                diff = self.policy.gains(feats[i : i + 64].to(dev).float()) - target[i : i + 64]
                total += float(diff.pow(2).sum())
                count += diff.numel()
        self.policy.train(was_training)
        return total / max(1, count)

    def after_step(self, step: int) -> None:
        if step % self.every:
            return
        err = self.error()
        self.errors.append([step, round(err, 5)])
        if err < self.best_error:
            self.best_error, self.best_step = err, step
            self.best_state = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def state_dict(self) -> dict:
        return {"best_error": self.best_error, "best_step": self.best_step, "best_state": self.best_state, "errors": self.errors}

    def load_state_dict(self, state: dict) -> None:
        self.best_error, self.best_step = float(state["best_error"]), int(state["best_step"])
        self.best_state, self.errors = state["best_state"], [list(e) for e in state["errors"]]

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.policy.load_state_dict(self.best_state)


def _alpha(schedule: tuple[float, float], step: int, total: int) -> float:
    a, b = schedule
    return a + (b - a) * step / max(1, total - 1)


def train_policy(
    ctx: StageContext,
    bundle: Bundle,
    caches: list[RewardCache],
    stage: str = "policy",
    *,
    lam_schedule: Callable[[int, int], float] | None = None,
    policy: PolicyNet | None = None,
    stop: Callable[[int], bool] | None = None,
    holdout: list[RewardCache] | None = None,
) -> dict:
    """Stage 3: train the λ-conditioned policy over cached rewards.

    ``cfg.policy_objective == "regression"``: the policy's predicted gains are fitted
    to the cached gains by mean squared error. The cache holds every model's gain on
    every patch, so nothing has to be explored, and the router that is best for every λ
    at once is the one whose gains are closest to the truth. ``"reinforce"`` (the paper's):
    each example draws its own λ (``u**lam_power``), actions follow the policy with
    probability α (rising 0.7 → 0.95) and are uniform otherwise; the loss has the
    expected-reward baseline and gain regression of :func:`reinforce_loss`. ``"linear"``:
    a ridge regression of the gains on the patch means of the policy's inputs, in
    closed form, written into its linear skip (:mod:`.linear_policy`); the penalty is
    chosen on ``holdout``. ``"dense"``: a policy with a dense head is fitted to the gains
    of the cells of its pooled grid (:mod:`.dense_policy`; ``policy_steps``,
    ``policy_batch``, ``policy_lr``, early stopping on ``holdout`` every
    ``policy_eval_every`` steps).

    Parameters
    ----------
    lam_schedule : callable, optional
        ``lam_schedule(step, total)`` -> λ used for the whole batch of that step
        (e.g. ``lambda step, total: 0.0`` to pre-train at λ = 0, or a linear ramp).
        None (default): λ drawn per example as above.
    policy : PolicyNet, optional
        The policy to train (default ``bundle.policy``), e.g. a copy being fine-tuned;
        the costs are still ``bundle.costs()``.
    stop : callable, optional
        Early stopping, passed to :func:`run_loop`.
    holdout : list of RewardCache, optional
        Regression: caches of volumes the fit does not see. Every
        ``cfg.policy_eval_every`` steps the error on them is measured, and the policy
        ends with the weights that had the lowest (early stopping: a regression over
        a few volumes memorises them within a few hundred steps). Linear: they choose
        the ridge penalty. Dense: the weights with the best correlation on them are kept.
    """
    cfg = ctx.cfg
    g = ctx.generator(stage)
    policy = (bundle.policy if policy is None else policy).to(ctx.device)
    if cfg.policy_objective not in ("reinforce", "regression", "linear", "dense"):
        raise ValueError(f"unknown policy objective {cfg.policy_objective!r}; choose 'reinforce', 'regression', 'linear' or 'dense'")
    dense_only = [name for name in ("policy_tie_f2", "policy_slice_level") if getattr(cfg, name)]
    if dense_only and cfg.policy_objective != "dense":
        raise ValueError(f"only a dense policy takes {', '.join(dense_only)}: set policy_objective='dense'")
    if cfg.policy_keep_network:  # the warm-started network (its tie too): only the slice level is fitted
        if cfg.policy_objective != "dense" or not cfg.policy_slice_level:
            raise ValueError("policy_keep_network fits only the slice level of a warm-started dense policy: "
                             "set policy_objective='dense' and policy_slice_level")
        kept: dict = {"kept_network": True, "slice_level": fit_slice_level(policy, caches, holdout, quantile=cfg.policy_slice_level_quantile)}
        ctx.log(f"[{stage}] warm-started network kept; each slice's level from its refiner KL: {kept['slice_level']}")
        return kept
    if cfg.policy_objective == "dense":  # its own loop over the cells' gains
        history = fit_dense_policy(policy, caches, holdout, steps=ctx.steps(cfg.policy_steps, sum(len(c) for c in caches), cfg.policy_batch), batch=cfg.policy_batch,
                                   lr=cfg.policy_lr, weight_decay=cfg.weight_decay, eval_every=cfg.policy_eval_every,
                                   seed=ctx.seed, log=lambda line: ctx.log(f"[{stage}] {line}"))
        ctx.log(f"[{stage}] dense head, best step {history['best_step']}; r with the true gains (f1, f2): "
                f"fit {history['corr_fit']}, held out {history.get('corr_holdout', 'none')}")
        if policy.config.image_residual:
            history["residual_prior"] = calibrate_residual_prior(policy, caches)
            if holdout:
                history["corr_holdout_with_residual"] = [round(v, 4) for v in holdout_correlation(policy, holdout)]
            ctx.log(f"[{stage}] image residual prior {history['residual_prior']}; held-out r with it "
                    f"{history.get('corr_holdout_with_residual', 'none')}")
        if cfg.policy_tie_f2:
            history["tie_f2"] = tie_f2_gains(policy, caches, holdout or [])
            history["corr_holdout_tied"] = history["tie_f2"]["corr_holdout"]
            ctx.log(f"[{stage}] f2's gains tied to f1's: {history['tie_f2']}; held-out r {history['corr_holdout_tied']}")
        if cfg.policy_slice_level:
            history["slice_level"] = fit_slice_level(policy, caches, holdout, quantile=cfg.policy_slice_level_quantile)
            ctx.log(f"[{stage}] each slice's level from its refiner KL: {history['slice_level']}")
        return history
    if cfg.policy_objective == "linear":  # closed form: no steps, so none of the loop's set-up below
        history = fit_linear_policy(policy, caches, cfg.reward, holdout)
        ctx.log(f"[{stage}] ridge on the patch means, penalty {history['penalty']:g}; r with the true gains (f1, f2): "
                f"fit {history['corr_fit']}, held out {history.get('corr_holdout', 'none')}")
        return history
    costs = bundle.costs().to(ctx.device)
    sizes = torch.tensor([len(c) for c in caches], dtype=torch.float)
    deltas = [c.gain_target(cfg.reward) for c in caches]
    total = ctx.steps(cfg.policy_steps, int(sizes.sum()), cfg.policy_batch)
    regression = cfg.policy_objective == "regression"
    if regression:  # gains standardised per model, so f1's and f2's weigh alike
        flat = torch.cat([d.transpose(0, 1).reshape(d.shape[1], -1) for d in deltas], 1)
        spread = flat.std(1).clamp_min(1e-6).view(1, -1, 1, 1).to(ctx.device)
        mean = flat.mean(1).view(1, -1, 1, 1).to(ctx.device)
    opt = _adam(policy, cfg.policy_lr, cfg.weight_decay if regression else 0.0)
    tracker = _HoldoutTracker(policy, holdout, cfg.reward, mean, spread, cfg.policy_eval_every) if regression and holdout else None

    def step_fn(step: int) -> dict[str, float]:
        policy.train()
        ci = int(torch.multinomial(sizes, 1, generator=g))
        n = len(caches[ci])
        idx = torch.randint(0, n, (min(cfg.policy_batch, n),), generator=g)
        feats = caches[ci].features[idx].to(ctx.device).float()
        delta = deltas[ci][idx].to(ctx.device)
        if regression:
            error = (policy.gains(feats) - (delta - mean) / spread).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            error.backward()
            opt.step()
            if tracker is not None:
                tracker.after_step(step + 1)
            return {"loss": float(error.detach())}
        if lam_schedule is None:
            lam = sample_lambda(len(idx), g, cfg.lam_power).to(ctx.device)
        else:
            lam = torch.full((len(idx),), float(lam_schedule(step, total)), device=ctx.device)
        gains = policy.gains(feats)
        logits = policy.logits(gains, lam, costs)
        actions = sample_actions(logits, _alpha(cfg.alpha, step, total), g).to(ctx.device)
        loss, stats = reinforce_loss(gains, logits, actions, delta, lam, costs, aux_weight=cfg.aux_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), **stats}

    tracked = {"policy": policy} if tracker is None else {"policy": policy, "holdout": tracker}
    history = run_loop(ctx, stage, total, tracked, {"opt": (opt, cfg.policy_lr)}, step_fn, g, stop=stop)
    if tracker is not None:
        tracker.restore_best()
        history["holdout_error"] = tracker.errors
        history["best_step"] = tracker.best_step
        ctx.log(f"[{stage}] held-out error lowest at step {tracker.best_step} of {total}: {tracker.best_error:.4f}")
    if regression:
        policy.rescale_gains_(spread.flatten(), mean.flatten())
    policy.eval()
    ctx.log(_summary(stage, history))
    return history


# --------------------------------------------------------------------------- stage 4


def finetune_joint(ctx: StageContext, bundle: Bundle, bank: SliceBank, stage: str = "finetune") -> dict:
    """Stage 4: alternate CE steps of f1/f2 on their routed patches and policy steps.

    Per batch: f0 (frozen) analyses the slices with MC dropout, the policy routes
    every patch for a λ drawn per slice (α rising 0.95 → 1.0), f1 and f2 each take a CE
    step on the patches sent to them (at most ``ft_max_patches``), and the IoU of their
    predictions in that same forward pass gives the rewards of the policy step. Batch
    norm of f1/f2 stays in eval mode: routed batches are small and biased to hard
    patches, and their statistics would corrupt the running ones.
    """
    cfg = ctx.cfg
    g = ctx.generator(stage)
    ps = bundle.patch_size
    f0, f1, f2 = (m.to(ctx.device) for m in (bundle.f0, bundle.f1, bundle.f2))
    policy = bundle.policy.to(ctx.device)
    f0.eval()
    costs = bundle.costs().to(ctx.device)
    total = ctx.steps(cfg.ft_steps, len(bank), cfg.ft_batch)
    opts = {
        "f1": (_adam(f1, cfg.ft_lr, cfg.weight_decay), cfg.ft_lr),
        "f2": (_adam(f2, cfg.ft_lr, cfg.weight_decay), cfg.ft_lr),
        "policy": (_adam(policy, cfg.ft_policy_lr, 0.0), cfg.ft_policy_lr),
    }
    weight = None if ctx.class_weights is None else ctx.class_weights.to(ctx.device)
    aug = AugmentConfig(**{**cfg.augment.to_dict(), "impulse": 0.0})
    models = {"f1": f1, "f2": f2}

    def step_fn(step: int) -> dict[str, float]:
        x, y = bank.sample_slices(cfg.ft_batch, aug, g)
        x, y = x.to(ctx.device), y.to(ctx.device)
        b = x.shape[0]
        grid = grid_shape(x.shape[-2:], ps)
        with torch.no_grad():
            x0 = centre_planes(x, f0.config.planes)
            pr = [analyse_slices(f0, policy.config, x0[i : i + 1], cfg.mc_passes, slice_seed(ctx.seed + 1, step * b + i)) for i in range(b)]
            prob, feats = torch.cat([p[0] for p in pr]), torch.cat([p[2] for p in pr])
            iou0 = iou_from_confusion(patch_confusion(prob.argmax(1), y, ps))  # (B, GY, GX)
        lam = sample_lambda(b, g, cfg.lam_power).to(ctx.device)
        policy.train()
        gains = policy.gains(feats)
        logits = policy.logits(gains, lam, costs)
        actions = sample_actions(logits, _alpha(cfg.ft_alpha, step, total), g).to(ctx.device)
        px = {m: patch_windows(centre_planes(x, models[m].config.planes), ps, models[m].config.halo) for m in models}
        py = patchify(y.unsqueeze(1).float(), ps)[:, 0].long()
        flat = actions.reshape(-1)
        delta = torch.zeros(b, 2, *grid, device=ctx.device)
        known = torch.zeros(b, 2, *grid, dtype=torch.bool, device=ctx.device)
        stats: dict[str, float] = {}
        for m, name in ((1, "f1"), (2, "f2")):
            sel = torch.nonzero(flat == m).view(-1)
            if len(sel) == 0:
                continue
            if len(sel) > cfg.ft_max_patches:
                sel = sel[torch.randperm(len(sel), generator=g)[: cfg.ft_max_patches].to(sel.device)]
            model = models[name]
            model.eval()  # batch norm frozen (see docstring); no dropout in f1/f2
            with ctx.autocast():
                out = model(ctx.prepare(px[name][sel]))
            ce = labelled_cross_entropy(out.float(), py[sel], weight)
            opt = opts[name][0]
            opt.zero_grad(set_to_none=True)
            ce.backward()
            opt.step()
            stats[f"ce_{name}"] = float(ce.detach())
            with torch.no_grad():
                conf = patch_confusion(out.detach().argmax(1), py[sel], ps)[:, 0, 0]
                iou = iou_from_confusion(conf)
            bi, rem = sel // (grid[0] * grid[1]), sel % (grid[0] * grid[1])
            yi, xi = rem // grid[1], rem % grid[1]
            delta[bi, m - 1, yi, xi] = iou - iou0[bi, yi, xi]
            known[bi, m - 1, yi, xi] = True
        loss, pstats = reinforce_loss(gains, logits, actions, delta, lam, costs, known=known, aux_weight=cfg.aux_weight)
        popt = opts["policy"][0]
        popt.zero_grad(set_to_none=True)
        loss.backward()
        popt.step()
        return {"loss": float(loss.detach()), **stats, **pstats}

    modules = {"f1": f1, "f2": f2, "policy": policy}
    history = run_loop(ctx, stage, total, modules, opts, step_fn, g)
    for m in modules.values():
        m.eval()
    ctx.log(_summary(stage, history))
    return history
