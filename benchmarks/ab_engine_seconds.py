"""Seconds of f0's analysis, the policy, f1 and f2 on every patch: two commits, one process.

The shared machine's speed drifts by tens of percent between runs, so comparing two
runs of the benchmark says little about a change of a few milliseconds. This script
exports the engine of commit ``A`` (``git archive``) under another package name, loads
the same bundle into both engines and analyses the same slices with both, alternating
which goes first, so both see the same machine. It prints the medians per slice and
the median of the per-slice ratios to f1 everywhere and f2 everywhere (16 halo patches each),
and whether the two engines' outputs are the same (:func:`compare_outputs`).

    python benchmarks/ab_engine_seconds.py 6f9974d            # A = 6f9974d, B = this tree
    python benchmarks/ab_engine_seconds.py 6f9974d --threads 2 --rounds 6
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def import_commit(commit: str, into: Path):
    """The ``napari_paser`` package of ``commit``, imported as ``napari_paser_ab``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src/napari_paser"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    (into / "src" / "napari_paser").rename(into / "napari_paser_ab")
    sys.path.insert(0, str(into))
    return importlib.import_module("napari_paser_ab.engine.pipeline"), importlib.import_module("napari_paser_ab.engine.bundle")


def compare_outputs(seg_a, seg_b) -> str:
    """Whether two segmenters of the same volume give the same labels (PaSeR at the default
    λ, f0, f1, f2, each with its routing), f0 entropy and policy gains; else what differs."""
    differ = []
    for method in ("paser", "f0", "f1", "f2"):
        a, b = seg_a.result(method=method), seg_b.result(method=method)
        if not (np.array_equal(a.labels, b.labels) and np.array_equal(a.routing, b.routing)):
            differ.append(f"{method} labels or routing")
    zs = range(seg_a.num_slices)
    gains = max(float(np.abs(seg_a.gains(z) - seg_b.gains(z)).max()) for z in zs)
    entropy = max(float(np.abs(seg_a.entropy(z) - seg_b.entropy(z)).max()) for z in zs)
    if gains or entropy:
        differ.append(f"gains by up to {gains:.2g}, f0's entropy by up to {entropy:.2g}")
    return "identical (labels, routings, entropy, gains)" if not differ else "; ".join(differ)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("commit", help="commit A (B is this working tree)")
    p.add_argument("--bundle", default="paser-synth-v2.9")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6, help="fresh engines per side, each analysing every slice")
    p.add_argument("--slices", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from napari_paser.engine import bundle as bundle_b
    from napari_paser.engine import pipeline as pipeline_b
    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.train.synth import generate_volume

    path = resolve_bundle(args.bundle)
    volume = generate_volume(9001, args.slices, (224, 256))[0]  # (image, labels, params)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline_a, bundle_a = import_commit(args.commit, Path(tmp))
        sides = {args.commit: (pipeline_a, bundle_a.load_bundle(path)), "this tree": (pipeline_b, bundle_b.load_bundle(path))}
        times = {name: [] for name in sides}  # (f0, policy, f1, f2) per slice
        for r in range(args.rounds):
            segs = {}
            for name, (pipeline, bundle) in sides.items():
                segs[name] = pipeline.PaserSegmenter(bundle, seed=0)
                segs[name].set_volume(volume)
            for z in range(args.slices):
                order = list(sides) if (r + z) % 2 == 0 else list(sides)[::-1]
                for name in order:
                    seg = segs[name]
                    seg.analyse(z)
                    seg.ensure_patches(z, 1)
                    seg.ensure_patches(z, 2)
                    f0, policy, patches = seg.timings(z)
                    times[name].append((f0, policy, float(patches[1].sum()), float(patches[2].sum())))
        same = compare_outputs(*segs.values())  # the last round's engines, every slice cached
    print(f"{args.bundle}, {args.rounds} rounds x {args.slices} slices of 224 x 256, {args.threads} thread(s); medians per slice")
    print(f"{'engine':<12} {'f0 ms':>7} {'policy ms':>10} {'f1 ms':>7} {'f2 ms':>7} "
          f"{'(f0 + policy) / f1':>19} {'(f0 + policy) / f2':>19} {'f1 / f2':>8}")
    for name, rows in times.items():
        t = np.array(rows)
        analysis = t[:, 0] + t[:, 1]
        ms = np.median(t, axis=0) * 1e3
        print(f"{name:<12} {ms[0]:7.2f} {ms[1]:10.2f} {ms[2]:7.2f} {ms[3]:7.1f} "
              f"{np.median(analysis / t[:, 2]):19.3f} {np.median(analysis / t[:, 3]):19.4f} {np.median(t[:, 2] / t[:, 3]):8.3f}")
    print(f"outputs of the two engines: {same}")


if __name__ == "__main__":
    main()
