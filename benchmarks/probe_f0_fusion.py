"""How much of f0 should a patch routed to f1 or f2 keep? (``Bundle.fusion``; issue 11)

PaSeR runs f0's MC-dropout analysis on every slice anyway. Its errors differ from the
patch models', most of all on scans unlike the training data, so a patch that f1 or f2
segments can take the argmax of (1 - w) p_f + w p_f0 at no extra network cost. This
probe measures, on the five development sets of ``probe_image_residual`` (28 volumes of 8
slices; no test set shares a seed), the dataset mean IoU of f1 and of f2 everywhere with
f0 fused in at weights w = 0, 0.05, ..., 0.5, computed as the engine computes them (f0's
MC mean, or its refined output, kept as bytes; f1 / f2 on patches with their halos).

Rule: for each model, the weight with the largest mean change over the sets among those
where no set loses IoU. ``--write FOLDER`` stores the chosen weights in that bundle's manifest
(``f0_fusion``; the weights file is not touched) with ``--version``.

    python benchmarks/probe_f0_fusion.py paser-synth-v2.16 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import make_volumes
from napari_paser.engine.bundle import check_fusion, load_bundle
from napari_paser.engine.fusion import to_bytes
from napari_paser.engine.metrics import confusion_matrix, mean_iou
from napari_paser.engine.patches import unpatchify
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import mc_predict, slice_seed
from probe_image_residual import FRESH
from probe_policy_fit import SETS

WEIGHTS = np.round(np.arange(0.0, 0.501, 0.05), 2)


@torch.inference_mode()
def slice_probabilities(seg: PaserSegmenter, z: int) -> list[torch.Tensor]:
    """f0's (as the engine keeps it: bytes / 255), f1's and f2's probabilities (3, Y, X) of slice ``z``."""
    bundle = seg.bundle
    x = torch.from_numpy(seg._planes(z, bundle.f0.config.planes))[None]
    prob, _ = mc_predict(bundle.f0, x, seg.mc_passes, seed=slice_seed(seg.seed, seg.first_slice + z))
    p0 = bundle.f0.refine(x, prob)[0]
    out = [to_bytes(p0).float() / 255]
    cells = list(np.ndindex(*seg.grid))  # row-major, as unpatchify expects
    for net in bundle.segmenters()[1:]:
        windows = torch.from_numpy(np.stack([seg._patch_window(z, gy, gx, net.config.halo, net.config.planes) for gy, gx in cells]))
        patches = torch.cat([net(windows[i : i + 32]).float().softmax(1) for i in range(0, len(cells), 32)])
        out.append(unpatchify(patches, seg.grid)[0])
    return out


def fusion_table(bundle, volumes) -> np.ndarray:
    """Dataset mean IoU (2, len(WEIGHTS)) of f1 / f2 everywhere with f0 fused in at each weight."""
    conf = np.zeros((2, len(WEIGHTS), 3, 3), dtype=np.int64)
    for image, labels in volumes:
        seg = PaserSegmenter(bundle, seed=0)
        seg.set_volume(image)
        h, w = seg.shape[1:]
        for z in range(seg.num_slices):
            p0, *patch_models = slice_probabilities(seg, z)
            for m, pm in enumerate(patch_models):
                for k, wt in enumerate(WEIGHTS):
                    pred = ((1 - wt) * pm + wt * p0).argmax(0)[:h, :w].numpy()
                    conf[m, k] += confusion_matrix(pred, labels[z], 3)
    return np.array([[mean_iou(c) for c in per_model] for per_model in conf])


def choose(changes: np.ndarray) -> int:
    """Index of the weight with the largest mean change over the sets among those where no set loses."""
    ok = changes.min(0) >= 0
    return int(np.flatnonzero(ok)[np.argmax(changes.mean(0)[ok])])


def write_manifest(folder: Path, weights: tuple[float, float], version: str, rule: str) -> None:
    """Store the weights in ``folder``'s manifest.json (atomically; weights untouched)."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["f0_fusion"] = {"f1": weights[0], "f2": weights[1]}
    manifest["f0_fusion_rule"] = rule
    manifest["version"] = version
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as tmp:
        json.dump(manifest, tmp, indent=2)
    os.chmod(tmp.name, path.stat().st_mode & 0o777)
    os.replace(tmp.name, path)
    load_bundle(folder)  # still a valid bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", type=Path, help="bundle folder whose manifest gets the chosen weights")
    p.add_argument("--version", help="the bundle's new version (with --write)")
    args = p.parse_args()
    if args.write and not args.version:
        p.error("--write needs --version")
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    names, tables = [], []
    for name, (distribution, seeds) in {**SETS, **FRESH}.items():
        tables.append(fusion_table(bundle, make_volumes(seeds, args.slices, distribution=distribution)))
        names.append(name)
        print(f"{name}: f1 / f2 everywhere {tables[-1][0, 0]:.4f} / {tables[-1][1, 0]:.4f}", flush=True)
    tables = np.stack(tables)  # (sets, 2, weights)
    changes = tables - tables[:, :, :1]
    chosen = []
    for m in range(2):
        print(f"\nf{m + 1} with f0 fused in, change of the dataset mean IoU over w = 0:")
        print("| set | " + " | ".join(f"w {w:.2f}" for w in WEIGHTS[1:]) + " |")
        print("|---|" + "---|" * (len(WEIGHTS) - 1))
        for name, row in zip(names + ["mean", "least"], [*changes[:, m], changes[:, m].mean(0), changes[:, m].min(0)]):
            print(f"| {name} | " + " | ".join(f"{v:+.4f}" for v in row[1:]) + " |")
        k = choose(changes[:, m])
        chosen.append(float(WEIGHTS[k]))
        print(f"chosen w{m + 1} = {WEIGHTS[k]:.2f}: mean change {changes[:, m, k].mean():+.4f}, least {changes[:, m, k].min():+.4f}")
    weights = check_fusion(chosen)
    if args.write:
        rule = ("per patch model, the weight of f0 with the largest mean change of f1 / f2 everywhere's IoU over the five "
                "development sets of benchmarks/probe_f0_fusion.py among those where no set loses")
        write_manifest(args.write, weights, args.version, rule)
        print(f"wrote f0_fusion {weights} and version {args.version} to {args.write / 'manifest.json'}")


if __name__ == "__main__":
    main()
