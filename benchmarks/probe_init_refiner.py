"""How many steps should ``train --init`` give f0's refiner?

The ``init`` preset fine-tunes every network of a bundle briefly (a few hundred steps at
lowered learning rates) but keeps the refiner's default schedule (3 000 steps at 2e-3),
which bundles with a refiner (v2.13 onwards, the default bundle included) spend most of
the run on. This probe runs ``napari-paser train --init BUNDLE`` on one out-of-family
volume of ``bench_finetune.py`` (``generate_volume(seed, 16, distribution="oof")``,
slices 0-3 labelled, the rest 255), with the refiner's steps and learning rate as given,
and scores PaSeR at the adapted bundle's λ, f0 and f1 alone on slices 8-15 (mean IoU,
one confusion matrix), beside the shipped bundle. One JSON line per run.

    python benchmarks/probe_init_refiner.py --refine-steps 3000 --refine-lr 2e-3
    python benchmarks/probe_init_refiner.py --refine-steps 300 --refine-lr 4e-4
    python benchmarks/probe_init_refiner.py --refine-steps 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN_SLICES = slice(0, 4)
TEST_SLICES = slice(8, 16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="paser-synth-v2.21", help="bundle to start from (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=9101, help="out-of-family volume (default: %(default)s)")
    parser.add_argument("--refine-steps", type=int, default=3000, help="the refiner's steps (0: kept as shipped)")
    parser.add_argument("--refine-lr", type=float, default=2e-3, help="the refiner's learning rate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the volume and the bundle (default: a temporary one)")
    args = parser.parse_args()

    import tifffile
    import torch

    from napari_paser.cli.main import main as cli
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.metrics import mean_iou
    from napari_paser.engine.pipeline import segment
    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.train import presets
    from napari_paser.train.synth import generate_volume

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="init-refiner-"))
    work.mkdir(parents=True, exist_ok=True)
    image, truth, _ = generate_volume(args.seed, 16, distribution="oof")
    truth = truth.astype(np.uint8)
    sparse = np.full_like(truth, 255)
    sparse[TRAIN_SLICES] = truth[TRAIN_SLICES]
    tifffile.imwrite(work / "image.tif", image)
    tifffile.imwrite(work / "labels.tif", sparse)

    presets.PRESETS["init"] = presets.PRESETS["init"].replace(refine_steps=args.refine_steps, refine_lr=args.refine_lr)
    out = work / f"bundle-refine{args.refine_steps}"
    started = time.perf_counter()
    rc = cli(["train", "--images", str(work / "image.tif"), "--labels", str(work / "labels.tif"), "--init", args.bundle,
              "--out", str(out), "--no-progress", "--threads", str(args.threads), "--seed", "0"])
    seconds = time.perf_counter() - started

    scores = {}
    for name, folder in (("adapted", out), ("shipped", resolve_bundle(args.bundle))):
        bundle = load_bundle(folder)
        for method in ("paser", "f0", "f1"):
            labels = segment(image, bundle, method=method).labels
            scores[f"{name}_{method}"] = round(float(mean_iou(labels[TEST_SLICES], truth[TEST_SLICES])), 4)
    print(json.dumps({"bundle": args.bundle, "seed": args.seed, "refine_steps": args.refine_steps,
                      "refine_lr": args.refine_lr, "rc": rc, "train_seconds": round(seconds, 1), **scores}))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
