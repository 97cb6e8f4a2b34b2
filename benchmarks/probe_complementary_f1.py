"""Would an f1 trained where the refined f0 errs make f1's gains rankable? (issue 11)

``probe_refined_ranking`` found that even knowing exactly where the refined f0 is wrong
does not rank f1's gains out of family: per patch, f1's errors follow f0's (r 0.95 there).
A model that is right where f0 is wrong would make f0's errors, and the signals that track
them, say where f1 gains. This probe continues the bundle's f1 on fresh scans of the
bundle's training distribution with every pixel's cross entropy weighted by
``1 + boost`` where the refined f0 labels it wrongly (boosting), and, as the control,
the same steps with ``boost`` 0. Each f1 goes into a copy of the bundle (f0, refiner,
f2, fusion and policy unchanged) under ``--out``, to be scored with

    python benchmarks/probe_refined_ranking.py runs/complementary/boost-4 --sets v1:8831-8850 oof:9631-9650

The refined f0's errors are found once per training slice with the engine (as PaSeR
keeps a patch on f0) and carried through the augmentation inside the labels
(``label + 3 * wrong``), so a flipped or rotated crop keeps its error map.

    python benchmarks/probe_complementary_f1.py paser-synth-v2.21 --boost 0 4 --steps 3000
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import make_volumes, scan_probe_start
from napari_paser.engine.bundle import save_bundle
from napari_paser.engine.models import centre_planes
from napari_paser.engine.normalize import normalize_volume
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.precision import bf16_autocast
from napari_paser.train.datasets import IGNORE, SliceBank, Volume, class_weights
from napari_paser.train.presets import TrainConfig
from probe_testset_draws import _parse_set

CLASSES = 3


def refined_f0_wrong(bundle, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(Z, rows, columns) bool: where the refined f0 (what PaSeR keeps on f0) is wrong."""
    seg = PaserSegmenter(bundle, seed=0)
    seg.set_volume(image)
    keep = np.zeros(seg.grid, np.uint8)
    return np.stack([seg.compose(z, routing=keep) != labels[z] for z in range(len(image))])


def encoded_volumes(bundle, volumes) -> list[Volume]:
    """Training volumes whose labels carry the refined f0's errors: ``label + 3 * wrong``."""
    out = []
    for i, (image, labels) in enumerate(volumes):
        wrong = refined_f0_wrong(bundle, image, labels)
        out.append(Volume(f"train{i}", normalize_volume(image).astype(np.float32), (labels + CLASSES * wrong).astype(np.uint8)))
    return out


def decode(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (IGNORE kept) and the refined f0's error mask from encoded labels."""
    unlabelled = lab == IGNORE
    return torch.where(unlabelled, lab, lab % CLASSES).long(), (~unlabelled) & (lab >= CLASSES)


def train_patch_model(model, bank: SliceBank, weight: torch.Tensor, boost: float, steps: int, lr: float, seed: int,
                      *, bf16: bool = False):
    """A copy of the patch model ``model`` trained ``steps`` more with cross entropy boosted
    ``1 + boost`` where the refined f0 is wrong (labels as :func:`encoded_volumes` makes
    them; plain labels: no boost), under bf16 autocast with ``bf16`` where it is native."""
    cfg = TrainConfig()
    net = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x, lab = bank.sample_patches(cfg.patch_batch, cfg.augment, g, impulse=True, halo=net.config.halo)
        y, wrong = decode(lab)
        with bf16_autocast("cpu", bf16):
            logits = net(centre_planes(x, net.config.planes))
        ce = F.cross_entropy(logits.float(), y, weight=weight, ignore_index=IGNORE, reduction="none")
        pixel = weight[y.clamp(0, CLASSES - 1)] * (y != IGNORE) * (1 + boost * wrong)
        loss = (ce * (1 + boost * wrong)).sum() / pixel.sum().clamp_min(1e-8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"  boost {boost:g}: step {step} loss {float(loss.detach()):.4f}", flush=True)
    return net.eval()


def continuation_parser(doc: str, train: str | list[str], steps: int, out: str) -> argparse.ArgumentParser:
    """The arguments every probe that continues a bundle's patch model takes: the bundle,
    ``--train`` (the fresh scans, ``dist:first-last``), ``--steps``, ``--lr``, ``--threads``
    and ``--out``, with these defaults."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", default="paser-synth-v2.21")
    ap.add_argument("--train", nargs="+" if isinstance(train, list) else None, default=train,
                    help="fresh scans to continue the model on (16 slices each)")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(out))
    return ap


def continuation_start(args: argparse.Namespace):
    """Threads as ``args`` asks and a fixed seed; the bundle to continue, in eval mode."""
    torch.manual_seed(0)  # before the bundle is built, as it always was
    return scan_probe_start(args).eval()


def main() -> None:
    ap = continuation_parser(__doc__, "v2:7401-7412", 3000, "runs/complementary")
    ap.add_argument("--boost", type=float, nargs="+", default=[0.0, 4.0])
    args = ap.parse_args()
    bundle = continuation_start(args)
    dist, seeds = _parse_set(args.train)
    t0 = time.perf_counter()
    volumes = encoded_volumes(bundle, make_volumes(seeds, 16, distribution=dist))
    wrong = np.mean([np.mean(v.labels >= CLASSES) for v in volumes])
    print(f"{len(volumes)} {dist} scans made, the refined f0 wrong on {wrong * 100:.1f} % of their pixels ({time.perf_counter() - t0:.0f} s)")
    bank = SliceBank(volumes, bundle.patch_size, planes=bundle.f1.config.planes)
    weight = class_weights([Volume(v.name, v.image, np.where(v.labels == IGNORE, IGNORE, v.labels % CLASSES).astype(np.uint8))
                            for v in volumes])
    for boost in args.boost:
        t0 = time.perf_counter()
        variant = copy.deepcopy(bundle)
        variant.f1 = train_patch_model(bundle.f1, bank, weight, boost, args.steps, args.lr, seed=1)
        variant.meta = {**variant.meta, "name": f"{bundle.name}-f1-boost-{boost:g}",
                        "description": f"{bundle.name} with f1 continued {args.steps} steps on {args.train}, "
                                       f"cross entropy x (1 + {boost:g}) where the refined f0 is wrong (benchmarks/probe_complementary_f1.py)"}
        path = save_bundle(variant, args.out / f"boost-{boost:g}", overwrite=True)
        print(f"boost {boost:g}: {args.steps} steps in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)


if __name__ == "__main__":
    main()
