"""A routing policy fitted on the gains of cells: the dense head of ``PolicyNet``.

A patch-level policy sees one target per patch: its gain over f0 if it went to f1 or f2.
Fitted on a few dozen volumes it memorises them (``benchmarks/probe_results.md``). The
gain of a patch is a sum over its pixels, though (:func:`~napari_paser.engine.metrics.
dataset_iou_weights`), so every cell of the policy's pooled grid has a gain of its
own, and a patch's gain is the mean of its cells'. A small convolutional network that
predicts the gains of cells from f0's probabilities and entropy (and the image's local
mean and spread) gets 224 targets per patch and learns where a bigger network fixes f0's pixels, not which patches of its
volumes did.
"""

from __future__ import annotations

from typing import Callable, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.models import PolicyNet, check_level_quantile
from .rewards import RewardCache

N_CLASS_INPUTS = 3  # the policy's first inputs: f0's mean class probabilities (uncertainty.policy_features)


def _device(policy: nn.Module) -> torch.device:
    return next(policy.parameters()).device


def _batches(policy: PolicyNet, features: torch.Tensor, batch: int = 64):
    """Cached features (host memory) in float batches on the policy's device."""
    dev = _device(policy)
    for i in range(0, len(features), batch):
        yield features[i : i + batch].to(dev).float()


def _patch_gains(policy: PolicyNet, features: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The policy's patch gains of cached features, computed where it runs, in host memory."""
    return torch.cat([policy.gains(x).cpu() for x in _batches(policy, features, batch)])


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def jitter_inputs(features: torch.Tensor, spread: float, generator: torch.Generator) -> torch.Tensor:
    """``features`` (B, C, H, W) with every channel after f0's class probabilities scaled
    by a random factor ``exp(spread * N(0, 1))`` per slice and channel."""
    factor = (spread * torch.randn(features.shape[0], features.shape[1] - N_CLASS_INPUTS, 1, 1, generator=generator)).exp()
    return torch.cat([features[:, :N_CLASS_INPUTS], features[:, N_CLASS_INPUTS:] * factor.to(features)], 1)


def _batch_pearson(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Differentiable Pearson r per model (channel) of ``pred`` with ``true`` (B, M, GY, GX)
    over the batch's patches."""
    a = pred.transpose(0, 1).reshape(pred.shape[1], -1)
    b = true.transpose(0, 1).reshape(true.shape[1], -1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-9)


@torch.no_grad()
def holdout_correlation(policy: PolicyNet, caches: Sequence[RewardCache], within_slices: bool = False) -> list[float]:
    """Pearson r of the predicted with the true patch gains of f1 and f2 over ``caches``
    (each cache's gains at its own f0 totals, as :meth:`RewardCache.dataset_gain`);
    ``within_slices``: of both less their mean over each slice (the ranking within slices)."""
    policy.eval()
    pred = torch.cat([_patch_gains(policy, c.features) for c in caches])
    true = torch.cat([c.dataset_gain() for c in caches])
    if within_slices:
        pred, true = pred - pred.mean((2, 3), keepdim=True), true - true.mean((2, 3), keepdim=True)
    return [_pearson(pred[:, k], true[:, k]) for k in range(true.shape[1])]


@torch.no_grad()
def _set_input_scale(policy: PolicyNet, caches: Sequence[RewardCache]) -> None:
    """The dense head's batch norm becomes a fixed standardisation of its inputs."""
    k = policy.config.dense_inputs
    x = torch.cat([policy._grid_inputs(f)[:, :k] for c in caches for f in _batches(policy, c.features, 256)])
    norm = cast(nn.BatchNorm2d, policy.dense[0])
    cast(torch.Tensor, norm.running_mean).copy_(x.mean((0, 2, 3)))
    cast(torch.Tensor, norm.running_var).copy_(x.var((0, 2, 3)).clamp_min(1e-8))
    norm.weight.fill_(1.0)
    norm.bias.zero_()
    norm.weight.requires_grad_(False)
    norm.bias.requires_grad_(False)


def _cell_targets(caches: Sequence[RewardCache], target: str, centre: float) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Each cache's cell gains standardised per model over all caches, then as ``target``
    and ``centre`` ask (:func:`fit_dense_policy`); with the mean and scale (per model) taken off."""
    targets = [c.cell_gain() for c in caches]
    flat = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in targets], 1)
    mean, scale = flat.mean(1), flat.std(1).clamp_min(1e-9)
    targets = [(t - mean.view(1, -1, 1, 1)) / scale.view(1, -1, 1, 1) for t in targets]
    if target == "mean":
        targets = [t.mean(1, keepdim=True).expand_as(t) for t in targets]
    elif target == "f1":
        targets = [t[:, :1].expand_as(t) for t in targets]
    if centre:
        targets = [t - centre * t.mean((2, 3), keepdim=True) for t in targets]
    return targets, mean, scale


def _draw_batch(features: list[torch.Tensor], targets: list[torch.Tensor], sizes: torch.Tensor, batch: int, volumes: int,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices of ``volumes`` caches (drawn by size) and their targets, the grid flipped at random."""
    xs, ys = [], []
    for _ in range(volumes):
        ci = int(torch.multinomial(sizes, 1, generator=g))
        idx = torch.randint(0, len(features[ci]), (min(batch // volumes, len(features[ci])),), generator=g)
        xs.append(features[ci][idx])
        ys.append(targets[ci][idx])
    x, y = torch.cat(xs), torch.cat(ys)
    for dim in (-1, -2):
        if bool(torch.rand((), generator=g) < 0.5):
            x, y = x.flip(dim), y.flip(dim)
    return x, y


def fit_dense_policy(
    policy: PolicyNet,
    caches: Sequence[RewardCache],
    holdout: Sequence[RewardCache] | None = None,
    *,
    steps: int = 3000,
    batch: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    eval_every: int = 250,
    patch_weight: float = 0.0,
    corr_weight: float = 0.0,
    volumes_per_batch: int = 1,
    input_jitter: float = 0.0,
    target: str = "own",
    centre: float = 0.0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Fit a dense policy's network to the gains of the cells of ``caches``.

    Parameters
    ----------
    policy : PolicyNet
        With ``head="dense"``; changed in place and left in eval mode. A slice level
        (:func:`fit_slice_level`) is cleared: the network sets the level again.
    caches : sequence of RewardCache
        Built for this policy (with cell confusions).
    holdout : sequence of RewardCache, optional
        Volumes the fit does not see. Every ``eval_every`` steps the Pearson r of the
        predicted with the true patch gains on them is measured, and the policy ends
        with the weights that had the highest mean r (early stopping).
    steps, batch, lr, weight_decay : training of the mean squared error of the
        standardised cell gains (AdamW, one-cycle schedule; random flips of the grid).
    patch_weight : float
        Weight of a second squared error, on the patches' mean gains (what routing
        reads), added to the cells'.
    corr_weight : float
        Weight of ``1 - r``, r the Pearson correlation of the predicted with the true
        patch gains over the batch's patches (per model, averaged): what the ranking of
        issue 11 scores, added to the cells' error (which keeps the gains on the
        scale routing weighs against λ).
    volumes_per_batch : int
        Volumes each batch's slices are drawn from (evenly); with more than one, the
        correlation also ranks patches of different scans, as a pooled test set does.
    input_jitter : float
        Spread (log scale) of a random factor per slice and channel on every input but
        f0's class probabilities (its entropy, the image's local mean and spread, the
        refiner's correction): another scanner's contrast and another f0's confidence,
        which the policy should rank through rather than read as gain.
    target : {"own", "mean", "f1"}
        What each model's output is fitted to: its own standardised cell gains, or for
        every model the mean of the models' or f1's. "mean" and "f1" give one ranking for
        all models, each model's gains then on its own level and spread.
    centre : float
        Share of each slice's mean gain taken off its cells' targets: 1 fits only the
        ranking within each slice (for a policy whose level :func:`fit_slice_level`
        sets). Above 0 the early stopping judges the r within slices.
    seed : int
        Seeds the initial weights, the batches and the flips.
    log : callable, optional
        Called with one line per evaluation.

    Returns
    -------
    dict
        ``loss`` per evaluation, ``holdout_r`` per evaluation, ``best_step`` and the
        correlations on the fit and held-out volumes at the end.
    """
    if policy.config.head != "dense":
        raise ValueError("fit_dense_policy needs a policy with head='dense'")
    if policy.skip is not None:
        raise ValueError("a dense policy is fitted without a linear skip")
    if policy.config.image_residual:
        # The network is fitted alone; calibrate_residual_prior adds the residual after.
        policy.residual_weight.zero_()
        policy.residual_offset.zero_()
    # The network is fitted afresh, its level with it (fit_slice_level sets a KL line again).
    policy.clear_slice_level_()
    if target not in ("own", "mean", "f1"):
        raise ValueError(f"target must be 'own', 'mean' or 'f1', not {target!r}")
    if not 0.0 <= centre <= 1.0:
        raise ValueError(f"centre must be between 0 and 1, not {centre}")
    if not 1 <= volumes_per_batch <= batch:
        raise ValueError(f"volumes_per_batch must be between 1 and the batch ({batch}), not {volumes_per_batch}")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in policy.dense:
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
    feats = [c.features for c in caches]
    targets, mean, scale = _cell_targets(caches, target, centre)
    _set_input_scale(policy, caches)
    params = [p for p in policy.dense.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    sizes = torch.tensor([len(f) for f in feats], dtype=torch.float)
    dev = _device(policy)  # the caches stay in host memory; each batch moves
    history: dict = {"loss": [], "holdout_r": [], "best_step": 0}
    best: tuple[float, dict[str, torch.Tensor] | None] = (-np.inf, None)  # held-out r, the dense network's weights
    running = []
    for step in range(1, steps + 1):
        policy.dense.train()
        policy.dense[0].eval()  # the fixed standardisation
        x, y = _draw_batch(feats, targets, sizes, batch, volumes_per_batch, g)
        x, y = x.to(dev).float(), y.to(dev)
        if input_jitter:
            x = jitter_inputs(x, input_jitter, g)
        pred = policy.cell_gains(x)
        loss = F.mse_loss(pred, y)
        if patch_weight or corr_weight:
            k = policy.patch_cells()
            pred_patch, true_patch = F.avg_pool2d(pred, k), F.avg_pool2d(y, k)
            if patch_weight:
                loss = loss + patch_weight * F.mse_loss(pred_patch, true_patch)
            if corr_weight:
                loss = loss + corr_weight * (1.0 - _batch_pearson(pred_patch, true_patch).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            history["loss"].append([step, round(float(np.mean(running)), 5)])
            running = []
            if holdout:
                # r does not see the standardisation; a centred fit is judged on what it learns.
                r = holdout_correlation(policy, holdout, within_slices=centre > 0)
                history["holdout_r"].append([step] + [round(v, 4) for v in r])
                if log is not None:
                    log(f"step {step}: loss {history['loss'][-1][1]:.4f}, held-out r (f1, f2) {r[0]:.3f} / {r[1]:.3f}")
                if np.mean(r) > best[0]:
                    best = (float(np.mean(r)), {n: t.detach().clone() for n, t in policy.dense.state_dict().items()})
                    history["best_step"] = step
    if best[1] is not None:
        policy.dense.load_state_dict(best[1])
    else:
        history["best_step"] = steps
    policy.rescale_gains_(scale, mean)
    policy.eval()
    history["corr_fit"] = [round(v, 4) for v in holdout_correlation(policy, caches)]
    if holdout:
        history["corr_holdout"] = [round(v, 4) for v in holdout_correlation(policy, holdout)]
    return history


# The residual's weight relative to the network's, chosen on five development sets
# (benchmarks/probe_results.md). An excess only: below the training volumes' mean the
# residual adds nothing, since it is lower in family (cleaner scans) while f1 gains more
# there; a signed prior lowered the gains in family, and PaSeR at the default λ fell
# below 0.99 x f2's IoU on the in-family test set. With the excess, 3 tracked the gains
# best on the out-of-family sets and kept the in-family routing of the network alone.
RESIDUAL_STANDING = 3.0


@torch.no_grad()
def calibrate_residual_prior(policy: PolicyNet, caches: Sequence[RewardCache], standing: float = RESIDUAL_STANDING) -> dict:
    """Add the image residual's excess over the training volumes to a dense policy's gains.

    The policy's patch gains become the network's plus ``w_k · max(residual − mean, 0)``,
    with the patch's mean residual: ``mean`` is its mean over the patches of ``caches``,
    and ``w_k`` is ``standing`` times the ratio of the standard deviations over those
    patches of the network's predicted gains of model ``k`` and of the residual. So only
    patches that f0's labels explain worse than a typical training patch gain more; the
    rest keep the network's gains. Fitted to the gains of the training volumes the residual would get
    little or negative weight: there it tracks them worse than f0's entropy. On scans from
    the test sets' generators (other seeds), and most of all from a scanner outside the
    training distribution, it tracks them better than the entropy, and the network plus
    this excess better than either (``benchmarks/probe_image_residual.py``).

    Parameters
    ----------
    policy : PolicyNet
        Dense, with ``image_residual``; its network already fitted.
    caches : sequence of RewardCache
        Built for this policy (its features hold the residual).
    standing : float
        The residual's weight relative to the network's, both standardised.

    Returns
    -------
    dict
        ``residual_weight`` (per model) and ``residual_offset``.
    """
    if not policy.config.image_residual:
        raise ValueError("the policy does not read the image residual (PolicyConfig.image_residual)")
    policy.eval()
    policy.residual_weight.zero_()
    policy.residual_offset.zero_()
    net = torch.cat([_patch_gains(policy, c.features) for c in caches]).double()
    c = policy.config.residual_channel
    residual = torch.cat([policy.patch_means(f)[:, c].cpu() for x in caches for f in _batches(policy, x.features, 256)]).double()
    weight = standing * net.transpose(0, 1).reshape(net.shape[1], -1).std(1) / residual.std().clamp_min(1e-12)
    policy.residual_weight.copy_(weight.to(policy.residual_weight))
    policy.residual_offset.fill_(float(residual.mean()))
    return {"residual_weight": [round(float(w), 6) for w in weight], "residual_offset": round(float(residual.mean()), 8)}


# Below this held-out r of the predicted with the true differences between f2's and f1's
# gains, a policy's f2 gains are tied to its f1 gains (tie_f2_gains). v2.21's network
# scored -0.023 on its held-out RL volumes and +0.05 / -0.05 on fresh scans of the two
# test generators, while its f1 gains ranked f2's true gains better than its own f2 gains
# (benchmarks/probe_results.md, "Does the policy know where f2 beats f1?").
TIE_BELOW = 0.1


@torch.no_grad()
def tie_f2_gains(policy: PolicyNet, caches: Sequence[RewardCache], holdout: Sequence[RewardCache], below: float = TIE_BELOW) -> dict:
    """Tie a fitted policy's f2 gains to its f1 gains where it cannot tell f2 from f1.

    On ``holdout``, the r of the predicted with the true ``g2 - g1`` of every patch says
    whether the policy knows where f2 beats f1. If that r is below ``below``, its f2 gains
    become the least-squares line of its own f2 gains on its f1 gains over the patches of
    ``caches`` (:meth:`~napari_paser.engine.models.PolicyNet.tie_last_gains_`): they rank
    the patches as its f1 gains do, at the level and spread it predicted for f2.

    Parameters
    ----------
    policy : PolicyNet
        A fitted ``PolicyNet`` with two models after f0; changed in place.
    caches, holdout : sequence of RewardCache
        The volumes it was fitted on and volumes it never saw.
    below : float
        The held-out r of the differences under which the gains are tied.

    Returns
    -------
    dict
        ``difference_r_holdout``, ``tied``, where tied the line's ``slope`` and
        ``intercept``, and ``corr_holdout``: the r of the gains with the true ones on
        ``holdout`` afterwards (f1, f2).
    """
    if not holdout:
        raise ValueError("tying f2's gains is decided on held-out volumes: give some")
    policy.eval()
    pred = torch.cat([_patch_gains(policy, c.features) for c in holdout])
    true = torch.cat([c.dataset_gain() for c in holdout])
    r = _pearson(pred[:, 1] - pred[:, 0], true[:, 1] - true[:, 0])
    record: dict = {"difference_r_holdout": round(r, 4), "tied": r < below}
    if r < below:
        fit = torch.cat([_patch_gains(policy, c.features) for c in caches]).double()
        slope, intercept = np.polyfit(fit[:, 0].reshape(-1).numpy(), fit[:, 1].reshape(-1).numpy(), 1)
        cast(PolicyNet, policy).tie_last_gains_(float(slope), float(intercept))
        record.update(slope=round(float(slope), 6), intercept=round(float(intercept), 8))
    record["corr_holdout"] = [round(v, 4) for v in holdout_correlation(policy, holdout)]
    return record


@torch.no_grad()
def fit_slice_level(
    policy: PolicyNet, caches: Sequence[RewardCache], holdout: Sequence[RewardCache] | None = None, *, quantile: float | None = None
) -> dict:
    """Read each slice's level of gains from its refiner KL, not from the network.

    Per model, the least-squares line of a slice's mean true gain (over its patches, as
    :meth:`RewardCache.dataset_gain`) on the slice's mean refiner KL (or, with
    ``quantile``, that quantile of the KL over the slice's cells) over the slices of
    ``caches`` becomes the policy's slice level
    (:meth:`~napari_paser.engine.models.PolicyNet.set_slice_level_`). The network's own
    level was learnt from volumes of many scanners and does not carry over between scans
    of one; the KL's does, in both test families (``benchmarks/probe_results.md``, "Does
    the policy know which slices gain?" and "Which statistic of a slice's refiner KL…").

    Parameters
    ----------
    policy : PolicyNet
        A fitted ``PolicyNet`` with ``features="v2"`` and ``refiner_kl``; changed in place.
    caches : sequence of RewardCache
        The volumes it was fitted on.
    holdout : sequence of RewardCache, optional
        Volumes it never saw: the r of the gains with the true ones on them afterwards.
    quantile : float, optional
        Read the level from this quantile of the slice's KL (between 0 and 1), not its mean.

    Returns
    -------
    dict
        ``weight`` and ``offset`` of the line per model, ``quantile``, ``r_fit`` (the r of
        the slices' KL statistic with their mean gain, per model) and, with ``holdout``,
        ``corr_holdout``.
    """
    net = cast(PolicyNet, policy)
    net.eval()
    check_level_quantile(quantile)  # before the slices' quantiles are taken
    kl = torch.cat([net.slice_kl(x, quantile).cpu() for c in caches for x in _batches(net, c.features)])  # raises without the KL
    level = torch.cat([c.dataset_gain().mean((-2, -1)) for c in caches])  # (slices, models)
    x = kl.double().numpy()
    lines = [np.polyfit(x, level[:, k].double().numpy(), 1) for k in range(level.shape[1])]
    weight = torch.tensor([float(line[0]) for line in lines])
    offset = torch.tensor([float(line[1]) for line in lines])
    net.set_slice_level_(weight, offset, quantile)
    record: dict = {
        "weight": [round(float(w), 6) for w in weight],
        "offset": [round(float(o), 8) for o in offset],
        "quantile": quantile,
        "r_fit": [round(float(np.corrcoef(x, level[:, k].double().numpy())[0, 1]), 4) for k in range(level.shape[1])],
    }
    if holdout:
        record["corr_holdout"] = [round(v, 4) for v in holdout_correlation(policy, holdout)]
    return record
