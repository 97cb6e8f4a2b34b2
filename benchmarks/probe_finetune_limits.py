"""What limits a fine-tuned f2 on an out-of-family scan: training time, the decision rule,
or test-time augmentation?

On one development volume of the out-of-family generator (seed 9201 by default: not one
of the benchmark's test volumes 9101-9103), as ``bench_finetune.py`` does: labels on
slices 0-3, mean IoU (one confusion matrix) on slices 8-15.

1. The default fine-tuning (``FinetuneConfig()``); f1 and f2 of the adapted bundle are
   then scored (a) as they are, (b) with per-class logit offsets chosen to maximise the
   mean IoU of the scored slices themselves (an oracle: an upper bound of any threshold
   rule) and chosen on the training slices, (c) with their softmax averaged over the 8
   flips and rotations of the slice.
2. f2 alone (time share 1) for ``--long`` seconds, to see whether more steps help.

    python benchmarks/probe_finetune_limits.py [--bundle NAME] [--seed 9201] [--long 300]

About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from common import DIHEDRAL, dihedral, undo_dihedral

OFFSETS = np.linspace(-1.0, 1.0, 21)


@torch.no_grad()
def slice_logits(model, x: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Log-softmax of a patch model over whole slices (N, 1, H, W) -> (N, 3, H, W)."""
    from napari_paser.engine.patches import grid_shape, pad_to_patches, patch_windows, unpatchify

    h, w = x.shape[-2:]
    win = patch_windows(pad_to_patches(x, patch_size), patch_size, model.config.halo)
    out = torch.cat([model(win[i : i + 32]).float() for i in range(0, len(win), 32)])
    return unpatchify(out, grid_shape((h, w), patch_size))[..., :h, :w].log_softmax(1)


def dihedral_mean(model, x: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Softmax averaged over the flips and rotations that keep the slice's shape."""
    total = 0
    for t in DIHEDRAL:
        if t[2] and x.shape[-2] != x.shape[-1]:
            continue  # a transpose (a 90° turn, with a flip) of a non-square slice: skipped
        total = total + undo_dihedral(slice_logits(model, dihedral(x, t), patch_size).exp(), t)
    return total


def best_offsets(logp: torch.Tensor, truth: np.ndarray) -> tuple[tuple[float, float], float]:
    """Offsets (carbon-binder, nickel) added to the log-probabilities that maximise mean IoU."""
    from napari_paser.engine.metrics import confusion_matrix, mean_iou

    best = ((0.0, 0.0), -1.0)
    for b1, b2 in itertools.product(OFFSETS, OFFSETS):
        pred = (logp + torch.tensor([0.0, b1, b2]).view(1, 3, 1, 1)).argmax(1)
        iou = mean_iou(confusion_matrix(pred.numpy().ravel(), truth.ravel()))
        if iou > best[1]:
            best = ((round(float(b1), 2), round(float(b2), 2)), iou)
    return best


def main() -> None:
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.metrics import confusion_matrix, mean_iou
    from napari_paser.engine.normalize import Normalizer
    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.train.finetune import FinetuneConfig, finetune
    from napari_paser.train.synth import generate_volume

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle name or folder (default: the default bundle)")
    p.add_argument("--seed", type=int, default=9201, help="out-of-family volume seed (default 9201, a development volume)")
    p.add_argument("--long", type=float, default=300.0, help="seconds of the f2-only fine-tuning (default 300)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    bundle = load_bundle(resolve_bundle(args.bundle))
    image, truth, _ = generate_volume(args.seed, 16, (224, 256), distribution="oof")
    labels = np.full_like(truth, 255)
    labels[:4] = truth[:4]
    print(f"bundle {bundle.name}; out-of-family volume {args.seed}; labels on slices 0-3, scored on 8-15", flush=True)

    def score(pred: np.ndarray) -> float:
        return mean_iou(confusion_matrix(pred.ravel(), truth[8:].ravel()))

    t = time.perf_counter()
    adapted = finetune(bundle, image, labels, FinetuneConfig(threads=args.threads, seed=0)).bundle
    print(f"default fine-tuning: {time.perf_counter() - t:.0f} s, steps {adapted.meta['finetune']['steps']}", flush=True)
    norm = adapted.normalization
    scan = Normalizer.fit(image, norm.get("low_percentile", 0.5), norm.get("high_percentile", 99.5))(image)
    test = torch.from_numpy(scan[8:]).unsqueeze(1)
    train = torch.from_numpy(scan[:4]).unsqueeze(1)
    ps = adapted.patch_size
    for name in ("f1", "f2"):
        model = getattr(adapted, name).eval()
        logp = slice_logits(model, test, ps)
        base = score(logp.argmax(1).numpy())
        (oracle_b, oracle) = best_offsets(logp, truth[8:])
        (train_b, _) = best_offsets(slice_logits(model, train, ps), truth[:4])
        with_train_b = score((logp + torch.tensor([0.0, *train_b]).view(1, 3, 1, 1)).argmax(1).numpy())
        tta = score(dihedral_mean(model, test, ps).argmax(1).numpy())
        print(
            f"{name}: as adapted {base:.4f}; oracle class offsets {oracle_b} {oracle:.4f} ({oracle - base:+.4f}); "
            f"offsets from the training slices {train_b} {with_train_b:.4f} ({with_train_b - base:+.4f}); "
            f"8-fold flip/rotation average {tta:.4f} ({tta - base:+.4f})",
            flush=True,
        )
    f2_default = score(slice_logits(adapted.f2.eval(), test, ps).argmax(1).numpy())

    cfg = FinetuneConfig(threads=args.threads, seed=0, budget_s=args.long, shares={"f2": 1.0})
    res = finetune(bundle, image, labels, cfg)
    f2_long = score(slice_logits(res.bundle.f2.eval(), test, ps).argmax(1).numpy())
    print(
        f"f2 alone for {args.long:.0f} s ({res.bundle.meta['finetune']['steps']['f2']} steps): {f2_long:.4f} "
        f"vs {f2_default:.4f} after the default fine-tuning ({adapted.meta['finetune']['steps']['f2']} f2 steps); "
        f"held-out IoU of f2 at each evaluation {res.history['iou']['f2']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
