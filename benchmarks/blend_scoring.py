"""Exact scores of routings whose patches are blended across their borders.

With ``blend_borders`` (:mod:`napari_paser.engine.blending`) a pixel within ``width`` of a
border between two patches takes the weighted mean of both patches' predictions, and one
within ``width`` of two borders (a corner) that of four; further inside a patch keeps its
own labels. So a slice splits into regions whose labels depend on the models of one, two
or four patches only:

- the **interior** of a patch (no other patch reaches it);
- the strip **across the columns'** border between patch (a, b) and (a, b + 1), and the
  strip **across the rows'** border between (a, b) and (a + 1, b), away from corners;
- the **corner** square where (a, b), (a, b + 1), (a + 1, b) and (a + 1, b + 1) meet.

Composing the slice once for every assignment of models to the four parities of a patch's
(row, column) indices gives every region every combination of its patches' models (the
four patches of a corner have the four parities), so 3⁴ = 81 compositions per slice fill
a table from which any routing's confusion is a sum: the benchmark's λ sweeps, threshold
grids and oracle fronts stay free of network calls, and exact under blending.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from napari_paser.engine.pipeline import PaserSegmenter


def blended_engine(seg: PaserSegmenter) -> PaserSegmenter:
    """An engine like ``seg`` on its volume, with the patches blended across their borders."""
    return engine_like(seg, blend_borders=True)


def engine_like(seg: PaserSegmenter, *, blend_borders: bool) -> PaserSegmenter:
    """A fresh engine with ``seg``'s bundle and settings on its volume, nothing run yet."""
    # Passes asked for are sampled: an engine on the bundle's closed form asks for none.
    passes = seg.mc_passes if seg.mc_estimate == "sampled" else None
    out = PaserSegmenter(seg.bundle, mc_passes=passes, seed=seg.seed, device=seg.device, batch_size=seg.batch_size,
                         precision=seg.precision, blend_borders=blend_borders, side_by_side=seg.side_by_side)
    out.set_volume(seg._volume, normalizer=seg._normalizer, first_slice=seg.first_slice)
    return out


def region_ids(grid: tuple[int, int], patch_size: tuple[int, int], width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Region of every pixel of a slice of ``grid`` patches, and how many of each kind.

    Returns ``ids`` (rows, columns): interiors first (a·GX + b), then the strips across
    the columns' borders (a·(GX−1) + b), those across the rows' borders (a·GX + b), then
    the corners (a·(GX−1) + b); and the four counts.
    """
    (gy, gx), (ph, pw) = grid, patch_size
    if min(ph, pw) < 2 * width:
        raise ValueError(f"patches of {patch_size} are too small for a blend {width} pixels wide on each side")

    def border_near(n: int, size: int) -> np.ndarray:
        """Per position: the inner border (1..n-1) within ``width`` of it, else 0."""
        pos = np.arange(n * size)
        nearest = np.rint(pos / size).astype(int)
        near = (np.abs(pos + 0.5 - nearest * size) < width) & (nearest > 0) & (nearest < n)
        return np.where(near, nearest, 0)

    rb, cb = border_near(gy, ph)[:, None], border_near(gx, pw)[None, :]
    a, b = (np.arange(gy * ph) // ph)[:, None], (np.arange(gx * pw) // pw)[None, :]
    counts = (gy * gx, gy * (gx - 1), (gy - 1) * gx, (gy - 1) * (gx - 1))
    starts = np.cumsum((0,) + counts[:3])
    interior = a * gx + b
    across_columns = starts[1] + a * (gx - 1) + (cb - 1)
    across_rows = starts[2] + (rb - 1) * gx + b
    corner = starts[3] + (rb - 1) * (gx - 1) + (cb - 1)
    ids = np.where(rb > 0, np.where(cb > 0, corner, across_rows), np.where(cb > 0, across_columns, interior))
    return ids.astype(np.int64), counts


@dataclass
class BlendedConfusions:
    """Confusion matrices of blended compositions by region and by the models there.

    Attributes
    ----------
    models : tuple of int
        The models the tables hold, in slot order (e.g. (0, 1, 2), or (1, 2) for the
        patch models' own outputs).
    interior : (N, M, GY, GX, C, C)
    across_columns : (N, M, M, GY, GX − 1, C, C)
        Slots: the models of (a, b) and (a, b + 1).
    across_rows : (N, M, M, GY − 1, GX, C, C)
        Slots: the models of (a, b) and (a + 1, b).
    corners : (N, M, M, M, M, GY − 1, GX − 1, C, C)
        Slots: the models of (a, b), (a, b + 1), (a + 1, b), (a + 1, b + 1).
    """

    models: tuple[int, ...]
    interior: np.ndarray
    across_columns: np.ndarray
    across_rows: np.ndarray
    corners: np.ndarray

    def pooled(self, routing: np.ndarray) -> np.ndarray:
        """Dataset confusion (C, C) of ``routing`` (N, GY, GX) composed with blended borders."""
        slot = np.full(3, -1)
        slot[list(self.models)] = np.arange(len(self.models))
        r = slot[np.asarray(routing, dtype=np.int64)]
        if (r < 0).any():
            raise ValueError(f"this table holds models {self.models} only")
        n, gy, gx = r.shape
        z, a, b = np.ogrid[:n, :gy, :gx]
        total = self.interior[z, r, a, b].sum((0, 1, 2))
        if gx > 1:
            zc, ac, bc = np.ogrid[:n, :gy, : gx - 1]
            total = total + self.across_columns[zc, r[:, :, :-1], r[:, :, 1:], ac, bc].sum((0, 1, 2))
        if gy > 1:
            zr, ar, br = np.ogrid[:n, : gy - 1, :gx]
            total = total + self.across_rows[zr, r[:, :-1], r[:, 1:], ar, br].sum((0, 1, 2))
        if gx > 1 and gy > 1:
            zk, ak, bk = np.ogrid[:n, : gy - 1, : gx - 1]
            total = total + self.corners[zk, r[:, :-1, :-1], r[:, :-1, 1:], r[:, 1:, :-1], r[:, 1:, 1:], ak, bk].sum((0, 1, 2))
        return total


def parity_routings(grid: tuple[int, int], models: Sequence[int]) -> Iterator[np.ndarray]:
    """One routing (GY, GX) per assignment of ``models`` to the four parities of (a, b)."""
    gy, gx = grid
    parity = 2 * (np.arange(gy)[:, None] % 2) + (np.arange(gx)[None, :] % 2)
    for assignment in itertools.product(models, repeat=4):
        yield np.asarray(assignment, dtype=np.uint8)[parity]


def blended_confusions(segs: Sequence[tuple[PaserSegmenter, Sequence[int]]], truths: Sequence[np.ndarray],
                       models: Sequence[int] = (0, 1, 2), fused: bool = True, num_classes: int = 3) -> BlendedConfusions:
    """Fill a :class:`BlendedConfusions` from engines that blend (``blend_borders``),
    composing every slice once per :func:`parity_routings` (their caches must hold every
    model the routings use, and f0's analysis of every slice).

    Parameters
    ----------
    segs : list of (PaserSegmenter, slice indices)
        As :class:`common.PatchTable` holds them.
    truths : list of ndarray (Z, rows, columns)
        Each volume's labels.
    models : sequence of int
    fused : bool
        Compose with f0 fused into the patch models (PaSeR's output) or not (f1 / f2
        everywhere).
    """
    c, m = num_classes, len(models)
    slot = np.zeros(3, np.int64)
    slot[list(models)] = np.arange(m)
    seg0 = segs[0][0]
    if not seg0.blend_borders:
        raise ValueError("the engines must blend their borders (PaserSegmenter(..., blend_borders=True))")
    (gy, gx), patch = seg0.grid, seg0.patch_size
    ids, counts = region_ids((gy, gx), patch, seg0._blend_width)
    n = sum(len(zs) for _, zs in segs)
    tables = [np.full((n, *(m,) * k, *shape, c, c), -1, np.int64)
              for k, shape in ((1, (gy, gx)), (2, (gy, gx - 1)), (2, (gy - 1, gx)), (4, (gy - 1, gx - 1)))]
    k = 0
    for (seg, zs), truth in zip(segs, truths, strict=True):
        for z in zs:
            code_truth = truth[z].astype(np.int64) * c
            for routing in parity_routings((gy, gx), models):
                labels = seg.compose(z, routing=routing, fused=fused)
                conf = np.bincount((ids * c * c + code_truth + labels).ravel(), minlength=sum(counts) * c * c)
                by_region = np.split(conf.reshape(-1, c, c), np.cumsum(counts)[:3])
                s = slot[routing]
                parts = (
                    (tables[0], (s,), (gy, gx)),
                    (tables[1], (s[:, :-1], s[:, 1:]), (gy, gx - 1)),
                    (tables[2], (s[:-1], s[1:]), (gy - 1, gx)),
                    (tables[3], (s[:-1, :-1], s[:-1, 1:], s[1:, :-1], s[1:, 1:]), (gy - 1, gx - 1)),
                )
                for table, slots, shape, got in zip(*zip(*parts), by_region, strict=True):
                    if 0 in shape:
                        continue
                    ra, rb = np.ogrid[: shape[0], : shape[1]]
                    index = (k, *slots, ra, rb)
                    seen = table[index]
                    got = got.reshape(*shape, c, c)
                    # A region's labels depend on its own patches only: every composition agrees.
                    if not np.all((seen < 0) | (seen == got)):
                        raise AssertionError("a blended region depends on more than its own patches")
                    table[index] = got
            k += 1
    for table in tables:
        if (table < 0).any():
            raise AssertionError("some region and models were never composed")
    return BlendedConfusions(tuple(models), *tables)
