"""Does fine-tuned f2's margin over the random forest grow with more labels or z-context?

The fine-tuning benchmark asks fine-tuned PaSeR to beat a random forest trained on the
same 4 labelled slices by 0.03 mean IoU. ``probe_finetune_limits.py`` showed that more
steps, class offsets and test-time augmentation do not move adapted f2. This probe asks
whether the *data* would: on development volumes of the out-of-family generator (not the
benchmark's test volumes 9101-9103), f2 alone is fine-tuned for a fixed time and the
forest is trained on the same labels, and both are scored on slices 8-15:

1. **z-context.** The image smoothed along the plane axis (Gaussian, ``--z-sigma``)
   before both methods, against the raw image: the cheapest form of what 3-D context
   gives (independent noise per slice averages out). ``--z-seeds`` volumes of 16 slices.
2. **More labels.** A 32-slice volume with labels on slices 0-3 against labels on 0-3
   and 16-31 (five times the labelled area); f2 trains ``--long`` seconds on the latter.

    python benchmarks/probe_finetune_margin.py [--bundle NAME] [--fit 100] [--long 250]

About 17 minutes on 2 cores (the six runs took 134-288 s each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_finetune_limits import slice_logits  # noqa: E402


def scores(bundle, image: np.ndarray, labels: np.ndarray, truth: np.ndarray, fit_s: float, threads: int) -> tuple[float, float]:
    """Mean IoU on ``truth``'s planes 8-15 of the random forest and of f2 fine-tuned for ``fit_s`` seconds."""
    from napari_paser.engine.metrics import confusion_matrix, mean_iou
    from napari_paser.engine.normalize import Normalizer
    from napari_paser.engine.random_forest import RandomForestSegmenter
    from napari_paser.train.finetune import FinetuneConfig, finetune

    def score(pred: np.ndarray) -> float:
        return mean_iou(confusion_matrix(pred.ravel(), truth[8:16].ravel()))

    forest = RandomForestSegmenter(n_jobs=threads).fit(image, labels)
    rf = score(forest.predict(image[8:16]))
    cfg = FinetuneConfig(threads=threads, seed=0, budget_s=fit_s, shares={"f2": 1.0})
    adapted = finetune(bundle, image, labels, cfg).bundle
    n = adapted.normalization
    scan = Normalizer.fit(image, n.get("low_percentile", 0.5), n.get("high_percentile", 99.5))(image)
    logp = slice_logits(adapted.f2.eval(), torch.from_numpy(scan[8:16]).unsqueeze(1), adapted.patch_size)
    return rf, score(logp.argmax(1).numpy())


def main() -> None:
    from scipy import ndimage

    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.train.synth import generate_volume

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle name or folder (default: the default bundle)")
    p.add_argument("--z-seeds", type=int, nargs="+", default=[9201, 9202], help="development volumes of part 1")
    p.add_argument("--z-sigma", type=float, default=1.0, help="Gaussian sigma along the plane axis (planes)")
    p.add_argument("--label-seed", type=int, default=9201, help="development volume of part 2")
    p.add_argument("--fit", type=float, default=100.0, help="seconds of f2 fine-tuning on 4 slices (its held-out IoU plateaus by then)")
    p.add_argument("--long", type=float, default=250.0, help="seconds of f2 fine-tuning on 20 slices")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle))
    print(f"bundle {bundle.name}; out-of-family development volumes; scored on slices 8-15", flush=True)

    print(f"1. z-context: Gaussian along the plane axis, sigma {args.z_sigma}; labels on slices 0-3", flush=True)
    for seed in args.z_seeds:
        image, truth, _ = generate_volume(seed, 16, (224, 256), distribution="oof")
        labels = np.full_like(truth, 255)
        labels[:4] = truth[:4]
        smooth = ndimage.gaussian_filter1d(image.astype(np.float32), args.z_sigma, axis=0, mode="nearest")
        for name, img in (("raw", image), ("z-smoothed", smooth)):
            t = time.perf_counter()
            rf, f2 = scores(bundle, img, labels, truth, args.fit, args.threads)
            print(f"  volume {seed} {name:10s}: forest {rf:.4f}, f2 {f2:.4f}, margin {f2 - rf:+.4f} ({time.perf_counter() - t:.0f} s)", flush=True)

    print(f"2. more labels: volume {args.label_seed} with 32 slices", flush=True)
    image, truth, _ = generate_volume(args.label_seed, 32, (224, 256), distribution="oof")
    for name, planes, fit_s in (("slices 0-3", list(range(4)), args.fit), ("slices 0-3, 16-31", list(range(4)) + list(range(16, 32)), args.long)):
        labels = np.full_like(truth, 255)
        labels[planes] = truth[planes]
        t = time.perf_counter()
        rf, f2 = scores(bundle, image, labels, truth, fit_s, args.threads)
        print(f"  labels on {name:17s}: forest {rf:.4f}, f2 ({fit_s:.0f} s) {f2:.4f}, margin {f2 - rf:+.4f} ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
