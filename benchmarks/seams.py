"""Do the borders between patches show? Issue 11's "patch models that see context".

f1 and f2 read each patch with a halo of the slice around it, so that a patch is labelled
as the same region of a whole-slice pass would be, and the borders between patches, routed
to the same model or to different ones, do not show. This measures both on a benchmark
table's slices (``bench_testsets``), from the caches the table already filled:

- **Patches against a whole-slice pass.** f1 and f2 run once more on each whole slice
  (reflect-padded by their halo, as the engine pads a slice's patches): the pixels whose
  label differs from the patches', and the mean IoU of each against the truth.
- **Seams.** For several routings, false edges: the share of neighbouring pixels of one
  true phase that the labels part, across a border between patches of different models,
  across one between patches of the same model, and at least 8 pixels from every border
  on the patches' 8-pixel grid (:func:`~napari_paser.engine.metrics.seam_edges`). The patch grid does not follow the
  microstructure, so without seams the three shares differ only by sampling error;
  labels made without patches (f0's, and f1's and f2's whole-slice passes) show how
  large that is. Checkerboards put a border between different models around every patch.
  As a check that the count sees seams where there are some, f1 and f2 also run on
  every patch without the slice around it (each patch reflect-padded by the halo).
- **Blended borders.** The same routings composed by engines with ``blend_borders``
  (:mod:`napari_paser.engine.blending`, ``segment --blend-borders``): their mean IoU and
  false edges beside the cropped patches'.
"""

from __future__ import annotations

import numpy as np
import torch

from blend_scoring import blended_engine
from napari_paser.engine.metrics import SEAM_REGIONS, confusion_matrix, mean_iou, seam_edges
from napari_paser.engine.models import class_argmax
from napari_paser.engine.patches import unpatchify
from napari_paser.engine.pipeline import PaserSegmenter

MODELS = ("f0", "f1", "f2")
CHECKERBOARDS = ((0, 1), (1, 2), (0, 2))


@torch.no_grad()
def whole_slice_labels(seg: PaserSegmenter, z: int, model: int) -> np.ndarray:
    """Labels (rows, columns) of patch model ``model`` run once on the whole slice ``z``."""
    net = seg.bundle.segmenters()[model]
    halo, planes = net.config.halo, net.config.planes
    stack = seg._planes(z, planes)  # normalised and padded to whole patches, as the patches read it
    x = np.pad(stack, ((0, 0), (halo, halo), (halo, halo)), mode="reflect") if halo > 0 else stack
    multiple = 2 ** len(net.downs) * net.config.stem  # else the levels would not line up with the patches'
    if any(s % multiple for s in x.shape[1:]):
        raise ValueError(f"a whole slice of {x.shape[1:]} pixels with its halo is not a multiple of {multiple}")
    h, w = seg.shape[1:]
    return class_argmax(net(seg._to_device(torch.from_numpy(x)[None])))[0, :h, :w].cpu().numpy()


@torch.no_grad()
def no_context_labels(seg: PaserSegmenter, z: int, model: int) -> np.ndarray:
    """Labels (rows, columns) of patch model ``model`` on every patch of slice ``z`` when
    each patch is padded by reflecting itself instead of by the slice around it."""
    net = seg.bundle.segmenters()[model]
    halo, planes = net.config.halo, net.config.planes
    (ph, pw), (gy, gx) = seg.patch_size, seg.grid
    stack = seg._planes(z, planes)
    windows = np.stack([np.pad(stack[:, a * ph : (a + 1) * ph, b * pw : (b + 1) * pw], ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
                        for a in range(gy) for b in range(gx)])
    logits = unpatchify(net(seg._to_device(torch.from_numpy(windows))), (gy, gx))
    h, w = seg.shape[1:]
    return class_argmax(logits)[0, :h, :w].cpu().numpy()


def routings(table, lam: float) -> dict[str, tuple[list[np.ndarray], bool]]:
    """Each routing to measure: the per-slice routings and whether f0 is fused in."""
    n, grid = table.n, table.conf.shape[2:4]
    checker = np.indices(grid).sum(0) % 2
    out = {f"{MODELS[m]} everywhere": (list(table.constant(m)), False) for m in (1, 2)}
    out.update({f"{MODELS[m]} everywhere, f0 fused": (list(table.constant(m)), True) for m in (1, 2)})
    out["PaSeR"] = (list(table.paser(lam)), True)
    for a, b in CHECKERBOARDS:
        out[f"{MODELS[a]} / {MODELS[b]} checkerboard"] = ([np.where(checker, b, a).astype(np.uint8)] * n, True)
    return out


def seam_report(table, truths: list[np.ndarray], lam: float, blend_table=None) -> dict:
    """Whole-slice agreement of f1 and f2 and the false edges of :func:`routings` (see the module doc).

    ``truths``: each volume's labels, in the order of ``table.segs``; ``blend_table``: the
    table's :func:`~common.blended_table`, whose engines then compose the blended routings.
    """
    slices = [(seg, z, truth[z]) for (seg, zs), truth in zip(table.segs, truths, strict=True) for z in zs]
    grid = table.conf.shape[2:4]
    # Labels made without patches: the routing only says which borders to count as mixed.
    labelled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        "f0 (whole slice)": ([seg.compose(z, routing=np.zeros(grid, np.uint8)) for seg, z, _ in slices], list(table.constant(0)))}
    whole = {}
    for m in (1, 2):
        patches = [seg.compose(z, routing=np.full(grid, m, np.uint8), fused=False) for seg, z, _ in slices]
        alone = [whole_slice_labels(seg, z, m) for seg, z, _ in slices]
        truth = np.stack([t for _, _, t in slices])
        whole[MODELS[m]] = {"mean_iou_patches": mean_iou(confusion_matrix(np.stack(patches), truth)),
                            "mean_iou_whole_slice": mean_iou(confusion_matrix(np.stack(alone), truth)),
                            "pixels_differing": float(np.mean(np.stack(patches) != np.stack(alone)))}
        labelled[f"{MODELS[m]} (whole-slice pass)"] = (alone, list(table.constant(m)))
        labelled[f"{MODELS[m]} without context (check)"] = ([no_context_labels(seg, z, m) for seg, z, _ in slices], list(table.constant(m)))
    engines = [seg for seg, _ in table.segs]
    blending = [seg for seg, _ in blend_table.segs] if blend_table is not None else [blended_engine(seg) for seg in engines]
    blenders = {id(seg): blender for seg, blender in zip(engines, blending, strict=True)}
    truth = np.stack([t for _, _, t in slices])
    blended = {}
    for name, (per_slice, fused) in routings(table, lam).items():
        labelled[name] = ([seg.compose(z, routing=r, fused=fused) for (seg, z, _), r in zip(slices, per_slice, strict=True)], per_slice)
        mixed = [blenders[id(seg)].compose(z, routing=r, fused=fused) for (seg, z, _), r in zip(slices, per_slice, strict=True)]
        labelled[f"{name}, borders blended"] = (mixed, per_slice)
        blended[name] = {"mean_iou_cropped": mean_iou(confusion_matrix(np.stack(labelled[name][0]), truth)),
                         "mean_iou_blended": mean_iou(confusion_matrix(np.stack(mixed), truth))}
    seams = {}
    for name, (labels, per_slice) in labelled.items():
        counts = {region: np.zeros(2, np.int64) for region in SEAM_REGIONS}
        for lab, (seg, _, truth), routing in zip(labels, slices, per_slice, strict=True):
            for region, edges in seam_edges(lab, truth, routing, seg.patch_size).items():
                counts[region] += edges
        seams[name] = {region: {"false_edges": float(c[0] / c[1]) if c[1] else None, "edges": int(c[0]), "pairs": int(c[1])}
                       for region, c in counts.items()}
    return {"whole_slice": whole, "seams": seams, "margin": 8, "excess": excess(seams), "blended": blended}


def across_borders(row: dict) -> float:
    """Share of false edges over every pair across a border, whichever models meet there."""
    edges = row["same_model_borders"]["edges"] + row["mixed_borders"]["edges"]
    return edges / (row["same_model_borders"]["pairs"] + row["mixed_borders"]["pairs"])


def excess(seams: dict) -> dict:
    """False edges across the borders beyond what the models give there on their own, in
    points of %, on the same pairs of pixels: a checkerboard against the mean of its two
    models routed everywhere (f0 fused in, as PaSeR composes them), and a patch model
    without context against the same model with its halo."""
    own = {0: "f0 (whole slice)", 1: "f1 everywhere, f0 fused", 2: "f2 everywhere, f0 fused"}
    out = {}
    for a, b in CHECKERBOARDS:
        reference = (across_borders(seams[own[a]]) + across_borders(seams[own[b]])) / 2
        out[f"{MODELS[a]} / {MODELS[b]} checkerboard"] = 100 * (across_borders(seams[f"{MODELS[a]} / {MODELS[b]} checkerboard"]) - reference)
    for m in (1, 2):
        name = MODELS[m]
        out[f"{name} without context"] = 100 * (across_borders(seams[f"{name} without context (check)"]) - across_borders(seams[f"{name} everywhere"]))
    return out
