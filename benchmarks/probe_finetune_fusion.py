"""Should a bundle adapted by ``finetune`` keep f0's fusion into f1's and f2's patches?

The shipped bundles blend f0's (refined) probabilities into the patches routed to f1 and
f2 (``Bundle.fusion``, weights chosen on the development sets). ``finetune_iter`` turned
that off, because the weights were chosen for the shipped networks, not for adapted ones,
without measuring it; it now keeps them (``FinetuneConfig.keep_fusion``). This probe
adapts the bundle once per volume and label kind as ``bench_finetune.py`` does
(out-of-family volumes 9101-9103, slices 0-3 fully labelled or brush strokes over about
15 % of their pixels; default budget) and scores PaSeR at the adapted bundle's λ on slices
8-15 with the *same adapted networks* twice: fusion off (``keep_fusion=False``, what
``finetune`` shipped before) and the shipped bundle's weights (what it ships now; fusion
plays no part in the fine-tuning itself). Routing and GFLOPs do not depend on the fusion,
so the two differ only in the labels of the patches f1 and f2 segment.

    python benchmarks/probe_finetune_fusion.py [--bundle paser-synth-v2.21] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench_finetune import SEEDS, SPARSE_FRACTION, TRAIN_SLICES, load_volume, paser_scores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle to adapt (default: the default bundle)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="out-of-family volumes (default 9101 9102 9103)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()

    import torch

    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.train.finetune import FinetuneConfig, finetune
    from napari_paser.train.sparse_labels import UNLABELLED, simulate_strokes

    if args.threads:
        torch.set_num_threads(args.threads)
    shipped = load_bundle(resolve_bundle(args.bundle))
    weights = tuple(shipped.fusion)
    print(f"bundle {shipped.name} {shipped.meta.get('version')}, shipped fusion {weights}, torch threads {torch.get_num_threads()}")
    print("| volume | labels | PaSeR, fusion off (keep_fusion=False) | PaSeR, fusion " + f"{weights} | λ | f1 share |")
    print("|---|---|---|---|---|---|")
    started = time.perf_counter()
    for seed in args.seeds:
        image, truth = load_volume(seed, None)
        for kind in ("full", "sparse"):
            labels = np.full(truth.shape, UNLABELLED, np.uint8)
            rows = list(TRAIN_SLICES)
            labels[rows] = truth[rows] if kind == "full" else simulate_strokes(truth[rows], SPARSE_FRACTION, seed=seed)
            adapted = finetune(shipped, image, labels, FinetuneConfig(keep_fusion=False)).bundle
            assert tuple(adapted.fusion) == (0.0, 0.0)
            off = paser_scores(adapted, image, truth)
            adapted.fusion = weights
            on = paser_scores(adapted, image, truth)
            assert on["route"] == off["route"] and on["lam"] == off["lam"]
            print(f"| {seed} | {kind} | {off['paser']:.4f} | {on['paser']:.4f} | {on['lam']:.3f} | {on['route'].get('f1', 0):.3f} |",
                  flush=True)
    print(f"whole run {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
