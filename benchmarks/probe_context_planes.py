"""Does f2 fine-tuned with neighbouring planes as input beat a forest on 3-D features by more?

``probe_finetune_margin.py`` found fine-tuned f2 only about +0.006 above the random forest
on development volumes of the out-of-family generator, and that smoothing the image along
the plane axis lifts both alike. This probe asks whether a network that *learns* from the
planes around each slice gains more than the forest does from 3-D filters (as ilastik
computes on volumes). On development volumes (labels on slices 0-3, scored on 8-15):

- forest on per-slice 2-D features (the benchmark's baseline) and on 3-D features;
- f2 fine-tuned for ``--fit`` seconds with 1 plane (as shipped) and with ``2k+1`` planes:
  its first convolution is widened, the new planes' weights start at zero, so the
  widened network starts as the shipped one and learns what the neighbours add.

Both f2 runs use the same plain loop (AdaBN on the scan, AdamW with cosine decay, random
patches with their halo, flips and 90-degree turns, class-weighted cross-entropy).

    python benchmarks/probe_context_planes.py [--seeds 9201 9202] [--fit 100] [--planes 1 3 5]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_paser.engine.patches import plane_indices


def widen(model, planes: int, init: str = "mean"):
    """A copy of ``model`` that reads ``planes`` planes: ``mean`` as fine-tuning widens it
    (:func:`with_planes`), ``zero`` with the new planes' weights at zero and the centre's
    as shipped (the shipped network exactly)."""
    from napari_paser.engine.models import with_planes

    m = with_planes(model, planes)
    if init == "zero" and planes > 1:
        with torch.no_grad():
            w = m.inc[0].weight
            per_plane = w.shape[1] // planes
            centre = (planes // 2) * per_plane
            w[:, centre : centre + per_plane] *= planes
            w[:, :centre] = 0
            w[:, centre + per_plane :] = 0
    return m


def windows(stack: torch.Tensor, ps, halo: int) -> torch.Tensor:
    from napari_paser.engine.patches import pad_to_patches, patch_windows

    return patch_windows(pad_to_patches(stack, ps), ps, halo)


def probe_parser(doc: str, fit: float) -> argparse.ArgumentParser:
    """The options every probe of this family has: ``--bundle``, ``--fit`` and ``--threads``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--bundle", default=None)
    p.add_argument("--fit", type=float, default=fit, help="training seconds")
    p.add_argument("--threads", type=int, default=2)
    return p


def setup(args: argparse.Namespace):
    """Torch threads and seed set, the bundle loaded; returns it and its normalisation
    (any stack -> float32, as inference normalises it)."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.normalize import Normalizer
    from napari_paser.engine.registry import resolve_bundle

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bundle = load_bundle(resolve_bundle(args.bundle))
    n = bundle.normalization

    def normalise(image: np.ndarray) -> np.ndarray:
        return Normalizer.fit(image, n.get("low_percentile", 0.5), n.get("high_percentile", 99.5))(image).astype(np.float32)

    return bundle, normalise


def adabn_on_scan(model, scan: np.ndarray, planes: int, ps, slices: int) -> None:
    """Batch-norm statistics of ``model`` re-estimated on ``slices`` evenly spaced slices of
    the normalised ``scan`` (label-free, as fine-tuning does)."""
    from napari_paser.train.finetune import _adabn

    pick = np.unique(np.linspace(0, len(scan) - 1, slices).round().astype(int))
    win = torch.cat([windows(torch.from_numpy(scan[plane_indices(z, len(scan), planes)]).unsqueeze(0), ps, model.config.halo) for z in pick])
    _adabn(model, [win[i : i + 64] for i in range(0, len(win), 64)])


def predict(model, scan: np.ndarray, zs, planes: int, ps) -> np.ndarray:
    from napari_paser.engine.patches import grid_shape, unpatchify

    h, w = scan.shape[1:]
    model.eval()
    out = []
    with torch.no_grad():
        for z in zs:
            x = torch.from_numpy(scan[plane_indices(z, len(scan), planes)]).unsqueeze(0)
            win = windows(x, ps, model.config.halo)
            logits = torch.cat([model(win[i : i + 32]).float() for i in range(0, len(win), 32)])
            out.append(unpatchify(logits, grid_shape((h, w), ps))[0, :, :h, :w].argmax(0).numpy())
    return np.stack(out).astype(np.uint8)


def class_weight(labels: list[np.ndarray]) -> torch.Tensor:
    """Cross-entropy weights ∝ frequency^-0.5 of the labelled pixels (mean 1)."""
    every = np.concatenate([lab[lab != 255] for lab in labels])
    counts = np.bincount(every, minlength=3).astype(np.float64)
    weight = torch.tensor((counts / counts.sum() + 1e-6) ** -0.5, dtype=torch.float32)
    return weight / weight.mean()


def labelled_stacks(scan: np.ndarray, labels: np.ndarray, planes: int, halo: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(the planes around the slice, its labels), both padded by ``halo``, per labelled slice."""
    pad = ((0, 0), (halo, halo), (halo, halo))
    return [
        (np.pad(scan[plane_indices(z, len(scan), planes)], pad, mode="reflect"), np.pad(labels[z], halo, constant_values=255))
        for z in range(len(labels))
        if (labels[z] != 255).any()
    ]


def cosine_lr(t: float, base: float = 5e-4) -> float:
    """Warm-up over the first 5 % of the run, then cosine decay to 5 % of ``base``."""
    if t < 0.05:
        return base * (0.2 + 0.8 * t / 0.05)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (t - 0.05) / 0.95)))


def random_batch(pairs, ps, halo: int, g: np.random.Generator, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random halo patches of (planes, labels) ``pairs`` padded by ``halo``, flipped
    at random; the plane order too (up and down the stack look alike)."""
    hh, ww = ps[0] + 2 * halo, ps[1] + 2 * halo
    xs, ys = [], []
    for _ in range(size):
        stack, target = pairs[int(g.integers(len(pairs)))]
        y0 = int(g.integers(0, stack.shape[1] - hh + 1))
        x0 = int(g.integers(0, stack.shape[2] - ww + 1))
        xb = stack[:, y0 : y0 + hh, x0 : x0 + ww]
        yb = target[y0 + halo : y0 + hh - halo, x0 + halo : x0 + ww - halo]
        if g.random() < 0.5:
            xb, yb = xb[..., ::-1], yb[..., ::-1]
        if g.random() < 0.5:
            xb, yb = xb[..., ::-1, :], yb[..., ::-1, :]
        if g.random() < 0.5 and len(xb) > 1:
            xb = xb[::-1]
        xs.append(np.ascontiguousarray(xb))
        ys.append(np.ascontiguousarray(yb))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> None:
    """One AdamW step of class-weighted cross entropy (bfloat16 autocast; 255 ignored)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = F.cross_entropy(out.float(), y, weight=weight, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def fit(model, groups: list[list[tuple[np.ndarray, np.ndarray]]], ps, fit_s: float, seed: int = 0, batch_norm: str = "scan") -> int:
    """AdamW with cosine decay for ``fit_s`` seconds on class-weighted cross entropy; each
    batch holds 16 random halo patches of one group of :func:`labelled_stacks` pairs (one
    scan). ``batch_norm``: ``scan`` keeps the statistics the model has (one scan's, from
    AdaBN), ``batch`` uses each batch's own (several scans). Returns the steps made."""
    halo = model.config.halo
    weight = class_weight([t for pairs in groups for _, t in pairs])
    g = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    t0, steps = time.perf_counter(), 0
    while (t := (time.perf_counter() - t0) / fit_s) < 1.0:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(t)
        x, y = random_batch(groups[int(g.integers(len(groups)))], ps, halo, g)
        if not bool((y != 255).any()):
            continue
        model.train(batch_norm == "batch")
        train_step(model, opt, x, y, weight)
        steps += 1
    return steps


def finetune_f2(bundle, scan: np.ndarray, labels: np.ndarray, planes: int, fit_s: float, seed: int = 0, init: str = "zero"):
    """The plain loop: AdaBN on 4 slices of the scan, then AdamW on random halo patches of
    the labelled slices."""
    ps = tuple(bundle.patch_size)
    model = widen(bundle.f2, planes, init)
    adabn_on_scan(model, scan, planes, ps, 4)
    steps = fit(model, [labelled_stacks(scan, labels, planes, model.config.halo)], ps, fit_s, seed)
    return model, steps


def main() -> None:
    from napari_paser.engine.metrics import confusion_matrix, mean_iou
    from napari_paser.engine.random_forest import RandomForestSegmenter
    from napari_paser.train.synth import generate_volume

    p = probe_parser(__doc__, fit=100.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[9201, 9202])
    p.add_argument("--planes", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--no-forest", action="store_true")
    p.add_argument("--init", choices=("zero", "mean"), default="zero", help="weights of the new planes")
    args = p.parse_args()
    bundle, normalise = setup(args)
    print(f"bundle {bundle.name}; labels on slices 0-3, scored on 8-15; f2 fine-tuned {args.fit:.0f} s", flush=True)
    for seed in args.seeds:
        image, truth, _ = generate_volume(seed, 16, (224, 256), distribution="oof")
        labels = np.full_like(truth, 255)
        labels[:4] = truth[:4]
        scan = normalise(image)

        def score(pred: np.ndarray) -> float:
            return mean_iou(confusion_matrix(pred.ravel(), truth[8:16].ravel()))

        if not args.no_forest:
            t = time.perf_counter()
            rf2 = score(RandomForestSegmenter(n_jobs=args.threads).fit(image, labels).predict(image[8:16]))
            print(f"  volume {seed}: forest 2-D features {rf2:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
            t = time.perf_counter()
            rf3 = score(RandomForestSegmenter(n_jobs=args.threads, features="3d").fit(image, labels).predict(image)[8:16])
            print(f"  volume {seed}: forest 3-D features {rf3:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        for planes in args.planes:
            t = time.perf_counter()
            model, steps = finetune_f2(bundle, scan, labels, planes, args.fit, init=args.init)
            f2 = score(predict(model, scan, range(8, 16), planes, tuple(bundle.patch_size)))
            print(f"  volume {seed}: f2 with {planes} planes ({args.init} init) {f2:.4f} ({steps} steps, {time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
