"""Synthetic electrode benchmark: Tables 1-3, the λ sweep and MC-dropout passes.

Called by ``run_all.py`` (``run(bundle, fast, seed, log) -> dict``); see BENCHMARKS.md.
"""

from __future__ import annotations

import copy
import tempfile

import numpy as np
import torch

from common import (
    NOISE_SEED,
    RETRAIN_SEEDS,
    TEST_SEEDS,
    VAL_SEEDS,
    Timer,
    build_table,
    cheapest_reaching,
    generator_record,
    idk_grid,
    make_volumes,
    match_idk,
    oracle_front,
    pareto,
    run_methods,
    salt_and_pepper,
    tune_idk,
)
from napari_paser.engine.baselines import idk_method
from napari_paser.engine.pipeline import PaserSegmenter, register_method

TABLE1_METHODS = ["f0", "f1", "f2", "paser", "idk", "idk-matched", "random"]
CHECK = {"f0": "f0", "f1": "f1", "f2": "f2", "paser": "paser", "idk": "idk", "idk-matched": "idk", "random": "random"}
RAND_MIXES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
NOISE_FRACTION = 0.01


def _lam_grid() -> np.ndarray:
    from napari_paser.train.validation import LAM_GRID

    return LAM_GRID


def retrain_noisy(bundle, volumes, steps: tuple[int, int], seed: int, log, batch: int = 16) -> tuple[object, dict]:
    """f1/f2 fine-tuned from the bundle's weights on clean + salt-and-pepper patches (stage 1)."""
    from napari_paser.train.augment import AugmentConfig
    from napari_paser.train.checkpoint import Checkpointer
    from napari_paser.train.datasets import SliceBank, class_weights, make_volume
    from napari_paser.train.presets import get_preset
    from napari_paser.train.stages import StageContext, pretrain_patch_model

    b2 = copy.deepcopy(bundle)
    vols = [make_volume(f"retrain{k}", img, lab, bundle.normalization) for k, (img, lab) in enumerate(volumes)]
    bank = SliceBank(vols, bundle.patch_size)
    # Half the patches get impulse noise, up to 2 % of their pixels (1 % on average).
    cfg = get_preset("init").replace(augment=AugmentConfig(impulse=0.02, impulse_prob=0.5), checkpoint_every=10**9, epochs=None,
                                     patch_batch=batch, f2_lr=2e-4, f1_lr=4e-4, warmup=0.1, weight_decay=1e-4, bf16=True, channels_last=True)
    hist = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(tmp, {"benchmark": "noise"}), seed=seed,
                           log=log, progress=False, class_weights=class_weights(vols))
        hist["f2"] = pretrain_patch_model(ctx, b2.f2, "noise_f2", bank, steps[0], cfg.f2_lr)
        hist["f1"] = pretrain_patch_model(ctx, b2.f1, "noise_f1", bank, steps[1], cfg.f1_lr)
    b2.eval()
    info = {"steps": {"f2": steps[0], "f1": steps[1]}, "batch": cfg.patch_batch, "lr": [cfg.f2_lr, cfg.f1_lr], "impulse": 0.02, "impulse_prob": 0.5,
            "slices": len(bank), "loss_f2": [hist["f2"]["loss"][0], hist["f2"]["loss"][-1]] if hist["f2"].get("loss") else None,
            "loss_f1": [hist["f1"]["loss"][0], hist["f1"]["loss"][-1]] if hist["f1"].get("loss") else None}
    return b2, info


def run(bundle, fast: bool, seed: int, log) -> dict:
    t = Timer()
    n_test, n_val, n_re = (1, 1, 1) if fast else (len(TEST_SEEDS), len(VAL_SEEDS), len(RETRAIN_SEEDS))
    slices = 3 if fast else 8
    res: dict = {"data": {
        "test_seeds": list(TEST_SEEDS[:n_test]), "val_seeds": list(VAL_SEEDS[:n_val]), "retrain_seeds": list(RETRAIN_SEEDS[:n_re]),
        "slices_per_volume": slices, "slice_shape": [224, 256], "generator": generator_record(), "noise": f"salt and pepper, {NOISE_FRACTION:.0%} of pixels per slice (slice min / max), seed {NOISE_SEED}",
    }}
    test = make_volumes(TEST_SEEDS[:n_test], slices)
    val = make_volumes(VAL_SEEDS[:n_val], slices)
    noisy = [(salt_and_pepper(img, NOISE_FRACTION, NOISE_SEED + k), lab) for k, (img, lab) in enumerate(test)]
    truths = [lab for _, lab in test]
    log(f"[synth] data: {n_test} test, {n_val} val volumes x {slices} slices ({t.lap('data'):.0f} s)")

    # IDK thresholds on validation volumes (paper B4).
    vt = build_table(val, bundle, seed=seed, with_ce=True)
    tuned = tune_idk(vt)
    tuned["tuned_on"] = f"synthetic validation volumes, seeds {list(VAL_SEEDS[:n_val])}"
    res["idk_tuning"] = tuned
    register_method(idk_method(tuned["thresholds"], name="idk"))  # the tuned cascade under its usual name
    log(f"[synth] IDK thresholds {tuned['thresholds']} (l_IDK {tuned['loss']:.4f}) ({t.lap('idk_tuning'):.0f} s)")

    # Test table (clean): every patch through f0/f1/f2 once, then everything is scored.
    tt = build_table(test, bundle, seed=seed)
    lam = float(bundle.default_lam)
    paser = tt.score(tt.paser(lam), "paser")
    grid = idk_grid(tt, steps=21 if fast else 61)
    matched = match_idk(grid, paser["mean_iou"])
    res["idk_matched"] = {k: matched[k] for k in ("a0", "a1", "mean_iou", "gflops", "match")}
    register_method(idk_method((matched["a0"], matched["a1"]), name="idk-matched"))
    log(f"[synth] test table + IDK grid ({t.lap('test_table'):.0f} s)")

    res["lam"] = lam
    res["table1_clean"] = run_methods(tt, truths, TABLE1_METHODS, lam, check=CHECK)
    log(f"[synth] table 1 clean ({t.lap('table1_clean'):.0f} s)")

    # λ sweep (Fig. 5b): PaSeR (one policy, all λ), IDK thresholds, random mixes.
    sweep = {"paser": [], "idk_front": [], "random": []}
    for lm in _lam_grid():
        sweep["paser"].append({"lam": float(lm), **tt.score(tt.paser(float(lm)), "paser")})
    sweep["idk_front"] = pareto(grid)
    sweep["idk_tuned"] = tt.score(tt.idk(*tuned["thresholds"]), "idk")
    for q in RAND_MIXES:
        probs = (1 - q, q / 2, q / 2)
        sweep["random"].append({"probs": list(probs), **tt.score(tt.random(probs, seed), "random")})
    sweep["random_uniform"] = tt.score(tt.random((1, 1, 1), seed), "random")
    sweep["f"] = {m: tt.score(tt.constant(i), m) for i, m in enumerate(("f0", "f1", "f2"))}
    res["sweep"] = sweep
    # Area-free comparison of the curves: best IoU each method reaches within GFLOP budgets.
    budgets = [f * sweep["f"]["f2"]["gflops"] for f in (0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.2, 0.3, 0.5, 1.0)]
    # Oracle routing (knows the truth): the best any policy could do with these models.
    front = oracle_front(tt)
    sweep["oracle"] = front
    at_paser = cheapest_reaching(front, paser["mean_iou"])
    third = [p["mean_iou"] for p in front if p["gflops"] <= matched["gflops"] / 3]
    res["oracle"] = {
        "at_paser_iou": at_paser,
        "gflops_ratio_to_idk_matched": at_paser["gflops"] / matched["gflops"] if at_paser else None,
        "best_iou_within_third_of_idk_matched": max(third) if third else None,
        "note": "routes each patch by its true first-order gain in dataset IoU minus lambda x GFLOPs (uses the labels)",
    }
    res["curve_compare"] = []
    for b in budgets:
        row = {"gflops_budget": b, "budget_ratio_f2": b / sweep["f"]["f2"]["gflops"]}
        for key, pts in (("paser", sweep["paser"]), ("idk", grid), ("random", sweep["random"]), ("oracle", front)):
            ok = [p["mean_iou"] for p in pts if p["gflops"] <= b]
            row[key] = max(ok) if ok else None
        res["curve_compare"].append(row)
    log(f"[synth] lambda sweep ({t.lap('sweep'):.0f} s)")

    # Noisy copies with the same bundle (Table 1, noisy).
    nt = build_table(noisy, bundle, seed=seed)
    res["table1_noisy"] = run_methods(nt, truths, TABLE1_METHODS, lam, check=CHECK)
    log(f"[synth] table 1 noisy ({t.lap('table1_noisy'):.0f} s)")

    # MC-dropout passes: 5 (bundle) vs 20, sampled, and their closed form if f0 has one.
    from scipy import stats

    mc = {}
    closed_form = [None] if bundle.f0.config.mc_estimate == "moments" else []
    for passes in (bundle.mc_passes, 20, *closed_form):
        ents, pix = [], []
        cm = np.zeros((3, 3), dtype=np.int64)
        gflops = secs = f0_secs = 0.0
        for (img, lab) in test:
            seg = PaserSegmenter(bundle, mc_passes=passes, seed=seed)  # None: the bundle's closed form
            seg.set_volume(img)
            r = seg.result(lam=lam, method="paser")
            cm += np.bincount((lab.astype(np.int64) * 3 + r.labels).ravel(), minlength=9).reshape(3, 3)
            gflops += r.gflops_total
            secs += r.compute_seconds
            f0_secs += sum(seg.timings(z)[0] for z in range(seg.num_slices))
            ents.append(np.stack([seg.patch_entropy(z, 0) for z in range(seg.num_slices)]).ravel())
            pix.append(r.entropy[:, ::8, ::8].ravel())
        from napari_paser.engine.metrics import mean_iou

        iou = mean_iou(cm)
        key = "closed form" if passes is None else passes
        mc[key] = {"patch_entropy": np.concatenate(ents), "pixel_entropy_sample": np.concatenate(pix), "mean_iou": iou,
                   "gflops": gflops, "iou_per_gflop": iou / gflops, "f0_seconds": f0_secs, "seconds": secs,
                   # f2 everywhere on the same slices, timed in this run (the test table)
                   "seconds_ratio_f2": secs / tt.compute_seconds(tt.constant(2), "f2")}
    a, b = mc[bundle.mc_passes]["patch_entropy"], mc[20]["patch_entropy"]
    tt_res = stats.ttest_ind(a, b, equal_var=False)
    res["mc"] = {
        str(p): {k: (v if not isinstance(v, np.ndarray) else None) for k, v in d.items() if not isinstance(v, np.ndarray)}
        | {"patch_entropy_mean": float(d["patch_entropy"].mean()), "patch_entropy_sd": float(d["patch_entropy"].std())}
        for p, d in mc.items()
    }
    res["mc"]["t_test_patch_entropy"] = {"t": float(tt_res.statistic), "p": float(tt_res.pvalue), "n": int(a.size)}
    res["_mc_arrays"] = {str(p): d["pixel_entropy_sample"] for p, d in mc.items()}
    res["_mc_patch_arrays"] = {str(p): d["patch_entropy"] for p, d in mc.items()}
    log(f"[synth] MC passes ({t.lap('mc'):.0f} s)")

    # Table 3: f1/f2 retrained on clean + noisy data; f0 and the policy untouched.
    retrain = make_volumes(RETRAIN_SEEDS[:n_re], slices)
    b2, info = retrain_noisy(bundle, retrain, steps=(3, 6) if fast else (150, 300), seed=seed, log=log)
    res["retrain"] = info
    log(f"[synth] retrained f1/f2 ({t.lap('retrain'):.0f} s)")
    # A second PaSeR operating point: the λ whose share of patches sent up on the
    # validation volumes is closest to RandPol's 2/3 (f0 and the policy are untouched,
    # so routing does not depend on the retrained f1/f2).
    shares = [(abs(vt.score(vt.paser(float(lm)), "paser")["sent_up"] - 2 / 3), float(lm)) for lm in _lam_grid()]
    lam_share = min(shares)[1]
    res["table3_lam_share"] = lam_share
    t3 = {}
    for cond, vols in (("clean", test), ("noisy", noisy)):
        tab = build_table(vols, b2, seed=seed)
        t3[cond] = run_methods(tab, truths, ["paser", "random", "f2"], lam, check=CHECK)
        t3[cond]["paser-share"] = run_methods(tab, truths, ["paser"], lam_share, check=CHECK)["paser"]
        t3[cond]["paser-share"]["seconds_ratio_f2"] = t3[cond]["paser-share"]["seconds"] / t3[cond]["f2"]["seconds"]
    res["table3"] = {}
    for m in ("paser", "paser-share", "random", "f2"):
        c, n = t3["clean"][m], t3["noisy"][m]
        res["table3"][m] = {
            "iou_clean": c["mean_iou"], "iou_noisy": n["mean_iou"],
            "degradation": (c["mean_iou"] - n["mean_iou"]) / c["mean_iou"],
            "sent_up_clean": c["fractions"][1] + c["fractions"][2], "sent_up_noisy": n["fractions"][1] + n["fractions"][2],
            "f2_clean": c["fractions"][2], "f2_noisy": n["fractions"][2],
            "gflops_clean": c["gflops"], "gflops_noisy": n["gflops"],
            "seconds_ratio_f2_clean": c["seconds_ratio_f2"], "seconds_ratio_f2_noisy": n["seconds_ratio_f2"],
        }
    log(f"[synth] table 3 ({t.lap('table3'):.0f} s)")
    res["seconds"] = t.parts
    return res
