"""How fast does a patch model of each shape run per FLOP on this CPU?

Issue 11 asks that each model's share of f2's seconds be close to its share of f2's FLOPs.
In BENCHMARKS.md's run on an Intel Xeon, f1 everywhere took 0.176 × f2's seconds for 0.108 ×
its FLOPs, and a profile put 75 % of f1's time in its convolutions of 24-48 channels. This
probe times untrained UNets of other shapes on the same halo patches as the engine, to say
which f1 shapes would run near f2's rate, before any of them is trained.

For each shape: GFLOPs per patch (``FlopCounterMode``), the median milliseconds per patch of
a forward pass over a batch of 32 patches of 56 × 64 pixels with an 8-pixel halo (the
engine's layout: channels-last, inference mode) and the rate in GFLOP/s, relative to f2's.
The shapes are timed in turn, in rounds, so that drift of the shared machine hits each alike.

    python benchmarks/probe_patch_model_shapes.py --threads 1 --rounds 7
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_paser.engine.flops import count_flops
from napari_paser.engine.models import UNet, UNetConfig, set_memory_format_

# (label, base_width, depth, stem): the bundle's f1 and f2 first, then candidate f1 shapes
SHAPES = [
    ("f1 of v2.24", 24, 3, 2),
    ("f2 of v2.24", 32, 4, 1),
    ("width 32, depth 3, stem 2", 32, 3, 2),
    ("width 48, depth 2, stem 2", 48, 2, 2),
    ("width 32, depth 2, stem 4", 32, 2, 4),
    ("width 64, depth 2, stem 4", 64, 2, 4),
    ("width 48, depth 3, stem 4", 48, 3, 4),
]
PATCH, HALO, BATCH = (56, 64), 8, 32


def build(width: int, depth: int, stem: int) -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_width=width, depth=depth, stem=stem, halo=HALO)).eval()
    set_memory_format_(model, torch.channels_last)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = (PATCH[0] + 2 * HALO, PATCH[1] + 2 * HALO)
    x = torch.randn(BATCH, 1, *shape).contiguous(memory_format=torch.channels_last)
    models = [build(w, d, s) for _, w, d, s in SHAPES]
    gflops = []
    for model in models:
        with torch.inference_mode():
            gflops.append(count_flops(lambda model=model: model(x)) / BATCH / 1e9)
            model(x)  # warm-up: oneDNN picks its kernels on the first call
    times = np.zeros((args.rounds, len(models)))
    with torch.inference_mode():
        for r in range(args.rounds):
            for i, model in enumerate(models):
                t0 = time.perf_counter()
                model(x)
                times[r, i] = (time.perf_counter() - t0) / BATCH
    ms = np.median(times, axis=0) * 1e3
    rate = np.array(gflops) / (ms / 1e3)
    print(f"{args.threads} thread(s), {args.rounds} rounds, batch {BATCH} of {shape[0]} x {shape[1]} (patch {PATCH} + halo {HALO})\n")
    print("| shape | parameters | GFLOPs a patch (× f2's) | ms a patch (× f2's) | GFLOP/s (× f2's) |")
    print("|---|---|---|---|---|")
    f2 = 1
    for i, (label, *_), in enumerate(SHAPES):
        params = sum(p.numel() for p in models[i].parameters())
        print(f"| {label} | {params:,} | {gflops[i]:.4f} ({gflops[i] / gflops[f2]:.3f}) | {ms[i]:.2f} ({ms[i] / ms[f2]:.3f}) | "
              f"{rate[i]:.1f} ({rate[i] / rate[f2]:.2f}) |")


if __name__ == "__main__":
    main()
