"""The paper's TVD fine-tuning of the routing policy (complementary-models experiment).

The paper pre-trains the RL policy at λ = 0 (the IoU-optimal routing, whatever the
cost), then fine-tunes it with λ rising linearly while it measures the total variation
distance (TVD) between the fine-tuned policy's model-assignment distribution and the
λ = 0 policy's on validation data; fine-tuning stops once the TVD reaches a threshold τ.

Here:

* :func:`pretrain_at_zero` is :func:`~.stages.train_policy` with λ fixed at 0.
* :func:`finetune_to_tvd` continues REINFORCE (:func:`~.stages.train_policy` with a
  linear λ ramp ``lam_max * (step + 1) / steps`` on the same cached rewards, a fresh
  optimiser with a short warm-up) on a *copy* of the λ = 0 policy. After every
  ``eval_every`` steps it routes the validation features by argmax at the λ of the
  last step (the engine's rule, :func:`~napari_paser.engine.routing.route`) and
  compares the fractions of patches sent to f0 / f1 / f2 with the λ = 0 policy's at
  λ = 0: ``TVD = ½ Σ_m |p_m - q_m|``. It stops at the first evaluation with
  ``TVD >= τ`` and returns the policy with the λ it reached. The policy is
  λ-conditioned, so at inference it must be run at that λ to route as measured.
* τ = 0: the TVD is 0 before any step (the copy *is* the λ = 0 policy), so the rule
  stops at once: the 0 % model is the pre-trained policy at λ = 0, unchanged (zero
  fine-tuning steps). This is the literal reading of the paper ("once this TVD hits a
  threshold, we stop") and matches its 0 % model having the best IoU.

Everything is deterministic for a fixed ``ctx.seed``: the batches and actions come
from ``ctx.generator(stage)``, so runs for different τ with the same ramp follow the
same trajectory, and a larger τ just stops later on it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..engine.bundle import Bundle
from ..engine.models import PolicyNet
from ..engine.routing import route, route_fraction, total_variation
from .rewards import RewardCache
from .stages import StageContext, train_policy

__all__ = ["TVDResult", "linear_ramp", "assignment", "assignment_tvd", "pretrain_at_zero", "finetune_to_tvd"]


@dataclass
class TVDResult:
    """Outcome of :func:`finetune_to_tvd`.

    Attributes
    ----------
    policy : PolicyNet
        The fine-tuned policy (a copy; eval mode). Run it at ``lam``.
    tau : float
        The TVD threshold.
    lam : float
        λ of the last fine-tuning step (0 if no step was taken): the inference λ.
    steps : int
        Optimisation steps taken.
    tvd : float
        TVD on the validation features at ``lam`` against the λ = 0 reference.
    reached : bool
        ``tvd >= tau``; False if the ramp ended first.
    trace : list of dict
        ``{"step", "lam", "tvd", "changed"}`` at every evaluation (``changed``: fraction
        of validation patches whose model differs from the reference's).
    history : dict
        Loss history of the training loop (:func:`~.stages.run_loop`).
    """

    policy: PolicyNet
    tau: float
    lam: float
    steps: int
    tvd: float
    reached: bool
    trace: list[dict] = field(default_factory=list)
    history: dict = field(default_factory=dict)


def linear_ramp(lam_max: float) -> Callable[[int, int], float]:
    """λ schedule ``lam_max * (step + 1) / total`` for :func:`~.stages.train_policy`.

    Step 0 already trains at a small positive λ; the last step trains at ``lam_max``.
    """
    lam_max = float(lam_max)
    if not 0.0 <= lam_max <= 1.0:
        raise ValueError(f"lam_max must be in [0, 1], got {lam_max}")

    def schedule(step: int, total: int) -> float:
        return lam_max * (step + 1) / max(1, total)

    return schedule


@torch.no_grad()
def assignment(policy: PolicyNet, features: torch.Tensor, lam: float, costs: ArrayLike, batch: int = 256) -> np.ndarray:
    """Argmax model per patch (N, GY, GX) uint8, as the engine routes (ties to the cheaper).

    Parameters
    ----------
    policy : PolicyNet
        A :class:`~napari_paser.engine.models.PolicyNet` (put in eval mode here).
    features : Tensor (N, 5, H, W)
        Policy inputs (e.g. ``RewardCache.features``).
    lam : float
        Cost weight in [0, 1].
    costs : array_like (3,)
        ``[0, C1, C2]`` (``bundle.costs()``).
    """
    policy.eval()
    device = next(policy.parameters()).device
    gains = torch.cat([policy.gains(features[i : i + batch].to(device).float()).cpu() for i in range(0, len(features), batch)])
    return route(gains.double().numpy(), float(lam), np.asarray(costs, dtype=np.float64))


def assignment_tvd(a: np.ndarray, b: np.ndarray) -> float:
    """TVD between the model-assignment distributions (fractions sent to f0/f1/f2) of two routings."""
    return total_variation(route_fraction(a), route_fraction(b))


def pretrain_at_zero(ctx: StageContext, bundle: Bundle, caches: list[RewardCache], stage: str = "policy_lam0") -> dict:
    """Train ``bundle.policy`` by REINFORCE with λ fixed at 0 (the paper's pre-training).

    Returns the loop history of :func:`~.stages.train_policy`.
    """
    return train_policy(ctx, bundle, caches, stage, lam_schedule=lambda step, total: 0.0)


def finetune_to_tvd(
    ctx: StageContext,
    bundle: Bundle,
    caches: list[RewardCache],
    val_features: torch.Tensor,
    tau: float,
    *,
    lam_max: float = 0.1,
    steps: int = 2000,
    eval_every: int = 1,
    lr: float | None = None,
    batch: int | None = None,
    warmup: float = 0.05,
    alpha: float | None = None,
    stage: str = "policy_tvd",
) -> TVDResult:
    """Fine-tune a copy of ``bundle.policy`` (the λ = 0 policy) with a rising λ until TVD >= ``tau``.

    Parameters
    ----------
    ctx : StageContext
        Its config supplies the defaults of ``lr``, ``batch`` and ``alpha`` and the
        gain-regression weight; the fine-tuning runs ``steps`` steps at most, without
        partial checkpoints (it is short, and its stop depends on the reference).
    bundle : Bundle
        ``bundle.policy`` is the λ = 0 reference; it is not modified.
    caches : list of RewardCache
        The cached rewards the policy was pre-trained on.
    val_features : Tensor (N, 5, H, W)
        Policy inputs of the validation images.
    tau : float
        TVD threshold in [0, 1].
    lam_max : float
        λ at the end of the ramp.
    steps : int
        Length of the ramp (optimisation steps).
    eval_every : int
        Steps between TVD evaluations (also evaluated after the last step).
    lr : float, optional
        Learning rate (default ``ctx.cfg.policy_lr``): linear warm-up over the first
        ``warmup`` fraction of the ramp, then cosine decay (:func:`~.stages.run_loop`).
    batch : int, optional
        Examples per step (default ``ctx.cfg.policy_batch``). Large batches keep the
        gradient noise, which flips near-tied routings back and forth, below the effect
        of the rising λ.
    warmup : float
        Warm-up fraction of the ramp. The optimiser starts with fresh moments, and
        Adam's first full-size steps move near-tied routings at once.
    alpha : float, optional
        Probability of sampling actions from the policy rather than uniformly
        (default: the end of ``ctx.cfg.alpha``, where pre-training stopped).
    stage : str
        Stage name: seeds the batch / action generator.

    Returns
    -------
    TVDResult
    """
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if steps < 1 or eval_every < 1:
        raise ValueError("steps and eval_every must be at least 1")
    costs = bundle.costs().double().numpy()
    reference = bundle.policy
    ref_assign = assignment(reference, val_features, 0.0, costs)
    policy = copy.deepcopy(reference)
    schedule = linear_ramp(lam_max)

    def measure(done: int) -> dict:
        lam = schedule(done - 1, steps) if done > 0 else 0.0
        now = assignment(policy, val_features, lam, costs)
        return {"step": done, "lam": lam, "tvd": assignment_tvd(now, ref_assign), "changed": float(np.mean(now != ref_assign))}

    trace = [measure(0)]
    history: dict = {}
    if trace[-1]["tvd"] < tau:
        a = float(ctx.cfg.alpha[1] if alpha is None else alpha)
        cfg = ctx.cfg.replace(policy_steps=int(steps), epochs=None, warmup=float(warmup), checkpoint_every=10**12, alpha=(a, a),
                              policy_lr=float(ctx.cfg.policy_lr if lr is None else lr),
                              policy_batch=int(ctx.cfg.policy_batch if batch is None else batch))
        fctx = dataclasses.replace(ctx, cfg=cfg)

        def stop(done: int) -> bool:
            if done % eval_every and done < steps:
                return False
            trace.append(measure(done))
            return trace[-1]["tvd"] >= tau

        history = train_policy(fctx, bundle, caches, stage, lam_schedule=schedule, policy=policy, stop=stop)
    policy.eval()
    last = trace[-1]
    ctx.log(f"[{stage}] τ = {tau:g}: {last['step']} steps, λ = {last['lam']:.5g}, validation TVD = {last['tvd']:.4f}")
    return TVDResult(policy=policy, tau=tau, lam=float(last["lam"]), steps=int(last["step"]), tvd=float(last["tvd"]),
                     reached=bool(last["tvd"] >= tau), trace=trace, history=history)
