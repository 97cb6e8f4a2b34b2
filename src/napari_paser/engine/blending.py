"""Blending neighbouring patches across their borders, as sliding-window segmentation does.

f1 and f2 read each patch with a halo of the slice around it and predict the halo too.
The engine keeps a patch's own pixels; with blending, the pixels within ``width`` of a
border between two patches take the weighted mean of both patches' probabilities (of
four at a corner), each weight rising linearly from 0 at ``width`` pixels outside the
patch to 1 at ``width`` pixels inside it. The two sides hand over smoothly, so the
border does not show as a seam, and no network runs more than without blending
(``benchmarks/probe_seam_blend.py``). Pixels further inside keep their patch's labels
exactly.

A patch kept on f0 takes part with f0's probabilities (the bytes the engine keeps for
fusion and for blending) where the slice was analysed; otherwise it keeps its labels and
lends its neighbours nothing. A pixel that no f1 or f2 window reaches keeps its label:
blending f0 with itself would only round f0's probabilities to bytes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["border_ramp", "border_band", "blend_patches"]


def border_ramp(length: int, halo: int, width: int) -> np.ndarray:
    """Weights (``length``,) along one axis of a window of a patch and ``halo`` pixels on
    each side: 0 up to ``halo - width`` pixels from the window's edge, then rising
    linearly to 1 at ``halo + width`` pixels (1/2 on the patch's border)."""
    if not 0 < width <= halo:
        raise ValueError(f"blend width must be between 1 and the halo ({halo}), got {width}")
    t = np.arange(length)
    return np.clip((np.minimum(t, length - 1 - t) + 0.5 - (halo - width)) / (2 * width), 0.0, 1.0).astype(np.float32)


def border_band(grid: tuple[int, int], patch_size: tuple[int, int], width: int) -> np.ndarray:
    """Boolean (rows, columns) of a slice of ``grid`` patches: the pixels within ``width``
    of a border between two patches (not of the slice's own edge)."""
    (gy, gx), (ph, pw) = grid, patch_size

    def along(n: int, size: int) -> np.ndarray:
        pos = np.arange(n * size)
        near = (pos % size < width) & (pos >= size)  # just after an inner border
        return near | ((pos % size >= size - width) & (pos < (n - 1) * size))  # or just before one

    return along(gy, ph)[:, None] | along(gx, pw)[None, :]


def blend_patches(
    labels: np.ndarray,
    routing: np.ndarray,
    windows: dict[int, np.ndarray],
    halos: dict[int, int],
    patch_size: tuple[int, int],
    width: int,
    f0_bytes: np.ndarray | None = None,
    fusion: dict[int, float] | None = None,
) -> np.ndarray:
    """Labels of one slice with the patches blended across their borders.

    Parameters
    ----------
    labels : ndarray (rows, columns) uint8
        The patches' own labels, on the slice padded to whole patches.
    routing : ndarray (GY, GX)
        Model of each patch (0 f0, 1 f1, 2 f2).
    windows : dict
        For each patch model in ``routing``, its probabilities × 255 (uint8) over every
        routed patch's window: (GY, GX, classes, rows + 2 halo, columns + 2 halo).
    halos : dict
        Each patch model's halo.
    patch_size : (int, int)
    width : int
        Pixels on each side of a border that are blended, at most the narrowest halo.
    f0_bytes : ndarray (classes, rows, columns) uint8, optional
        f0's probabilities × 255 on the padded slice: patches on f0 take part with them,
        and they are fused into the patch models' windows with the ``fusion`` weights.
    fusion : dict, optional
        f0's weight in each patch model's output (as ``Bundle.fusion``); none if omitted.

    Returns
    -------
    ndarray (rows, columns) uint8
        ``labels`` with the pixels within ``width`` of a border between patches replaced
        by the argmax of the blend; a pixel of a patch that takes no part, or that no f1
        or f2 window reaches, keeps its label.
    """
    (gy, gx), (ph, pw) = routing.shape, patch_size
    if gy * gx < 2:
        return labels
    halo_of = {0: width, **halos}  # a patch on f0 lends its neighbours f0's probabilities over the blended width
    takes_part = np.isin(routing, [m for m in halo_of if (m == 0 and f0_bytes is not None) or m in windows])
    reached = _reached_by_patch_models(takes_part & (routing != 0), patch_size, width)
    if not reached.any():  # no f1 or f2 window here: nothing to allocate or blend
        return labels
    fusion = fusion or {}
    pad = max([width, *halos.values()])
    classes = next(iter(windows.values())).shape[2]  # some f1 or f2 window reaches, so there is one
    canvas = np.zeros((classes, gy * ph + 2 * pad, gx * pw + 2 * pad), np.float32)
    f0 = None if f0_bytes is None else np.pad(f0_bytes, ((0, 0), (pad, pad), (pad, pad))).astype(np.float32)
    weights = {h: border_ramp(ph + 2 * h, h, width)[:, None] * border_ramp(pw + 2 * h, h, width)[None, :] for h in set(halo_of.values())}
    for a in range(gy):
        row = {m: _weighted_row(a, m, routing, windows, halo_of[m], weights[halo_of[m]], patch_size, f0, pad, fusion) for m in halo_of}
        for b in range(gx):  # added patch by patch, in order: the same sums whatever else is routed
            m = int(routing[a, b])
            if takes_part[a, b]:
                h = halo_of[m]
                canvas[:, a * ph + pad - h : (a + 1) * ph + pad + h, b * pw + pad - h : (b + 1) * pw + pad + h] += row[m][b]
    blended = _class_argmax(canvas[:, pad:-pad, pad:-pad])
    replace = border_band((gy, gx), patch_size, width) & np.repeat(np.repeat(takes_part, ph, 0), pw, 1) & reached
    return np.where(replace, blended, labels)


def _reached_by_patch_models(on_patch_model: np.ndarray, patch_size: tuple[int, int], width: int) -> np.ndarray:
    """Boolean (rows, columns): the pixels within ``width`` of a patch marked in
    ``on_patch_model`` (GY, GX), where that patch's window weighs more than 0."""
    (gy, gx), (ph, pw) = on_patch_model.shape, patch_size
    reached = np.zeros((gy * ph, gx * pw), dtype=bool)
    for a, b in zip(*np.nonzero(on_patch_model)):
        reached[max(a * ph - width, 0) : (a + 1) * ph + width, max(b * pw - width, 0) : (b + 1) * pw + width] = True
    return reached


def _class_argmax(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(0)`` as uint8 (the first class wins a tie), by comparing class
    planes: numpy's argmax along the first axis of a strided view was 40 % of a blend."""
    best = np.zeros(scores.shape[1:], np.uint8)
    top = scores[0].copy()
    for k in range(1, scores.shape[0]):
        higher = scores[k] > top
        best[higher] = k
        np.maximum(top, scores[k], out=top)
    return best


def _weighted_row(a: int, m: int, routing: np.ndarray, windows: dict[int, np.ndarray], halo: int, weight: np.ndarray,
                  patch_size: tuple[int, int], f0: np.ndarray | None, pad: int, fusion: dict[int, float]) -> dict[int, np.ndarray]:
    """Probabilities over the windows of the patches of row ``a`` routed to model ``m`` (f0
    fused in with its weight) times the windows' ``weight``, by column: one array
    operation for the row."""
    (ph, pw), cols = patch_size, np.flatnonzero(routing[a] == m)
    if len(cols) == 0 or (m == 0 and f0 is None) or (m and m not in windows):
        return {}
    wh, ww = weight.shape
    f0_windows = None
    if f0 is not None:  # (columns, classes, wh, ww): f0's padded probabilities over the row's windows
        band = f0[:, a * ph + pad - halo : a * ph + pad - halo + wh]
        f0_windows = np.lib.stride_tricks.sliding_window_view(band, ww, axis=2)[:, :, pad - halo :: pw][:, :, cols].transpose(2, 0, 1, 3)
    if m == 0:
        prob = f0_windows  # not None: checked above
    else:
        prob = windows[m][a, cols].astype(np.float32)
        w0 = float(fusion.get(m, 0.0))
        if w0 > 0 and f0_windows is not None:
            prob = (1 - w0) * prob + w0 * f0_windows
    return dict(zip(cols.tolist(), weight * prob))
