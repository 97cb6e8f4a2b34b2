"""Benchmark of the PaSeR engine on one CPU: cost and speed of routing vs f2 everywhere.

Run ``python benchmarks/bench_engine.py [--slices 64] [--json OUT.json]``. Everything is
measured in this one run on a synthetic electrode stack:

1. precision / memory format: fp32, channels_last, bf16 autocast (argmax agreement with
   fp32 and time) for f0's MC analysis and f1/f2 patch batches;
2. patch batch size for f1/f2;
3. Monte-Carlo dropout: naive full passes vs the shared encoder (FLOPs, time, max |Δ
   entropy| with identical dropout masks);
4. PaSeR at the bundle's default λ vs f2 on every patch (wall-clock, GFLOPs, ratios);
5. warm re-routing for a λ change (whole stack and one slice), all patches cached.

Uses the default bundle if installed, else the quick-preset architecture with random
weights (timings are valid; the routing then is not meaningful, which is reported).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import numpy as np
import torch

from napari_paser.engine.bundle import Bundle, default_model_configs, load_bundle
from napari_paser.engine.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_CHANNELS_LAST, DEFAULT_PRECISION, PaserSegmenter
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import entropy, mc_predict, slice_seed


def best_time(fn, repeats: int = 3) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def load_volume(slices: int) -> tuple[np.ndarray, str]:
    try:
        from napari_paser.train.synth import generate_volume
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 4000, (slices, 224, 256)).astype(np.uint16), "random uint16 noise (synth not available)"
    image, _, info = generate_volume(0, slices)
    return image, f"napari_paser.train.synth.generate_volume(seed=0), shape {tuple(info['shape'])}"


def load_any_bundle() -> tuple[Bundle, str]:
    try:
        folder = resolve_bundle(None)
    except FileNotFoundError:
        bundle = Bundle.from_configs(default_model_configs("quick"), seed=0, meta={"name": "quick-random", "version": "0"})
        return bundle.eval(), "quick preset, RANDOM weights (no default bundle installed)"
    return load_bundle(folder), f"default bundle {folder.name}"


def precision_table(bundle: Bundle, seg: PaserSegmenter) -> list[dict]:
    """Time and fp32 argmax agreement of channels_last / bf16 for f0 MC and f1/f2 patch batches."""
    x = torch.from_numpy(seg._planes(0, bundle.f0.config.planes))[None]  # the planes f0 reads
    cells = [(z, gy, gx) for z in range(2) for gy in range(seg.grid[0]) for gx in range(seg.grid[1])][:DEFAULT_BATCH_SIZE]
    rows = []
    for name in ("f0", "f1", "f2"):
        net = getattr(bundle, name)
        # What the engine feeds a patch model: the patch and its halo.
        patches = torch.from_numpy(np.stack([seg._patch_window(z, gy, gx, net.config.halo, net.config.planes) for z, gy, gx in cells]))
        ref = None
        for cl in (False, True):
            for bf16 in (False, True):
                net.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                inp = x if name == "f0" else patches
                inp = inp.contiguous(memory_format=torch.channels_last) if cl else inp
                ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

                def call(net=net, inp=inp, ctx=ctx, name=name):
                    with torch.inference_mode(), ctx():
                        if name == "f0":
                            return mc_predict(net, inp, seg.mc_passes, seed=1)[0]
                        return net(inp).float()

                out = call().argmax(1)
                ref = out if ref is None else ref
                rows.append(
                    {
                        "model": name,
                        "call": f"MC x{seg.mc_passes}, 1 slice" if name == "f0" else f"{len(patches)} patches",
                        "channels_last": cl,
                        "bf16": bf16,
                        "ms": 1e3 * best_time(call, 3),
                        "agreement": float((out == ref).float().mean()),
                    }
                )
        net.to(memory_format=torch.contiguous_format)
    return rows


def batch_table(bundle: Bundle, seg: PaserSegmenter, n: int = 32) -> list[dict]:
    ph, pw = seg.patch_size
    rows = []
    for name in ("f1", "f2"):
        net = getattr(bundle, name)
        h = net.config.halo
        patches = torch.rand(n, net.config.planes, ph + 2 * h, pw + 2 * h)
        net.to(memory_format=torch.channels_last)
        for bs in (1, 8, 16, 32):
            def call(net=net, bs=bs):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    for i in range(0, n, bs):
                        net(patches[i : i + bs].contiguous(memory_format=torch.channels_last))

            rows.append({"model": name, "batch": bs, "ms_per_patch": 1e3 * best_time(call, 1) / n})
        net.to(memory_format=torch.contiguous_format)
    return rows


def mc_comparison(bundle: Bundle, seg: PaserSegmenter, slices: int = 8) -> dict:
    """Shared encoder vs ``passes`` full forwards, with the same dropout masks."""
    f0, passes = bundle.f0, seg.mc_passes
    xs = [torch.from_numpy(seg._planes(z, f0.config.planes))[None] for z in range(slices)]

    def naive(x, z):
        # passes full forwards in one batch: the decoder draws exactly the masks that
        # mc_predict draws for the same seed, so the two must agree to rounding.
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            feats = f0.encode(x.repeat(passes, 1, 1, 1))
            torch.manual_seed(slice_seed(0, z))
            from napari_paser.engine.models import mc_dropout

            with mc_dropout(f0):
                logits = f0.decode(feats)
        prob = logits.softmax(1).reshape(passes, 1, *logits.shape[1:]).mean(0)
        return entropy(prob)

    def shared(x, z):
        with torch.inference_mode():
            return mc_predict(f0, x, passes, seed=slice_seed(0, z))[1]

    diff = max(float((naive(x, z) - shared(x, z)).abs().max()) for z, x in enumerate(xs))
    t_naive = best_time(lambda: [naive(x, z) for z, x in enumerate(xs)], 2) / slices
    t_shared = best_time(lambda: [shared(x, z) for z, x in enumerate(xs)], 2) / slices
    cm = seg.cost_model
    return {
        "passes": passes,
        "gflops_naive": cm.f0_naive_mc / 1e9,
        "gflops_shared": cm.f0_mc / 1e9,
        "ms_naive": 1e3 * t_naive,
        "ms_shared": 1e3 * t_shared,
        "max_abs_entropy_diff": diff,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--json", help="also write the measurements as JSON")
    args = ap.parse_args(argv)
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    volume, source = load_volume(args.slices)
    out["volume"] = {"source": source, "shape": list(volume.shape), "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    bundle, bsource = load_any_bundle()
    out["bundle"] = {"source": bsource, "parameters": bundle.parameter_counts(), "costs": bundle.costs().tolist(), "default_lam": bundle.default_lam}
    print(f"volume ({out['volume']['seconds']:.0f} s): {source}; bundle: {bsource}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    print(f"segmenter defaults: batch {DEFAULT_BATCH_SIZE}, patch precision {DEFAULT_PRECISION}, channels_last {DEFAULT_CHANNELS_LAST}")
    probe = PaserSegmenter(bundle)
    probe.set_volume(volume)
    out["precision"] = precision_table(bundle, probe)
    print("\nprecision / memory format (agreement = argmax agreement with fp32 contiguous)")
    print(f"{'model':5} {'call':18} {'channels_last':>13} {'bf16':>5} {'ms':>9} {'agreement':>10}")
    for r in out["precision"]:
        print(f"{r['model']:5} {r['call']:18} {r['channels_last']!s:>13} {r['bf16']!s:>5} {r['ms']:9.1f} {r['agreement']:10.5f}")

    out["batch"] = batch_table(bundle, probe)
    print("\npatch batch size (ms per patch, channels_last + bf16)")
    for name in ("f1", "f2"):
        print(f"{name}: " + "  ".join(f"bs {r['batch']}: {r['ms_per_patch']:.2f}" for r in out["batch"] if r["model"] == name))

    out["mc"] = mc = mc_comparison(bundle, probe)
    print(f"\nMC dropout, {mc['passes']} passes, per slice")
    print(f"naive full passes : {mc['gflops_naive']:.4f} GFLOPs  {mc['ms_naive']:.1f} ms")
    print(f"shared encoder    : {mc['gflops_shared']:.4f} GFLOPs  {mc['ms_shared']:.1f} ms")
    print(f"ratio naive/shared: {mc['gflops_naive'] / mc['gflops_shared']:.2f}x FLOPs, {mc['ms_naive'] / mc['ms_shared']:.2f}x time; max |Δ entropy| = {mc['max_abs_entropy_diff']:.2e}")

    # PaSeR at the default λ, cold (fresh caches), vs f2 on every patch, cold.
    seg = PaserSegmenter(bundle)
    seg.set_volume(volume)
    t = time.perf_counter()
    paser = seg.result(lam=bundle.default_lam)
    t_paser = time.perf_counter() - t
    seg2 = PaserSegmenter(bundle)
    seg2.set_volume(volume)
    t = time.perf_counter()
    f2 = seg2.result(method="f2")
    t_f2 = time.perf_counter() - t
    out["paser_vs_f2"] = {
        "lam": paser.lam,
        "route_fraction": paser.route_fraction,
        "paser_seconds": t_paser,
        "paser_gflops": paser.gflops_total,
        "f2_seconds": t_f2,
        "f2_gflops": f2.gflops_total,
        "speedup": t_f2 / t_paser,
        "flops_ratio": f2.gflops_total / paser.gflops_total,
        "agreement_with_f2": float((paser.labels == f2.labels).mean()),
    }
    p = out["paser_vs_f2"]
    print(f"\n{volume.shape[0]} slices, PaSeR at default λ={p['lam']} vs f2 everywhere (cold caches)")
    print(f"{'method':8} {'seconds':>8} {'GFLOPs':>9}  routing")
    frac = " ".join(f"{k}={v:.1%}" for k, v in p["route_fraction"].items())
    print(f"{'paser':8} {t_paser:8.2f} {paser.gflops_total:9.2f}  {frac}")
    print(f"{'f2':8} {t_f2:8.2f} {f2.gflops_total:9.2f}  f2=100%")
    print(f"f2/paser: {p['speedup']:.2f}x time, {p['flops_ratio']:.2f}x FLOPs")
    if "RANDOM" in bsource:
        print("note: random weights -- the policy's routing is arbitrary (may send every patch to one model)")

    # Warm re-routing: every patch of every model cached on seg2.
    seg2.result(method="f1")
    seg2.result(lam=0.0)
    lams = [0.05, 0.2, 0.5, 0.8, 0.95]
    t_stack = max(best_time(lambda lam=lam: seg2.result(lam=lam), 1) for lam in lams)
    t_slice = max(best_time(lambda lam=lam: seg2.compose(volume.shape[0] // 2, lam=lam), 3) for lam in lams)
    t_tvd = best_time(lambda: seg2.lam_for_tvd(0.1), 3)
    out["reroute"] = {"stack_seconds": t_stack, "slice_ms": 1e3 * t_slice, "lam_for_tvd_ms": 1e3 * t_tvd}
    print(f"\nwarm re-route for a λ change (worst of {lams}):")
    print(f"whole stack : {1e3 * t_stack:.1f} ms (target <= 1 s)")
    print(f"one slice   : {1e3 * t_slice:.2f} ms (target <= 100 ms)")
    print(f"lam_for_tvd : {1e3 * t_tvd:.2f} ms")
    out["seconds_total"] = time.perf_counter() - t0
    print(f"\nbenchmark total {out['seconds_total']:.0f} s (+ volume generation)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
