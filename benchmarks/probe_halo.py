"""Would a wider halo take away the rest of the seams? (issue 11, "patch models that see context")

f1 and f2 read each 56 x 64 patch with an 8-pixel halo of the slice around it. The seam
check of the benchmark (``seams.py``) finds that the halo takes away most of the false
edges that patches without any context show across their borders, not all. This probe
runs the bundle's f1 and f2 with wider halos at inference (the networks are fully
convolutional and crop their own 8 pixels; the extra context is cropped after them) on
the benchmark's two test sets and prints, per halo: the mean IoU of the patches, the
false edges across the patch borders minus those inside (points of %,
:func:`~napari_paser.engine.metrics.seam_edges`, every patch on one model), and the
milliseconds of a batch of 16 patches (one thread). Nothing is fitted.

    python benchmarks/probe_halo.py paser-synth-v2.24 --halos 8 16 24

About five minutes on one core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import OOF_SEEDS, TEST_SEEDS, make_volumes
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import confusion_matrix, mean_iou, seam_edges
from napari_paser.engine.models import class_argmax
from napari_paser.engine.patches import unpatchify
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle

SETS = {"in-family": ("v1", TEST_SEEDS), "out-of-family": ("oof", OOF_SEEDS)}


@torch.no_grad()
def patch_labels(seg: PaserSegmenter, z: int, model: int, halo: int) -> tuple[np.ndarray, float]:
    """Labels of slice ``z`` from ``model`` on every patch read with ``halo`` pixels of the
    slice around it, and the seconds of the forward pass."""
    net = seg.bundle.segmenters()[model]
    extra = halo - net.config.halo
    if extra < 0:
        raise ValueError(f"a halo of {halo} is narrower than the {net.config.halo} pixels the network crops")
    (ph, pw), (gy, gx) = seg.patch_size, seg.grid
    stack = np.pad(seg._planes(z, net.config.planes), ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    windows = np.stack([stack[:, a * ph : (a + 1) * ph + 2 * halo, b * pw : (b + 1) * pw + 2 * halo] for a in range(gy) for b in range(gx)])
    x = seg._to_device(torch.from_numpy(windows))
    t0 = time.perf_counter()
    logits = net(x)
    seconds = time.perf_counter() - t0
    if extra:
        logits = logits[..., extra:-extra, extra:-extra]
    h, w = seg.shape[1:]
    return class_argmax(unpatchify(logits, (gy, gx)))[0, :h, :w].cpu().numpy(), seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", default="paser-synth-v2.24")
    p.add_argument("--halos", type=int, nargs="+", default=[8, 16, 24])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle))
    print(f"bundle {bundle.name}; {torch.get_num_threads()} thread(s)")
    print("| set | model | halo | mean IoU | borders − interior (points) | ms / 16 patches |")
    print("|---|---|---|---|---|---|")
    for name, (dist, seeds) in SETS.items():
        volumes = make_volumes(seeds, 8, distribution=dist)
        segs = []
        for image, _ in volumes:
            seg = PaserSegmenter(bundle)
            seg.set_volume(image)
            segs.append(seg)
        for model in (1, 2):
            for halo in args.halos:
                cm, counts, seconds = np.zeros((3, 3), np.int64), np.zeros((2, 2), np.int64), 0.0
                for seg, (_, truth) in zip(segs, volumes):
                    for z in range(seg.num_slices):
                        labels, s = patch_labels(seg, z, model, halo)
                        seconds += s
                        cm += confusion_matrix(labels, truth[z])
                        edges = seam_edges(labels, truth[z], np.full(seg.grid, model), seg.patch_size)
                        counts += [edges["same_model_borders"], edges["interior"]]
                excess = 100 * (counts[0, 0] / counts[0, 1] - counts[1, 0] / counts[1, 1])
                slices = sum(seg.num_slices for seg in segs)
                print(f"| {name} | f{model} | {halo} | {mean_iou(cm):.4f} | {excess:+.2f} | {1e3 * seconds / slices:.1f} |", flush=True)


if __name__ == "__main__":
    main()
