"""Would a compiler or int8 make the bundle's networks cheaper in seconds on a CPU?

Issue 11 asks for f0's whole analysis at no more than 5 % of f2 everywhere's seconds and
for each model's share of seconds close to its share of FLOPs. The engine runs eager
PyTorch with oneDNN convolutions in the channels-last layout. This probe times, against
that, what PyTorch itself offers on a CPU without retraining:

- ``torch.compile`` (Inductor, with weight freezing) of f1 and f2 on the engine's batches
  of 32 halo patches, and of f0's encoder and refiner inside its analysis of one slice
  (the MC head, which draws its masks from a seeded generator, stays eager);
- post-training int8 quantisation with ``torch.ao.quantization``'s FX mode (the x86
  backend), which it tries on f1 and f2 and reports what it says.

Each variant is timed in turn with its eager original, over ``--rounds`` rounds, and
compared with it: the largest difference of the logits (or probabilities and gains) and
the share of pixel labels that differ.

    python benchmarks/probe_cpu_compilers.py --threads 1 --rounds 7
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.models import set_memory_format_
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import analyse_slices
from napari_paser.train.synth import generate_volume

PATCH, BATCH = (56, 64), 32


def median_ms(fn, rounds: int, calls: int) -> float:
    """Median over ``rounds`` of the mean milliseconds of ``calls`` calls of ``fn``."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return float(np.median(times) * 1e3)


def compiled(module: torch.nn.Module):
    """``torch.compile`` of ``module`` with Inductor's weight freezing (inference only)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(module)


def patch_models(bundle, rounds: int) -> list[str]:
    rows = []
    for name, model in zip(("f1", "f2"), bundle.segmenters()[1:]):
        halo = model.config.halo
        torch.manual_seed(0)
        x = torch.randn(BATCH, model.config.input_channels, PATCH[0] + 2 * halo, PATCH[1] + 2 * halo)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            eager = model(x)
            t0 = time.perf_counter()
            fast = compiled(copy.deepcopy(model))
            out = fast(x)
            compile_s = time.perf_counter() - t0
            ms_eager = median_ms(lambda: model(x), rounds, 3) / BATCH
            ms_fast = median_ms(lambda: fast(x), rounds, 3) / BATCH
        differ = float((out.argmax(1) != eager.argmax(1)).float().mean())
        rows.append(f"| {name} on {BATCH} halo patches | {ms_eager:.3f} | {ms_fast:.3f} | {ms_fast / ms_eager:.3f} | "
                    f"{compile_s:.1f} | {float((out - eager).abs().max()):.1e} | {differ:.2%} |")
    return rows


def f0_analysis(bundle, rounds: int) -> str:
    f0, policy = bundle.f0, bundle.policy
    volume = generate_volume(9001, 8, (224, 256))[0]  # the image of the benchmark's first test volume
    x = torch.from_numpy(np.ascontiguousarray(volume[2:7], dtype=np.float32))[None]
    x = ((x - x.mean()) / x.std()).contiguous(memory_format=torch.channels_last)
    fast_f0 = copy.deepcopy(f0)
    fast_f0.refiner = compiled(fast_f0.refiner)
    fast_f0._levels = compiled(fast_f0._levels)  # the encoder

    def analyse(net):
        refined, ent, features = analyse_slices(net, policy.config, x, 5, 0)
        return refined, policy.gains(features)

    with torch.inference_mode():
        eager = analyse(f0)
        t0 = time.perf_counter()
        out = analyse(fast_f0)
        compile_s = time.perf_counter() - t0
        ms_eager = median_ms(lambda: analyse(f0), rounds, 10)
        ms_fast = median_ms(lambda: analyse(fast_f0), rounds, 10)
    differ = float((out[0].argmax(1) != eager[0].argmax(1)).float().mean())
    gains = float((out[1] - eager[1]).abs().max())
    return (f"| f0's analysis and the policy, one 224 × 256 slice (encoder and refiner compiled) | {ms_eager:.2f} | {ms_fast:.2f} | "
            f"{ms_fast / ms_eager:.3f} | {compile_s:.1f} | {float((out[0] - eager[0]).abs().max()):.1e} (gains {gains:.1e}) | {differ:.2%} |")


def int8_attempts(bundle) -> list[str]:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    rows = []
    for name, model in zip(("f1", "f2"), bundle.segmenters()[1:]):
        halo = model.config.halo
        x = torch.randn(4, model.config.input_channels, PATCH[0] + 2 * halo, PATCH[1] + 2 * halo)
        try:
            prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (x,))
            with torch.no_grad():
                prepared(x)
            convert_fx(prepared)(x)
            rows.append(f"- {name}: converted")
        except Exception as exc:  # what the deprecated FX mode says of these networks is the result
            rows.append(f"- {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="paser-synth-v2.24")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    for model in bundle.models().values():
        set_memory_format_(model, torch.channels_last)  # as the engine runs them
    print(f"{args.bundle}, {args.threads} thread(s), medians of {args.rounds} rounds, torch {torch.__version__}\n")
    print("| what | eager ms | compiled ms | compiled / eager | compile s | largest difference | labels that differ |")
    print("|---|---|---|---|---|---|---|")
    for row in patch_models(bundle, args.rounds) + [f0_analysis(bundle, args.rounds)]:
        print(row)
    print("\nint8 (torch.ao.quantization FX mode, x86 backend):")
    print("\n".join(int8_attempts(bundle)))


if __name__ == "__main__":
    main()
