"""A routing policy fitted in closed form: ridge regression of the gains on patch means.

The policy network's regression overfits the few dozen volumes it is fitted on (its
predicted gains tracked the true ones worse than f0's entropy alone on held-out volumes,
``benchmarks/probe_results.md``). A linear model of the patch means of the policy's
input channels has a handful of coefficients, is fitted exactly, and ships in the
bundle format as it is: it is the policy's linear skip, with the network's head
switched off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, cast

import numpy as np
import torch
from torch import nn

from ..engine.models import PolicyNet
from .rewards import RewardCache

#: Ridge penalties tried, per patch (the penalty matrix is ``penalty * patches * I``).
PENALTIES: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)


@dataclass(frozen=True)
class RidgeFit:
    """``gains = ((x - mean) / scale) @ coef + intercept`` for patch statistics ``x``."""

    mean: np.ndarray  # (k,)
    scale: np.ndarray  # (k,)
    coef: np.ndarray  # (k, outputs)
    intercept: np.ndarray  # (outputs,)
    penalty: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> RidgeFit:
    """Ridge regression of ``y`` (n, outputs) on standardised ``x`` (n, k), closed form."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)  # a constant input gets coefficient 0
    z = (x - mean) / scale
    intercept = y.mean(0)
    gram = z.T @ z + penalty * len(z) * np.eye(z.shape[1])
    coef = np.linalg.lstsq(gram, z.T @ (y - intercept), rcond=None)[0]
    return RidgeFit(mean, scale, coef, intercept, float(penalty))


@torch.no_grad()
def patch_table(policy: PolicyNet, caches: Sequence[RewardCache], reward: str, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Patch means of the policy's inputs (patches, C) and the true gains (patches, 2).

    One row per patch of every slice of ``caches``, in the same order for both.
    """
    xs, ys = [], []
    for cache in caches:
        for i in range(0, len(cache), batch):
            means = policy.patch_means(cache.features[i : i + batch].float())
            xs.append(means.permute(0, 2, 3, 1).reshape(-1, means.shape[1]))
        gains = cache.gain_target(reward)
        ys.append(gains.permute(0, 2, 3, 1).reshape(-1, gains.shape[1]))
    return torch.cat(xs).double().numpy(), torch.cat(ys).double().numpy()


def held_out_error(fit: RidgeFit, tables: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean over volumes of the mean squared error of the predicted gains."""
    return float(np.mean([((fit.predict(x) - y) ** 2).mean() for x, y in tables]))


def choose_ridge(
    fit_table: tuple[np.ndarray, np.ndarray],
    held_tables: Sequence[tuple[np.ndarray, np.ndarray]],
    penalties: Sequence[float] = PENALTIES,
) -> tuple[RidgeFit, list[list[float]]]:
    """The ridge fit whose penalty has the lowest error on ``held_tables``.

    Without held-out tables the smallest non-zero penalty is used. Returns the fit
    and ``[penalty, error]`` for every penalty tried.
    """
    x, y = fit_table
    if not held_tables:
        return fit_ridge(x, y, min(p for p in penalties if p > 0)), []
    scores: list[list[float]] = []
    best: tuple[float, RidgeFit] | None = None
    for penalty in penalties:
        fit = fit_ridge(x, y, penalty)
        err = held_out_error(fit, held_tables)
        scores.append([float(penalty), round(err, 6)])
        if best is None or err < best[0]:
            best = (err, fit)
    if best is None:
        raise ValueError("choose_ridge needs at least one penalty")
    return best[1], scores


@torch.no_grad()
def write_linear_policy(policy: PolicyNet, fit: RidgeFit) -> None:
    """Make ``policy.gains`` return ``fit``'s prediction from the patch means.

    The skip's batch norm standardises (eval mode: a fixed affine map), its convolution
    holds the coefficients, and the head's last convolution is zeroed so the network's
    part adds nothing. The policy must have a linear skip.
    """
    if policy.skip is None:
        raise ValueError("a linear policy needs a policy with linear_skip=True")
    norm, conv = cast(nn.BatchNorm2d, policy.skip[0]), cast(nn.Conv2d, policy.skip[1])
    dtype = conv.weight.dtype
    cast(torch.Tensor, norm.running_mean).copy_(torch.as_tensor(fit.mean, dtype=dtype))
    cast(torch.Tensor, norm.running_var).fill_(1.0)
    norm.weight.copy_(torch.as_tensor(np.sqrt(1.0 + norm.eps) / fit.scale, dtype=dtype))
    norm.bias.zero_()
    conv.weight.copy_(torch.as_tensor(fit.coef.T, dtype=dtype).reshape(conv.weight.shape))
    cast(torch.Tensor, conv.bias).copy_(torch.as_tensor(fit.intercept, dtype=dtype))
    last = policy.output_layer
    last.weight.zero_()
    cast(torch.Tensor, last.bias).zero_()


def fit_linear_policy(
    policy: PolicyNet,
    caches: Sequence[RewardCache],
    reward: str,
    holdout: Sequence[RewardCache] | None = None,
    penalties: Sequence[float] = PENALTIES,
) -> dict:
    """Fit ``policy`` as a ridge regression of the gains on its inputs' patch means.

    Parameters
    ----------
    policy : PolicyNet
        Changed in place (see :func:`write_linear_policy`); left in eval mode.
    caches : sequence of RewardCache
        The volumes the regression is fitted on.
    reward : str
        ``"patch_iou"`` or ``"dataset_iou"`` (:meth:`RewardCache.gain_target`).
    holdout : sequence of RewardCache, optional
        Volumes the fit does not see; the penalty with the lowest error on them is kept.

    Returns
    -------
    dict
        ``penalty``, ``penalty_errors`` and the Pearson r of predicted with true gains
        per model on the fit and held-out volumes.
    """
    policy.eval()
    fit_table = patch_table(policy, caches, reward)
    held_tables = [patch_table(policy, [c], reward) for c in holdout or ()]
    fit, scores = choose_ridge(fit_table, held_tables, penalties)
    write_linear_policy(policy, fit)

    def correlations(x: np.ndarray, y: np.ndarray) -> list[float]:
        p = fit.predict(x)
        return [round(float(np.corrcoef(p[:, k], y[:, k])[0, 1]), 4) if p[:, k].std() > 0 else 0.0 for k in range(y.shape[1])]

    history = {"penalty": fit.penalty, "penalty_errors": scores, "corr_fit": correlations(*fit_table)}
    if held_tables:
        history["corr_holdout"] = correlations(np.concatenate([t[0] for t in held_tables]), np.concatenate([t[1] for t in held_tables]))
    return history
