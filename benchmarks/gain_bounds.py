"""How well could anything track the per-patch gains? A bound and two references for issue 11's line 4.

The true gain of a patch (the first-order change of the set's mean IoU when it moves from
f0 to f1 or f2, :func:`~napari_paser.engine.metrics.dataset_iou_gains`) is a sum over its
pixels. What a router can know of it is at most its expectation given the scan,
S = E[G | image]: the truth behind a blurred, noisy image is itself uncertain. Over every
function of the image the largest Pearson r with G is r(S, G) = sd(S) / sd(G).

- **Split-half ceiling.** Split each patch's pixels into the two colours of a checkerboard
  of ``block`` × ``block`` pixels, G = G_A + G_B. With single pixels the halves share the
  image's evidence (S_A ≈ S_B ≈ S / 2), and the truth's deviations given the image are
  positively correlated between neighbouring pixels (a boundary is wrong along its
  length), so r(S, G)² = 4 cov(S_A, S_B) / var(G) ≤ 4 cov(G_A, G_B) / var(G). The square
  root of the right-hand side bounds any router's r, whatever it reads (up to sampling
  error). It is loose where whole regions are uncertain together. Coarser blocks separate
  more of those deviations but let the halves' expectations part, so they bound nothing.
- **Self-assessed gain.** What the models themselves expect once f_k has run: the gain
  under the fused f_k's own probabilities q_k, the sum over the patch's pixels and truths
  t of q_k(t) (W[t, f_k's label] - W[t, f0's label]) with the set's IoU weights W. A
  policy reads f0's analysis before f_k runs.
- **Gain expected under f2's posterior.** The same with the fused f2's probabilities for
  both f1's and f2's gains. Where f2's fused posterior is close to the truth's given the
  image (calibrated, and no network could do much better) this is S itself, and its r
  estimates the ceiling that the split-half bound leaves loose. It is an estimate, not a
  bound: a better posterior would raise it.
"""

from __future__ import annotations

import numpy as np
import torch

from common import patch_confusion_np
from napari_paser.engine.fusion import fuse_f0
from napari_paser.engine.metrics import dataset_iou_weights
from napari_paser.engine.models import class_softmax
from napari_paser.engine.patches import patch_view, unpatchify
from napari_paser.engine.pipeline import PaserSegmenter


@torch.no_grad()
def fused_probs(seg: PaserSegmenter, z: int, model: int) -> np.ndarray:
    """(classes, rows, columns): f_``model``'s softmax on every patch of slice ``z`` with
    f0's analysed probabilities fused in, as the engine fuses them."""
    seg.analyse(z)
    net = seg.bundle.segmenters()[model]
    gy, gx = np.indices(seg.grid).reshape(2, -1)
    x = torch.from_numpy(np.stack([seg._patch_window(z, a, b, net.config.halo, net.config.planes) for a, b in zip(gy, gx)]))
    prob = class_softmax(net(x).float())
    fused = fuse_f0(prob, torch.from_numpy(seg._f0prob[z, gy, gx]), float(seg.bundle.fusion[model - 1]))
    return unpatchify(fused, seg.grid)[0].numpy()


def half_confusions(labels: np.ndarray, truth: np.ndarray, patch_size, block: int, num_classes: int = 3) -> np.ndarray:
    """(2, GY, GX, C, C) confusions of each patch's two checkerboard halves of ``block`` × ``block`` pixels."""
    rows, cols = np.indices(truth.shape)
    half = (rows // block + cols // block) % 2
    # The half rides on the truth as extra classes: rows [half * C, (half + 1) * C) of one confusion.
    conf = patch_confusion_np(labels, truth.astype(np.int64) + num_classes * half, patch_size, 2 * num_classes)[..., :num_classes]
    return np.stack([conf[..., :num_classes, :], conf[..., num_classes:, :]])


def expected_confusion(prob: np.ndarray, labels: np.ndarray, patch_size) -> np.ndarray:
    """(GY, GX, C, C) confusion of ``labels`` per patch expected under ``prob`` (C, rows,
    columns) as the truth: entry (t, p) sums prob[t] over the patch's pixels labelled p."""
    q = np.stack([patch_view(p.astype(np.float64), patch_size) for p in prob])  # (C, GY, GX, ph, pw)
    onehot = np.stack([patch_view((labels == c).astype(np.float64), patch_size) for c in range(len(prob))])
    return np.einsum("tyxij,pyxij->yxtp", q, onehot)


@torch.no_grad()
def slice_halves(seg: PaserSegmenter, z: int, truth: np.ndarray, blocks=(1,)) -> dict:
    """Slice ``z`` of ``seg``'s volume against ``truth`` (rows, columns): ``halves``, the
    checkerboard halves' confusions of the refined f0 and the fused f1 / f2 as PaSeR
    composes them (blocks, 2, 3 models, GY, GX, C, C); ``expected``, the confusion change
    from f0's labels to f_k's expected under f_k's fused probabilities (2, GY, GX, C, C);
    ``expected_f2``, the same under f2's fused probabilities."""
    labels = [seg.compose(z, routing=np.full(seg.grid, k, np.uint8)) for k in range(3)]
    halves = np.stack([np.stack([half_confusions(lab, truth, seg.patch_size, b) for lab in labels], axis=1) for b in blocks])
    probs = {k: fused_probs(seg, z, k) for k in (1, 2)}
    for k, q in probs.items():
        np.testing.assert_array_equal(q.argmax(0), labels[k])  # the engine's fused labels

    def change(q: np.ndarray, k: int) -> np.ndarray:  # f0's labels -> f_k's, expected under q
        return expected_confusion(q, labels[k], seg.patch_size) - expected_confusion(q, labels[0], seg.patch_size)

    return {"halves": halves, "expected": np.stack([change(probs[k], k) for k in (1, 2)]),
            "expected_f2": np.stack([change(probs[2], k) for k in (1, 2)])}


def gain_bounds(halves: np.ndarray, expected: np.ndarray, expected_f2: np.ndarray) -> dict:
    """The true gains, the split-half values and the models' expected gains over a set's slices pooled.

    Parameters
    ----------
    halves : ndarray (N, blocks, 2, 3, GY, GX, C, C)
        :func:`slice_halves`' ``halves`` of every slice.
    expected, expected_f2 : ndarray (N, 2, GY, GX, C, C)
        Their ``expected`` and ``expected_f2``.

    Returns
    -------
    dict
        ``true``: the gains (N, 2, GY, GX), as :func:`dataset_iou_gains` computes them from
        the whole patches; ``ceiling`` (blocks, 2): the split-half value per block size and
        model (a bound for blocks of one pixel); ``self_assessed`` (N, 2, GY, GX) and
        ``self_assessed_r`` (2,): the self-assessed gains and their r with the true ones;
        ``posterior_r`` (2,): r of the gains expected under f2's posterior.
    """
    halves = np.asarray(halves, np.float64)
    weights = dataset_iou_weights(halves[:, 0].sum(1)[:, 0].sum((0, 1, 2)))  # the set's f0 confusion
    g = np.einsum("nbhkyxtp,tp->nbhkyx", halves[:, :, :, 1:] - halves[:, :, :, :1], weights)  # (N, blocks, 2, 2, GY, GX)
    true = g[:, 0].sum(1)
    ceiling = np.zeros(g.shape[1:2] + (2,))
    for i in range(g.shape[1]):
        for k in range(2):
            a, b = g[:, i, 0, k].ravel(), g[:, i, 1, k].ravel()
            cov = np.mean((a - a.mean()) * (b - b.mean()))
            ceiling[i, k] = np.sqrt(max(4 * cov, 0.0) / true[:, k].var())

    def expected_gains(change: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # the gains and their r with the true ones
        gains = np.einsum("nkyxtp,tp->nkyx", np.asarray(change, np.float64), weights)
        return gains, np.array([np.corrcoef(gains[:, k].ravel(), true[:, k].ravel())[0, 1] for k in range(2)])

    self_assessed, self_assessed_r = expected_gains(expected)
    return {"true": true, "ceiling": ceiling, "self_assessed": self_assessed, "self_assessed_r": self_assessed_r,
            "posterior_r": expected_gains(expected_f2)[1]}
