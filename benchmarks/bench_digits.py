"""Complementary models (paper R4) on scikit-learn's bundled handwritten digits.

Each 8x8 digit is upsampled to 32x32 (bilinear); the label is foreground where the
clean upsampled digit exceeds a quarter of the full ink value (16), background elsewhere.
Three corruptions: Gaussian blur σ 1, Gaussian blur σ 2 and a 5x5 box blur. f0 (tiny,
MC dropout), f1 and f2 are trained with the train package's stage-1 function, each on one
corruption only; every image is one patch (32x32), so routing is per image as in the
paper's MNIST setup. The policy is trained by the train package's REINFORCE stage
(λ drawn per example, so the λ = 0 policy is part of it); the paper's TVD fine-tuning
at 0 / 5 / 10 % is the engine's TVD mode: the largest λ whose routing on the validation
images stays within that TVD of the λ = 0 routing. The IDK cascade is tuned as in B4.
Needs scikit-learn (the ``benchmark`` extra).
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from scipy import ndimage

from common import LAM_IDK, Timer, build_table, idk_grid, match_idk, run_methods, tune_idk
from napari_paser.engine.baselines import idk_method
from napari_paser.engine.pipeline import register_method

CORRUPTIONS = ("gaussian blur σ1", "gaussian blur σ2", "box blur 5x5")
SIZE = 32
INK = 16.0


def corrupt(clean: np.ndarray, kind: int) -> np.ndarray:
    if kind == 0:
        return ndimage.gaussian_filter(clean, sigma=(0, 1, 1))
    if kind == 1:
        return ndimage.gaussian_filter(clean, sigma=(0, 2, 2))
    return ndimage.uniform_filter(clean, size=(1, 5, 5))


def load_digits_32():
    from sklearn.datasets import load_digits

    d = load_digits()
    img8 = d.images.astype(np.float32)  # (1797, 8, 8) in [0, 16]
    clean = ndimage.zoom(img8, (1, SIZE / 8, SIZE / 8), order=1, grid_mode=True, mode="nearest").astype(np.float32)
    labels = (clean > INK / 4).astype(np.uint8)
    return clean, labels


def configs():
    from napari_paser.engine.models import PolicyConfig, UNetConfig

    return {
        "f0": UNetConfig(base_width=2, depth=2, dropout=0.1),
        "f1": UNetConfig(base_width=6, depth=2),
        "f2": UNetConfig(base_width=16, depth=2),
        "policy": PolicyConfig(width=8, pool=2, patch_size=(SIZE, SIZE)),
    }


def normalize_together(stacks, bundle):
    """One normaliser for all corruptions (as a mixed test stack would get)."""
    from napari_paser.engine.normalize import Normalizer

    allpix = np.concatenate([s.reshape(-1) for s in stacks])
    n = bundle.normalization
    norm = Normalizer.fit(allpix.reshape(1, 1, -1), n.get("low_percentile", 0.5), n.get("high_percentile", 99.5))
    return [norm(s).astype(np.float32) for s in stacks]


def run(fast: bool, seed: int, log) -> dict:
    from napari_paser.engine.bundle import Bundle
    from napari_paser.train.augment import AugmentConfig
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.datasets import SliceBank, Volume
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext, cache_rewards, pretrain_patch_model, train_policy

    t = Timer()
    clean, labels = load_digits_32()
    rng = np.random.default_rng(seed + 11)
    order = rng.permutation(len(clean))
    if fast:
        order = order[:360]
    n = len(order)
    cut = [int(n * f) for f in (0.45, 0.65, 0.75)]  # train models / RL / validation / test
    split = {"models": order[: cut[0]], "rl": order[cut[0]: cut[1]], "val": order[cut[1]: cut[2]], "test": order[cut[2]:]}
    res: dict = {"data": {"images": int(len(clean)), "used": n, "split": {k: int(len(v)) for k, v in split.items()},
                          "corruptions": list(CORRUPTIONS), "size": SIZE, "label": "clean upsampled digit > 4 (of 16)"}}

    torch.manual_seed(seed)
    bundle = Bundle.from_configs(configs(), seed=seed, mc_passes=5, default_lam=0.0,
                                 meta={"name": "digits-complementary", "version": "bench"}).eval()
    res["parameters"] = bundle.parameter_counts()
    res["costs"] = [float(c) for c in bundle.costs()]

    # Mixed stacks: each image gets one corruption, equal thirds.
    def mixed(idx, s):
        kinds = np.random.default_rng(s).permutation(np.arange(len(idx)) % 3)
        img = np.stack([corrupt(clean[i][None], k)[0] for i, k in zip(idx, kinds)])
        return img, labels[idx], kinds

    rl_img, rl_lab, rl_kind = mixed(split["rl"], seed + 1)
    val_img, val_lab, val_kind = mixed(split["val"], seed + 2)
    te_img, te_lab, te_kind = mixed(split["test"], seed + 3)
    tr = [corrupt(clean[split["models"]], k) for k in range(3)]
    normed = normalize_together([*tr, rl_img], bundle)
    tr_n, rl_n = normed[:3], normed[3]

    # Stage-1 training of each model on its own corruption (no augmentation that would
    # change the corruption: flips / rotations only).
    aug = AugmentConfig(flips=True, rot90=True, contrast=0.0, offset=0.0, noise=0.0, noise_prob=0.0, blur=0.0, blur_prob=0.0, impulse=0.0)
    steps = 8 if fast else 300
    cfg = get_preset("quick").replace(augment=aug, patch_batch=32, checkpoint_every=10**9, bf16=False, channels_last=False,
                                      policy_steps=10 if fast else 4000, policy_batch=64, rl_copies=2 if fast else 4, epochs=None,
                                      mc_passes=5, lam_power=4.0, aux_weight=20.0, policy_lr=2e-3, alpha=(0.7, 0.95))
    hist = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp, {"benchmark": "digits"}), seed=seed,
                           log=log, progress=False, class_weights=None)
        for m, name in ((0, "f0"), (1, "f1"), (2, "f2")):
            bank = SliceBank([Volume(f"digits-{name}", tr_n[m], labels[split["models"]])], (SIZE, SIZE))
            hist[name] = pretrain_patch_model(ctx, bundle.segmenters()[m], f"digits_{name}", bank, steps, 3e-3)
        bundle.eval()
        t.lap("train_models")
        rl_bank = SliceBank([Volume("digits-rl", rl_n, rl_lab)], (SIZE, SIZE))
        caches = cache_rewards(ctx, bundle, rl_bank, cfg.rl_copies)
        iou = caches[0].iou.mean((0, 2, 3))
        log(f"[digits] RL split per-image IoU f0/f1/f2 = {[round(float(v), 4) for v in iou]}")
        hist["policy"] = train_policy(ctx, bundle, caches, "digits_policy")
    bundle.eval()
    res["training"] = {"steps_per_model": steps, "policy_steps": cfg.policy_steps, "batch": cfg.patch_batch,
                       "lam_power": cfg.lam_power, "rl_copies": cfg.rl_copies, "aux_weight": cfg.aux_weight,
                       "final_loss": {k: (h.get("loss") or [None])[-1] for k, h in hist.items()}}
    log(f"[digits] trained f0/f1/f2 and the policy ({t.lap('train_policy'):.0f} s)")

    # Per-image tables through the engine (each stack is normalised by the engine itself).
    vt = build_table([(val_img, val_lab)], bundle, seed=seed, with_ce=True)
    tt = build_table([(te_img, te_lab)], bundle, seed=seed)
    tuned = tune_idk(vt)
    register_method(idk_method(tuned["thresholds"], name="digits-idk"))
    res["idk_tuning"] = tuned
    # Expert of each image: the model trained on its corruption (also the best model by IoU?).
    per_iou = _per_image_iou(tt)
    res["best_model_agrees_with_expert"] = float(np.mean(per_iou.argmax(1) == te_kind))
    res["per_image_iou_by_corruption"] = {CORRUPTIONS[k]: per_iou[te_kind == k].mean(0).round(4).tolist() for k in range(3)}

    vseg = vt.segs[0][0]
    rows = {}
    tvd_rows = []
    for tau in (0.0, 0.05, 0.10):
        lam = float(vseg.lam_for_tvd(tau))
        r = tt.paser(lam)
        s = tt.score(r, "paser")
        tvd_rows.append({"tvd": tau, "lam": lam, **s, "assignment_accuracy": float(np.mean(r.reshape(-1) == te_kind)),
                         "confusion": _assign_confusion(r.reshape(-1), te_kind).tolist(),
                         "tvd_test": float(0.5 * np.abs(np.bincount(r.reshape(-1), minlength=3) - np.bincount(tt.paser(0.0).reshape(-1), minlength=3)).sum() / r.size)})
    res["tvd"] = tvd_rows
    lam10 = tvd_rows[-1]["lam"]
    register_method(idk_method(tuned["thresholds"], name="digits-idk"))
    grid = idk_grid(tt, steps=21 if fast else 41)
    matched = match_idk(grid, tvd_rows[-1]["mean_iou"])
    register_method(idk_method((matched["a0"], matched["a1"]), name="digits-idk-matched"))
    res["idk_matched"] = {k: matched[k] for k in ("a0", "a1", "mean_iou", "gflops", "match")}
    methods = ["f0", "f1", "f2", "paser", "digits-idk", "digits-idk-matched", "random"]
    check = {"f0": "f0", "f1": "f1", "f2": "f2", "paser": "paser", "digits-idk": "idk", "digits-idk-matched": "idk", "random": "random"}
    table = run_methods(tt, [te_lab], methods, lam10, check=check)
    for name in ("paser", "digits-idk", "digits-idk-matched", "random", "f0", "f1", "f2"):
        r = np.concatenate([seg.result(lam=lam10 if name == "paser" else None, method=name).routing.reshape(-1) for seg, _ in tt.segs])
        table[name]["assignment_accuracy"] = float(np.mean(r == te_kind))
        table[name]["confusion"] = _assign_confusion(r, te_kind).tolist()
    rows = {k.replace("digits-", ""): v for k, v in table.items()}
    res["table"] = rows
    res["lam"] = lam10
    res["oracle"] = tt.score(per_iou.argmax(1).reshape(tt.n, 1, 1).astype(np.uint8), "paser")
    log(f"[digits] evaluation ({t.lap('eval'):.0f} s)")
    res["seconds"] = t.parts
    return res


def _per_image_iou(tt) -> np.ndarray:
    """(N, 3) IoU of each model on each image (one patch per image)."""
    from napari_paser.engine.metrics import mean_iou

    n = tt.n
    return np.array([[mean_iou(tt.conf[i, m].sum((0, 1))) for m in range(3)] for i in range(n)])


def _assign_confusion(assigned: np.ndarray, expert: np.ndarray) -> np.ndarray:
    """Rows: the expert model of the image's corruption; columns: the model used."""
    return np.bincount(expert.astype(int) * 3 + assigned.astype(int), minlength=9).reshape(3, 3)
