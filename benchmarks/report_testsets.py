"""BENCHMARKS.md section and figure of the two test sets (bench_testsets.py), and their targets."""

from __future__ import annotations

import os
from pathlib import Path

from report import generator_note

CLASSES = ("pore", "carbon-binder", "nickel")
ROWS = (("f0", "f0 everywhere"), ("f1", "f1 everywhere"), ("f2", "f2 everywhere"),
        ("f1+f0", "f1 everywhere with f0 fused in (f0's analysis + f1; no routing)"), ("paser", "PaSeR (default λ)"),
        ("idk", "IDK cascade (tuned on in-family validation)"), ("idk-matched", "IDK cascade, IoU-matched to PaSeR"),
        ("random", "RandPol (uniform)"), ("oracle", "oracle routing at PaSeR's IoU (knows the truth)"))
# Acceptance lines of the issues this section measures.
IOU_F2_V1_IN_FAMILY = 0.8226  # v1 bundle, f2 everywhere, in-family test (BENCHMARKS.md of v1; generator version 2's volumes)


def _f(v, nd=4):
    return "-" if v is None else f"{v:.{nd}f}"


def _oracle_within_f1_cost(s: dict) -> str:
    """Line 2's bound counting seconds too, as ", within its GFLOPs and seconds X" ("" for
    results saved before it was measured)."""
    if "oracle_within_f1_cost" not in s:
        return ""
    oc = s["oracle_within_f1_cost"]
    return f", within its GFLOPs and seconds {_f(oc['mean_iou'])}" if oc else ", none within its GFLOPs and seconds"


def _scan_spread_lines(gc: dict) -> list[str]:
    """r within each scan and the scan-bootstrap interval of the policy's lead over the
    entropy ([] for results saved before they were measured)."""
    if "scans" not in gc["f1"]:
        return []
    per = [" / ".join(f"{sc['policy']:.2f} vs {sc['f0_entropy']:.2f}" for sc in gc[k]["scans"]["per_scan"]) for k in ("f1", "f2")]
    lead = [gc[k]["policy"] - gc[k]["f0_entropy"] for k in ("f1", "f2")]
    iv = [gc[k]["scans"]["lead_interval"] for k in ("f1", "f2")]
    share = [gc[k]["scans"]["share_of_draws_meeting"] for k in ("f1", "f2")]
    return [f"Within each scan, r of the policy vs the entropy: f1 {per[0]}; f2 {per[1]}. "
            f"The policy's lead over the entropy, {lead[0]:+.3f} (f1) / {lead[1]:+.3f} (f2), rests on which scans the set holds: "
            f"redrawing its scans with replacement ({gc['f1']['scans']['draws']} draws) puts it between {iv[0][0]:+.3f} and {iv[0][1]:+.3f} "
            f"(f1) and {iv[1][0]:+.3f} and {iv[1][1]:+.3f} (f2) in 95 % of them, and at +0.1 or more in {100 * share[0]:.0f} % / "
            f"{100 * share[1]:.0f} %.", ""]


def _bound_lines(gc: dict) -> list[str]:
    """The bounds of ``gain_bounds`` on line 4 ([] for results saved before they were measured)."""
    if "split_half_ceiling" not in gc["f1"]:
        return []
    ceiling, self_assessed, posterior = ([gc[k][key] for k in ("f1", "f2")] for key in ("split_half_ceiling", "self_assessed", "f2_posterior"))
    target = [gc[k]["f0_entropy"] + 0.1 for k in ("f1", "f2")]
    verdict = ("so the scans leave room for line 4's target of " if all(c >= t for c, t in zip(ceiling, target))
               else "so no router can meet line 4's target of ")
    return [f"How well could a router track these gains (`benchmarks/gain_bounds.py`)? Split each patch's pixels into the two "
            f"colours of a checkerboard: how the halves' gains agree bounds the r of anything that reads the scan at "
            f"{ceiling[0]:.3f} (f1) / {ceiling[1]:.3f} (f2), {verdict}{target[0]:.3f} / {target[1]:.3f}. The bound is loose where "
            f"whole regions are uncertain together. What the models expect of their gains once they have run has r "
            f"{self_assessed[0]:.3f} / {self_assessed[1]:.3f} (under the fused f_k's own probabilities) and {posterior[0]:.3f} / "
            f"{posterior[1]:.3f} (under the fused f2's: the ceiling, if f2's posterior were the truth's given the image).", ""]


def _border_excess(row: dict) -> float:
    """False edges across every border minus those in the interior, in points of %."""
    same, mixed, inner = row["same_model_borders"], row["mixed_borders"], row["interior"]
    return 100 * ((same["edges"] + mixed["edges"]) / (same["pairs"] + mixed["pairs"]) - inner["edges"] / inner["pairs"])


def _seam_lines(s: dict) -> list[str]:
    """Whether the borders between patches show (``seams.py``; [] for results saved before it was measured)."""
    if "seams" not in s:
        return []
    ws, seams, ex = s["seams"]["whole_slice"], s["seams"]["seams"], s["seams"]["excess"]

    def pct(d: dict) -> str:
        return "-" if d["false_edges"] is None else f"{100 * d['false_edges']:.2f}"

    def both(fmt: str) -> str:
        return " / ".join(f"{_border_excess(seams[fmt.format(m)]):+.2f}" for m in ("f1", "f2"))

    # The share of a context-free patch's seam (over a whole-slice pass of the same network) that the halo takes away.
    removed = [(_border_excess(seams[f"{m} without context (check)"]) - _border_excess(seams[f"{m} everywhere"]))
               / (_border_excess(seams[f"{m} without context (check)"]) - _border_excess(seams[f"{m} (whole-slice pass)"])) for m in ("f1", "f2")]
    checkers = [k for k in ex if "checkerboard" in k]
    L = ["**Do the borders between patches show?** (`benchmarks/seams.py`; issue 11's patch models that see context.) "
         + "; ".join(f"{m} run on its patches, each read with its halo of the slice, scores {_f(w['mean_iou_patches'])}, and run "
                     f"once on the whole slice {_f(w['mean_iou_whole_slice'])}, labelling {100 * w['pixels_differing']:.2f} % of the "
                     f"pixels otherwise" for m, w in ws.items()) + ".", "",
         "The table counts false edges: neighbouring pixels of one true phase that the labels part, in % of such pairs "
         f"(their number in brackets), across a border between patches of different models, across one between patches of "
         f"the same model, and at least {s['seams']['margin']} pixels from every border on the patches' 8-pixel grid; the last "
         "column is how many points more cross the borders than lie inside. Labels made without patches show what these pairs "
         "give without a seam: the whole-slice passes of f1 / f2 " + both("{} (whole-slice pass)")
         + f", f0's labels {_border_excess(seams['f0 (whole slice)']):+.2f}. On their patches, each with its halo, f1 / f2 give "
         + both("{} everywhere") + "; without context (each patch reflect-padded instead of reading the slice around it) "
         + both("{} without context (check)") + ". So the halo takes away "
         + " / ".join(f"{100 * r:.0f} %" for r in removed) + " of the seam that patches without context show over a whole-slice "
         "pass. Where the models on the two sides differ, the border adds beyond what the two models give on the same pairs "
         "routed everywhere (f0 fused in, as PaSeR composes them): "
         + ", ".join(f"{ex[k]:+.2f} points for the {k}" for k in checkers) + ".", "",
         "| labels | across borders, different models | across borders, same model | interior | borders − interior (points) |",
         "|---|---|---|---|---|"]
    for name, r in seams.items():
        if name.endswith(", borders blended"):
            continue  # in the table below
        L.append(f"| {name} | {pct(r['mixed_borders'])} ({r['mixed_borders']['pairs']}) | {pct(r['same_model_borders'])} "
                 f"({r['same_model_borders']['pairs']}) | {pct(r['interior'])} ({r['interior']['pairs']}) | {_border_excess(r):+.2f} |")
    return L + [""] + _blend_lines(s["seams"])


def _blend_lines(s: dict) -> list[str]:
    """Cropped patches against patches blended across their borders (``segment --blend-borders``)."""
    if "blended" not in s:
        return []
    L = ["**Blended borders** (the default of `segment`, `evaluate` and the napari panel with a bundle whose f1 and f2 read a "
         "halo; `--no-blend-borders` and the box *blend across borders* crop the patches; `engine.blending`): the "
         "pixels within the halo of a border take the weighted mean of both patches' predictions, from what f1 and f2 say "
         "about their halos. Nothing more runs; pixels further inside keep their labels. Same routings, mean IoU and "
         "borders − interior (points):", "",
         "| routing | mean IoU, cropped | mean IoU, blended | borders − interior, cropped | blended |", "|---|---|---|---|---|"]
    for name, r in s["blended"].items():
        L.append(f"| {name} | {_f(r['mean_iou_cropped'])} | {_f(r['mean_iou_blended'])} | {_border_excess(s['seams'][name]):+.2f} "
                 f"| {_border_excess(s['seams'][name + ', borders blended']):+.2f} |")
    return L + [""]


def _line_values(s: dict) -> tuple[str, str, str]:
    """Issue 11's lines 1-3 as one set's routings score them (cropped or blended patches)."""
    rows = s["rows"]
    p, f1, f2, m, ora = rows["paser"], rows["f1"], rows["f2"], rows["idk-matched"], rows["oracle"]
    line1 = (f"{p['mean_iou'] / f2['mean_iou']:.4f} × f2's IoU ({_f(p['mean_iou'])} vs {_f(f2['mean_iou'])}) at "
             f"{p['gflops'] / f2['gflops']:.3f} × its GFLOPs and {p['seconds_ratio_f2']:.3f} × its seconds")
    b, w = s["beats_f1"], s["best_within_f1_cost"]
    line2 = (f"λ {b['lam']:.3g}: {_f(b['mean_iou'])} vs f1's {_f(f1['mean_iou'])} ({b['gflops'] / f2['gflops']:.3f} × and "
             f"{b['seconds_ratio_f2']:.3f} ×; f1 {f1['gflops'] / f2['gflops']:.3f} × and {f1['seconds_ratio_f2']:.3f} ×)" if b
             else f"no λ: best {_f(w['mean_iou']) if w else '-'} vs f1's {_f(f1['mean_iou'])}")
    oracle = f"; oracle {m['gflops'] / ora['gflops']:.3f} ×" if ora["mean_iou"] >= p["mean_iou"] else ""
    line3 = f"{m['gflops'] / p['gflops']:.3f} × (IDK {_f(m['mean_iou'])} vs PaSeR {_f(p['mean_iou'])}{oracle})"
    return line1, line2, line3


def _blended_routing_lines(s: dict) -> list[str]:
    """Issue 11's lines 1-3 with every routing's patches blended across their borders."""
    bl = s.get("blended")
    if not bl:
        return []
    cs = bl["compose_seconds"]
    L = [f"**Issue 11's lines with blended borders** (what `segment` and the napari panel give by default). The same slices "
         f"through engines that blend the patches across their borders ({bl['width']} pixels on each side), every routing "
         "(the λ sweep, the IDK "
         "threshold grid, RandPol, the oracle's sweep) scored exactly so (`benchmarks/blend_scoring.py`: a region's labels "
         "depend on the models of the one, two or four patches that reach it). Their seconds are these engines', which also "
         "keep what f1 and f2 predict over their halos; the oracle still routes by the cropped patches' gains. Composing "
         f"PaSeR's output took {1e3 * cs['blended']:.1f} ms a slice blended against {1e3 * cs['cropped']:.1f} ms cropped "
         "(outside the seconds above, as composing is for every method).", "",
         "| line | patches cropped (the tables above) | borders blended |", "|---|---|---|"]
    names = ("1. PaSeR at the default λ", "2. best λ within f1 everywhere's GFLOPs and seconds", "3. IoU-matched IDK cascade's GFLOPs / PaSeR's")
    for name, cropped, blended in zip(names, _line_values(s), _line_values(bl)):
        L.append(f"| {name} | {cropped} | {blended} |")
    return L + [""]


def _rounds_note(rounds: int | None) -> str:
    """How the tables' seconds were taken (runs before ``timing_rounds`` timed one pass)."""
    if not rounds or rounds == 1:
        return "; each model's seconds from one pass of it"
    return (f"; each model's seconds per slice and patch are the median of {rounds} passes of it, run in a rotated order "
            "of the models (`common.median_seconds`), so that a busy stretch of the shared cores during one pass does not "
            "decide a ratio")


def _row(label: str, r: dict, f2: dict) -> str:
    per = " | ".join(_f(v) for v in r["iou_per_class"])
    fr = " / ".join(f"{100 * v:.1f}%" for v in r["fractions"])
    return (f"| {label} | {_f(r['mean_iou'])} | {per} | {r['gflops'] / f2['gflops']:.3f} | {_f(r.get('seconds_ratio_f2'), 3)} | {fr} |")


def figure(res: dict, fig_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = res["sets"]
    fig, axes = plt.subplots(len(sets), 2, figsize=(11, 4.2 * len(sets)), squeeze=False)
    for row, (name, s) in enumerate(sets.items()):
        f2 = s["rows"]["f2"]
        for col, (key, xlabel) in enumerate((("gflops", "GFLOPs / f2 everywhere's"), ("seconds_ratio_f2", "seconds / f2 everywhere's (1 thread)"))):
            ax = axes[row][col]
            scale = f2["gflops"] if key == "gflops" else 1.0
            sw = s["sweep"]
            pts = sorted(sw["paser"], key=lambda p: p[key])
            ax.plot([p[key] / scale for p in pts], [p["mean_iou"] for p in pts], "o-", ms=3, label="PaSeR λ sweep")
            idk = sw["idk_front"] if key == "gflops" else sw["idk_front_seconds"]
            ax.plot([p[key] / scale for p in idk], [p["mean_iou"] for p in idk], "s-", ms=2, label="IDK cascade front")
            rnd = sorted(sw["random"], key=lambda p: p[key])
            ax.plot([p[key] / scale for p in rnd], [p["mean_iou"] for p in rnd], "^:", ms=3, label="RandPol mixes")
            if key == "gflops":
                ora = sw["oracle"]
                ax.plot([p[key] / scale for p in ora], [p["mean_iou"] for p in ora], "-", lw=1, color="grey", label="oracle routing")
            for m, mk in (("f0", "v"), ("f1", "D"), ("f2", "*")):
                r = s["rows"][m]
                ax.plot([r[key] / scale], [r["mean_iou"]], mk, ms=9, label=f"{m} everywhere")
            p = s["rows"]["paser"]
            ax.plot([p[key] / scale], [p["mean_iou"]], "o", ms=11, mfc="none", mec="k", label=f"PaSeR default λ {s['lam']:.3g}")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean IoU")
            ax.set_title(f"{name} test set")
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / "testsets_fronts.png", dpi=110)
    plt.close(fig)


def markdown(res: dict, fig_dir: Path, out: Path, bundle_name: str, reference_name: str | None) -> list[str]:
    L = ["## Generalization and routing: in-family and out-of-family test sets", "",
         "Two test sets made by the project (`benchmarks/bench_testsets.py`): **in-family**, the first generator's volumes "
         "(`synth --distribution v1`, the test set every bundle so far was measured on) and **out-of-family**, a microstructure "
         "family and a scanner outside the training distribution (`--distribution oof`: cracked secondary particles, 60-100 "
         "views, wider blur, stronger phase-contrast fringes, lower dose, float32 files). Nothing is tuned on the "
         "out-of-family set: the IDK thresholds come from in-family validation volumes, the bundle's default λ from its own "
         "validation split. Ratios are to f2 everywhere on the same slices in the same run; seconds with one torch thread "
         "(tables) and with every core (last column of the cost table)" + _rounds_note(res.get("timing_rounds")) + ".", ""]
    for name, s in res["sets"].items():
        rows, f2 = s["rows"], s["rows"]["f2"]
        L += [f"### {name} ({len(s['seeds'])} volumes × {s['slices_per_volume']} slices, seeds {s['seeds']}, distribution `{s['distribution']}`)", "",
              f"Volumes `generate_volume(seed, {s['slices_per_volume']}, (224, 256), distribution={s['distribution']!r})`"
              f"{generator_note(s.get('generator'), s['slices_per_volume'])}.", "",
              f"Bundle `{bundle_name}`; PaSeR at its default λ = {s['lam']:.4g}.", "",
              "| method | mean IoU | " + " | ".join(f"IoU {c}" for c in CLASSES) + " | GFLOPs / f2's | seconds / f2's | routed f0 / f1 / f2 |",
              "|---|---|---|---|---|---|---|---|"]
        for key, label in ROWS:
            if key in rows:
                L.append(_row(label, rows[key], f2))
        ref = s.get("reference")
        if ref:
            for key, label in (("f2", "f2 everywhere"), ("paser", f"PaSeR (λ {ref['lam']:.3g})")):
                r = ref[key]
                per = " | ".join(_f(v) for v in r["iou_per_class"])
                L.append(f"| reference `{reference_name}`: {label} | {_f(r['mean_iou'])} | {per} | "
                         f"{r['gflops'] / f2['gflops']:.3f} (of this bundle's f2) | - | - |")
        ac = s["all_cores"]
        side = ", slices and batches side by side (`engine.side_by_side`)" if ac.get("side_by_side") else ""
        L += ["", f"Seconds with every core ({ac['threads']} threads{side}), same routings: "
              + ", ".join(f"{k} {v['seconds_ratio_f2']:.3f} × f2's" for k, v in ac.items() if isinstance(v, dict) and k != "analysis") + ".", ""]
        if "analysis" in s:  # runs before this line was added lack it
            a, a_all = s["analysis"], ac.get("analysis", {})
            all_cores = f" and {a_all['seconds_ratio_f2']:.3f} × with every core" if a_all else ""
            L += [f"f0's whole analysis (all MC passes, the refiner, f0's labels and the policy; what a slice that keeps every "
                  f"patch on f0 costs): {a['gflops'] / f2['gflops']:.3f} × f2's GFLOPs, {a['seconds_ratio_f2']:.3f} × its seconds "
                  f"with one thread{all_cores} (issue 11 aims at ≤ 0.05 × its seconds).", ""]
        gc = s["gain_correlation"]
        L += [f"Predicted vs true per-patch gains ({gc['patches']} patches; true gain = first-order change of the set's mean IoU): "
              f"Pearson r of the policy's gains {gc['f1']['policy']:.3f} (f1) / {gc['f2']['policy']:.3f} (f2); "
              f"of f0's patch entropy {gc['f1']['f0_entropy']:.3f} / {gc['f2']['f0_entropy']:.3f}.", ""]
        L += _bound_lines(gc)
        L += _scan_spread_lines(gc)
        L += _seam_lines(s)
        L += _blended_routing_lines(s)
        b = s["beats_f1"]
        w = s["best_within_f1_cost"]
        o = s["oracle_within_f1_gflops"]
        L += ["Within f1 everywhere's cost (GFLOPs and seconds): "
              + (f"PaSeR at λ = {b['lam']:.3g} reaches {_f(b['mean_iou'])} > f1's {_f(rows['f1']['mean_iou'])} "
                 f"({b['gflops'] / f2['gflops']:.3f} × f2's GFLOPs, {b['seconds_ratio_f2']:.3f} × its seconds)."
                 if b else f"no λ beats f1 everywhere ({_f(rows['f1']['mean_iou'])}); PaSeR's best there "
                 f"{_f(w['mean_iou']) if w else '-'}; oracle routing's best within f1's GFLOPs {_f(o['mean_iou']) if o else '-'}{_oracle_within_f1_cost(s)}."), ""]
    L += [f"![fronts]({os.path.relpath(fig_dir / 'testsets_fronts.png', out)})", ""]
    return L


def _routing_targets(name: str, s: dict) -> list[dict]:
    """Issue 11's lines 1-3 on one set, as its routings are scored (``s``: a set's results or their ``blended`` part)."""
    out = []
    p, f2 = s["rows"]["paser"], s["rows"]["f2"]
    r, g, t = p["mean_iou"] / f2["mean_iou"], p["gflops"] / f2["gflops"], p["seconds_ratio_f2"]
    # Each line's bound: what oracle routing (knows the truth) reaches over these networks.
    oq = s.get("oracle_within_quarter_f2_gflops")
    bound = f"; oracle routing's best within 25 % of f2's GFLOPs {oq['mean_iou'] / f2['mean_iou']:.4f} ×" if oq else ""
    out.append({"target": f"{name}: PaSeR (default λ) ≥ 0.99 × f2's IoU at ≤ 25 % of its GFLOPs and ≤ 33 % of its seconds",
                "value": f"{r:.4f} × at {g:.3f} × GFLOPs, {t:.3f} × seconds{bound}", "met": r >= 0.99 and g <= 0.25 and t <= 0.33})
    b = s["beats_f1"]
    o1 = s.get("oracle_within_f1_gflops")
    bound = f"; oracle routing's best within f1's GFLOPs {o1['mean_iou']:.4f}" if o1 else ""
    bound += _oracle_within_f1_cost(s)
    out.append({"target": f"{name}: some λ gives PaSeR IoU above f1 everywhere at ≤ its GFLOPs and seconds",
                "value": (f"λ {b['lam']:.3g}: {b['mean_iou']:.4f} vs {s['rows']['f1']['mean_iou']:.4f}" if b
                          else f"no such λ (f1 {s['rows']['f1']['mean_iou']:.4f}){bound}"),
                "met": b is not None})
    m = s["rows"]["idk-matched"]
    rr = m["gflops"] / p["gflops"]
    ora = s["rows"]["oracle"]
    bound = f"; oracle routing at PaSeR's IoU would reach {m['gflops'] / ora['gflops']:.3f} ×" if ora["mean_iou"] >= p["mean_iou"] else ""
    out.append({"target": f"{name}: IoU-matched IDK cascade needs ≥ 1.3 × PaSeR's GFLOPs",
                "value": f"{rr:.3f} × (IDK IoU {m['mean_iou']:.4f} vs PaSeR {p['mean_iou']:.4f}; {m['match']}){bound}", "met": rr >= 1.3})
    return out


def targets(res: dict) -> list[dict]:
    """Acceptance lines of "Bundled models that hold up" and "Make routing pay"."""
    out = []
    sets = res["sets"]
    oof, inf = sets.get("out-of-family"), sets.get("in-family")
    if oof and oof.get("reference"):
        d = oof["rows"]["f2"]["mean_iou"] - oof["reference"]["f2"]["mean_iou"]
        out.append({"target": "out-of-family: f2 everywhere gains ≥ 0.05 mean IoU over the v1 bundle's",
                    "value": f"{oof['rows']['f2']['mean_iou']:.4f} vs {oof['reference']['f2']['mean_iou']:.4f} (+{d:.4f})", "met": d >= 0.05})
        p, f2 = oof["rows"]["paser"], oof["rows"]["f2"]
        r, g = p["mean_iou"] / f2["mean_iou"], p["gflops"] / f2["gflops"]
        out.append({"target": "out-of-family: PaSeR (default λ) ≥ 0.98 × f2's IoU at ≤ 30 % of its GFLOPs",
                    "value": f"{r:.4f} × at {g:.3f} ×", "met": r >= 0.98 and g <= 0.30})
    if inf:
        v = inf["rows"]["f2"]["mean_iou"]
        # v1's f2 on the same volumes when the run measured it (the test volumes change with the generator).
        if inf.get("reference"):
            ref = inf["reference"]["f2"]["mean_iou"]
            out.append({"target": "in-family: f2 everywhere not below the v1 bundle's", "value": f"{v:.4f} vs {ref:.4f}", "met": v >= ref})
        else:
            out.append({"target": f"in-family: f2 everywhere not below v1's {IOU_F2_V1_IN_FAMILY}", "value": f"{v:.4f}", "met": v >= IOU_F2_V1_IN_FAMILY})
    for name, s in sets.items():
        out += _routing_targets(name, s)
        if s.get("blended"):
            out += _routing_targets(f"{name}, borders blended", s["blended"])
        gc = s["gain_correlation"]
        ok = all(gc[k]["policy"] >= gc[k]["f0_entropy"] + 0.1 for k in ("f1", "f2"))
        out.append({"target": f"{name}: predicted-gain correlation ≥ entropy's + 0.1 (f1 and f2)",
                    "value": f"policy {gc['f1']['policy']:.3f} / {gc['f2']['policy']:.3f}, entropy {gc['f1']['f0_entropy']:.3f} / {gc['f2']['f0_entropy']:.3f}"
                             + (f"; split-half ceiling of any router {gc['f1']['split_half_ceiling']:.3f} / {gc['f2']['split_half_ceiling']:.3f}, "
                                f"gains expected under f2's posterior {gc['f1']['f2_posterior']:.3f} / {gc['f2']['f2_posterior']:.3f}"
                                if "split_half_ceiling" in gc["f1"] else ""),
                    "met": ok})
    return out


def summary(res: dict) -> list[str]:
    L = []
    for name, s in res["sets"].items():
        rows = s["rows"]
        p, f2, f1 = rows["paser"], rows["f2"], rows["f1"]
        ref = s.get("reference")
        refs = f"; v1 bundle's f2 {ref['f2']['mean_iou']:.4f}" if ref else ""
        bl = s.get("blended")
        blended = ""
        if bl:
            bp, bf2 = bl["rows"]["paser"], bl["rows"]["f2"]
            blended = (f"; with blended borders (the default) PaSeR {bp['mean_iou']:.4f} against f2's {bf2['mean_iou']:.4f}, "
                       f"{bp['seconds_ratio_f2']:.3f} × its seconds")
        L.append(f"- {name} test set: f2 everywhere {f2['mean_iou']:.4f}{refs}; f1 {f1['mean_iou']:.4f}; PaSeR at λ = {s['lam']:.3g} "
                 f"{p['mean_iou']:.4f} with {p['gflops'] / f2['gflops']:.3f} × f2's GFLOPs and {p['seconds_ratio_f2']:.3f} × its seconds"
                 f"{blended}.")
    return L
