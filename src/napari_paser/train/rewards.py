"""Per-patch IoU, the cached reward table and the REINFORCE loss of the policy.

Per-patch IoU is the macro mean Jaccard over the classes present in the patch's
truth or prediction; a class absent from both is left out (its IoU is undefined,
and counting it as 1 would reward patches for the classes they happen not to hold).

The reward of routing patch p to model m at cost weight λ is the paper's
``(1 - λ) * (IoU_p(m) - IoU_p(f0)) - λ * C(m)``. All three models are frozen while a
policy stage runs, so the IoU of every (patch, model) pair is computed once and cached
(:class:`RewardCache`); REINFORCE then needs only policy forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine.bundle import Bundle
from ..engine.fusion import fuse_f0, to_bytes
from ..engine.metrics import dataset_iou_gains, dataset_iou_weights
from ..engine.models import UNet, centre_planes
from ..engine.patches import grid_shape, patch_windows, unpatchify
from ..engine.uncertainty import analyse_slices, slice_seed

__all__ = [
    "patch_confusion",
    "cell_confusion",
    "iou_from_confusion",
    "RewardCache",
    "predict_patches",
    "build_reward_cache",
    "load_reward_caches",
    "sample_lambda",
    "sample_actions",
    "reinforce_loss",
]

NUM_CLASSES = 3


def patch_confusion(pred: torch.Tensor, truth: torch.Tensor, patch_size: tuple[int, int], num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Confusion matrix of every patch: (B, GY, GX, truth class, predicted class), int64.

    ``pred`` and ``truth`` are (B, H, W) with H, W whole multiples of the patch size;
    truth values of ``num_classes`` or more (padding) are not counted.
    """
    b, h, w = truth.shape
    ph, pw = patch_size
    gy, gx = h // ph, w // pw
    rows = torch.arange(h, device=truth.device) // ph
    cols = torch.arange(w, device=truth.device) // pw
    pid = (rows.view(-1, 1) * gx + cols.view(1, -1)).unsqueeze(0) + (torch.arange(b, device=truth.device) * gy * gx).view(-1, 1, 1)
    pid = pid.to(truth.device)
    n = b * gy * gx * num_classes**2
    code = pid * num_classes**2 + truth.long() * num_classes + pred.long()
    # Truth values >= num_classes (padding) are ignored: they go to one extra bin.
    code = torch.where(truth.long() < num_classes, code, torch.full_like(code, n))
    counts = torch.bincount(code.reshape(-1), minlength=n + 1)[:n]
    return counts.view(b, gy, gx, num_classes, num_classes)


def cell_confusion(pred: torch.Tensor, truth: torch.Tensor, cell: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Confusion counts of every ``cell`` x ``cell`` block: (B, C * C, H / cell, W / cell), uint8.

    Channel ``t * C + p`` counts the block's pixels of truth t predicted as p; truth
    values of ``num_classes`` or more (padding) are not counted. ``cell`` is at most 15
    (counts fit a byte).
    """
    if cell > 15:
        raise ValueError("cells of more than 15 x 15 pixels overflow a byte")
    conf = patch_confusion(pred, truth, (cell, cell), num_classes)  # (B, GY, GX, C, C)
    return conf.flatten(-2).permute(0, 3, 1, 2).to(torch.uint8)


def iou_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """Macro IoU over classes present in truth or prediction, from (..., C, C) confusions."""
    conf = conf.double()
    inter = torch.diagonal(conf, dim1=-2, dim2=-1)
    union = conf.sum(-1) + conf.sum(-2) - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    return (iou.sum(-1) / present.sum(-1).clamp_min(1)).float()


@torch.no_grad()
def predict_patches(
    model: UNet,
    x: torch.Tensor,
    patch_size: tuple[int, int],
    batch: int = 64,
    *,
    f0_prob: torch.Tensor | None = None,
    f0_weight: float = 0.0,
) -> torch.Tensor:
    """Argmax of a patch model over the whole patch grid of ``x`` (B, planes, H, W) -> (B, H, W).

    The model reads the centre planes it was built for (all of them for one plane). With
    ``f0_prob`` (B, classes, H, W) and ``f0_weight`` w > 0, each pixel takes the argmax of
    (1 - w) p_model + w p_f0, p_f0 rounded to bytes as the engine keeps it
    (:class:`~napari_paser.engine.pipeline.PaserSegmenter`), so the labels are those
    the engine composes for a patch routed to this model.
    """
    gy, gx = grid_shape(x.shape[-2:], patch_size)
    patches = patch_windows(centre_planes(x, model.config.planes), patch_size, model.config.halo)
    f0_bytes = patch_windows(to_bytes(f0_prob), patch_size) if f0_prob is not None and f0_weight > 0 else None
    outs = []
    for i in range(0, len(patches), batch):
        prob = model(patches[i : i + batch]).float().softmax(1)
        if f0_bytes is not None:
            prob = fuse_f0(prob, f0_bytes[i : i + batch], f0_weight)
        outs.append(prob.argmax(1, keepdim=True))
    return unpatchify(torch.cat(outs), (gy, gx))[:, 0]


@dataclass
class RewardCache:
    """What the policy needs of some slices, computed once with frozen models.

    Attributes
    ----------
    features : Tensor (N, 5, H, W) float16
        Policy input (f0 mean softmax, entropy, image); half precision saves memory.
    conf : Tensor (N, 3, GY, GX, C, C) int32
        Per-patch confusion of f0 (MC mean argmax), f1 and f2 against the truth; f1's
        and f2's with f0 fused in where the bundle fuses (:attr:`Bundle.fusion`).
    cells : Tensor (N, 3, C * C, rows / pool, columns / pool) uint8, optional
        The same counts per cell of the policy's pooled grid (:func:`cell_confusion`);
        kept for a dense policy only, which is fitted on the gains of cells.
    """

    features: torch.Tensor
    conf: torch.Tensor
    cells: torch.Tensor | None = None

    @property
    def iou(self) -> torch.Tensor:
        """Per-patch IoU (N, 3, GY, GX) of the three models."""
        return iou_from_confusion(self.conf)

    @property
    def delta(self) -> torch.Tensor:
        """Per-patch IoU gain over f0 (N, 2, GY, GX) of f1 and f2 (the paper's reward)."""
        iou = self.iou
        return iou[:, 1:] - iou[:, :1]

    def dataset_gain(self) -> torch.Tensor:
        """First-order gain in *dataset* mean IoU (N, 2, GY, GX) of sending one patch to f1 / f2.

        The metric users read is the IoU of the whole volume, one confusion matrix for all
        patches; a patch's per-patch IoU tracks it poorly (a patch with one stray pixel
        of a rare class swings its own IoU by a lot and the volume's by nothing). With
        f0's totals TP_c and U_c over these slices, changing one patch by ΔTP_c, ΔU_c
        changes the mean IoU by ``mean_c (ΔTP_c / U_c - TP_c ΔU_c / U_c²)``. It is
        multiplied by the number of patches, so it reads as "the IoU change if every
        patch gained like this one", on the scale of IoU differences.
        """
        n, _, gy, gx = self.conf.shape[:4]
        gain = dataset_iou_gains(self.conf.numpy())
        return torch.from_numpy(gain * (n * gy * gx)).float()

    def cell_gain(self) -> torch.Tensor:
        """First-order gain in dataset mean IoU (N, 2, rows / pool, columns / pool) of
        sending the pixels of one cell to f1 / f2, on the scale of :meth:`dataset_gain`.

        Taken at the same point (f0's totals over these slices) and multiplied by the
        number of cells per patch, so a patch's :meth:`dataset_gain` is the mean of its
        cells' gains.
        """
        if self.cells is None:
            raise ValueError("this reward cache holds no cell confusions (built for a patch-level policy)")
        n, _, gy, gx, c, _ = self.conf.shape
        weights = torch.from_numpy(dataset_iou_weights(self.conf[:, 0].sum((0, 1, 2)).numpy()).reshape(-1)).float()
        cells_per_patch = self.cells.shape[-2] * self.cells.shape[-1] / (gy * gx)
        per_model = torch.einsum("nmkyx,k->nmyx", self.cells.float(), weights)
        return (per_model[:, 1:] - per_model[:, :1]) * (n * gy * gx * cells_per_patch)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What :func:`load_reward_caches` reads back: features, conf and, if kept, cells."""
        return (self.features, self.conf) if self.cells is None else (self.features, self.conf, self.cells)

    def gain_target(self, kind: str) -> torch.Tensor:
        """The reward gains the policy learns: ``patch_iou`` (:attr:`delta`) or ``dataset_iou``."""
        if kind == "patch_iou":
            return self.delta
        if kind == "dataset_iou":
            return self.dataset_gain()
        raise ValueError(f"unknown reward {kind!r}; choose 'patch_iou' or 'dataset_iou'")

    def __len__(self) -> int:
        return int(self.features.shape[0])


@torch.no_grad()
def build_reward_cache(
    bundle: Bundle,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mc_passes: int | None = None,
    seed: int = 0,
    batch: int = 8,
    first_index: int = 0,
) -> RewardCache:
    """Run f0 (MC dropout, as at inference), f1 and f2 on slices and cache the rewards.

    Parameters
    ----------
    bundle : Bundle
        Models (put in eval mode here).
    images : Tensor (N, planes, H, W)
        Normalised slices with their neighbouring planes (as many as the bundle's widest
        reader; one for 2-D bundles), already padded to whole patches. Each network
        reads its own centre planes; the policy's image channel is the slice.
    labels : Tensor (N, H, W)
    mc_passes : int, optional
        Defaults to ``bundle.mc_passes``.
    seed : int
        Dropout seed; slice ``i`` uses :func:`slice_seed` ``(seed, first_index + i)``.

    A dense policy's cache also holds the confusion of every cell of its pooled grid.
    With a bundle that fuses f0 into its patch models (``bundle.fusion``), f1's and f2's
    labels are the fused ones the engine composes, so the policy learns the gains that
    routing a patch realises.
    """
    bundle.eval()
    passes = mc_passes or bundle.mc_passes
    ps = bundle.patch_size
    dense = bundle.policy.config.head == "dense"
    feats, confs, cells = [], [], []
    for s in range(0, len(images), batch):
        x = images[s : s + batch].float()
        y = labels[s : s + batch]
        # One seed per slice, as at inference: a slice's result does not depend on its batch.
        x0 = centre_planes(x, bundle.f0.config.planes)
        outs = [analyse_slices(bundle.f0, bundle.policy.config, x0[i : i + 1], passes, slice_seed(seed, first_index + s + i)) for i in range(len(x))]
        prob = torch.cat([o[0] for o in outs])
        # The caches live in host memory wherever the networks run (on a GPU too): they
        # are data, read by numpy and saved with the run.
        feats.append(torch.cat([o[2] for o in outs]).half().cpu())
        w1, w2 = bundle.fusion
        preds = [prob.argmax(1), predict_patches(bundle.f1, x, ps, f0_prob=prob, f0_weight=w1), predict_patches(bundle.f2, x, ps, f0_prob=prob, f0_weight=w2)]
        confs.append(torch.stack([patch_confusion(p, y, ps) for p in preds], dim=1).int().cpu())
        if dense:
            cells.append(torch.stack([cell_confusion(p, y, bundle.policy.config.pool) for p in preds], dim=1).cpu())
    return RewardCache(torch.cat(feats), torch.cat(confs), torch.cat(cells) if dense else None)


def load_reward_caches(path: str | Path) -> list[RewardCache]:
    """Reward caches saved as a list of :meth:`RewardCache.tensors` (``torch.save``)."""
    return [RewardCache(*parts) for parts in torch.load(path, weights_only=True)]


def sample_lambda(n: int, g: torch.Generator, power: float = 2.0) -> torch.Tensor:
    """λ in [0, 1] per example: ``u**power`` puts more mass at small λ, where the
    trade-off between the models is decided (costs are fractions of the total)."""
    return torch.rand(n, generator=g) ** power


def sample_actions(logits: torch.Tensor, alpha: float, g: torch.Generator) -> torch.Tensor:
    """Model index per patch (B, GY, GX): from the policy with probability ``alpha``,
    otherwise uniformly for the whole batch (the paper's exploration)."""
    b, m, gy, gx = logits.shape
    if bool(torch.rand(1, generator=g) < alpha):
        probs = logits.detach().float().softmax(1).permute(0, 2, 3, 1).reshape(-1, m)
        return torch.multinomial(probs, 1, generator=g).view(b, gy, gx)
    return torch.randint(0, m, (b, gy, gx), generator=g)


def reinforce_loss(
    gains: torch.Tensor,
    logits: torch.Tensor,
    actions: torch.Tensor,
    delta: torch.Tensor,
    lam: torch.Tensor,
    costs: torch.Tensor,
    *,
    known: torch.Tensor | None = None,
    aux_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE loss of the λ-conditioned policy with a baseline, plus gain regression.

    Parameters
    ----------
    gains : Tensor (B, 2, GY, GX)
        ``policy.gains(features)`` (with gradient).
    logits : Tensor (B, 3, GY, GX)
        ``policy.logits(gains, lam, costs)``.
    actions : Tensor (B, GY, GX) int64
        Sampled models (:func:`sample_actions`).
    delta : Tensor (B, 2, GY, GX)
        Observed IoU gain over f0 of f1 and f2 per patch (entries not in ``known``
        are ignored).
    lam : Tensor (B,)
        Cost weight per example.
    costs : Tensor (3,)
    known : Tensor (B, 2, GY, GX) bool, optional
        Which gains were observed (joint fine-tuning sees only the routed models);
        ``None``: all (cached rewards).
    aux_weight : float
        Weight of the squared error between predicted and observed gains.

    Notes
    -----
    Improvements over the reference, all cheap because of the cached table:
    the baseline is the expected reward under the current policy (a per-patch,
    per-λ baseline: much lower variance than none or a batch mean); where a gain is
    unknown the policy's own predicted gain stands in for it. The auxiliary regression
    keeps the gains on the scale of IoU differences, which is what makes the cost term
    λ·C meaningful for every λ with a single network.

    Returns
    -------
    loss : Tensor
    stats : dict
        Mean reward of the taken actions, the regression error and the fractions
        routed to f1 and f2.
    """
    logp = logits.float().log_softmax(1)
    m = logits.shape[1]
    if known is None:
        known = torch.ones_like(delta, dtype=torch.bool)
    filled = torch.where(known, delta, gains.detach())
    lam4 = lam.view(-1, 1, 1, 1).to(filled)
    utility = torch.cat([torch.zeros_like(filled[:, :1]), filled], dim=1)
    rewards = (1 - lam4) * utility - lam4 * costs.to(filled).view(1, -1, 1, 1)  # (B, 3, GY, GX)
    taken = rewards.gather(1, actions.unsqueeze(1)).squeeze(1)
    baseline = (logp.detach().exp() * rewards).sum(1)
    logp_taken = logp.gather(1, actions.unsqueeze(1)).squeeze(1)
    pg = -(logp_taken * (taken - baseline)).mean()
    aux = (((gains - delta) ** 2) * known).sum() / known.sum().clamp_min(1)
    loss = pg + aux_weight * aux
    frac = torch.bincount(actions.reshape(-1), minlength=m).float() / actions.numel()
    return loss, {"reward": float(taken.mean()), "aux": float(aux.detach()), "f1": float(frac[1]), "f2": float(frac[2])}
