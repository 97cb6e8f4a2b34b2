"""Validation of a trained bundle: IoU per model, routing across λ, the default λ.

Works on :class:`~napari_paser.train.rewards.RewardCache` tables (per-patch confusion
matrices of f0, f1, f2), so the segmentation for any routing is a sum of cached
matrices: the whole λ curve costs one policy pass. Scores are dataset-level (one
confusion matrix over all slices, as ``napari-paser evaluate`` reports); routing and
FLOPs use the engine's own :func:`~napari_paser.engine.routing.route` and
:class:`~napari_paser.engine.flops.CostModel`, so the numbers match inference.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine.bundle import Bundle
from ..engine.flops import CostModel
from ..engine.metrics import iou_per_class, mean_iou
from ..engine.routing import lam_for_tvd, route, switch_points
from .rewards import RewardCache

__all__ = ["LAM_GRID", "policy_gains", "evaluate_caches", "choose_default_lam"]

LAM_GRID = np.unique(np.round(np.concatenate([np.linspace(0, 0.2, 41), np.linspace(0.2, 1.0, 33)]), 4))
"""λ values of the validation curve: dense where the models trade places."""


@torch.no_grad()
def policy_gains(bundle: Bundle, cache: RewardCache, batch: int = 32) -> np.ndarray:
    """Predicted gains (N, 2, GY, GX) of the policy on a cache's features."""
    bundle.policy.eval()
    dev = next(bundle.policy.parameters()).device
    out = [bundle.policy.gains(cache.features[i : i + batch].to(dev).float()).cpu() for i in range(0, len(cache), batch)]
    return torch.cat(out).numpy()


def _pooled(conf: np.ndarray, routing: np.ndarray) -> np.ndarray:
    """Confusion summed over all patches, each taken from the model routing picks."""
    n, _, gy, gx, c, _ = conf.shape
    idx = routing.reshape(n, 1, gy, gx, 1, 1).astype(np.int64)
    return np.take_along_axis(conf, np.broadcast_to(idx, (n, 1, gy, gx, c, c)), axis=1).sum((0, 1, 2, 3))


class _Table:
    """Caches, their gains and FLOP models, with scoring of routings."""

    def __init__(self, bundle: Bundle, caches: list[RewardCache]):
        self.costs = bundle.costs().numpy()
        self.confs = [c.conf.numpy().astype(np.int64) for c in caches]
        self.gains = [policy_gains(bundle, c) for c in caches]
        # The padded slice from the patch grid (v2 features are stored pooled, not at full
        # size); counted once per slice shape, not once per cache.
        ph, pw = bundle.patch_size
        shapes = [(c.conf.shape[2] * ph, c.conf.shape[3] * pw) for c in caches]
        measured = {shape: CostModel.measure(bundle, shape, bundle.mc_passes) for shape in set(shapes)}
        self.cost_models = [measured[shape] for shape in shapes]
        self.slices = sum(len(c) for c in caches)

    def score(self, routings: list[np.ndarray]) -> dict:
        cm = np.sum([_pooled(conf, r) for conf, r in zip(self.confs, routings)], axis=0)
        flops = 0
        counts = np.zeros(3)
        for r, cmod in zip(routings, self.cost_models):
            c = np.bincount(r.reshape(-1), minlength=3)
            counts += c
            flops += len(r) * cmod.analysis + c[1] * cmod.patch[1] + c[2] * cmod.patch[2]
        return {
            "mean_iou": mean_iou(cm),
            "iou_per_class": [None if np.isnan(v) else round(float(v), 5) for v in iou_per_class(cm)],
            "fractions": (counts / counts.sum()).round(5).tolist(),
            "gflops_per_slice": float(flops) / self.slices / 1e9,
        }

    def constant(self, model: int) -> dict:
        """One model everywhere; f0 costs its MC analysis, f1/f2 their patches only."""
        routings = [np.full((len(c), *c.shape[2:4]), model, dtype=np.uint8) for c in self.confs]
        out = self.score(routings)
        if model > 0:
            gflops = sum(np.prod(r.shape) * cm.patch[model] for r, cm in zip(routings, self.cost_models))
            out["gflops_per_slice"] = float(gflops) / self.slices / 1e9
        else:
            out["gflops_per_slice"] = float(sum(len(r) * cm.f0_mc for r, cm in zip(routings, self.cost_models))) / self.slices / 1e9
        return out

    def paser(self, lam: float) -> dict:
        return self.score([route(g, lam, self.costs) for g in self.gains])

    def random(self, fractions: np.ndarray, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        p = np.asarray(fractions, dtype=float)
        return self.score([rng.choice(3, size=(len(c), *c.shape[2:4]), p=p / p.sum()).astype(np.uint8) for c in self.confs])

    def switch_points(self) -> tuple[np.ndarray, np.ndarray]:
        s = [switch_points(g, self.costs) for g in self.gains]
        return np.concatenate([a[0].ravel() for a in s]), np.concatenate([a[1].ravel() for a in s])


def choose_default_lam(curve: list[dict], iou_target: float, flops_target: float, margin: float = 0.8) -> tuple[float, str]:
    """The recommended λ from a validation curve (rows sorted by rising λ).

    Rule: the smallest λ (the best IoU) whose GFLOPs stay within ``margin`` ×
    ``flops_target`` × f2's and whose IoU is at least ``iou_target`` × f2's. The FLOP
    margin leaves room for scans on which the policy sends more patches up. If no λ
    meets both: the smallest λ within the full FLOP budget (the best IoU the budget
    allows); if none is within it, the largest λ.
    """
    ok = [r for r in curve if r["iou_ratio"] >= iou_target and r["flops_ratio"] <= margin * flops_target]
    if ok:
        return float(ok[0]["lam"]), (
            f"smallest lambda on the validation split with IoU >= {iou_target} x f2 and "
            f"GFLOPs <= {margin} x {flops_target} x f2"
        )
    within = [r for r in curve if r["flops_ratio"] <= flops_target]
    if within:
        return float(within[0]["lam"]), (
            f"no lambda met IoU >= {iou_target} x f2 within GFLOPs <= {margin} x {flops_target} x f2 on validation; "
            f"smallest lambda within GFLOPs <= {flops_target} x f2"
        )
    return float(curve[-1]["lam"]), "no lambda met the FLOP budget on validation; largest lambda"


def evaluate_caches(
    bundle: Bundle,
    caches: list[RewardCache],
    *,
    iou_target: float = 0.97,
    flops_target: float = 0.30,
    margin: float = 0.8,
    tvd: float | None = None,
    seed: int = 0,
) -> dict:
    """Validation report: every model alone, PaSeR across λ, random routing, default λ.

    Parameters
    ----------
    margin : float
        Share of ``flops_target`` the default λ may spend on these volumes (see
        :func:`choose_default_lam`).
    tvd : float, optional
        The paper's TVD-threshold mode: the default λ is raised from 0 until the
        routing distribution is ``tvd`` away from the λ = 0 one (instead of the
        IoU/FLOP rule of :func:`choose_default_lam`).
    """
    table = _Table(bundle, caches)
    models = {name: table.constant(i) for i, name in enumerate(("f0", "f1", "f2"))}
    f2_iou, f2_flops = models["f2"]["mean_iou"], models["f2"]["gflops_per_slice"]
    curve = []
    for lam in LAM_GRID:
        r = table.paser(float(lam))
        curve.append(
            {
                "lam": float(lam),
                "fractions": r["fractions"],
                "mean_iou": round(r["mean_iou"], 5),
                "gflops_per_slice": round(r["gflops_per_slice"], 5),
                "iou_ratio": round(r["mean_iou"] / f2_iou, 5),
                "flops_ratio": round(r["gflops_per_slice"] / f2_flops, 5),
            }
        )
    if tvd is not None:
        s1, s2 = table.switch_points()
        lam = lam_for_tvd(s1, s2, tvd)
        rule = f"TVD-threshold mode: largest lambda whose routing is within TVD {tvd} of lambda = 0 on validation"
    else:
        lam, rule = choose_default_lam(curve, iou_target, flops_target, margin)
    paser = table.paser(lam)
    rand_same = table.random(np.array(paser["fractions"]), seed)
    rand_uniform = table.random(np.ones(3) / 3, seed)
    return {
        "slices": table.slices,
        "models": models,
        "paser": {**paser, "lam": lam, "iou_ratio": paser["mean_iou"] / f2_iou, "flops_ratio": paser["gflops_per_slice"] / f2_flops},
        "random_same_fractions": rand_same,
        "random_uniform": rand_uniform,
        "curve": curve,
        "default_lam": float(lam),
        "default_lam_rule": rule,
    }
