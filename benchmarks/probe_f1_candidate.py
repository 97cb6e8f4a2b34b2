"""Does an f1 of another shape keep the bundled f1's quality, and how much faster is it?

``benchmarks/probe_patch_model_shapes.py`` timed untrained shapes; this probe takes a
trained candidate f1, for example from a training run's checkpoint
(``runs/NAME/checkpoints/models.pt`` once its ``pretrain_f1`` stage is done, or
``partial-pretrain_f1.pt`` while it runs), puts it into a copy of the reference bundle in
place of its f1 and runs both bundles through the engine on development volumes that no
test set shares (in family: v1 seeds 8001-8004; out of family: oof seeds 8101-8102; 8
slices each):

- the dataset mean IoU of f1 everywhere (the patch model's own labels) and of f1
  everywhere with f0 fused in (what PaSeR returns where it routes every patch to f1);
- the seconds the engine charges f1 everywhere, both f1s timed in turn on the same
  slices over ``--rounds`` rounds (medians), with the torch threads given.

    python benchmarks/probe_f1_candidate.py runs/paser-synth-v2.25/checkpoints/models.pt --arch v2.25

``--save FOLDER`` also writes the reference bundle with the candidate f1 in place of its own,
for a preset that trains that f1 on (``train --warm-start FOLDER``; v2.26).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch

from common import make_volumes
from napari_paser.engine.bundle import Bundle, default_model_configs, load_bundle, save_bundle
from napari_paser.engine.metrics import confusion_matrix, mean_iou
from napari_paser.engine.models import UNet
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle

SETS = {"in family (v1 8001-8004)": ((8001, 8002, 8003, 8004), "v1"), "out of family (oof 8101-8102)": ((8101, 8102), "oof")}


def candidate_f1(checkpoint: str, arch: str) -> UNet:
    """The f1 of a training checkpoint: a stage checkpoint (``models.pt``) or a partial one."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    models = state["models"] if "models" in state else state
    f1 = UNet(default_model_configs(arch)["f1"])
    f1.load_state_dict(models["model"] if "model" in models else models["f1"])
    return f1.eval()


def f1_everywhere(bundle: Bundle, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels of f1 everywhere, its labels with f0 fused in, and the seconds charged to f1."""
    seg = PaserSegmenter(bundle)
    seg.set_volume(image)
    plain = seg.result(method="f1")
    grid = np.ones(seg.grid, dtype=np.int64)
    fused = np.stack([seg.compose(z, routing=grid) for z in range(seg.num_slices)])
    return plain.labels, fused, float(plain.compute_seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a training run's checkpoint holding the candidate f1")
    ap.add_argument("--arch", default="v2.25", help="architecture preset of the candidate (engine.bundle.default_model_configs)")
    ap.add_argument("--bundle", default="paser-synth-v2.24", help="reference bundle (its f1 is compared; the rest is shared)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (the IoUs come from the first)")
    ap.add_argument("--save", metavar="FOLDER", help="also write the reference bundle with the candidate f1 there")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reference = load_bundle(resolve_bundle(args.bundle))
    candidate = copy.deepcopy(reference)
    candidate.f1 = candidate_f1(args.checkpoint, args.arch)
    if args.save:
        # A warm start, not a measured bundle: nothing of the reference's own measurements is kept.
        for key in ("validation", "flops", "training", "default_lam_rule"):
            candidate.meta.pop(key, None)
        candidate.meta["name"] = Path(args.save).name
        candidate.meta["description"] = f"{reference.name} with the f1 of {args.checkpoint} (a warm start for training; not measured)"
        print(f"wrote {save_bundle(candidate, args.save)}")
    bundles = {"reference f1": reference, "candidate f1": candidate}
    print(f"reference {args.bundle} f1 {reference.f1.config}; candidate {candidate.f1.config}; torch threads {args.threads}")
    for name, (seeds, distribution) in SETS.items():
        volumes = make_volumes(seeds, 8, distribution=distribution)
        cms = {(b, kind): np.zeros((3, 3), np.int64) for b in bundles for kind in ("own", "fused")}
        seconds: dict[str, list[float]] = {b: [] for b in bundles}
        for r in range(args.rounds):
            for b, bundle in bundles.items():
                total = 0.0
                for image, truth in volumes:
                    plain, fused, s = f1_everywhere(bundle, image)
                    total += s
                    if r == 0:
                        cms[b, "own"] += confusion_matrix(plain, truth)
                        cms[b, "fused"] += confusion_matrix(fused, truth)
                seconds[b].append(total)
        print(f"\n{name}: {sum(len(v[0]) for v in volumes)} slices")
        print(f"{'':14} {'f1 everywhere':>14} {'with f0 fused':>14} {'f1 seconds':>11}")
        for b in bundles:
            print(f"{b:14} {mean_iou(cms[b, 'own']):14.4f} {mean_iou(cms[b, 'fused']):14.4f} {np.median(seconds[b]):11.2f}")
        ratio = np.median(seconds["candidate f1"]) / np.median(seconds["reference f1"])
        print(f"candidate / reference seconds: {ratio:.3f}")


if __name__ == "__main__":
    main()
