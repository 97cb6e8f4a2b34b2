"""One training run end to end: split, the stages with checkpoints, bundle, report.

:func:`train` is what ``napari-paser train`` calls. Rerunning it with the same data,
preset and seed into the same folder resumes at the first unfinished stage (and inside
it, at the last periodic checkpoint).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..engine.bundle import Bundle, check_fusion, copy_matching_weights, default_model_configs, save_bundle
from ..engine.flops import CostModel
from ..engine.models import UNet
from ..errors import PaserInputError
from .checkpoint import Checkpointer
from .datasets import SliceBank, Volume, class_weights, split_volumes
from .presets import TrainConfig
from .rewards import RewardCache, load_reward_caches
from .stages import StageContext, cache_rewards, finetune_joint, pretrain_f0, pretrain_patch_model, train_f0_refiner, train_policy
from .validation import evaluate_caches

__all__ = ["STAGES", "TrainResult", "train"]

STAGES = ("pretrain_f2", "pretrain_f1", "pretrain_f0", "refine_f0", "policy", "finetune")


@dataclass
class TrainResult:
    """Where a run wrote its bundle and report, and its summary."""

    bundle_dir: Path
    report_path: Path
    report: dict
    bundle: Bundle


def _logger(out: Path, echo: bool) -> Callable[[str], None]:
    path = out / "training_log.txt"

    def log(line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with open(path, "a") as fh:
            fh.write(f"{stamp} {line}\n")
        if echo:
            print(line, file=sys.stderr, flush=True)

    return log


def _cached_rewards(ctx: StageContext, bundle: Bundle, bank: SliceBank, copies: int, name: str = "rewards-rl.pt") -> list[RewardCache]:
    """The RL split's reward caches, computed once per run and kept in ``checkpoints/``.

    f0, f1 and f2 are final when the policy stage starts, so a resumed or repeated policy
    stage reuses them (minutes of f2 inference on a CPU).
    """
    path = ctx.ckpt.folder / name
    if path.is_file():
        ctx.log(f"[policy] reward caches from {path.name}")
        return load_reward_caches(path)
    caches = cache_rewards(ctx, bundle, bank, copies)
    ctx.ckpt.save_tensors(path.name, [c.tensors() for c in caches])
    return caches


def split_policy_holdout(volumes: Sequence[Volume], share: float, seed: int) -> tuple[list[Volume], list[Volume]]:
    """The RL volumes the policy is fitted on and those held out for its early stopping.

    ``round(share * n)`` whole volumes, at least one and never all of them, drawn with
    ``seed``; none when ``share`` is 0 or there is a single RL volume.
    """
    n = len(volumes)
    if share <= 0 or n < 2:
        return list(volumes), []
    k = min(n - 1, max(1, int(round(share * n))))
    held = set(np.random.default_rng(seed + 1).permutation(n)[:k].tolist())
    return [v for i, v in enumerate(volumes) if i not in held], [v for i, v in enumerate(volumes) if i in held]


def _signature(volumes: Sequence[Volume], validation: Sequence[Volume] | None, cfg: TrainConfig, seed: int, init: str | None, configs: dict,
               extra_pretrain: Sequence[Volume] = (), extra_rl: Sequence[Volume] = ()) -> dict:
    # The default λ's rule is applied after the last stage: changing it re-chooses λ on
    # the finished networks instead of refusing the checkpoints.
    lam_rule = ("iou_ratio_target", "flops_ratio_target", "lam_flops_margin", "tvd")
    return {
        "config": {k: v for k, v in cfg.to_dict().items() if k not in lam_rule},
        "seed": int(seed),
        "init": init,
        "architecture": {k: v.to_dict() for k, v in configs.items()},
        "data": [[v.name, list(v.image.shape)] for v in volumes],
        "validation": None if validation is None else [[v.name, list(v.image.shape)] for v in validation],
        "extra_pretrain": [[v.name, list(v.image.shape)] for v in extra_pretrain],
        **({"extra_rl": [[v.name, list(v.image.shape)] for v in extra_rl]} if extra_rl else {}),
    }


def _run_stage(ctx: StageContext, stage: str, bundle: Bundle, banks: dict[str, SliceBank], held_vols: list[Volume], planes: int,
               f1_teacher: UNet | None = None) -> dict:
    """Run one of :data:`STAGES` on its split of the volumes; returns its history.

    ``held_vols``: RL volumes held out of the policy's fit for early stopping (none: fit on all).
    ``f1_teacher``: the network f1 learns from beside the labels (``TrainConfig.f1_distill``)."""
    cfg = ctx.cfg
    if stage == "pretrain_f2":
        return pretrain_patch_model(ctx, bundle.f2, stage, banks["pretrain"], cfg.f2_steps, cfg.f2_lr, focus_on=bundle.f1, focus=cfg.f2_focus)
    if stage == "pretrain_f1":
        return pretrain_patch_model(ctx, bundle.f1, stage, banks["pretrain"], cfg.f1_steps, cfg.f1_lr,
                                    teacher=f1_teacher, distill=cfg.f1_distill)
    if stage == "pretrain_f0":
        return pretrain_f0(ctx, bundle, banks["pretrain"], stage)
    if stage == "refine_f0":
        return train_f0_refiner(ctx, bundle, banks["pretrain"], stage)
    if stage == "finetune":
        return finetune_joint(ctx, bundle, banks["finetune"], stage)
    if cfg.policy_steps <= 0:
        ctx.log("[policy] policy_steps is 0: the warm-started policy is kept")
        return {}
    caches = _cached_rewards(ctx, bundle, banks["rl"], cfg.rl_copies)
    holdout = _cached_rewards(ctx, bundle, SliceBank(held_vols, bundle.patch_size, planes), cfg.rl_copies, "rewards-rl-holdout.pt") if held_vols else None
    iou = torch.cat([c.iou.mean((0, 2, 3)).unsqueeze(0) for c in caches]).mean(0)
    ctx.log(f"[policy] cached rewards of {sum(len(c) for c in caches)} slices; per-patch IoU f0/f1/f2 = {[round(float(v), 4) for v in iou]}")
    if held_vols:
        ctx.log(f"[policy] early stopping on {len(held_vols)} held-out RL volumes: {', '.join(v.name for v in held_vols)}")
    return train_policy(ctx, bundle, caches, stage, holdout=holdout)


def _validate(ctx: StageContext, bundle: Bundle, bank: SliceBank, seed: int) -> dict:
    """Score the trained bundle on ``bank`` and choose its default λ (:func:`evaluate_caches`)."""
    cfg = ctx.cfg
    caches = cache_rewards(ctx, bundle, bank, 1, stage="validation")
    report = evaluate_caches(bundle, caches, iou_target=cfg.iou_ratio_target, flops_target=cfg.flops_ratio_target, margin=cfg.lam_flops_margin,
                             tvd=cfg.tvd, seed=seed)
    p = report["paser"]
    ctx.log(
        "validation mean IoU: "
        + ", ".join(f"{k} {v['mean_iou']:.4f}" for k, v in report["models"].items())
        + f"; PaSeR at lambda {report['default_lam']:.3f}: {p['mean_iou']:.4f} ({p['iou_ratio']:.3f} x f2) with "
        f"{p['flops_ratio']:.3f} x f2 GFLOPs; random routing (same fractions) {report['random_same_fractions']['mean_iou']:.4f}"
    )
    return report


def _flops_manifest(bundle: Bundle, shape: tuple[int, int]) -> dict:
    """The manifest's ``flops`` entry: what f0's analysis, each patch and f2 on every patch
    of a slice of ``shape`` (rows, columns) cost, and the ratios the presets are sized by."""
    cost = CostModel.measure(bundle, shape, bundle.mc_passes)
    gy, gx = shape[0] // bundle.patch_size[0], shape[1] // bundle.patch_size[1]
    f0_pass = cost.f0_encode + cost.f0_decode + cost.f0_refine
    return {
        "slice_shape": list(shape),
        "f0_mc_analysis": cost.analysis,
        "patch": list(cost.patch),
        "f2_everywhere_per_slice": gy * gx * cost.patch[2],
        # Per slice, f1/f2 on every patch against f0's whole MC analysis...
        "ratio_f2_f1_f0": [round(gy * gx * cost.patch[2] / cost.f0_mc, 2), round(gy * gx * cost.patch[1] / cost.f0_mc, 2), 1.0],
        # ...and against one plain f0 pass (model size alone, as the presets are sized).
        "ratio_f2_f1_f0_one_pass": [round(gy * gx * cost.patch[2] / f0_pass, 2), round(gy * gx * cost.patch[1] / f0_pass, 2), 1.0],
    }


def train(
    volumes: Sequence[Volume],
    out: str | Path,
    cfg: TrainConfig,
    *,
    validation: Sequence[Volume] | None = None,
    extra_pretrain: Sequence[Volume] = (),
    extra_rl: Sequence[Volume] = (),
    init: Bundle | None = None,
    warm_start: Bundle | None = None,
    teacher: Bundle | None = None,
    configs: dict[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
    command: str = "",
    name: str | None = None,
    description: str | None = None,
    progress: bool = True,
    echo: bool = True,
) -> TrainResult:
    """Train (or fine-tune ``init``) a PaSeR bundle and write it with its report to ``out``.

    Parameters
    ----------
    volumes : sequence of Volume
        Labelled, normalised training volumes (split here by volume).
    out : path
        Bundle folder; also receives ``training_report.json``, the figures, the log
        and ``checkpoints/``.
    cfg : TrainConfig
    validation : sequence of Volume, optional
        Validation volumes given separately (e.g. the paper layout's split); otherwise
        they are split off ``volumes``.
    extra_pretrain : sequence of Volume, optional
        More volumes for the pre-training split only (f2, f1, f0 and the class weights),
        added after the split of ``volumes``: the RL and validation volumes stay the
        same as without them, so bundles trained on more data remain comparable.
    extra_rl : sequence of Volume, optional
        More volumes for the policy's split only (its reward caches and, with
        ``cfg.policy_holdout``, its held-out volumes), added after the split; they must
        be unseen by f0, f1 and f2, or their gains would flatter the networks.
    init : Bundle, optional
        Start from this bundle's weights, architecture and normalisation.
    warm_start : Bundle, optional
        For a fresh bundle: start each network whose weights fit (same parameter names
        and shapes) from this bundle's (see ``copy_matching_weights``); the rest start
        from scratch.
    teacher : Bundle, optional
        With ``cfg.f1_distill``: the bundle whose f1 teaches f1 beside the labels; by
        default the warm start's, where its f1 has another shape than this bundle's
        (with a teacher given, a warm-started f1 of the new shape trains on).
    configs : dict, optional
        Architecture configs for a fresh bundle (default: ``default_model_configs``
        of the preset; ``paper`` for the paper preset, ``quick`` otherwise).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = _logger(out, echo)
    t_run = time.time()
    dev = torch.device(device)
    torch.manual_seed(seed)
    if init is not None:
        bundle = copy.deepcopy(init)
        configs = {k: copy.deepcopy(m.config) for k, m in bundle.models().items()}
        init_name = str(init.path) if init.path else init.name
    else:
        configs = configs or default_model_configs(cfg.arch)
        bundle = Bundle.from_configs(copy.deepcopy(configs), seed=seed, mc_passes=cfg.mc_passes)
        init_name = None
    warm = None
    if warm_start is not None and init is None:
        warm = {"bundle": warm_start.name, "models": copy_matching_weights(bundle, warm_start)}
        log(f"warm start from {warm['bundle']}: {', '.join(warm['models']) or 'no network fits'}")
    if not 0.0 <= cfg.f1_distill <= 1.0:
        raise ValueError(f"f1_distill is the weight of the teacher's soft targets, between 0 and 1; got {cfg.f1_distill}")
    f1_teacher, teacher_record = None, {}
    if cfg.f1_distill > 0 and cfg.f1_steps > 0:
        if teacher is None:
            if warm is None or "f1" in warm["models"]:
                raise PaserInputError("this preset trains f1 on another f1 as a teacher: give --teacher, or --warm-start a "
                                      "bundle whose f1 has another shape than the preset's (a copied f1 would teach itself)")
            assert warm_start is not None  # warm is set only with a warm start
            teacher = warm_start
        if teacher.f1.config.halo != bundle.f1.config.halo:
            raise PaserInputError(f"the teacher's f1 reads a halo of {teacher.f1.config.halo} pixels and this f1 one of "
                                  f"{bundle.f1.config.halo}: a teacher must see the patches as f1 does")
        f1_teacher = copy.deepcopy(teacher.f1).eval()
        # In the checkpoints' signature and the manifest only with a teacher, so that earlier runs still resume.
        teacher_record = {"f1_teacher": teacher.name}
        log(f"f1 learns from {teacher.name}'s f1 as a teacher (weight {cfg.f1_distill})")
    if cfg.policy_keep_network and "policy" not in (warm or {}).get("models", []):
        raise PaserInputError("this preset keeps the warm-started policy network and fits only its slice level, "
                              "but no policy was copied: --warm-start a bundle whose policy has this preset's architecture")
    if any(cfg.f0_fusion):
        bundle.fusion = check_fusion(cfg.f0_fusion)
        log(f"f0 fused into f1 / f2 at {bundle.fusion[0]:.2f} / {bundle.fusion[1]:.2f} (reward caches and validation)")
    signature = _signature(volumes, validation, cfg, seed, init_name, configs, extra_pretrain, extra_rl) | {"warm_start": warm}
    ckpt = Checkpointer(out / "checkpoints", signature | teacher_record)
    if ckpt.load_models(bundle.models()):
        log(f"resuming: stages done {ckpt.done}")

    split = split_volumes(len(volumes), cfg.splits, seed, has_validation=validation is not None)
    parts = {s: [volumes[i] for i in idx] for s, idx in split.items()}
    parts["pretrain"] += list(extra_pretrain)
    parts["rl"] += list(extra_rl)
    val_vols = list(validation) if validation is not None else parts["val"]
    split_names = {s: [v.name for v in vs] for s, vs in parts.items()}
    split_names["val"] = [v.name for v in val_vols]
    fit_vols, held_vols = split_policy_holdout(parts["rl"], cfg.policy_holdout if cfg.policy_objective in ("regression", "linear", "dense") else 0.0, seed)
    if held_vols:  # the policy is fitted on the rest of the RL split
        split_names["rl"] = [v.name for v in fit_vols]
        split_names["rl_holdout"] = [v.name for v in held_vols]
    log("split by volume: " + "; ".join(f"{s} {len(v)}" for s, v in split_names.items()))
    ps = bundle.patch_size
    # Every sample carries the planes of the bundle's widest reader; each network takes
    # its own centre planes (engine.models.centre_planes).
    planes = max(m.config.planes for m in bundle.segmenters())
    # The policy is fitted on fit_vols (all the RL split unless some are held out).
    banks = {s: SliceBank(vols, ps, planes) for s, vols in (("pretrain", parts["pretrain"]), ("rl", fit_vols), ("finetune", parts["finetune"]))}
    weights = class_weights(parts["pretrain"])
    ctx = StageContext(cfg=cfg, device=dev, ckpt=ckpt, seed=seed, log=log, progress=progress, class_weights=weights)
    log(f"class weights (pore, carbon-binder, nickel): {[round(float(w), 3) for w in weights]}")

    histories: dict[str, dict] = dict(ckpt.state["history"])
    for stage in STAGES:
        if ckpt.is_done(stage):
            continue
        t0 = time.time()
        log(f"[{stage}] start")
        h = _run_stage(ctx, stage, bundle, banks, held_vols, planes, f1_teacher)
        minutes = (time.time() - t0 + ckpt.resumed_seconds.pop(stage, 0.0)) / 60
        histories[stage] = h
        ckpt.save_stage(stage, bundle.models(), minutes, h)
        log(f"[{stage}] done in {minutes:.2f} min")

    bundle.to("cpu").eval()
    t0 = time.time()
    validation_report = None
    default_lam, rule = bundle.default_lam, "kept from the initial bundle" if init is not None else "preset default"
    eval_bank = SliceBank(val_vols, ps, planes) if val_vols else None
    if eval_bank is None and init is None:
        # No volume to spare: choose on the RL split (optimistic, recorded as such).
        eval_bank = SliceBank(parts["rl"], ps, planes) if held_vols else banks["rl"]
        rule_suffix = " (on the RL split: no validation volume)"
    else:
        rule_suffix = ""
    if eval_bank is not None:
        validation_report = _validate(StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=ckpt, seed=seed + 12345, log=log, progress=False),
                                      bundle, eval_bank, seed)
        default_lam, rule = validation_report["default_lam"], validation_report["default_lam_rule"] + rule_suffix
    bundle.default_lam = float(default_lam)
    stage_minutes = dict(ckpt.state["minutes"])
    stage_minutes["validation"] = round((time.time() - t0) / 60, 3)
    image = banks["pretrain"].images[0]
    meta = dict(init.meta) if init is not None else {}
    meta.pop("training", None)
    meta.update(
        {
            "name": name or out.name,
            "version": meta.get("version", "1.0.0") if init is None else meta.get("version", "1.0.0") + "+ft",
            "description": description
            or (f"fine-tuned from {init.name} on {len(volumes)} labelled volume(s)" if init is not None else f"PaSeR trained with the {cfg.preset} preset"),
            "default_lam_rule": rule,
            "flops": _flops_manifest(bundle, (int(image.shape[-2]), int(image.shape[-1]))),
            "training": {
                "command": command,
                "seed": int(seed),
                "preset": cfg.preset,
                "init": init_name,
                "warm_start": warm,
                **teacher_record,
                "data": split_names,
                "minutes": {**stage_minutes, "total": round(sum(v for v in stage_minutes.values()), 2)},
                "device": str(dev),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "napari_paser": __version__,
            },
        }
    )
    if validation_report is not None:
        meta["validation"] = {
            "mean_iou": {k: round(v["mean_iou"], 4) for k, v in validation_report["models"].items()}
            | {"paser": round(validation_report["paser"]["mean_iou"], 4)},
            "paser_flops_ratio": round(validation_report["paser"]["flops_ratio"], 4),
            "paser_fractions": validation_report["paser"]["fractions"],
        }
    bundle.meta = meta
    save_bundle(bundle, out, overwrite=True)
    report = {
        "bundle": str(out),
        "command": command,
        "seed": seed,
        "preset": cfg.preset,
        "config": cfg.to_dict(),
        "split": split_names,
        "minutes": meta["training"]["minutes"],
        "wall_minutes_this_run": round((time.time() - t_run) / 60, 2),
        "parameters": bundle.parameter_counts(),
        "costs": [float(c) for c in bundle.costs()],
        "default_lam": bundle.default_lam,
        "default_lam_rule": rule,
        "validation": validation_report,
        "history": histories,
    }
    from .report import write_report

    path = write_report(out, report)
    log(f"bundle written to {out} (default lambda {bundle.default_lam:.3f}); report {path.name}")
    return TrainResult(out, path, report, bundle)
