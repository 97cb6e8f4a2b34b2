"""Would routing smaller cells than the paper's patches open issue 11's second line? (oracle bounds)

In family every 56 × 64 patch is about a third boundary pixels, so f1's gain over f0 is
spread evenly over the patches and no router can beat f1 everywhere at its cost
(``probe_patch_texture.py``). Smaller cells vary more: some fall inside one phase. This
probe measures how much that is worth to a router that knows the truth (oracle routing),
on the development volumes of ``probe_policy_choice``, for cells of 56 × 64, 28 × 32 and
14 × 16 pixels, under three ways of running f1 and f2 on the routed cells:

- ``per-cell halo``: each cell is run with its own 8-pixel halo, as the engine runs patches;
- ``merged boxes``: each 8-connected group of routed cells is run once, as its bounding
  box plus the halo (never more than the whole slice);
- ``halo-free``: each routed pixel costs its share of a whole-slice run. No dense
  convolution on a CPU runs this way; it is the most any execution could save.

Costs are the engine's: a model's GFLOPs and measured seconds on a 56 × 64 patch with its
halo, scaled by the pixels a run reads; f0's analysis and the policy on every slice.
For each it prints oracle routing's best IoU within f1 everywhere's GFLOPs and seconds
(line 2's budget), with f1 everywhere run as today (16 patches with halos a slice) and,
since an engine that ran f1 on merged regions would also run f1 everywhere as one
whole-slice pass, within that cheaper budget. It also prints the share of cells where f1
does not gain over f0.

    python benchmarks/probe_routing_granularity.py paser-synth-v2.16 [--threads 2]
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from common import patch_confusion_np
from napari_paser.engine.metrics import dataset_iou_gains, iou_per_class
from probe_policy_choice import development_parser, development_tables

CELLS = ((56, 64), (28, 32), (14, 16))
EXECUTIONS = ("per-cell halo", "merged boxes", "halo-free")


def run_pixels(routed: np.ndarray, cell: tuple[int, int], halo: int, shape: tuple[int, int], execution: str) -> float:
    """Pixels a model reads to predict the ``routed`` cells (GY, GX) of one slice."""
    n = int(routed.sum())
    if n == 0:
        return 0.0
    ch, cw = cell
    if execution == "per-cell halo":
        return n * (ch + 2 * halo) * (cw + 2 * halo)
    if execution == "halo-free":
        return n * ch * cw
    labels, _ = ndimage.label(routed, structure=np.ones((3, 3)))
    total = 0
    for rows, cols in ndimage.find_objects(labels):
        top, bottom = max(0, rows.start * ch - halo), min(shape[0], rows.stop * ch + halo)
        left, right = max(0, cols.start * cw - halo), min(shape[1], cols.stop * cw + halo)
        total += (bottom - top) * (right - left)
    return min(total, shape[0] * shape[1])


def main() -> None:
    p = development_parser(__doc__)
    p.add_argument("--lams", type=int, default=120, help="points of the oracle's λ sweep")
    args = p.parse_args()
    for name, bundle, table, volumes in development_tables(args, with_volumes=True):
        seg0 = table.segs[0][0]
        shape = seg0.shape[1:]
        ph, pw = seg0.patch_size
        halo = [int(getattr(net.config, "halo", 0)) for net in bundle.segmenters()]
        window = [(ph + 2 * h) * (pw + 2 * h) for h in halo]
        # per pixel read, from a 56 x 64 patch with its halo: GFLOPs and measured seconds
        per_pixel = {
            "gflops": np.array([table.cost.patch[m] / 1e9 / window[m] for m in (1, 2)]),
            "seconds": np.array([table.seconds[2][:, m].mean() / window[m] for m in (1, 2)]),
        }
        n = table.n
        analysis = {"gflops": n * table.cost.slice_flops(0, 0) / 1e9, "seconds": float(table.seconds[0].sum() + table.seconds[1].sum())}
        patches_f1 = table.conf.shape[2] * table.conf.shape[3]
        f1_today = {u: n * patches_f1 * window[1] * per_pixel[u][0] for u in per_pixel}
        f1_whole = {u: n * shape[0] * shape[1] * per_pixel[u][0] for u in per_pixel}
        preds, truths = [], []
        for (seg, zs), (_, labels) in zip(table.segs, volumes):
            for z in zs:
                preds.append([seg.compose(z, routing=np.full(seg.grid, m)) for m in range(3)])
                truths.append(labels[z])
        f1_iou = float(np.mean(iou_per_class(table.pooled(table.constant(1)))))
        print(f"{name}, {bundle.name}: {n} slices; f1 everywhere {f1_iou:.4f}; f0's analysis and the policy "
              f"{analysis['gflops'] / f1_today['gflops']:.3f} × f1 everywhere's GFLOPs, {analysis['seconds'] / f1_today['seconds']:.3f} × its seconds "
              f"(f1 as one whole-slice pass: {f1_whole['gflops'] / f1_today['gflops']:.3f} × the GFLOPs of today's)", flush=True)
        for cell in CELLS:
            conf = np.stack([np.stack([patch_confusion_np(pr[m], t, cell) for m in range(3)]) for pr, t in zip(preds, truths)])
            gains = dataset_iou_gains(conf)
            area = cell[0] * cell[1]
            best = {(e, ref): -1.0 for e in EXECUTIONS for ref in ("today", "whole")}
            for lam in np.concatenate([[0.0], np.geomspace(1e-9, 1e-2, args.lams)]):
                # route by gain minus λ × halo-free GFLOPs; every execution is then charged what it runs
                utility = np.concatenate([np.zeros_like(gains[:, :1]), gains - lam * area * per_pixel["gflops"].reshape(1, 2, 1, 1)], axis=1)
                routing = utility.argmax(1)
                iou = float(np.mean(iou_per_class(np.take_along_axis(conf, routing[:, None, ..., None, None], 1)[:, 0].sum((0, 1, 2)))))
                for e in EXECUTIONS:
                    pixels = np.array([[run_pixels(r == m, cell, halo[m], shape, e) for m in (1, 2)] for r in routing]).sum(0)
                    spent = {u: analysis[u] + float(pixels @ per_pixel[u]) for u in per_pixel}
                    for ref, budget in (("today", f1_today), ("whole", f1_whole)):
                        if all(spent[u] <= budget[u] for u in per_pixel):
                            best[e, ref] = max(best[e, ref], iou)
            no_gain = float((gains[:, 0] <= 0).mean())
            cells = "; ".join(f"{e} {best[e, 'today']:.4f} / {best[e, 'whole']:.4f}" for e in EXECUTIONS)
            print(f"  cells {cell[0]} × {cell[1]}: f1 gains nothing on {no_gain:.1%}; oracle within f1 everywhere's GFLOPs and seconds "
                  f"(f1 as today / as one whole-slice pass): {cells}", flush=True)


if __name__ == "__main__":
    main()
