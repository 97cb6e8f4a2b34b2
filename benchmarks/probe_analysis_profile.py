"""Where do the seconds of f0's analysis go, and would another memory layout save them?

Issue 11 aims at f0's whole analysis (closed-form MC mean, refiner, labels, policy) for no
more than 5 % of f2 everywhere's seconds; BENCHMARKS.md measures 0.066-0.071 × with one
thread. This probe times each step of the engine's analysis of a development volume's
slices (never the test sets), f2 on the same slices' patches for scale, the operators
under ``torch.profiler`` grouped into convolutions and the rest, and the refiner's first
convolution (a strided one on the full-resolution planes and log-probabilities) in
other memory layouts, which give the same refined probabilities.

    python benchmarks/probe_analysis_profile.py --threads 1 --rounds 9
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.fusion import to_bytes
from napari_paser.engine.models import Refiner, UNet, centre_planes, class_argmax, strided_weight
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import DEFAULT_BUNDLE, resolve_bundle
from napari_paser.engine.uncertainty import mc_predict, policy_features
from napari_paser.train.synth import generate_volume


def rotated_medians(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median milliseconds of each step over ``rounds`` rounds, the order rotated each round."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def refiner_in_layout(refiner: Refiner, planes: torch.Tensor, prob: torch.Tensor, layout: str) -> torch.Tensor:
    """:meth:`Refiner.forward` with its strided first convolution's input and weight in
    ``layout``: "engine" (as shipped: the concatenation's layout, channels-last weight),
    "plain" (both plain) or "channels_last" (the input copied channels-last)."""
    logp = prob.clamp_min(1e-4).log()
    x = torch.cat([planes.to(logp.dtype), logp], dim=1)
    first, rest = cast(torch.nn.Conv2d, refiner.body[0]), refiner.body[1:]
    weight = strided_weight(first.weight, refiner.stem)
    if layout == "plain":
        weight = weight.contiguous()
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    h = F.conv2d(x, weight, first.bias, stride=refiner.stem, padding=refiner.stem * cast(int, first.padding[0]))
    return logp + F.pixel_shuffle(rest(h), refiner.stem)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=DEFAULT_BUNDLE)
    ap.add_argument("--seed", type=int, default=8001, help="development volume (distribution v1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle))
    image = generate_volume(args.seed, 8, (224, 256), distribution="v1")[0]
    seg = PaserSegmenter(bundle, side_by_side=False)
    seg.set_volume(image)
    f0: UNet = bundle.f0
    refiner = f0.refiner
    if refiner is None:
        raise SystemExit(f"{args.bundle}'s f0 has no refiner")
    inputs = [seg._analysis_input(z) for z in range(seg.num_slices)]
    config = bundle.policy.config

    with torch.inference_mode():
        cache = [mc_predict(f0, f0_in, seg.mc_passes, return_features=True) for _, _, f0_in in inputs]
        refined = [f0.refine(f0_in, prob) for (_, _, f0_in), (prob, *_) in zip(inputs, cache)]
        feats = [policy_features(x, prob.float(), ent.float(), fe, config, None, ref)
                 for (_, x, _), (prob, ent, fe), ref in zip(inputs, cache, refined)]
        planes = [centre_planes(f0_in, refiner.planes) for _, _, f0_in in inputs]

        def each(fn):
            return lambda: [fn(i) for i in range(len(inputs))]

        steps = {
            "encoder and closed-form MC mean (mc_predict)": each(lambda i: mc_predict(f0, inputs[i][2], seg.mc_passes, return_features=True)),
            "refiner (UNet.refine)": each(lambda i: f0.refine(inputs[i][2], cache[i][0])),
            "labels and fusion bytes": each(lambda i: (class_argmax(refined[i]), to_bytes(refined[i][0]))),
            "policy inputs (policy_features)": each(lambda i: policy_features(inputs[i][1], cache[i][0].float(), cache[i][1].float(),
                                                                             cache[i][2], config, None, refined[i])),
            "policy gains": each(lambda i: bundle.policy.gains(feats[i])),
            "whole analysis (engine)": lambda: [seg._analysis(a) for a in inputs],
        }
        ms = rotated_medians(steps, args.rounds)
        seg.ensure_patches(0, 2)  # warm f2 up once
        f2_ms = []
        for _ in range(args.rounds):
            fresh = PaserSegmenter(bundle, side_by_side=False)
            fresh.set_volume(image)
            t0 = time.perf_counter()
            for z in range(fresh.num_slices):
                fresh.ensure_patches(z, 2)
            f2_ms.append((time.perf_counter() - t0) * 1e3)
        f2 = float(np.median(f2_ms)) / len(inputs)
        n = len(inputs)
        print(f"{args.bundle}, development volume v1 {args.seed} ({n} slices of 224 × 256), {args.threads} thread(s), "
              f"medians of {args.rounds} rounds in a rotated order, torch {torch.__version__}\n")
        print("| step of f0's analysis | ms per slice | × f2 everywhere's seconds |\n|---|---|---|")
        for name, value in ms.items():
            print(f"| {name} | {value / n:.2f} | {value / n / f2:.4f} |")
        patches = (image.shape[1] // seg.patch_size[0]) * (image.shape[2] // seg.patch_size[1])
        print(f"| f2 everywhere (its {patches} halo patches of each slice) | {f2:.2f} | 1 |")

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            steps["whole analysis (engine)"]()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
        print(f"\nProfiled analysis: convolutions {conv / total:.1%} of the operators' self time; the largest others:\n")
        print("| operator | ms per slice | share |\n|---|---|---|")
        for e in sorted((e for e in events if "conv" not in e.key), key=lambda e: -e.self_cpu_time_total)[:8]:
            print(f"| {e.key} | {e.self_cpu_time_total / 1e3 / n:.2f} | {e.self_cpu_time_total / total:.1%} |")

        layouts = ("engine", "plain", "channels_last")
        reference = [refiner(p, c[0]) for p, c in zip(planes, cache)]
        variants = {layout: each(lambda i, layout=layout: refiner_in_layout(refiner, planes[i], cache[i][0], layout)) for layout in layouts}
        layout_ms = rotated_medians(variants, args.rounds)
        print("\n| refiner's first convolution | refiner ms per slice | largest difference of its logits |\n|---|---|---|")
        for layout in layouts:
            diff = max(float((refiner_in_layout(refiner, p, c[0], layout) - r).abs().max()) for p, c, r in zip(planes, cache, reference))
            print(f"| {layout} | {layout_ms[layout] / n:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
