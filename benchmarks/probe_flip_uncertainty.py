"""Does f0 disagreeing with itself under flips and transposes rank the gains? (issue 11)

MC dropout is one way for f0 to show where it is unsure; test-time augmentation is
another, and it often finds other errors: a network that has learnt its training
textures answers differently when the slice is mirrored or transposed exactly where it
guesses. This probe runs f0's whole analysis (the MC passes and the refiner, seeded as
the engine seeds them) on the eight flips and transposes of each slice, maps the refined
probabilities back, and scores per-patch signals of their disagreement against the true
gains of f1 and f2 over the refined f0, beside f0's entropy, the bundle's policy and the
refiner's KL (``probe_refined_ranking``'s signals, from the same cache):

- ``flip entropy`` (``flip4 entropy``): entropy of the refined probabilities averaged
  over the eight transforms (the four flips);
- ``flip disagreement`` (``flip4 disagreement``): the share of pixels whose refined label
  differs between transforms;
- ``flip KL``: mean KL of each transform's refined probabilities from their average;
- ``flip MC entropy``: entropy of the MC mean averaged over the transforms (no refiner).

It prints each signal's pooled r with the true gains and its median lead over the entropy
in drawn sets of four scans (``probe_refined_ranking.print_ranking``), and what the
transforms cost: f0's analysis per slice with one transform and with all of them. Nothing
is fitted.

    python benchmarks/probe_flip_uncertainty.py --sets v1:8831-8850 oof:9631-9650 --cache runs/rrcache
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import torch

from common import DIHEDRAL, dihedral, make_volumes, scan_probe_parser, scan_probe_start, undo_dihedral
from napari_paser.engine.patches import patch_view
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.uncertainty import entropy, mc_predict, slice_seed
from probe_refined_ranking import cached, print_ranking, scan_signals
from probe_testset_draws import _parse_set

FLIPS = 4  # the first four of DIHEDRAL: flips without a transpose
SIGNALS = ("flip entropy", "flip disagreement", "flip KL", "flip MC entropy", "flip4 entropy", "flip4 disagreement")


def kl_from_mean(q: torch.Tensor) -> torch.Tensor:
    """Mean over the transforms of KL(q_t ‖ mean of q): (T, classes, ...) -> (...)."""
    mean = q.mean(0, keepdim=True)
    return (q * (q.clamp_min(1e-9).log() - mean.clamp_min(1e-9).log())).sum(1).mean(0)


def disagreement(q: torch.Tensor) -> torch.Tensor:
    """1 where the transforms' labels differ, else 0: (T, classes, ...) -> (...)."""
    labels = q.argmax(1)
    return (labels != labels[:1]).any(0).double()


@torch.no_grad()
def analyse(f0, x: torch.Tensor, passes: int, seed: int, t) -> tuple[torch.Tensor, torch.Tensor]:
    """f0's MC mean and refined probabilities (classes, rows, columns) of slice input ``x``
    under transform ``t``, mapped back; the dropout seeded as the engine seeds it."""
    xt = dihedral(x, t)
    prob, _ = mc_predict(f0, xt, passes, seed=seed)
    return undo_dihedral(prob, t)[0].double(), undo_dihedral(f0.refine(xt, prob), t)[0].double()


@torch.no_grad()
def flip_signals(image: np.ndarray, bundle) -> tuple[dict, np.ndarray]:
    """The flip signals (slices, GY, GX) of one scan, and the seconds of f0's analysis per
    slice with the first transform and with all of them (2,)."""
    seg = PaserSegmenter(bundle)
    seg.set_volume(image)
    f0, ps = bundle.f0, seg.patch_size
    out: dict[str, list] = {name: [] for name in SIGNALS}
    seconds = np.zeros(2)
    for z in range(seg.num_slices):
        x = torch.from_numpy(seg._planes(z, f0.config.planes))[None]  # f0's input, as the engine stacks it
        seed = slice_seed(seg.seed, seg.first_slice + z)
        runs = []
        for t in DIHEDRAL:
            start = time.perf_counter()
            runs.append(analyse(f0, x, seg.mc_passes, seed, t))
            took = time.perf_counter() - start
            seconds += (took if len(runs) == 1 else 0.0, took)
        mc = torch.stack([m for m, _ in runs])
        q = torch.stack([r for _, r in runs])
        maps = {"flip entropy": entropy(q.mean(0), dim=0), "flip disagreement": disagreement(q), "flip KL": kl_from_mean(q),
                "flip MC entropy": entropy(mc.mean(0), dim=0), "flip4 entropy": entropy(q[:FLIPS].mean(0), dim=0),
                "flip4 disagreement": disagreement(q[:FLIPS])}
        for name, m in maps.items():
            out[name].append(patch_view(m.numpy(), ps).mean(axis=(-2, -1)))
    return {name: np.stack(v) for name, v in out.items()}, seconds / seg.num_slices


def main() -> None:
    ap = scan_probe_parser(__doc__, ["v1:8831-8850", "oof:9631-9650"])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--cache", type=Path, help="probe_refined_ranking's cache folder: its scans are reused, the flip signals kept beside them")
    args = ap.parse_args()
    bundle = scan_probe_start(args)
    print(f"bundle {bundle.name} {bundle.meta.get('version')}; {len(DIHEDRAL)} transforms, {args.threads} threads")
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        stem = f"{text.replace(':', '_')}_{args.slices}_{bundle.name}-{bundle.meta.get('version')}"
        volumes = functools.lru_cache(maxsize=1)(functools.partial(make_volumes, seeds, args.slices, distribution=dist))
        scans = cached(args.cache and args.cache / f"{stem}.pkl", lambda: [scan_signals(img, lab, bundle) for img, lab in volumes()])
        flips = cached(args.cache and args.cache / f"{stem}_flips.pkl", lambda: [flip_signals(img, bundle) for img, _ in volumes()])
        for scan, (signals, _) in zip(scans, flips):
            scan.update(signals)
        seconds = np.median([s for _, s in flips], axis=0)
        print(f"\n{text} ({len(scans)} scans, {time.perf_counter() - t0:.0f} s); f0's analysis per slice, median over the scans: "
              f"{seconds[0] * 1e3:.1f} ms with one transform, {seconds[1] * 1e3:.1f} ms with all {len(DIHEDRAL)}")
        print_ranking(scans, ["entropy", "policy", "KL", *SIGNALS], args.draws)


if __name__ == "__main__":
    main()
