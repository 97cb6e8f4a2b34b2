"""Is there a patch f0 could keep? The phase texture of the development volumes (issue 11)

Issue 11's second line asks for a λ at which PaSeR beats f1 everywhere at no more
GFLOPs and seconds. ``probe_f0_headroom.py`` found that a perfect router needs an f0
that equals f1 on 20 % (GFLOPs) to 30 % (seconds) of the patches. This probe asks
whether the data leave such patches: per 56 × 64 patch of the development volumes it
measures, from the labels, the share of *boundary pixels* (a 4-neighbour has another
phase; both sides of a boundary count) and the largest phase's share, and from the default bundle's predictions where
f0's and f1's pixel errors lie (within one pixel of a boundary or not) and on how many
patches f0 is already as good as f1:

- ``f1 gain <= 0``: f1's true first-order gain in dataset mean IoU over f0 is not positive;
- ``f0 errors <= f1's``: f0 has no more wrong pixels than f1 on the patch;
- ``gain < 10 % of mean``: f1's gain is below a tenth of its mean over the set.

It prints, per set, the quantiles of the boundary share, how much of f0's extra errors
(over f1's) sit on boundary pixels, the Pearson r of f1's gain with the boundary share
and with f0's patch entropy, and the three shares above.

    python benchmarks/probe_patch_texture.py paser-synth-v2.9 [--threads 2]
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from common import oracle_gains
from probe_policy_choice import development_parser, development_tables


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label slice that have a 4-neighbour of another phase."""
    b = np.zeros(labels.shape, bool)
    dr = labels[1:] != labels[:-1]
    dc = labels[:, 1:] != labels[:, :-1]
    b[1:] |= dr
    b[:-1] |= dr
    b[:, 1:] |= dc
    b[:, :-1] |= dc
    return b


def patch_sums(mask: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """Sum of a (rows, columns) mask over each patch of the grid, (GY, GX)."""
    ph, pw = patch
    return mask.reshape(mask.shape[0] // ph, ph, mask.shape[1] // pw, pw).sum(axis=(1, 3))


def texture_table(table, volumes) -> dict[str, np.ndarray]:
    """Per-patch texture and error counts (N, GY, GX) of the slices of ``table``."""
    rows: dict[str, list] = {k: [] for k in ("boundary", "band", "largest", "err0", "err1", "err0_on", "err1_on", "err0_near", "err1_near")}
    for (seg, zs), (_, labels) in zip(table.segs, volumes):
        patch = seg.patch_size
        for z in zs:
            truth = labels[z]
            on = boundary_mask(truth)
            near = ndimage.binary_dilation(on)  # within one pixel of a boundary pixel
            wrong = [seg.compose(z, routing=np.full(seg.grid, m)) != truth for m in (0, 1)]
            counts = np.stack([patch_sums(truth == c, patch) for c in range(3)])
            rows["boundary"].append(patch_sums(on, patch))
            rows["band"].append(patch_sums(near, patch))
            rows["largest"].append(counts.max(0))
            for m in (0, 1):
                rows[f"err{m}"].append(patch_sums(wrong[m], patch))
                rows[f"err{m}_on"].append(patch_sums(wrong[m] & on, patch))
                rows[f"err{m}_near"].append(patch_sums(wrong[m] & near, patch))
    area = float(np.prod(table.segs[0][0].patch_size))
    out = {k: np.stack(v).astype(float) for k, v in rows.items()}
    out["boundary"] /= area
    out["band"] /= area
    out["largest"] /= area
    return out


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main() -> None:
    args = development_parser(__doc__).parse_args()
    for name, bundle, table, volumes in development_tables(args, with_volumes=True):
        t = texture_table(table, volumes)
        gain = oracle_gains(table)[:, 0]
        b = t["boundary"]
        extra = t["err0"].sum() - t["err1"].sum()
        extra_near = t["err0_near"].sum() - t["err1_near"].sum()
        f0, f1 = (table.score(table.constant(m), k)["mean_iou"] for m, k in ((0, "f0"), (1, "f1")))
        print(f"{name}, {bundle.name}: {gain.size} patches; f0 / f1 everywhere {f0:.4f} / {f1:.4f}")
        print(f"  boundary pixels per patch: quantiles 10/25/50/75/90 % "
              f"{' / '.join(f'{q:.3f}' for q in np.quantile(b, [0.1, 0.25, 0.5, 0.75, 0.9]))}; "
              f"patches under 5 %: {(b < 0.05).mean():.1%}; largest phase's share, median {np.median(t['largest']):.3f}, "
              f"patches ≥ 95 % one phase: {(t['largest'] >= 0.95).mean():.1%}")
        pixels = b.size * np.prod(table.segs[0][0].patch_size)
        print(f"  wrong pixels: f0 {t['err0'].sum() / pixels:.4f}, f1 {t['err1'].sum() / pixels:.4f} of all; on boundary pixels "
              f"({b.mean():.1%} of the pixels): f0 {t['err0_on'].sum() / t['err0'].sum():.1%}, f1 {t['err1_on'].sum() / t['err1'].sum():.1%} "
              f"of their errors, {(t['err0_on'].sum() - t['err1_on'].sum()) / extra:.1%} of f0's extra errors over f1; within one more pixel "
              f"({t['band'].mean():.1%} of the pixels): f0 {t['err0_near'].sum() / t['err0'].sum():.1%}, f1 {t['err1_near'].sum() / t['err1'].sum():.1%}, "
              f"extra {extra_near / extra:.1%}")
        print(f"  r of f1's true gain with the boundary share {corr(gain, b):.3f}, with f0's patch entropy {corr(gain, table.ent[:, 0]):.3f}")
        print(f"  f0 as good as f1: f1 gain <= 0 on {(gain <= 0).mean():.1%} of patches; f0 errors <= f1's on "
              f"{(t['err0'] <= t['err1']).mean():.1%}; gain < 10 % of mean on {(gain < 0.1 * gain.mean()).mean():.1%}", flush=True)


if __name__ == "__main__":
    main()
