"""Would fusing more of f0 near the patch borders hide the rest of the seams? (issue 11)

f0's refined labels come from one whole-slice pass and show no seam; f1's patches, with
their 8-pixel halo, still show some across the patch borders, most out of family (the
benchmark's seam counts, ``seams.py``). PaSeR fuses f0 into f1 with one weight w
(``Bundle.fusion``). This probe raises that weight towards ``w_border`` within ``r``
pixels of a patch's edge (linearly, to ``w_border`` on the edge itself), with every patch
on f1, on the benchmark's two test sets, and prints the mean IoU and the false edges
across the patch borders minus those inside (points of %,
:func:`~napari_paser.engine.metrics.seam_edges`). The first row (``r`` 0) is PaSeR's
fusion at the default λ. Nothing is fitted; the settings are a grid, so the best row is
chosen on the test sets and says how much there is to gain, not what to ship.

    python benchmarks/probe_border_fusion.py paser-synth-v2.24 [--dev]

``--dev`` runs it on development volumes no test set shares instead, where a setting
would be chosen.

About eight minutes on one core.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import OOF_SEEDS, TEST_SEEDS, make_volumes
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import confusion_matrix, mean_iou, seam_edges
from napari_paser.engine.models import class_argmax, class_softmax
from napari_paser.engine.patches import unpatchify
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle

SETS = {"in-family": ("v1", TEST_SEEDS), "out-of-family": ("oof", OOF_SEEDS)}
# Development volumes no test set shares (as probe_f1_candidate.py's): where a setting would be chosen.
DEV_SETS = {"in-family dev": ("v1", (8001, 8002, 8003, 8004)), "out-of-family dev": ("oof", (8101, 8102))}


def border_weights(patch_size: tuple[int, int], weight: float, w_border: float, r: int) -> np.ndarray:
    """f0's weight at every pixel of a patch (rows, columns): ``weight`` inside, rising
    linearly to ``w_border`` on the patch's edge over its last ``r`` pixels."""
    ph, pw = patch_size
    rows, cols = np.indices((ph, pw))
    to_edge = np.minimum.reduce([rows, ph - 1 - rows, cols, pw - 1 - cols]).astype(np.float32)
    ramp = np.clip(1 - to_edge / r, 0, 1) if r > 0 else np.zeros((ph, pw), np.float32)
    return weight + (w_border - weight) * ramp


@torch.no_grad()
def f1_and_f0(seg: PaserSegmenter, z: int) -> tuple[np.ndarray, np.ndarray]:
    """f1's softmax and f0's kept probabilities on every patch of slice ``z``: (P, C, rows, columns) each."""
    seg.analyse(z)
    net = seg.bundle.segmenters()[1]
    gy, gx = np.indices(seg.grid).reshape(2, -1)
    x = torch.from_numpy(np.stack([seg._patch_window(z, a, b, net.config.halo, net.config.planes) for a, b in zip(gy, gx)]))
    prob = class_softmax(net(seg._to_device(x)).float(), channels_last=False).cpu().numpy()
    return prob, seg._f0prob[z, gy, gx].astype(np.float32) / 255


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", default="paser-synth-v2.24")
    p.add_argument("--borders", type=float, nargs="+", default=[0.5, 0.7, 1.0], help="f0's weight on a patch's edge")
    p.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8], help="pixels over which it rises")
    p.add_argument("--dev", action="store_true", help="the development volumes instead of the test sets")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_bundle(resolve_bundle(args.bundle))
    weight = float(bundle.fusion[0])
    settings = [(weight, 0)] + [(wb, r) for wb in args.borders for r in args.widths]
    print(f"bundle {bundle.name}; f0's weight in f1's patches {weight}")
    print("| set | f0's weight on the edge | over pixels | mean IoU | borders − interior (points) |")
    print("|---|---|---|---|---|")
    for name, (dist, seeds) in (DEV_SETS if args.dev else SETS).items():
        volumes = make_volumes(seeds, 8, distribution=dist)
        cms = {s: np.zeros((3, 3), np.int64) for s in settings}
        edges = {s: np.zeros((2, 2), np.int64) for s in settings}
        for image, truth in volumes:
            seg = PaserSegmenter(bundle)
            seg.set_volume(image)
            gy, gx = seg.grid
            h, w = seg.shape[1:]
            for z in range(seg.num_slices):
                prob, f0 = f1_and_f0(seg, z)
                for s in settings:
                    wmap = border_weights(seg.patch_size, weight, *s)
                    fused = torch.from_numpy((1 - wmap) * prob + wmap * f0)
                    labels = class_argmax(unpatchify(fused, (gy, gx)))[0, :h, :w].numpy()
                    cms[s] += confusion_matrix(labels, truth[z])
                    e = seam_edges(labels, truth[z], np.ones(seg.grid, int), seg.patch_size)
                    edges[s] += [e["same_model_borders"], e["interior"]]
        for s in settings:
            c = edges[s]
            excess = 100 * (c[0, 0] / c[0, 1] - c[1, 0] / c[1, 1])
            print(f"| {name} | {s[0]:.2f} | {s[1]} | {mean_iou(cms[s]):.4f} | {excess:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
