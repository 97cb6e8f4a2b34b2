"""Figures (PNG) and the BENCHMARKS.md text from one run's results (no measuring here)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CLASSES = ("pore", "carbon-binder", "nickel")
LABEL = {"f0": "f0 everywhere", "f1": "f1 everywhere", "f2": "f2 everywhere", "paser": "PaSeR", "idk": "IDK cascade",
         "idk-matched": "IDK cascade (IoU matched)", "random": "PaSeR-RandPol"}


def _f(v, nd=4):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f} %"


def generator_note(gen: dict | None, slices: int) -> str:
    """How the generator (``common.generator_record``) made volumes of ``slices`` slices,
    as a parenthesis to append (empty for runs that did not record it)."""
    if not gen:
        return ""
    if slices < gen["min_slices"]:
        return (f" (generator version {gen['version']}: the middle {slices} slices of the seed's "
                f"{gen['min_slices']}-slice volume)")
    return f" (generator version {gen['version']})"


def _g(v):
    return "-" if v is None else f"{v:.4g}"


# --------------------------------------------------------------------------- figures


def figures(res: dict, fig_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    if res.get("testsets"):
        import report_testsets

        report_testsets.figure(res["testsets"], fig_dir)
    s = res.get("synth")
    if s:
        # Fig. 1 analogue: IoU/GFLOP per method, clean and noisy.
        fig, ax = plt.subplots(figsize=(8, 3.6))
        names = list(s["table1_clean"])
        x = np.arange(len(names))
        for k, (key, lab) in enumerate((("table1_clean", "clean"), ("table1_noisy", "noisy (1 % salt & pepper)"))):
            ax.bar(x + (k - 0.5) * 0.38, [s[key][n]["iou_per_gflop"] for n in names], 0.38, label=lab)
        ax.set_xticks(x, [LABEL.get(n, n) for n in names], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("IoU / GFLOP")
        ax.set_title("IoU per GFLOP on the held-out synthetic test volumes")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(fig_dir / "iou_per_gflop.png", dpi=120)
        plt.close(fig)

        # Fig. 5b: λ sweep, IDK threshold front, random mixes.
        sw = s["sweep"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, xkey, xlabel in ((axes[0], "mean_cost", "mean cost C per patch (Eq. 3)"), (axes[1], "gflops", "GFLOPs (test set)")):
            pts = sorted(sw["paser"], key=lambda p: p[xkey])
            ax.plot([p[xkey] for p in pts], [p["mean_iou"] for p in pts], "o-", ms=3, label="PaSeR (one policy, λ 0…1)")
            front = sorted(sw["idk_front"], key=lambda p: p[xkey])
            if xkey == "gflops":
                ax.plot([p[xkey] for p in front], [p["mean_iou"] for p in front], "s-", ms=3, label="IDK cascade (threshold front)")
            else:
                ax.plot([p[xkey] for p in front], [p["mean_iou"] for p in front], "s", ms=3, label="IDK cascade (threshold front)")
            if "oracle" in sw:
                op = sorted(sw["oracle"], key=lambda p: p[xkey])
                ax.plot([p[xkey] for p in op], [p["mean_iou"] for p in op], ":", color="grey", label="oracle routing (knows the truth)")
            rp = sorted(sw["random"], key=lambda p: p[xkey])
            ax.plot([p[xkey] for p in rp], [p["mean_iou"] for p in rp], "^--", ms=4, label="RandPol (f0 share 1…0)")
            ax.plot(sw["idk_tuned"][xkey], sw["idk_tuned"]["mean_iou"], "k*", ms=10, label="IDK tuned on validation")
            for m, mk in (("f0", "P"), ("f1", "X"), ("f2", "D")):
                ax.plot(sw["f"][m][xkey], sw["f"][m]["mean_iou"], mk, ms=7, label=f"{m} everywhere")
            lam = s["lam"]
            pl = min(sw["paser"], key=lambda p: abs(p["lam"] - lam))
            ax.annotate(f"λ={lam:.3g}", (pl[xkey], pl["mean_iou"]), fontsize=7, xytext=(5, -12), textcoords="offset points")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean IoU")
            if xkey == "gflops":
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        axes[0].legend(fontsize=7)
        fig.suptitle("IoU vs cost on the synthetic test volumes (Fig. 5b)")
        fig.tight_layout()
        fig.savefig(fig_dir / "lambda_sweep.png", dpi=120)
        plt.close(fig)

        # Fig. 5a: entropy with 5 vs 20 MC passes.
        arrs = s.get("_mc_patch_arrays")
        if arrs:
            fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
            keys = list(arrs)
            axes[0].boxplot([arrs[k] for k in keys], showfliers=False)
            names = [k if k == "closed form" else f"{k} passes" for k in keys]
            axes[0].set_xticks(range(1, len(keys) + 1), names)
            axes[0].set_ylabel("mean f0 entropy per patch (nats)")
            px = s["_mc_arrays"]
            axes[1].boxplot([px[k] for k in keys], showfliers=False)
            axes[1].set_xticks(range(1, len(keys) + 1), names)
            axes[1].set_ylabel("f0 entropy per pixel (nats, 1/64 sample)")
            t = s["mc"]["t_test_patch_entropy"]
            fig.suptitle(f"MC-dropout entropy, 5 vs 20 passes (Welch t-test on patches: p = {t['p']:.3g})")
            fig.tight_layout()
            fig.savefig(fig_dir / "mc_entropy.png", dpi=120)
            plt.close(fig)

        # Fig. 11: share of patches sent to f1/f2, clean vs noisy.
        t3 = s["table3"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        x = np.arange(2)
        ax.bar(x - 0.19, [100 * t3[m]["sent_up_clean"] for m in ("paser", "random")], 0.38, label="clean", color="#9ecae1")
        ax.bar(x + 0.19, [100 * t3[m]["sent_up_noisy"] for m in ("paser", "random")], 0.38, label="noisy (unseen by f0 / policy)", color="#fdae6b")
        if "f2_clean" in t3["paser"]:
            ax.bar(x - 0.19, [100 * t3[m]["f2_clean"] for m in ("paser", "random")], 0.38, color="#3182bd", label="of which f2, clean")
            ax.bar(x + 0.19, [100 * t3[m]["f2_noisy"] for m in ("paser", "random")], 0.38, color="#e6550d", label="of which f2, noisy")
        ax.set_xticks(x, ["PaSeR", "PaSeR-RandPol"])
        ax.set_ylabel("% of patches sent to f1 or f2")
        ax.legend(fontsize=8)
        ax.set_title("Patches sent up, clean vs noisy (Fig. 11)")
        fig.tight_layout()
        fig.savefig(fig_dir / "noise_sent_up.png", dpi=120)
        plt.close(fig)

    d = res.get("digits")
    if d:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        taus = [100 * r["tvd"] for r in d["tvd"]]
        ax.plot(taus, [r["iou_per_gflop"] for r in d["tvd"]], "o-")
        for r, tv in zip(d["tvd"], taus):
            ax.annotate(f"IoU {r['mean_iou']:.4f}", (tv, r["iou_per_gflop"]), fontsize=7, xytext=(3, 4), textcoords="offset points")
        ax.set_xlabel("TVD threshold (%)")
        ax.set_ylabel("IoU / GFLOP")
        ax.set_title("Digits: IoU/GFLOP vs TVD threshold (Fig. 12)")
        fig.tight_layout()
        fig.savefig(fig_dir / "digits_tvd.png", dpi=120)
        plt.close(fig)

        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
        for ax, m in zip(axes, ("paser", "idk", "random")):
            cm = np.asarray(d["table"][m]["confusion"], dtype=float)
            pct = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)
            ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
            for i in range(3):
                for j in range(3):
                    ax.text(j, i, f"{pct[i, j]:.1f}%", ha="center", va="center", fontsize=8, color="white" if pct[i, j] > 60 else "black")
            ax.set_xticks(range(3), ["f0", "f1", "f2"])
            ax.set_yticks(range(3), ["σ1 → f0", "σ2 → f1", "box → f2"])
            ax.set_xlabel("model used")
            ax.set_title(f"{LABEL[m]}: accuracy {100 * d['table'][m]['assignment_accuracy']:.1f}%", fontsize=9)
        axes[0].set_ylabel("image corruption → its expert")
        fig.tight_layout()
        fig.savefig(fig_dir / "digits_assignment.png", dpi=120)
        plt.close(fig)


# --------------------------------------------------------------------------- markdown


def _table1(rows: dict, names=None) -> list[str]:
    head = "| method | mean IoU | " + " | ".join(f"IoU {c}" for c in CLASSES) + " | GFLOPs | IoU/GFLOP | GFLOPs / f2's | seconds | seconds / f2's | routed f0 / f1 / f2 |"
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    f2g = rows["f2"]["gflops"]
    for n in names or rows:
        r = rows[n]
        per = " | ".join(_f(v) for v in r["iou_per_class"])
        fr = " / ".join(f"{100 * v:.1f}%" for v in r["fractions"])
        out.append(f"| {LABEL.get(n, n)} | {_f(r['mean_iou'])} | {per} | {r['gflops']:.2f} | {_g(r['iou_per_gflop'])} | "
                   f"{r['gflops'] / f2g:.3f} | {r['seconds']:.2f} | {_f(r['seconds_ratio_f2'], 3)} | {fr} |")
    return out


def _rel(fig_dir: Path, out: Path, name: str) -> str:
    return os.path.relpath(fig_dir / name, out)


def targets(res: dict) -> list[dict]:
    out = []
    s = res.get("synth")
    if s:
        t = s["table1_clean"]
        p = t["paser"]["iou_per_gflop"]
        for base in ("f2", "idk"):
            r = p / t[base]["iou_per_gflop"]
            out.append({"target": f"PaSeR IoU/GFLOP ≥ 2.74 × {LABEL[base]}'s", "value": f"{r:.3f} ×", "met": r >= 2.74})
        out.append({"target": "PaSeR IoU vs f0 everywhere (f0 is cheaper by construction)",
                    "value": f"{t['paser']['mean_iou']:.4f} vs {t['f0']['mean_iou']:.4f}", "met": t["paser"]["mean_iou"] > t["f0"]["mean_iou"]})
        m = s["idk_matched"]
        r = t["paser"]["gflops"] / t["idk-matched"]["gflops"]
        o = s.get("oracle", {}).get("gflops_ratio_to_idk_matched")
        bound = f"; oracle routing needs {o:.3f} ×" if o is not None else ""
        out.append({"target": "at matched IoU, PaSeR GFLOPs ≤ 1/3 of the IDK cascade's",
                    "value": f"{r:.3f} × (IDK IoU {t['idk-matched']['mean_iou']:.4f} vs PaSeR {t['paser']['mean_iou']:.4f}; {m['match']}){bound}",
                    "met": r <= 1 / 3 and abs(t["idk-matched"]["mean_iou"] - t["paser"]["mean_iou"]) <= 1e-3})
        cc = s["curve_compare"]
        for other, lab in (("idk", "IDK cascade"), ("random", "RandPol")):
            comp = [(c["paser"], c[other]) for c in cc if c[other] is not None and c["paser"] is not None]
            above = sum(a >= b for a, b in comp)
            out.append({"target": f"PaSeR's IoU-vs-GFLOPs curve above the {lab}'s",
                        "value": f"best IoU within the budget higher or equal at {above} of {len(comp)} budgets (table below)",
                        "met": above == len(comp) and len(comp) > 0})
        t3 = s["table3"]
        dp, dr = t3["paser"]["degradation"], t3["random"]["degradation"]
        ds = t3["paser-share"]["degradation"]
        out.append({"target": "under noise, PaSeR loses < half the IoU RandPol loses",
                    "value": f"PaSeR {100 * dp:.2f} % (at λ = {s['table3_lam_share']:.3g}: {100 * ds:.2f} %), RandPol {100 * dr:.2f} %",
                    "met": dr > 0 and dp < 0.5 * dr})
    if res.get("testsets"):
        import report_testsets

        out += report_testsets.targets(res["testsets"])
    d = res.get("digits")
    if d:
        a, b = d["table"]["paser"]["assignment_accuracy"], d["table"]["idk"]["assignment_accuracy"]
        out.append({"target": "digits: PaSeR assignment accuracy above the IDK cascade's",
                    "value": f"{100 * a:.1f} % vs {100 * b:.1f} %", "met": a > b})
    return out


def markdown(res: dict, fig_dir: Path, out: Path) -> str:
    env = res["environment"]
    L = ["# Benchmarks", "",
         "Generated by `python benchmarks/run_all.py` (or `napari-paser benchmark`) in one run; every number below is what "
         "that run printed. Do not edit by hand: rerun the suite.", "",
         f"- command: `{res['command']}`{' (FAST smoke run: tiny data, numbers not meaningful)' if res['fast'] else ''}",
         f"- started {res['started']}, total wall-clock **{res['wall_seconds']:.0f} s**"
         + "".join(f"; {k} {res[k]['wall_seconds']:.0f} s" for k in ("synth", "testsets", "digits") if k in res),
         f"- machine: {env.get('cpu', env['processor'])}, {env['cpu_count']} CPU cores, torch threads {env['torch_threads']}, {env['platform']}"
         " (shared with other work while it ran: absolute seconds are noisy, ratios are measured within this run)",
         f"- versions: Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, scikit-learn {env['scikit_learn']}, napari-paser {env['napari_paser']}",
         f"- repository commit {env.get('git_commit', '?')} (uncommitted changes possible: the suite's own files); bundled models last changed in {env.get('bundle_commit', '?')}",
         f"- seed {res['seed']}", "", "## Headline", "", *summary(res), ""]
    s = res.get("synth")
    if s:
        b = res["bundle"]
        D = s["data"]
        L += ["## Setup (synthetic electrodes)", "",
              f"- bundle `{b['name']}` {b['version']} ({'trained' if b['trained'] else 'RANDOM WEIGHTS: routing meaningless'}), "
              f"parameters {b['parameters']}, costs C = {[round(c, 4) for c in b['costs']]}, default λ {b['default_lam']:.4g}, "
              + (f"f0's MC-dropout mean in closed form (sampled: {b['mc_passes']} passes)" if b.get("mc_estimate") == "moments"
                 else f"{b['mc_passes']} MC-dropout passes"),
              f"- held-out test volumes: `generate_volume(seed, {D['slices_per_volume']}, (224, 256))` for seeds {D['test_seeds']}"
              f"{generator_note(D.get('generator'), D['slices_per_volume'])}; "
              f"validation (IDK tuning) seeds {D['val_seeds']}; Table 3 retraining seeds {D['retrain_seeds']}. The bundled model was "
              "trained on `napari-paser synth --seed 1000` volumes (hashed per-volume seeds), disjoint from these.",
              f"- noisy copies: {D['noise']}",
              "- IoU: one confusion matrix over all test slices (dataset level), macro mean over the three phases. GFLOPs: what each "
              "method runs (FlopCounterMode counts; f0's MC analysis = encoder once + decoder per pass; the IDK cascade pays f1 on "
              "every patch that reached f1 and f2 on those sent on). Seconds: measured compute the engine charges each method "
              "(`compute_seconds`), with the ratio to f2 everywhere from the same run.",
              "- every row was run through the engine (`PaserSegmenter.result(method=...)`) and checked against the per-patch tables "
              "the sweeps use (identical IoU and GFLOPs).", ""]
        tun = s["idk_tuning"]
        L += [f"IDK cascade thresholds (B4): grid {tun['grid_size'][0]}×{tun['grid_size'][1]} over mean ± 1 sd of each model's "
              f"patch entropy on the validation volumes (f0 [{tun['range_f0'][0]:.4f}, {tun['range_f0'][1]:.4f}], "
              f"f1 [{tun['range_f1'][0]:.4f}, {tun['range_f1'][1]:.4f}] nats), minimising l_IDK = CE + λ_IDK·C with λ_IDK = {tun['lam_idk']} "
              f"(the paper's value; C is the cumulative cost of the models run): a0 = {tun['thresholds'][0]:.4f}, a1 = {tun['thresholds'][1]:.4f}.", ""]
        L += ["## Table 1: all methods on the held-out test volumes", "", f"PaSeR at the bundle's default λ = {s['lam']:.4g}.", "",
              "### Clean", ""] + _table1(s["table1_clean"]) + ["", "### Noisy copies (1 % salt and pepper; same bundle)", ""] + _table1(s["table1_noisy"])
        L += ["", f"![IoU per GFLOP]({_rel(fig_dir, out, 'iou_per_gflop.png')})", ""]
        t = s["table1_clean"]
        m = s["idk_matched"]
        L += ["## Table 2: IoU-matched IDK cascade vs PaSeR", "",
              f"Thresholds searched on a dense grid of the test set's own entropy quantiles (as the paper: tuned on "
              f"the test set to PaSeR's IoU within 0.001, cheapest such pair): a0 = {m['a0']:.4f}, a1 = {m['a1']:.4f} ({m['match']}).", "",
              "| method | mean IoU | GFLOPs | IoU/GFLOP | seconds / f2's |", "|---|---|---|---|---|"]
        for n in ("idk-matched", "paser"):
            r = t[n]
            L.append(f"| {LABEL[n]} | {_f(r['mean_iou'])} | {r['gflops']:.2f} | {_g(r['iou_per_gflop'])} | {_f(r['seconds_ratio_f2'], 3)} |")
        L += ["", f"PaSeR uses {t['paser']['gflops'] / t['idk-matched']['gflops']:.3f} × the cascade's GFLOPs "
              f"(IoU/GFLOP {t['paser']['iou_per_gflop'] / t['idk-matched']['iou_per_gflop']:.3f} ×).", ""]
        o = s.get("oracle")
        if o and o["at_paser_iou"]:
            a = o["at_paser_iou"]
            L += ["**How far any policy could go with these three models.** *Oracle routing* knows the truth: it sends each "
                  "patch to the model with the largest first-order gain in dataset IoU minus λ × the patch's GFLOPs, over a "
                  f"sweep of λ (charged like PaSeR). To reach PaSeR's IoU it needs {a['gflops']:.2f} GFLOPs "
                  f"(routed f0 / f1 / f2 {' / '.join(f'{100 * v:.1f} %' for v in a['fractions'])}) = "
                  f"**{o['gflops_ratio_to_idk_matched']:.3f} × the IoU-matched cascade's**; within a third of the cascade's GFLOPs "
                  f"its best IoU is {_f(o['best_iou_within_third_of_idk_matched'])}. "
                  + (("So no patch policy over these f0/f1/f2 can meet the paper's ≤ 1/3 claim on this data: f1 everywhere "
                      f"already reaches {_f(t['f1']['mean_iou'])} against f2's {_f(t['f2']['mean_iou'])}, and f2's remaining gain "
                      "is spread thinly over many patches.") if o["gflops_ratio_to_idk_matched"] > 1 / 3
                     else "So the ≤ 1/3 claim is within reach of a better policy on this data."), ""]
        t3 = s["table3"]
        ri = s["retrain"]
        L += ["## Table 3: robustness to 1 % salt-and-pepper noise", "",
              f"f1 and f2 fine-tuned from the bundle's weights with the train package's stage 1 (`pretrain_patch_model`) for "
              f"{ri['steps']['f2']} (f2) and {ri['steps']['f1']} (f1) steps (batch {ri['batch']}, lr {ri['lr']}) on {ri['slices']} slices of fresh volumes, half the "
              f"patches with impulse noise up to {100 * ri['impulse']:.0f} % of pixels; f0 and the policy untouched (they never saw "
              "impulse noise). Note: the bundled f1/f2 had already seen impulse noise on 30 % of their training patches (quick preset).", "",
              "| method | IoU clean | IoU noisy | degradation | sent to f1/f2 (to f2), clean | sent to f1/f2 (to f2), noisy | GFLOPs clean | "
              "GFLOPs noisy | seconds / f2's, clean | seconds / f2's, noisy |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for n in ("paser", "paser-share", "random", "f2"):
            r = t3[n]
            lab = LABEL[n] if n in LABEL else f"PaSeR at λ = {s['table3_lam_share']:.4g} (share sent up on validation ≈ RandPol's 2/3)"
            L.append(f"| {lab} | {_f(r['iou_clean'])} | {_f(r['iou_noisy'])} | {100 * r['degradation']:.2f} % | "
                     f"{100 * r['sent_up_clean']:.1f} % ({_pct(r.get('f2_clean'))}) | {100 * r['sent_up_noisy']:.1f} % ({_pct(r.get('f2_noisy'))}) | "
                     f"{r['gflops_clean']:.2f} | {r['gflops_noisy']:.2f} | "
                     f"{_f(r.get('seconds_ratio_f2_clean'), 3)} | {_f(r.get('seconds_ratio_f2_noisy'), 3)} |")
        L += ["", f"![sent up]({_rel(fig_dir, out, 'noise_sent_up.png')})", ""]
        sw = s["sweep"]
        L += ["## λ sweep (Fig. 5b)", "",
              "PaSeR: one policy, λ over the validation grid (no retraining). IDK: Pareto front of a dense threshold grid; RandPol: "
              "probabilities (1−q, q/2, q/2) for q = 0…1. Best IoU each reaches within a GFLOP budget:", "",
              "| budget (× f2 everywhere) | GFLOPs | PaSeR | IDK cascade | RandPol | oracle routing (knows the truth) |",
              "|---|---|---|---|---|---|"]
        for c in s["curve_compare"]:
            L.append(f"| {c['budget_ratio_f2']:.2f} | {c['gflops_budget']:.2f} | {_f(c['paser'])} | {_f(c['idk'])} | {_f(c['random'])} "
                     f"| {_f(c.get('oracle'))} |")
        L += ["", "| λ | mean IoU | GFLOPs | seconds / f2's | mean cost | routed f0 / f1 / f2 |", "|---|---|---|---|---|---|"]
        for p in sw["paser"][:: max(1, len(sw["paser"]) // 14)]:
            L.append(f"| {p['lam']:.3f} | {_f(p['mean_iou'])} | {p['gflops']:.2f} | {_f(p.get('seconds_ratio_f2'), 3)} | "
                     f"{p['mean_cost']:.4f} | " + " / ".join(f"{100 * v:.1f}%" for v in p["fractions"]) + " |")
        L += ["", f"![lambda sweep]({_rel(fig_dir, out, 'lambda_sweep.png')})", ""]
        mc = s["mc"]
        keys = [k for k in mc if k.isdigit() or k == "closed form"]
        L += ["## MC-dropout passes: 5 vs 20 (Fig. 5a)", "",
              *(["The bundle's f0 computes the MC-dropout mean in closed form, the limit of infinitely many passes "
                 "(`UNet.mc_head_moments`); the rows of 5 and 20 passes sample them.", ""] if "closed form" in keys else []),
              "| passes | mean patch entropy (sd) | PaSeR IoU | GFLOPs | IoU/GFLOP | f0 analysis seconds | PaSeR seconds / f2's |",
              "|---|---|---|---|---|---|---|"]
        for k in keys:
            r = mc[k]
            L.append(f"| {k} | {r['patch_entropy_mean']:.4f} ({r['patch_entropy_sd']:.4f}) | {_f(r['mean_iou'])} | {r['gflops']:.2f} | "
                     f"{_g(r['iou_per_gflop'])} | {r['f0_seconds']:.2f} | {_f(r.get('seconds_ratio_f2'), 3)} |")
        tt = mc["t_test_patch_entropy"]
        L += ["", f"Welch t-test of the per-patch entropies ({tt['n']} patches each): t = {tt['t']:.3f}, p = {tt['p']:.4g}.", "",
              f"![MC entropy]({_rel(fig_dir, out, 'mc_entropy.png')})", ""]
    if res.get("testsets"):
        import report_testsets

        L += report_testsets.markdown(res["testsets"], fig_dir, out, res["bundle"]["name"], (res.get("reference") or {}).get("name"))
    d = res.get("digits")
    if d:
        D = d["data"]
        L += ["## Complementary models (R4): scikit-learn digits", "",
              f"{D['used']} digits upsampled to {D['size']}×{D['size']}, label: {D['label']}; split {D['split']}. Corruptions "
              f"{', '.join(D['corruptions'])} in equal thirds; f0 / f1 / f2 ({d['parameters']['f0']}, {d['parameters']['f1']}, "
              f"{d['parameters']['f2']} parameters; C = {[round(c, 4) for c in d['costs']]}) each trained on one corruption with "
              f"`pretrain_patch_model` ({d['training']['steps_per_model']} steps); the policy pre-trained with `cache_rewards` + `train_policy` "
              f"at λ = 0 ({d['training']['policy_steps']} steps, gain-regression weight {d['training'].get('aux_weight', '?')}; "
              f"{d['training']['rl_copies']} augmented copies of the RL split). Each image is one patch. "
              + _tvd_finetune_text(d) + " IDK thresholds tuned as in B4 on validation.", "",
              "Mean per-image IoU of each model by corruption (f0 / f1 / f2): "
              + "; ".join(f"{k}: {v}" for k, v in d["per_image_iou_by_corruption"].items())
              + f". The best model of an image is its expert for {100 * d['best_model_agrees_with_expert']:.1f} % of the test images.", "",
              f"### Table (test images, PaSeR = the policy fine-tuned to 10 % TVD, at the λ = {d['lam']:.4g} it reached)", "",
              "| method | mean IoU | GFLOPs | IoU/GFLOP | seconds / f2's | assignment accuracy | used f0 / f1 / f2 |", "|---|---|---|---|---|---|---|"]
        for n, r in d["table"].items():
            L.append(f"| {LABEL.get(n, n)} | {_f(r['mean_iou'])} | {r['gflops']:.3f} | {_g(r['iou_per_gflop'])} | {_f(r['seconds_ratio_f2'], 3)} | "
                     f"{100 * r['assignment_accuracy']:.1f} % | " + " / ".join(f"{100 * v:.1f}%" for v in r["fractions"]) + " |")
        o = d["oracle"]
        L += ["", f"Oracle (best model per image, for reference): IoU {o['mean_iou']:.4f}, {o['gflops']:.3f} GFLOPs.", "",
              "| TVD threshold | fine-tuning steps | λ reached | TVD validation / test | mean IoU | GFLOPs | IoU/GFLOP | seconds / f2's | "
              "assignment accuracy |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in d["tvd"]:
            tv = f"{100 * r['tvd_val']:.1f} % / {100 * r['tvd_test']:.1f} %" if "tvd_val" in r else f"– / {100 * r['tvd_test']:.1f} %"
            L.append(f"| {100 * r['tvd']:.0f} % | {r.get('steps', '–')}{'' if r.get('reached', True) else ' (ramp ended)'} | {r['lam']:.4g} | {tv} | "
                     f"{_f(r['mean_iou'])} | {r['gflops']:.3f} | {_g(r['iou_per_gflop'])} | {_f(r.get('seconds_ratio_f2'), 3)} | "
                     f"{100 * r['assignment_accuracy']:.1f} % |")
        L += ["", f"![assignment]({_rel(fig_dir, out, 'digits_assignment.png')})", "", f"![TVD]({_rel(fig_dir, out, 'digits_tvd.png')})", ""]
    L += _separate_benchmarks(out)
    L += ["## Targets (the paper's claims and the issues' acceptance lines)", "", "| target | this run | met |", "|---|---|---|"]
    for t in targets(res):
        L.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    L.append("")
    return "\n".join(L)


def _separate_benchmarks(out: Path) -> list[str]:
    """Links to the benchmarks that run on their own (their files say which run made them)."""
    here = Path(__file__).resolve().parent
    items = [
        ("Microstructure metrics", "metrics_results.md", "bench_metrics.py",
         "porosity, pore tortuosity and nickel surface from PaSeR at the default λ and from f2 everywhere against the "
         "ground truth, and whether the `--band` ranges hold the truth"),
        ("Adapting to one scan", "finetune_results.md", "bench_finetune.py",
         "fine-tuning from painted labels against a random forest on the same labels"),
        ("What limits routing", "probe_results.md", "probe_gain_predictability.py",
         "how well f0's entropy, the bundled policy, a policy fitted on the true gains and classical regressors on "
         "f0's patch statistics predict each patch's gain, per volume, in and out of family"),
    ]
    L = ["## Separate benchmarks (their own runs and files)", ""]
    for title, name, script, what in items:
        path = here / name
        rel = os.path.relpath(path, out).replace(os.sep, "/")
        L.append(f"- {title}: [{rel}]({rel}), made by `python benchmarks/{script}`: {what}."
                 + ("" if path.exists() else " Not run yet."))
    return L + [""]


def _tvd_finetune_text(d: dict) -> str:
    """How the digits policies for the TVD thresholds were obtained (paper: fine-tuning with a rising λ)."""
    f = d.get("tvd_finetune")
    if not f:
        return "TVD thresholds choose λ on the validation images (engine TVD mode)."
    return (f"TVD fine-tuning as in the paper (`napari_paser.train.tvd_finetune`): a copy of the λ = 0 policy continues REINFORCE "
            f"on the same cached rewards with λ rising linearly from 0 to {f['lam_max']:g} over {f['steps']} steps (learning rate "
            f"{f['lr']:g} with a warm-up over the first {100 * f.get('warmup', 0):g} % of the ramp, {f.get('batch', '?')} examples a step); "
            + ("after every step" if f["eval_every"] == 1 else f"every {f['eval_every']} steps") + " the TVD between the fractions of validation images its argmax sends to "
            "f0 / f1 / f2 and the λ = 0 policy's is measured, and fine-tuning stops once it reaches the threshold (0 %: the "
            "pre-trained policy at λ = 0, no step). Each policy is run on the test images at the λ it reached.")


def summary(res: dict) -> list[str]:
    """Headline lines (also pasted into README's Results section)."""
    L = []
    s = res.get("synth")
    if s:
        t = s["table1_clean"]
        p = t["paser"]
        L.append(f"- Synthetic test volumes (clean), PaSeR at λ = {s['lam']:.3g}: mean IoU {p['mean_iou']:.4f} with "
                 f"{p['gflops'] / t['f2']['gflops']:.3f} × the GFLOPs of f2 everywhere (IoU {t['f2']['mean_iou']:.4f}); IoU/GFLOP "
                 f"{p['iou_per_gflop'] / t['f2']['iou_per_gflop']:.2f} × f2's and {p['iou_per_gflop'] / t['idk']['iou_per_gflop']:.2f} × "
                 f"the tuned IDK cascade's (IoU {t['idk']['mean_iou']:.4f}); wall-clock {p['seconds_ratio_f2']:.2f} × f2's.")
        m = t["idk-matched"]
        L.append(f"- IoU-matched IDK cascade: IoU {m['mean_iou']:.4f} at {m['gflops']:.2f} GFLOPs vs PaSeR {p['gflops']:.2f} "
                 f"({p['gflops'] / m['gflops']:.3f} ×).")
        o = s.get("oracle")
        if o and o["at_paser_iou"]:
            r = o["gflops_ratio_to_idk_matched"]
            verdict = ("the paper's ≤ 1/3 is out of reach of any patch policy over these models" if r > 1 / 3
                       else "a better policy could meet the paper's ≤ 1/3")
            L.append(f"- Oracle routing (knows the truth) needs {r:.3f} × the matched cascade's GFLOPs for PaSeR's IoU: {verdict}.")
        t3 = s["table3"]
        L.append(f"- 1 % salt-and-pepper noise (f1/f2 retrained): IoU loss PaSeR {100 * t3['paser']['degradation']:.2f} %, "
                 f"RandPol {100 * t3['random']['degradation']:.2f} %; PaSeR sends {_pct(t3['paser'].get('f2_clean'))} → "
                 f"{_pct(t3['paser'].get('f2_noisy'))} of patches to f2 and {100 * t3['paser']['sent_up_clean']:.1f} % → "
                 f"{100 * t3['paser']['sent_up_noisy']:.1f} % to f1 or f2 (clean → noisy).")
    if res.get("testsets"):
        import report_testsets

        L += report_testsets.summary(res["testsets"])
    d = res.get("digits")
    if d:
        tb = d["table"]
        L.append(f"- Digits with complementary models: assignment accuracy PaSeR {100 * tb['paser']['assignment_accuracy']:.1f} %, "
                 f"IDK cascade {100 * tb['idk']['assignment_accuracy']:.1f} %, RandPol {100 * tb['random']['assignment_accuracy']:.1f} %; "
                 f"IoU/GFLOP PaSeR {tb['paser']['iou_per_gflop']:.4g}, IDK {tb['idk']['iou_per_gflop']:.4g}.")
    met = targets(res)
    L.append(f"- Paper targets met: {sum(t['met'] for t in met)} of {len(met)} (see the Targets table).")
    return L
