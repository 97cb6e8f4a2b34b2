"""Fine-tuning a bundle to one scan from painted labels, against a random forest on the same labels.

On the out-of-family test volumes (``generate_volume(seed, 16, distribution="oof")``,
seeds 9101-9103), per volume:

- *full*: slices 0-3 fully labelled (the rest 255). Fine-tune the bundle (default
  budget) and score PaSeR at the fine-tuned bundle's λ on slices 8-15; a random forest
  on multi-scale filter features trained on the same pixels is scored on the same slices.
  Target: PaSeR ≥ RF + 0.03 mean IoU.
- *sparse*: about 15 % of the pixels of slices 0-3 labelled as brush strokes and dots
  (``simulate_strokes``), the rest 255. Target: PaSeR ≥ the random forest trained on the
  four fully labelled slices.
- The same forests on 3-D filter features (``features="3d"``: what ilastik computes on a
  volume), beside the targets: the fine-tuned networks read neighbouring planes, so the
  forest is also given them.
- Wall seconds of each fine-tuning (target ≤ 300 s on 2 cores).

The bundle as shipped and f1 / f2 of the adapted bundle are reported beside them. The
whole volume is normalised and segmented as a user would (scores on slices 8-15 only).
Writes a markdown section (the command at its top) and prints the same numbers.

    python benchmarks/bench_finetune.py --bundle paser-synth-v2 --out benchmarks/finetune_results.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

SEEDS = (9101, 9102, 9103)
TRAIN_SLICES = range(0, 4)
TEST_SLICES = range(8, 16)
SPARSE_FRACTION = 0.15


def load_volume(seed: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """One out-of-family test volume (16 slices), from ``cache`` when it is there."""
    from napari_paser.train.synth import generate_volume

    path = cache / f"oof_{seed}.npz" if cache else None
    if path is not None and path.is_file():
        d = np.load(path)
        return d["image"], d["labels"]
    image, labels, _ = generate_volume(seed, 16, distribution="oof")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, image=image, labels=labels)
    return image, labels


def score(pred: np.ndarray, truth: np.ndarray) -> float:
    from napari_paser.engine.metrics import evaluate

    return float(evaluate(pred, truth)["mean_iou"])


def paser_scores(bundle, image: np.ndarray, truth: np.ndarray) -> dict:
    """Mean IoU on the test slices of PaSeR (bundle's λ), f1 and f2 everywhere; routing and cost."""
    from napari_paser.engine.pipeline import PaserSegmenter, drain

    seg = PaserSegmenter(bundle)
    seg.set_volume(image)  # normalised over the whole scan, as in use
    out = {}
    for method in ("paser", "f1", "f2"):
        res = drain(seg.run(method=method, slices=list(TEST_SLICES)))
        out[method] = score(res.labels, truth[list(TEST_SLICES)])
        if method == "paser":
            out["lam"] = float(res.lam)
            out["route"] = res.route_fraction
            out["gflops_ratio"] = res.gflops_total / res.gflops_f2_everywhere
    return out


def forest(image: np.ndarray, labels: np.ndarray, truth: np.ndarray, seed: int, jobs: int, cache: Path | None, kind: str,
           features: str = "2d") -> tuple[float, float]:
    """Mean IoU on the test slices of the random forest trained on ``labels``, and its seconds.

    It does not depend on the bundle, so with ``cache`` the score of an earlier run with the
    same volume, labels and forest settings is reused (the file says when it was measured).
    """
    import hashlib
    import json

    from napari_paser.engine.random_forest import RandomForestSegmenter

    rf = RandomForestSegmenter(seed=seed, n_jobs=jobs, features=features)
    settings = (rf.n_estimators, rf.max_samples, rf.sigmas) + ((features,) if features != "2d" else ())
    key = hashlib.sha1(labels.tobytes() + image.tobytes() + repr(settings).encode()).hexdigest()[:12]
    path = cache / f"rf_{seed}_{kind}_{key}.json" if cache else None
    if path is not None and path.is_file():
        d = json.loads(path.read_text())
        return d["mean_iou"], d["seconds"]
    t0 = time.perf_counter()
    rf.fit(image, labels)
    # 3-D filters read the planes around the scored ones: predict the whole scan, as in use.
    pred = rf.predict(image)[list(TEST_SLICES)] if features == "3d" else rf.predict(image[list(TEST_SLICES)])
    out = score(pred, truth[list(TEST_SLICES)]), time.perf_counter() - t0
    if path is not None:
        path.write_text(json.dumps({"mean_iou": out[0], "seconds": out[1], "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "jobs": jobs}))
    return out


def adapt(bundle, image: np.ndarray, labels: np.ndarray, truth: np.ndarray, budget: float | None, planes: int | None, log) -> dict:
    from napari_paser.train.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(budget_s=budget)
    if planes is not None:
        cfg.planes = planes
    t0 = time.perf_counter()
    res = finetune(bundle, image, labels, cfg)
    wall = time.perf_counter() - t0
    out = paser_scores(res.bundle, image, truth)
    out.update(wall=wall, budget=res.bundle.meta["finetune"]["budget_s"], held_out=res.held_out_iou,
               steps=res.bundle.meta["finetune"]["steps"])
    log(f"  adapted in {wall:.0f} s (budget {out['budget']:.0f} s, steps {out['steps']}, planes {res.bundle.f2.config.planes}): PaSeR {out['paser']:.4f} at λ {out['lam']:.3f} "
        f"(f1 {out['f1']:.4f}, f2 {out['f2']:.4f}; route {({k: round(v, 3) for k, v in out['route'].items()})})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle to fine-tune (registry name or folder; default: the default bundle)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="out-of-family volume seeds (default 9101 9102 9103)")
    p.add_argument("--budget", type=float, default=None, help="fine-tuning budget in seconds (default: the automatic one)")
    p.add_argument("--planes", type=int, default=None, help="planes the adapted f1 / f2 read (default: FinetuneConfig's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads and random-forest jobs (default: all cores)")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder to keep the generated volumes (npz) and the random forest's scores (JSON) in")
    p.add_argument("--rf-only", action="store_true", help="only the random forests (to fill --cache ahead of a run)")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("finetune_results.md"), help="markdown file to write")
    args = p.parse_args(argv)

    import torch

    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.train.sparse_labels import UNLABELLED, simulate_strokes

    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_finetune.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    bundle = load_bundle(resolve_bundle(args.bundle))
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    t_all = time.perf_counter()
    log(f"bundle {bundle.name} {bundle.meta.get('version', '')}; torch threads {torch.get_num_threads()}; cores {os.cpu_count()}")
    rows = []
    for seed in args.seeds:
        image, truth = load_volume(seed, args.cache)
        full = np.full_like(truth, UNLABELLED)
        full[list(TRAIN_SLICES)] = truth[list(TRAIN_SLICES)]
        sparse = np.full_like(truth, UNLABELLED)
        sparse[list(TRAIN_SLICES)] = simulate_strokes(truth[list(TRAIN_SLICES)], SPARSE_FRACTION, seed=seed)
        frac = float((sparse[list(TRAIN_SLICES)] != UNLABELLED).mean())
        log(f"volume {seed}: {image.shape} {image.dtype}; sparse labels cover {100 * frac:.1f} % of slices 0-3")
        jobs = args.threads or -1
        rf_full, rf_full_s = forest(image, full, truth, seed, jobs, args.cache, "full")
        rf_sparse, rf_sparse_s = forest(image, sparse, truth, seed, jobs, args.cache, "sparse")
        log(f"  random forest: full labels {rf_full:.4f} ({rf_full_s:.0f} s), sparse labels {rf_sparse:.4f} ({rf_sparse_s:.0f} s)")
        rf3_full, rf3_full_s = forest(image, full, truth, seed, jobs, args.cache, "full", "3d")
        rf3_sparse, rf3_sparse_s = forest(image, sparse, truth, seed, jobs, args.cache, "sparse", "3d")
        log(f"  random forest, 3-D features: full labels {rf3_full:.4f} ({rf3_full_s:.0f} s), sparse labels {rf3_sparse:.4f} ({rf3_sparse_s:.0f} s)")
        if args.rf_only:
            continue
        shipped = paser_scores(bundle, image, truth)
        log(f"  shipped: PaSeR {shipped['paser']:.4f} (f1 {shipped['f1']:.4f}, f2 {shipped['f2']:.4f})")
        ft_full = adapt(bundle, image, full, truth, args.budget, args.planes, log)
        ft_sparse = adapt(bundle, image, sparse, truth, args.budget, args.planes, log)
        rows.append(dict(seed=seed, frac=frac, shipped=shipped, rf_full=rf_full, rf_sparse=rf_sparse, rf3_full=rf3_full,
                         rf3_sparse=rf3_sparse, full=ft_full, sparse=ft_sparse))

    if args.rf_only:
        return 0
    held = {
        "full": [r["full"]["paser"] >= r["rf_full"] + 0.03 for r in rows],
        "sparse": [r["sparse"]["paser"] >= r["rf_full"] for r in rows],
        "time": [max(r["full"]["wall"], r["sparse"]["wall"]) <= 300 for r in rows],
    }
    md = [
        "## Fine-tuning to one scan vs a random forest (out-of-family volumes)",
        "",
        "```",
        command,
        "```",
        "",
        f"Bundle `{bundle.name}` {bundle.meta.get('version', '')}; torch threads {torch.get_num_threads()} on {os.cpu_count()} cores; "
        f"whole run {time.perf_counter() - t_all:.0f} s. Volumes `generate_volume(seed, 16, distribution=\"oof\")`; labels on slices 0-3, "
        "mean IoU (one confusion matrix) on slices 8-15. *Full*: slices 0-3 fully labelled; *sparse*: brush strokes and dots "
        f"over about {int(100 * SPARSE_FRACTION)} % of their pixels (`simulate_strokes`), the rest 255. PaSeR at the adapted "
        "bundle's λ (the fine-tuning's `lam_rule`, recorded in its manifest); the random forest (100 trees, multi-scale Gaussian, gradient, "
        "Hessian, LoG, DoG and structure-tensor features) is trained on the same pixels (at most 100 000 drawn at random); "
        + ("its scores do not depend on the bundle and are reused from `--cache` when an earlier run measured them." if args.cache else ""),
        "",
        "*RF 3-D*: the same forest on the same features computed with 3-D filters over the volume (as ilastik on a 3-D "
        "dataset); the adapted networks read neighbouring planes (planes in the log).",
        "",
        "| volume | shipped PaSeR | RF full | RF sparse | RF 3-D full / sparse | PaSeR full (f1 / f2) | PaSeR sparse (f1 / f2) | "
        "λ full / sparse | seconds full / sparse |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, s = r["full"], r["sparse"]
        md.append(
            f"| {r['seed']} | {r['shipped']['paser']:.4f} | {r['rf_full']:.4f} | {r['rf_sparse']:.4f} | "
            f"{r['rf3_full']:.4f} / {r['rf3_sparse']:.4f} | "
            f"{f['paser']:.4f} ({f['f1']:.4f} / {f['f2']:.4f}) | {s['paser']:.4f} ({s['f1']:.4f} / {s['f2']:.4f}) | "
            f"{f['lam']:.3f} / {s['lam']:.3f} | {f['wall']:.0f} / {s['wall']:.0f} |"
        )
    md += [
        "",
        "| target | per volume | held |",
        "|---|---|---|",
        "| full labels: PaSeR ≥ RF + 0.03 | " + ", ".join(f"{r['full']['paser'] - r['rf_full']:+.4f}" for r in rows)
        + f" | {sum(held['full'])} of {len(rows)} |",
        "| sparse labels: PaSeR ≥ RF on full labels | " + ", ".join(f"{r['sparse']['paser'] - r['rf_full']:+.4f}" for r in rows)
        + f" | {sum(held['sparse'])} of {len(rows)} |",
        "| (beside) full labels: PaSeR ≥ RF 3-D + 0.03 | " + ", ".join(f"{r['full']['paser'] - r['rf3_full']:+.4f}" for r in rows)
        + f" | {sum(r['full']['paser'] >= r['rf3_full'] + 0.03 for r in rows)} of {len(rows)} |",
        "| (beside) sparse labels: PaSeR ≥ RF 3-D on full labels | " + ", ".join(f"{r['sparse']['paser'] - r['rf3_full']:+.4f}" for r in rows)
        + f" | {sum(r['sparse']['paser'] >= r['rf3_full'] for r in rows)} of {len(rows)} |",
        "| each fine-tuning ≤ 300 s wall | " + ", ".join(f"{max(r['full']['wall'], r['sparse']['wall']):.0f} s" for r in rows)
        + f" | {sum(held['time'])} of {len(rows)} |",
        "",
        "Log:",
        "",
        "```",
        *lines,
        "```",
        "",
    ]
    args.out.write_text("\n".join(md))
    print("\n".join(md[: -len(lines) - 5]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
