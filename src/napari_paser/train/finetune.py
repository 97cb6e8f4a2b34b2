"""Fast adaptation of a PaSeR bundle to one scan from a few (sparse) painted labels.

``train --init`` runs all four training stages and takes minutes; a user who painted a
few strokes wants a better segmentation of *this* scan soon. :func:`finetune_iter` does,
within a wall-clock budget:

1. Normalise the scan as inference does, keep the slices that hold labels, and hold out
   whole patches of labelled pixels for scoring (:func:`..sparse_labels.split_held_out`).
2. Re-estimate the batch-norm statistics of f0, f1 and f2 on the whole scan (AdaBN:
   unsupervised, every slice of the scan), kept per network only if its IoU on the
   held-out pixels does not drop.
3. Train f2, f1 and f0 in turns (time shares, not step counts, so the budget holds on
   any machine) with cross entropy on the labelled pixels only (255 ignored), patches
   centred on labelled pixels, flips/rotations and mild intensity jitter, batch norm
   frozen at the scan's statistics. Every few seconds each network is scored on the
   held-out pixels; the best state of each is kept, so a cancel (``stop()``) or the end
   of the budget returns the best networks seen, never a worse one than the start.
4. The policy is re-fitted to the adapted networks (``policy_gains="entropy"``): the
   gain of f1 / f2 on a patch is a level times the patch's f0 entropy over its held-out
   mean. The trained policy's ranking does not carry over to an adapted scan (on
   development scans its gains tracked the true ones worse than f0's entropy, sometimes
   inversely). f1's level is the trained policy's mean gain on the held-out patches; f2's
   adds f2's measured gain over f1 there (held-out patches of the painted slices rate
   f0 too well to set f1's level). The bundle's λ is re-chosen so that PaSeR
   spends on this scan the share of f2-everywhere's GFLOPs the bundle was validated at
   (``lam_rule="compute"``): the few held-out painted pixels cannot rank λ values
   reliably, and choosing λ by them kept most patches on f0 (``lam_rule="held_out"``,
   the earlier rule, still available). The held-out IoU of every λ is recorded.

The adapted bundle keeps the bundle's weights of f0 in f1's and f2's patches
(``FinetuneConfig.keep_fusion``): on the adapted networks of out-of-family scans they lift
PaSeR as they lift the shipped ones (``benchmarks/probe_finetune_fusion.py``).

Progress comes as :class:`FinetuneProgress` messages (for a napari worker, a tqdm bar or
a plot); the result is a new :class:`~napari_paser.engine.bundle.Bundle` with a
``finetune`` record in its manifest, saved by :func:`save_finetuned` (never over an
existing bundle).
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.bundle import Bundle, save_bundle
from ..engine.metrics import confusion_matrix, dataset_iou_gains, mean_iou
from ..engine.models import UNet, mc_dropout, with_planes
from ..engine.patches import grid_shape, patch_windows, plane_indices
from ..engine.precision import bf16_autocast
from ..engine.routing import route
from ..engine.steps import run_steps
from ..engine.uncertainty import ENTROPY_CHANNEL, analyse_slices, slice_seed
from ..errors import PaserInputError
from .augment import AugmentConfig
from .datasets import SliceBank, Volume, class_weights
from .scan_planes import ScanPlanes, scan_volume
from .sparse_labels import UNLABELLED, read_labelled_slices, split_held_out

__all__ = [
    "FinetuneConfig",
    "FinetuneProgress",
    "FinetuneResult",
    "auto_budget",
    "finetune_iter",
    "finetune",
    "save_finetuned",
    "unique_bundle_folder",
]

MODELS = ("f0", "f1", "f2")
SLICE_PIXELS = 224 * 256
ADABN_PATCHES = 64
"""Patches a patch model's batch-norm statistics are re-estimated on: 4 slices of 224x256
pin them down; larger slices give evenly spaced patches of theirs, at the same cost."""
SHARE_PIXELS = 16 * SLICE_PIXELS
"""Pixels of the evenly spaced slices λ's compute shares are measured on (16 slices of
224x256, one of 1024x1024): the cost of choosing λ does not grow with the slice size."""
LAM_GRID = np.unique(np.round(np.concatenate([np.linspace(0, 0.2, 41), np.linspace(0.2, 1.0, 17)]), 4))


def auto_budget(labelled_pixels: int, labelled_slices: int = 1) -> float:
    """Default budget in seconds for ``labelled_pixels`` painted in ``labelled_slices`` slices.

    60 s plus 30 s per 224x256 slice's worth of labels, at most 180 s (three minutes on
    two CPU cores: four fully labelled slices or more). Brush strokes count 7 times their
    area, up to the number of slices they are in: strokes over about 15 % of a slice
    carry most of its variety (the benchmark's sparse case), a few dots do not.
    """
    area = max(labelled_pixels / SLICE_PIXELS, min(labelled_slices, 7 * labelled_pixels / SLICE_PIXELS))
    return float(min(180.0, 60.0 + 30.0 * area))


@dataclass
class FinetuneConfig:
    """Knobs of :func:`finetune_iter` (the defaults are what the benchmark measured).

    Attributes
    ----------
    budget_s : float or None
        Wall-clock seconds for the whole adaptation (None: :func:`auto_budget`).
    shares : dict
        Share of the training time of each network (f2 is the most accurate and the
        most expensive per step).
    lr : dict
        Peak AdamW learning rate per network (cosine decay over the budget).
    batch : int
        Patches per step of f1 / f2.
    f0_batch : int
        Patch-grid crops per step of f0.
    planes : int
        Neighbouring planes f0, f1 and f2 read after adapting (odd; 1 keeps them 2-D). A
        one-plane network is widened first (:func:`~napari_paser.engine.models.with_planes`):
        the scan's noise is independent from plane to plane while its grains are not,
        and the adapted networks learn to use that from the painted slices. The policy
        keeps reading the slice itself. Scans of a single plane stay 2-D.
    adapt : str
        ``all``: every weight; ``decoder``: batch-norm affine parameters, the decoder and
        the head only (the encoder keeps the synthetic features).
    class_power : float
        Cross-entropy class weights ∝ frequency^-power in the painted labels (0: none);
        mean IoU weighs the rare carbon-binder as much as the common phases.
    adabn : bool
        Re-estimate batch-norm statistics on the scan first (kept where it helps).
    held_out : float
        Share of labelled pixels held out for scoring (whole patches).
    evaluations : int
        How many times the held-out pixels are scored during training.
    policy_gains : str
        How the policy's gains are fitted to the adapted networks. ``entropy``: each
        patch's gain of f1 / f2 is a level times the patch's f0 entropy over its mean on
        the held-out patches; f1's level is the trained policy's mean gain there, f2's is
        f1's plus f2's measured gain over f1 on the held-out patches (the trained
        policy's ranking does not carry over to an adapted scan and the held-out patches
        rate f0 too well; see :func:`_fit_policy_to_entropy` and
        ``benchmarks/probe_results.md``). ``shift``: the trained policy's gains, shifted so
        that their mean on the held-out patches is the measured mean gain. ``keep``: the
        trained policy as it is.
    lam_rule : str
        ``compute``: the smallest λ whose GFLOPs on (up to 16 slices of) the scan are at
        most the share of f2-everywhere's that the bundle was validated at (the held-out
        rule when the bundle records none); ``held_out``: the best held-out IoU.
    lam_tolerance : float
        ``held_out`` rule: λ is, among those whose held-out IoU is within this of the
        best λ's, the one closest to the bundle's own default λ.
    augment : AugmentConfig
        Flips, rotations and mild intensity jitter (the scan is known: its contrast does
        not need to generalise far).
    keep_fusion : bool
        Keep the bundle's weights of f0 in the patches f1 and f2 segment
        (:attr:`~napari_paser.engine.bundle.Bundle.fusion`). They were chosen for the
        shipped networks, but on the adapted ones they still lift PaSeR
        (``benchmarks/probe_finetune_fusion.py``); False turns fusion off.
    seed : int
    threads : int or None
        torch threads while fine-tuning (None: leave as is).
    """

    budget_s: float | None = None
    shares: dict = field(default_factory=lambda: {"f2": 0.6, "f1": 0.3, "f0": 0.1})
    lr: dict = field(default_factory=lambda: {"f0": 2e-3, "f1": 1e-3, "f2": 5e-4})
    batch: int = 16
    f0_batch: int = 2
    planes: int = 5
    adapt: str = "all"
    class_power: float = 0.5
    adabn: bool = True
    held_out: float = 0.15
    evaluations: int = 6
    policy_gains: str = "entropy"
    lam_rule: str = "compute"
    lam_tolerance: float = 0.0
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(contrast=0.1, offset=0.03, noise=0.02, noise_prob=0.3, blur=0.8, blur_prob=0.2)
    )
    keep_fusion: bool = True
    seed: int = 0
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneProgress:
    """One progress message.

    Attributes
    ----------
    stage : str
        What runs now (``prepare``, ``adabn``, ``train``, ``lambda``, ``done``).
    elapsed, budget : float
        Seconds since the start and the budget.
    history : dict
        ``time``/``loss`` (running loss of the training steps, any network) and
        ``eval_time``/``iou`` (held-out mean IoU per network) so far: a copy, safe to
        read on another thread while training goes on.
    text : str
        One line for a status label.
    """

    stage: str
    elapsed: float
    budget: float
    history: dict
    text: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.elapsed / self.budget) if self.budget > 0 else 1.0


@dataclass
class FinetuneResult:
    """The adapted bundle and what happened.

    Attributes
    ----------
    bundle : Bundle
        New bundle (the input bundle is not modified); its ``meta["finetune"]`` records
        the run.
    history : dict
        As in :class:`FinetuneProgress`.
    held_out_iou : dict
        Held-out mean IoU per network before (``start``) and after (``best``).
    seconds : float
    cancelled : bool
        Stopped before the budget ran out (the best state so far is in ``bundle``).
    """

    bundle: Bundle
    history: dict
    held_out_iou: dict
    seconds: float
    cancelled: bool


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    """The labelled slices of the scan, normalised and padded, with the held-out set."""

    bank: SliceBank  # the labelled slices
    planes_bank: SliceBank  # the same with their neighbouring planes (``bank`` when 2-D)
    weight: torch.Tensor  # cross-entropy class weights
    x: torch.Tensor  # (n, 1, H, W) padded labelled slices
    x_planes: torch.Tensor  # (n, planes, H, W) the same with their neighbouring planes
    held: torch.Tensor  # (n, H, W) held-out labels, 255 elsewhere (and in padding)
    held_patches: torch.Tensor  # flat indices of the patches holding held-out pixels
    scan: ScanPlanes  # any plane of the scan, read when first used (batch-norm statistics, λ)
    planes: int
    slices: list[int]
    labelled_pixels: int
    held_pixels: int


def _planes(bundle: Bundle, cfg: FinetuneConfig, num_planes: int) -> int:
    """Planes the networks read once adapted: as many as they read already (an adapted
    bundle), else ``cfg.planes`` (1 for a single-plane scan)."""
    read = max(m.config.planes for m in bundle.segmenters())
    if read > 1:
        return read
    return int(cfg.planes) if num_planes > 1 else 1


def _runs(planes: set[int]) -> list[tuple[int, int]]:
    """``[(z0, z1), ...]``: the runs of consecutive planes in ``planes``, in order."""
    out: list[tuple[int, int]] = []
    for z in sorted(planes):
        if out and out[-1][1] == z:
            out[-1] = (out[-1][0], z + 1)
        else:
            out.append((z, z + 1))
    return out


def _prepare(bundle: Bundle, image: Any, labels: Any, cfg: FinetuneConfig) -> _Data:
    ps = bundle.patch_size
    volume = scan_volume(image)
    norm = bundle.normalization
    scan = ScanPlanes(volume, ps, norm.get("low_percentile", 0.5), norm.get("high_percentile", 99.5))
    zs, painted = read_labelled_slices(labels, volume.input_shape)
    train_lab, held_lab = split_held_out(painted, cfg.held_out, block=ps, seed=cfg.seed)
    held_pixels = int((held_lab != UNLABELLED).sum())
    if held_pixels == 0:  # too few labels to spare any: score on the training pixels (optimistic)
        held_lab = train_lab
    planes = _planes(bundle, cfg, len(scan))
    read = {int(i) for z in zs for i in plane_indices(z, len(scan), planes)}  # the painted slices and their neighbours
    scan.keep(read)  # every training step and score reads them; the rest of the scan is read when needed
    labelled = Volume("scan", scan.pixels(zs), train_lab)
    bank = SliceBank([labelled], ps)
    x = scan.stack(zs)
    if planes > 1:
        # One volume per run of consecutive planes the painted slices read, so each keeps
        # its neighbours and the rest of the scan is not loaded.
        trained = dict(zip(zs, train_lab))
        volumes = []
        for z0, z1 in _runs(read):
            lab = np.full((z1 - z0, *scan.plane_shape), UNLABELLED, dtype=np.uint8)
            for z in range(z0, z1):
                if z in trained:
                    lab[z - z0] = trained[z]
            volumes.append(Volume("scan", scan.pixels(range(z0, z1)), lab))
        planes_bank = SliceBank(volumes, ps, planes=planes)
        x_planes = scan.stack(zs, planes)
    else:
        planes_bank, x_planes = bank, x
    h, w = scan.plane_shape
    held = torch.full((len(zs), x.shape[-2], x.shape[-1]), UNLABELLED, dtype=torch.long)
    held[:, :h, :w] = torch.from_numpy(held_lab).long()
    gy, gx = grid_shape((h, w), ps)
    per_patch = (held != UNLABELLED).reshape(len(zs), gy, ps[0], gx, ps[1]).any(4).any(2).reshape(-1)
    return _Data(
        bank=bank,
        planes_bank=planes_bank,
        weight=class_weights([labelled], power=cfg.class_power),
        x=x,
        x_planes=x_planes,
        held=held,
        held_patches=torch.nonzero(per_patch).view(-1),
        scan=scan,
        slices=zs,
        labelled_pixels=int((painted != UNLABELLED).sum()),
        held_pixels=held_pixels,
        planes=planes,
    )


# --------------------------------------------------------------------------- scoring


def _confusion(pred: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    keep = truth != UNLABELLED
    return confusion_matrix(pred[keep].numpy(), truth[keep].numpy())


@torch.no_grad()
def _f0_prob(bundle: Bundle, x: torch.Tensor, seed: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """f0's MC-dropout mean softmax and the policy features of each slice, as at inference
    (slice ``i`` of ``x`` seeded as slice ``first + i``)."""
    out = [analyse_slices(bundle.f0, bundle.policy.config, x[i : i + 1], bundle.mc_passes, slice_seed(seed, first + i))
           for i in range(len(x))]  # x as f0 reads it
    return torch.cat([o[0] for o in out]), torch.cat([o[2] for o in out])


@torch.no_grad()
def _patch_logits(model: UNet, x: torch.Tensor, ps: tuple[int, int], patches: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Argmax of a patch model on the patches ``patches`` (flat indices) of ``x``."""
    win = patch_windows(x, ps, model.config.halo)[patches]
    return torch.cat([model(win[i : i + batch]).argmax(1) for i in range(0, len(win), batch)])


def _labelled_input(data: _Data, model: UNet) -> torch.Tensor:
    """The labelled slices as ``model`` reads them: alone or with their neighbouring planes."""
    return data.x_planes if model.config.planes > 1 else data.x


def _held_patch_truth(data: _Data, ps: tuple[int, int]) -> torch.Tensor:
    from ..engine.patches import patchify

    return patchify(data.held.unsqueeze(1).float(), ps)[data.held_patches, 0].long()


def _score(bundle: Bundle, name: str, data: _Data, seed: int) -> float:
    """Held-out mean IoU of one network (f0: MC mean on whole slices; f1/f2: held-out patches)."""
    ps = bundle.patch_size
    model = getattr(bundle, name)
    model.eval()
    if name == "f0":
        prob, _ = _f0_prob(bundle, _labelled_input(data, model), seed)
        return mean_iou(_confusion(prob.argmax(1), data.held))
    pred = _patch_logits(model, _labelled_input(data, model), ps, data.held_patches)
    return mean_iou(_confusion(pred, _held_patch_truth(data, ps)))


# --------------------------------------------------------------------------- batch norm


@torch.no_grad()
def _adabn(model: UNet, batches: list[torch.Tensor]) -> None:
    """Batch-norm running statistics re-estimated on ``batches`` (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()  # f0's dropout is on, as in its training and its MC inference
    for b in batches:
        model(b)
    for bn, m in zip(bns, saved):
        bn.momentum = m
    model.eval()


def _scan_batches(bundle: Bundle, name: str, data: _Data) -> list[torch.Tensor]:
    """Inputs of a network over evenly spaced slices of the scan: 8 for f0, 4 for the patch
    models, of which at most :data:`ADABN_PATCHES` evenly spaced patches (64 patches of
    224x256 slices pin the statistics down at a quarter of the cost)."""
    z_count = len(data.scan)
    pick = np.unique(np.linspace(0, z_count - 1, min(z_count, 8 if name == "f0" else 4)).round().astype(int))
    model = getattr(bundle, name)
    x = data.scan.stack(pick, model.config.planes)
    if name == "f0":
        return [x[i : i + 4] for i in range(0, len(x), 4)]
    win = patch_windows(x, bundle.patch_size, model.config.halo)
    if len(win) > ADABN_PATCHES:  # large slices: f2 on all 1216 patches of four 1024x1024 slices took 29 s
        win = win[np.linspace(0, len(win) - 1, ADABN_PATCHES).round().astype(int)]
    return [win[i : i + 64] for i in range(0, len(win), 64)]


# --------------------------------------------------------------------------- training


def _trainable(model: UNet, adapt: str) -> list[nn.Parameter]:
    if adapt == "all":
        return list(model.parameters())
    if adapt != "decoder":
        raise ValueError(f"unknown adapt {adapt!r}; choose 'all' or 'decoder'")
    params = [p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()]
    for part in (model.ups, model.head):
        params += [p for p in part.parameters() if all(p is not q for q in params)]
    return params


def _lr(base: float, t: float) -> float:
    """Short warm-up, then cosine decay to 5 % over the budget fraction ``t``."""
    if t < 0.05:
        return base * (0.2 + 0.8 * t / 0.05)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - 0.05) / 0.95))))


def _ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    if not bool((target != UNLABELLED).any()):
        return None  # a crop without labelled pixels: nothing to learn from
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=UNLABELLED)


class _Trainer:
    """One network's optimiser, sampler and step."""

    def __init__(self, bundle: Bundle, name: str, data: _Data, cfg: FinetuneConfig, g: torch.Generator):
        self.name, self.model, self.data, self.cfg, self.g = name, getattr(bundle, name), data, cfg, g
        params = _trainable(self.model, cfg.adapt)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(params, lr=cfg.lr[name], weight_decay=1e-4)
        self.seconds = 0.0
        self.steps = 0

    def step(self, t: float) -> float | None:
        for group in self.opt.param_groups:
            group["lr"] = _lr(self.cfg.lr[self.name], t)
        cfg = self.cfg
        bank = self.data.planes_bank if self.model.config.planes > 1 else self.data.bank
        self.model.eval()  # batch norm stays at the scan's statistics
        if self.name == "f0":
            x, y = bank.sample_slices(cfg.f0_batch, cfg.augment, self.g)
            with mc_dropout(self.model):
                out = self.model(x)
        else:
            x, y = bank.sample_patches(cfg.batch, cfg.augment, self.g, halo=self.model.config.halo)
            with bf16_autocast("cpu"):
                out = self.model(x)
        loss = _ce(out, y, self.data.weight)
        if loss is None:
            return None
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps += 1
        return float(loss.detach())


# --------------------------------------------------------------------------- λ


def validated_flops_ratio(meta: dict) -> float | None:
    """PaSeR's share of f2-everywhere's GFLOPs at the default λ on the bundle's validation
    split (kept through fine-tuning), or None if the bundle records none."""
    share = (meta.get("validation") or {}).get("paser_flops_ratio") or (meta.get("finetune") or {}).get("validated_flops_ratio")
    return float(share) if share else None


@torch.no_grad()
def _policy_gains(bundle: Bundle, x: torch.Tensor, seed: int, first: int = 0) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """f0's MC mean softmax of slices ``x``, the policy's gains (n, 2, GY, GX) there and
    the policy's input features (slice ``i`` seeded as slice ``first + i``)."""
    prob, feats = _f0_prob(bundle, x, seed, first)
    bundle.policy.eval()
    return prob, bundle.policy.gains(feats.float()).numpy(), feats


@torch.no_grad()
def _held_out_table(bundle: Bundle, data: _Data, seed: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The policy's gains (n, 2, GY, GX) on the labelled slices, the confusion matrices
    (P, 3, C, C) of f0, f1 and f2 on the held-out patches and the policy's features."""
    ps = bundle.patch_size
    prob, gains, feats = _policy_gains(bundle, _labelled_input(data, bundle.f0), seed)
    patches = data.held_patches
    f0_pred = patch_windows(prob.argmax(1, keepdim=True).float(), ps, 0)[patches, 0].long()
    preds = torch.stack([f0_pred] + [_patch_logits(m, _labelled_input(data, m), ps, patches) for m in (bundle.f1, bundle.f2)])
    truth = _held_patch_truth(data, ps)
    confs = np.stack([np.stack([_confusion(preds[m, i], truth[i]) for m in range(3)]) for i in range(len(patches))])
    return gains, confs, feats


def _measured_gains(confs: np.ndarray) -> np.ndarray:
    """Mean dataset-IoU gain (2,) of f1 and f2 over f0 on the held-out patches, scaled as
    the policy is trained (× patches)."""
    n = len(confs)
    return (dataset_iou_gains(confs[:, :, None, None])[:, :, 0, 0] * n).mean(0)


@torch.no_grad()
def _fit_policy_to_entropy(bundle: Bundle, data: _Data, feats: torch.Tensor, gains: np.ndarray, confs: np.ndarray) -> dict:
    """Make the policy's gain of f1 / f2 on a patch a level times the patch's mean f0
    entropy over its mean on the held-out patches; returns the fit.

    The trained policy's ranking of patches does not carry over to an adapted scan (on
    development scans its gains tracked the true ones worse than f0's entropy did, on
    some inversely): the ranking comes from f0's entropy. The levels: f1's is the trained
    policy's mean gain of f1 on the held-out patches (what it was validated with); the
    painted pixels cannot set it, since held-out patches of the painted slices rate f0
    too well against the unpainted slices (on one development scan they measured f1 no
    better than f0, and every patch stayed on f0, although f1 was the better network on
    the unpainted slices; ``benchmarks/probe_results.md``). f2's level is f1's plus f2's measured gain over
    f1 on the held-out patches: two patch networks compared on the same patches. The
    policy's network path (and its image residual prior, if any) is zeroed and its linear
    skip (added if the policy has none) reads the entropy channel alone, so the adapted
    bundle routes with the unchanged engine.
    """
    policy = bundle.policy
    policy.clear_slice_level_()  # the entropy sets every patch's gain, its slice's level too
    measured = _measured_gains(confs)
    # _prepare always leaves held-out patches (the training pixels when none can be spared)
    trained = gains.transpose(0, 2, 3, 1).reshape(-1, 2)[data.held_patches.numpy()].mean(0)
    level = np.array([trained[0], trained[0] + measured[1] - measured[0]])
    entropy = policy.patch_means(feats.float())[:, ENTROPY_CHANNEL].reshape(-1)  # as the skip reads it
    mean_entropy = float(entropy[data.held_patches].double().mean())
    if policy.skip is None:
        policy.config.linear_skip = True
        c = policy.config.in_channels
        policy.skip = nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, policy.config.num_models - 1, 1)).eval()
    last = policy.output_layer
    last.weight.zero_()
    cast(torch.Tensor, last.bias).zero_()
    if policy.config.image_residual:  # the entropy alone ranks, as for every policy
        policy.residual_weight.zero_()
    bn, conv = cast(nn.BatchNorm2d, policy.skip[0]), cast(nn.Conv2d, policy.skip[1])
    running_mean, running_var, bias = cast(torch.Tensor, bn.running_mean), cast(torch.Tensor, bn.running_var), cast(torch.Tensor, conv.bias)
    # batch norm in eval mode is x * a + b per channel
    scale = bn.weight / torch.sqrt(running_var + bn.eps)
    a, b = scale[ENTROPY_CHANNEL].double(), (bn.bias - running_mean * scale)[ENTROPY_CHANNEL].double()
    conv.weight.zero_()
    bias.zero_()
    for j in range(2):
        if mean_entropy > 1e-6 and abs(float(a)) > 1e-12:
            slope = level[j] / (mean_entropy * a)  # gain = level * entropy / mean_entropy
            conv.weight[j, ENTROPY_CHANNEL] = float(slope)
            bias[j] = float(-slope * b)
        else:  # f0 certain on every held-out patch: no ranking, the level everywhere
            bias[j] = float(level[j])
    return {
        "rule": "entropy",
        "mean_gain": [round(float(v), 6) for v in level],
        "measured_gain": [round(float(v), 6) for v in measured],
        "mean_entropy": round(mean_entropy, 6),
    }


@torch.no_grad()
def _shift_policy(bundle: Bundle, data: _Data, gains: np.ndarray, confs: np.ndarray) -> dict:
    """Shift the policy's gains of f1 and f2 so that their mean over the held-out patches
    is the adapted networks' measured mean gain there (the trained ranking is kept)."""
    pred = gains.transpose(0, 2, 3, 1).reshape(-1, 2)[data.held_patches.numpy()]
    shift = _measured_gains(confs) - pred.mean(0)
    bundle.policy.rescale_gains_(torch.ones(len(shift)), torch.as_tensor(shift))  # a shift, whatever sets the level
    return {"rule": "shift", "shift": [round(float(v), 6) for v in shift]}


def _held_out_curve(bundle: Bundle, data: _Data, gains: np.ndarray, confs: np.ndarray) -> list[dict]:
    """Held-out mean IoU and routing fractions of PaSeR at every λ of the grid."""
    costs = bundle.costs().numpy()
    curve = []
    for lam in LAM_GRID:
        r = route(gains, float(lam), costs).reshape(-1)[data.held_patches.numpy()]
        cm = confs[np.arange(len(r)), r].sum(0)
        curve.append({"lam": float(lam), "mean_iou": round(mean_iou(cm), 5), "fractions": np.bincount(r, minlength=3).tolist()})
    return curve


@torch.no_grad()
def _compute_shares(bundle: Bundle, data: _Data, seed: int, max_slices: int | None = None) -> list[float]:
    """PaSeR's GFLOPs over f2-everywhere's at every λ of the grid, on up to ``max_slices``
    evenly spaced slices of the scan (default: 16 or as many as hold :data:`SHARE_PIXELS`
    pixels, at least one), charged as validation charges them."""
    from ..engine.flops import CostModel

    n = len(data.scan)
    if max_slices is None:
        h, w = data.scan.plane_shape
        max_slices = max(1, min(16, SHARE_PIXELS // (h * w)))
    zs = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
    # A slice at a time (seeded as one batch of them): these slices are not kept.
    planes = bundle.f0.config.planes
    gains = np.concatenate([_policy_gains(bundle, data.scan.stack([z], planes), seed, first=i)[1] for i, z in enumerate(zs)])
    costs = bundle.costs().numpy()
    cm = CostModel.measure(bundle, data.scan.padded_shape, bundle.mc_passes)
    f2_flops = len(zs) * cm.slice_flops(0, gains[0, 0].size, analysis=False)
    shares = []
    for lam in LAM_GRID:
        routing = route(gains, float(lam), costs)
        shares.append(sum(cm.slice_flops((r == 1).sum(), (r == 2).sum()) for r in routing) / f2_flops)
    return shares


def _fit_policy_and_lam(bundle: Bundle, data: _Data, cfg: FinetuneConfig) -> tuple[float, list[dict], str, dict]:
    """The adapted bundle's default λ, the held-out curve, the rule that chose it (see
    ``lam_rule``) and how the policy's gains were fitted (``policy_gains``)."""
    if cfg.lam_rule not in ("compute", "held_out"):
        raise ValueError(f"unknown lam_rule {cfg.lam_rule!r}; choose 'compute' or 'held_out'")
    if cfg.policy_gains not in ("entropy", "shift", "keep"):
        raise ValueError(f"unknown policy_gains {cfg.policy_gains!r}; choose 'entropy', 'shift' or 'keep'")
    gains, confs, feats = _held_out_table(bundle, data, cfg.seed)
    fit: dict = {"rule": "keep"}
    if cfg.policy_gains == "entropy":
        fit = _fit_policy_to_entropy(bundle, data, feats, gains, confs)
    elif cfg.policy_gains == "shift":
        fit = _shift_policy(bundle, data, gains, confs)
    if fit["rule"] != "keep":
        with torch.no_grad():
            gains = bundle.policy.eval().gains(feats.float()).numpy()
    curve = _held_out_curve(bundle, data, gains, confs)
    share = validated_flops_ratio(bundle.meta)
    if cfg.lam_rule == "compute" and share:
        shares = _compute_shares(bundle, data, cfg.seed)
        for row, v in zip(curve, shares):
            row["flops_ratio"] = round(float(v), 5)
        within = [row["lam"] for row in curve if row["flops_ratio"] <= share]
        lam = min(within) if within else float(LAM_GRID[-1])
        return lam, curve, f"smallest lambda whose GFLOPs on the scan are at most the validated {share:.4g} x f2-everywhere's", fit
    # Many λ tie on a few held-out patches (routings that differ elsewhere score the same):
    # among the ties the bundle's validated λ (or the nearest to it) is kept.
    best = max(c["mean_iou"] for c in curve)
    ties = [c["lam"] for c in curve if c["mean_iou"] >= best - cfg.lam_tolerance]
    lam = min(ties, key=lambda v: (abs(v - bundle.default_lam), v))
    return lam, curve, f"best held-out IoU (within {cfg.lam_tolerance}); ties: nearest the bundle's default lambda", fit


# --------------------------------------------------------------------------- the loop


def _snapshot(history: dict) -> dict:
    """A copy of the history (a GUI thread plots it while the loop appends)."""
    return {"time": list(history["time"]), "loss": list(history["loss"]), "eval_time": list(history["eval_time"]),
            "iou": {m: list(v) for m, v in history["iou"].items()}}


def _adapt_batch_norm(bundle: Bundle, data: _Data, seed: int, scores: dict[str, float]) -> dict[str, bool]:
    """Re-estimate each network's batch-norm statistics on the scan, keeping them only
    where its held-out IoU does not drop; ``scores`` (held-out IoU per network) is
    updated where they are kept. Returns whether each network kept them."""
    kept = {}
    for m in MODELS:
        model = getattr(bundle, m)
        saved = copy.deepcopy(model.state_dict())
        _adabn(model, _scan_batches(bundle, m, data))
        after = _score(bundle, m, data, seed)
        kept[m] = after >= scores[m]
        if kept[m]:
            scores[m] = after
        else:
            model.load_state_dict(saved)
    return kept


def finetune_iter(
    bundle: Bundle,
    image: Any,
    labels: Any,
    cfg: FinetuneConfig | None = None,
    *,
    stop: Callable[[], bool] | None = None,
    progress_every: float = 1.0,
) -> Generator[FinetuneProgress, None, FinetuneResult]:
    """Adapt a copy of ``bundle`` to ``image`` from sparse ``labels``; yields progress.

    Parameters
    ----------
    bundle : Bundle
        The starting point (not modified).
    image : array_like or Volume
        The scan, (Z, Y, X) or (Y, X), any dtype: an array (numpy, dask, Zarr) or a
        lazily read :class:`~napari_paser.io_sources.Volume`. Only the planes fine-tuning
        uses are read and kept: the painted slices with their neighbouring planes and a
        few evenly spaced slices (:class:`~.scan_planes.ScanPlanes`).
    labels : array_like or Volume
        Same shape: 0 pore, 1 carbon-binder, 2 nickel, 255 unlabelled; read a slab at a
        time, keeping only the slices that hold a label.
    cfg : FinetuneConfig, optional
    stop : callable, optional
        Polled between steps; when it returns True training ends early and the best
        networks so far are returned (``cancelled`` set).
    progress_every : float
        Seconds between ``train`` progress messages.

    Returns
    -------
    FinetuneResult
        (as the generator's return value; :func:`finetune` returns it directly)

    Raises
    ------
    PaserInputError
        Unusable image or labels (one line: see :func:`..sparse_labels.validate_training_labels`).
    """
    cfg = cfg or FinetuneConfig()
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        torch.manual_seed(cfg.seed)
        bundle = copy.deepcopy(bundle).to("cpu").eval()
        if not cfg.keep_fusion:
            bundle.fusion = (0.0, 0.0)
            bundle.meta.pop("f0_fusion_rule", None)
        history: dict = {"time": [], "loss": [], "eval_time": [], "iou": {m: [] for m in MODELS}}
        data = _prepare(bundle, image, labels, cfg)
        if data.planes > 1:
            bundle.f0, bundle.f1, bundle.f2 = (with_planes(m, data.planes) for m in bundle.segmenters())
        budget = float(cfg.budget_s) if cfg.budget_s else auto_budget(data.labelled_pixels, len(data.slices))
        elapsed = lambda: time.perf_counter() - t0  # noqa: E731
        stopped = lambda: stop is not None and bool(stop())  # noqa: E731
        yield FinetuneProgress("prepare", elapsed(), budget, _snapshot(history), f"{data.labelled_pixels} labelled pixels in {len(data.slices)} slices")

        def record(scores: dict) -> None:
            history["eval_time"].append(round(elapsed(), 2))
            for m in MODELS:
                history["iou"][m].append(round(scores[m], 5))

        start = {m: _score(bundle, m, data, cfg.seed) for m in MODELS}
        adabn = {}
        if cfg.adabn and not stopped():
            yield FinetuneProgress("adabn", elapsed(), budget, _snapshot(history), "batch-norm statistics of the scan")
            adabn = _adapt_batch_norm(bundle, data, cfg.seed, start)
        record(start)
        best = {m: (start[m], copy.deepcopy(getattr(bundle, m).state_dict())) for m in MODELS}

        def score_and_keep_best() -> None:
            """Score every network on the held-out labels; keep the weights of each one's best."""
            scores = {m: _score(bundle, m, data, cfg.seed) for m in MODELS}
            record(scores)
            for m in MODELS:
                if scores[m] > best[m][0]:
                    best[m] = (scores[m], copy.deepcopy(getattr(bundle, m).state_dict()))

        g = torch.Generator().manual_seed(cfg.seed)
        trainers = {m: _Trainer(bundle, m, data, cfg, g) for m in MODELS if cfg.shares.get(m, 0) > 0}
        train_start = elapsed()
        lam_reserve = min(15.0, 0.08 * budget)  # for choosing λ and saving at the end
        train_budget = max(1.0, budget - train_start - lam_reserve)
        eval_every = train_budget / max(1, cfg.evaluations)
        next_eval, last_msg = eval_every, 0.0
        losses: list[float] = []
        cancelled = False
        while trainers:
            t_train = elapsed() - train_start
            if t_train >= train_budget:
                break
            if stopped():
                cancelled = True
                break
            # The network furthest behind its time share goes next.
            name = min(trainers, key=lambda m: trainers[m].seconds / cfg.shares[m])
            tr = trainers[name]
            s = time.perf_counter()
            loss = tr.step(t_train / train_budget)
            tr.seconds += time.perf_counter() - s
            if loss is not None:
                losses.append(loss)
            if elapsed() - train_start >= next_eval:
                next_eval += eval_every
                score_and_keep_best()
            if elapsed() - last_msg >= progress_every and losses:
                last_msg = elapsed()
                history["time"].append(round(last_msg, 2))
                history["loss"].append(round(float(np.mean(losses[-20:])), 5))
                iou = best["f2"][0]
                yield FinetuneProgress("train", last_msg, budget, _snapshot(history), f"loss {history['loss'][-1]:.3f}, best held-out IoU f2 {iou:.3f}")
        if trainers and not cancelled:  # a last score of the final networks
            score_and_keep_best()
        for m in MODELS:
            getattr(bundle, m).load_state_dict(best[m][1])
            getattr(bundle, m).eval()
            for p in getattr(bundle, m).parameters():
                p.requires_grad_(True)
        yield FinetuneProgress("lambda", elapsed(), budget, _snapshot(history), "choosing λ")
        lam, curve, lam_rule, policy_fit = _fit_policy_and_lam(bundle, data, cfg)
        old_lam = bundle.default_lam
        bundle.default_lam = float(lam)
        seconds = elapsed()
        held = {"start": {m: round(start[m], 5) for m in MODELS}, "best": {m: round(best[m][0], 5) for m in MODELS}}
        meta = dict(bundle.meta)
        parent = bundle.name
        for k in ("training", "validation"):
            meta.pop(k, None)
        meta["version"] = str(meta.get("version", "1.0.0")) + "+ft"
        meta["description"] = f"{parent} adapted to one scan from {data.labelled_pixels} labelled pixels in {seconds:.0f} s"
        meta["finetune"] = {
            "from": parent,
            "from_path": str(bundle.path) if bundle.path else None,
            "labelled_pixels": data.labelled_pixels,
            "labelled_slices": data.slices,
            "held_out_pixels": data.held_pixels,
            "budget_s": round(budget, 1),
            "seconds": round(seconds, 1),
            "cancelled": cancelled,
            "steps": {m: t.steps for m, t in trainers.items()},
            "adabn_kept": adabn,
            "held_out_iou": held,
            "default_lam": {
                "before": old_lam,
                "after": float(lam),
                "rule": lam_rule,
            },
            # kept, so that adapting this bundle again keeps the same compute share
            "validated_flops_ratio": validated_flops_ratio(bundle.meta),
            "lam_curve": curve,
            "policy_fit": policy_fit,
            "config": {k: v for k, v in cfg.to_dict().items() if k != "augment"},
            "torch_threads": torch.get_num_threads(),
        }
        bundle.meta = meta
        bundle.path = None
        yield FinetuneProgress("done", seconds, budget, _snapshot(history), f"held-out IoU f2 {start['f2']:.3f} -> {best['f2'][0]:.3f}")
        return FinetuneResult(bundle, history, held, seconds, cancelled)
    finally:
        if cfg.threads:
            torch.set_num_threads(old_threads)


def finetune(
    bundle: Bundle,
    image: Any,
    labels: Any,
    cfg: FinetuneConfig | None = None,
    *,
    stop: Callable[[], bool] | None = None,
    callback: Callable[[FinetuneProgress], None] | None = None,
) -> FinetuneResult:
    """:func:`finetune_iter` run to the end; ``callback`` receives every progress message."""
    return run_steps(finetune_iter(bundle, image, labels, cfg, stop=stop), callback)


# --------------------------------------------------------------------------- saving

_NAME_RE = re.compile(r"[^A-Za-z0-9._+-]+")


def unique_bundle_folder(parent: str | Path, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3``... if that folder exists already.

    The user's files are never replaced: a new fine-tuning gets a new folder.
    """
    clean = _NAME_RE.sub("-", name).strip("-.") or "paser-finetuned"
    parent = Path(parent)
    folder, k = parent / clean, 2
    while folder.exists():
        folder, k = parent / f"{clean}-{k}", k + 1
    return folder


def save_finetuned(result: FinetuneResult, folder: str | Path, name: str | None = None) -> Path:
    """Write the adapted bundle to ``folder`` (refuses an existing bundle there).

    Parameters
    ----------
    name : str, optional
        Bundle name in the manifest (default: the folder's name).
    """
    folder = Path(folder)
    if (folder / "manifest.json").exists():
        raise FileExistsError(f"{folder} already holds a bundle; choose another name")
    result.bundle.meta["name"] = name or folder.name
    try:
        return save_bundle(result.bundle, folder)
    except PermissionError as err:
        raise PaserInputError(f"cannot write the bundle to {folder}: {err}") from err
