"""Are f1's and f2's changes to the refined f0 right where they are confident? (issue 11)

``probe_refined_ranking`` bounds how many of the pixels f1 and f2 relabel over the refined
f0 are right: at most 54-57 % in family and 57-63 % out of family, so a patch's gain is
the small difference of two large counts. This probe asks whether confidence separates
the right relabels from the wrong ones, and whether a fusion that keeps only confident
relabels would leave gains a router can rank.

On fresh scans of both test generators (seeds no test or development set uses) it runs
the engine as PaSeR composes patches: f0's analysis, then f1 and f2 on every patch, f0's
probabilities fused in (:func:`~napari_paser.engine.fusion.fuse_f0`; the labels are
checked against the engine's). For every pixel where the fused f_k's label differs from
the refined f0's it records the fused probability of that label, and prints

- the share of relabels and the share of them that are right, by that probability;
- for gates ``t``: f_k's mean IoU everywhere when it may relabel only where its fused
  probability is at least ``t`` (``0``: the engine's fusion), and the r of the per-patch
  gains (the first-order change of the set's mean IoU, as everywhere in issue 11) with
  f0's entropy and with the policy's predicted gains, pooled over the set's scans.

    python benchmarks/probe_relabel_confidence.py paser-synth-v2.21 --sets v1:8831-8842 oof:9631-9642
"""

from __future__ import annotations

import numpy as np

from bench_testsets import _corr
from common import make_volumes, patch_confusion_np, scan_probe_parser, scan_probe_start
from gain_bounds import fused_probs
from napari_paser.engine.metrics import dataset_iou_gains, mean_iou
from napari_paser.engine.pipeline import PaserSegmenter
from probe_testset_draws import _parse_set

BINS = np.array([1 / 3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 + 1e-9])  # fused probability of the new label


def scan_relabels(image: np.ndarray, labels: np.ndarray, bundle, gates: list[float]) -> dict:
    """One scan's relabel counts by confidence (2, bins: relabels, right) and per-patch
    confusions (slices, GY, GX, 1 + 2 * gates, classes, classes) of the refined f0, then
    of f1 and f2 gated at each of ``gates``; f0's patch entropy and the policy's gains."""
    seg = PaserSegmenter(bundle, seed=0)
    seg.set_volume(image)
    ps, grid = seg.patch_size, seg.grid
    counts = np.zeros((2, 2, len(BINS) - 1))
    confs, entropy, gains = [], [], []
    for z in range(seg.num_slices):
        kept, truth = seg.compose(z, routing=np.zeros(grid, np.uint8)), labels[z]
        conf = [patch_confusion_np(kept, truth, ps)]
        for m in (1, 2):
            fused = fused_probs(seg, z, m)
            new = fused.argmax(0)
            if not np.array_equal(new, seg.compose(z, routing=np.full(grid, m, np.uint8))):
                raise AssertionError(f"f{m}'s fused labels differ from the engine's on slice {z}")
            sure = fused.max(0)
            moved = new != kept
            where = np.digitize(sure[moved], BINS) - 1
            np.add.at(counts[m - 1, 0], where, 1)
            np.add.at(counts[m - 1, 1], where, (new == truth)[moved])
            conf += [patch_confusion_np(np.where(moved & (sure >= gate), new, kept), truth, ps) for gate in gates]
        confs.append(np.stack(conf, axis=2))
        entropy.append(seg.patch_entropy(z, 0))
        gains.append(seg.gains(z))
    return {"counts": counts, "conf": np.stack(confs), "entropy": np.stack(entropy), "gains": np.stack(gains)}


def print_set(scans: list[dict], gates: list[float]) -> None:
    counts = sum(s["counts"] for s in scans)
    conf = np.concatenate([s["conf"] for s in scans])  # (slices, GY, GX, variants, 3, 3)
    entropy = np.concatenate([s["entropy"] for s in scans]).ravel()
    gains = np.concatenate([s["gains"] for s in scans])  # (slices, 2, GY, GX)
    print("| fused probability of the new label | " + " | ".join(f"{a:.2f}-{min(b, 1):.2f}" for a, b in zip(BINS[:-1], BINS[1:])) + " |")
    print("|---|" + "---|" * (len(BINS) - 1))
    for m in (1, 2):
        n, right = counts[m - 1]
        print(f"| f{m}: share of relabels | " + " | ".join(f"{v:.1f} %" for v in n / n.sum() * 100) + " |")
        print(f"| f{m}: right | " + " | ".join(f"{r / v * 100:.1f} %" if v else "-" for r, v in zip(right, n)) + " |")
    print(f"\nrefined f0 mean IoU {mean_iou(conf[..., 0, :, :].sum((0, 1, 2))):.4f}")
    print("| model | gate | mean IoU everywhere | r(gain, f0's entropy) | r(gain, policy) | policy's lead |")
    print("|---|---|---|---|---|---|")
    for m in (1, 2):
        for j, gate in enumerate(gates):
            v = 1 + (m - 1) * len(gates) + j
            both = np.moveaxis(conf[..., [0, v, v], :, :], 3, 1)  # (slices, 3, GY, GX, 3, 3): f0, gated f_k twice
            true = dataset_iou_gains(both)[:, 0].ravel()
            if not np.any(true):
                print(f"| f{m} | {gate:g} | {mean_iou(conf[..., v, :, :].sum((0, 1, 2))):.4f} | - | - | - |")
                continue
            r_ent, r_pol = _corr(entropy, true), _corr(gains[:, m - 1].ravel(), true)
            print(f"| f{m} | {gate:g} | {mean_iou(conf[..., v, :, :].sum((0, 1, 2))):.4f} | {r_ent:.3f} | {r_pol:.3f} | {r_pol - r_ent:+.3f} |")


def main() -> None:
    ap = scan_probe_parser(__doc__, ["v1:8831-8842", "oof:9631-9642"])
    ap.add_argument("--gates", type=float, nargs="+", default=[0.0, 0.5, 0.6, 0.7])
    args = ap.parse_args()
    bundle = scan_probe_start(args)
    print(f"bundle {bundle.meta.get('name')} {bundle.meta.get('version')}")
    for text in args.sets:
        dist, seeds = _parse_set(text)
        scans = [scan_relabels(image, labels, bundle, args.gates) for image, labels in make_volumes(seeds, args.slices, distribution=dist)]
        print(f"\n{text} ({len(scans)} scans, {args.slices} slices each)")
        print_set(scans, args.gates)


if __name__ == "__main__":
    main()
