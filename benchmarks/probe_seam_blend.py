"""Would blending neighbouring patches across their borders take the seams away?

f1 and f2 read each 56 x 64 patch with an 8-pixel halo and the engine keeps only the
patch: what the network says about the halo is thrown away. Around every border, the
patch on each side has said something about the pixels of the other. This probe blends
the two, as sliding-window segmentation does: each patch contributes its (fused)
probabilities over its whole window, weighted by a ramp that rises from 0 at ``width``
pixels outside the patch to 1 at ``width`` pixels inside it (1/2 on its border), so that
across a border the two sides hand over linearly. Further inside, a patch's labels are
the engine's. A patch kept on f0 contributes f0's probabilities over the same window.
Nothing runs that the engine does not run already; only what is kept changes.

On the benchmark's two test sets it prints, per routing, the mean IoU and the false edges
across the borders minus inside (points of %, :func:`~napari_paser.engine.metrics.seam_edges`),
for the engine's cropped patches and for blends within ``--widths`` pixels of the
borders. The cropped rows are checked against the engine's own labels.

    python benchmarks/probe_seam_blend.py paser-synth-v2.24 --widths 8 4

About five minutes on one core.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import OOF_SEEDS, TEST_SEEDS, make_volumes
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import confusion_matrix, mean_iou, seam_edges
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import mc_predict, slice_seed

SETS = {"in-family": ("v1", TEST_SEEDS), "out-of-family": ("oof", OOF_SEEDS)}


def ramp(length: int, halo: int, width: int) -> np.ndarray:
    """Weights along one side of a window: 0 up to ``halo - width`` pixels from its edge,
    then rising linearly to 1 at ``halo + width`` pixels (and 1/2 on the patch's border)."""
    t = np.arange(length)
    return np.clip((np.minimum(t, length - 1 - t) + 0.5 - (halo - width)) / (2 * width), 0.0, 1.0)


@torch.no_grad()
def window_probs(seg: PaserSegmenter, z: int, model: int) -> np.ndarray:
    """(GY, GX, classes, rows + 2 halo, columns + 2 halo): ``model``'s softmax over every
    patch's whole window, halo included."""
    net = seg.bundle.segmenters()[model]
    (gy, gx), halo, planes = seg.grid, net.config.halo, net.config.planes
    windows = np.stack([seg._patch_window(z, a, b, halo, planes) for a in range(gy) for b in range(gx)])
    x = seg._to_device(torch.from_numpy(windows))
    full = net.shuffle(net.decode_folded(net.encode(x)))  # UNet.unfold without its crop
    prob = torch.softmax(full.float(), dim=1).cpu().numpy()
    return prob.reshape(gy, gx, *prob.shape[1:])


@torch.no_grad()
def f0_probs(seg: PaserSegmenter, z: int, halo: int) -> tuple[np.ndarray, np.ndarray]:
    """f0's refined probabilities as the engine computes them (its labels are their
    argmax) and as fusion reads them (bytes / 255): each (classes, rows, columns) of the
    padded slice, edge-padded by ``halo``."""
    seg.analyse(z)
    f0 = seg.bundle.f0
    x = seg._to_device(torch.from_numpy(seg._planes(z, f0.config.planes))[None])
    prob = mc_predict(f0, x, seg.mc_passes, seed=slice_seed(seg.seed, seg.first_slice + z))[0]
    exact = f0.refine(x, prob)[0].float().cpu().numpy()
    gy, gx, c, ph, pw = seg._f0prob[z].shape
    kept = seg._f0prob[z].transpose(2, 0, 3, 1, 4).reshape(c, gy * ph, gx * pw).astype(np.float32) / 255
    pad = ((0, 0), (halo, halo), (halo, halo))
    return np.pad(exact, pad, mode="edge"), np.pad(kept, pad, mode="edge")


def compose(seg: PaserSegmenter, routing: np.ndarray, probs: dict[int, np.ndarray], f0: tuple[np.ndarray, np.ndarray],
            halo: int, width: int) -> np.ndarray:
    """Labels of one slice: each patch from its routed model (f0 fused in, as the engine
    does), blended with its neighbours within ``width`` pixels of their borders (0: cropped)."""
    (gy, gx), (ph, pw) = seg.grid, seg.patch_size
    wh, ww = ph + 2 * halo, pw + 2 * halo
    if width:
        weight = ramp(wh, halo, width)[:, None] * ramp(ww, halo, width)[None, :]
    else:
        weight = np.zeros((wh, ww))
        weight[halo:-halo, halo:-halo] = 1.0
    exact, kept = f0
    acc = np.zeros_like(exact)
    total = np.full(exact.shape[1:], 1e-12, np.float32)  # the slice's outer halo: no weight when cropped
    for a in range(gy):
        for b in range(gx):
            rows, cols = slice(a * ph, a * ph + wh), slice(b * pw, b * pw + ww)
            m = int(routing[a, b])
            p = exact[:, rows, cols]
            if m > 0:
                w0 = float(seg._fusion[m])
                p = (1 - w0) * probs[m][a, b] + w0 * kept[:, rows, cols]
            acc[:, rows, cols] += weight * p
            total[rows, cols] += weight
    labels = (acc / total).argmax(0)[halo:-halo, halo:-halo]
    h, w = seg.shape[1:]
    return labels[:h, :w].astype(np.uint8)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", default="paser-synth-v2.24")
    p.add_argument("--widths", type=int, nargs="+", default=[8, 4], help="blend within this many pixels of a border")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle))
    lam = bundle.default_lam
    halo = bundle.segmenters()[1].config.halo
    if bundle.segmenters()[2].config.halo != halo:
        raise SystemExit("the probe assumes f1 and f2 read the same halo")
    if any(not 0 < w <= halo for w in args.widths):
        raise SystemExit(f"blend widths must be between 1 and the halo, {halo}")
    widths = [0, *args.widths]
    print(f"bundle {bundle.name}, default λ {lam}; halo {halo}; IoU and false edges across borders minus inside (points)")
    print("| set | routing | " + " | ".join("cropped" if w == 0 else f"blended ±{w} px" for w in widths) + " |")
    print("|---|---|" + "---|" * len(widths))
    for name, (dist, seeds) in SETS.items():
        volumes = make_volumes(seeds, 8, distribution=dist)
        results: dict[str, dict[int, list]] = {}
        for image, truth in volumes:
            seg = PaserSegmenter(bundle)
            seg.set_volume(image)
            checker = np.indices(seg.grid).sum(0) % 2
            for z in range(seg.num_slices):
                probs = {m: window_probs(seg, z, m) for m in (1, 2)}
                f0 = f0_probs(seg, z, halo)
                routes = {
                    "f1 everywhere, f0 fused": np.ones(seg.grid, np.uint8),
                    "f2 everywhere, f0 fused": np.full(seg.grid, 2, np.uint8),
                    "PaSeR at the default λ": seg.routing(lam, z),
                    "f0 / f1 checkerboard": np.where(checker, 1, 0).astype(np.uint8),
                    "f1 / f2 checkerboard": np.where(checker, 2, 1).astype(np.uint8),
                    "f0 / f2 checkerboard": np.where(checker, 2, 0).astype(np.uint8),
                }
                for label, routing in routes.items():
                    for width in widths:
                        labels = compose(seg, routing, probs, f0, halo, width)
                        if not width and not np.array_equal(labels, seg.compose(z, routing=routing)):
                            raise SystemExit(f"the cropped {label} labels of slice {z} are not the engine's")
                        edges = seam_edges(labels, truth[z], routing, seg.patch_size)
                        row = results.setdefault(label, {w: [] for w in widths})[width]
                        row.append((confusion_matrix(labels, truth[z]), edges))
        for label, by_width in results.items():
            cells = []
            for rows in by_width.values():
                cm = sum(r[0] for r in rows)
                counts = {k: np.sum([r[1][k] for r in rows], axis=0) for k in rows[0][1]}
                borders = counts["same_model_borders"] + counts["mixed_borders"]
                excess = 100 * (borders[0] / max(borders[1], 1) - counts["interior"][0] / counts["interior"][1])
                cells.append(f"{mean_iou(cm):.4f}, {excess:+.2f}")
            print(f"| {name} | {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
