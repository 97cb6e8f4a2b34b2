"""Which statistic of f0's MC-dropout passes tracks the gains of f1 and f2? (issue 11, line 4)

Line 4 asks for predicted gains that track the true per-patch gains better than f0's
entropy by 0.1 (Pearson r). The policy reads the entropy of the passes' mean; this probe
asks whether the passes say more. Per 56 × 64 patch, from the bundle's own passes (its
``mc_passes``, the engine's dropout seeds), it averages:

- the entropy of the mean probabilities (what the policy and the IDK cascade read);
- the mean entropy of the single passes, and the mutual information (the first minus
  the second: the passes' disagreement about the class);
- the spread: the variance over the passes of each class's probability, summed over
  the classes (``mc_predict(..., return_spread=True)``);
- one minus the margin between the two most probable classes of the mean;

and prints each one's r with the true gains of f1 and f2 over f0 (the first-order change
of the set's mean IoU) on the development volumes of ``probe_policy_choice`` and eight
more out-of-family ones (no test set shares them), with the r of a least-squares fit of
all five on the same patches (in sample: an optimistic reference, not a policy).

    python benchmarks/probe_mc_spread.py paser-synth-v2.9 --threads 2
"""

from __future__ import annotations

import numpy as np
import torch

from common import build_table, make_volumes, oracle_gains
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import entropy, slice_seed
from probe_policy_choice import development_parser
from probe_policy_fit import SETS

STATISTICS = ("entropy of the mean", "mean entropy of the passes", "mutual information", "spread", "1 − top-2 margin")


@torch.no_grad()
def pass_statistics(f0, x: torch.Tensor, passes: int, seed: int) -> np.ndarray:
    """The five maps of :data:`STATISTICS` (5, rows, columns) of one slice ``x`` (1, planes,
    rows, columns), from the passes ``mc_predict`` draws with ``seed`` (a head-dropout f0)."""
    logits = f0.mc_head_logits(f0.encode(x)[-1], passes, torch.Generator(device=x.device).manual_seed(seed))
    _, k, h, w = logits.shape
    c = f0.config.num_classes
    per_pass = logits.float().reshape(passes, 1, c, k // c, h, w).softmax(2)
    mean = per_pass.mean(0)
    top2 = mean.topk(2, dim=1).values
    maps = [entropy(mean), torch.stack([entropy(p) for p in per_pass]).mean(0)]
    maps += [maps[0] - maps[1], per_pass.var(0, correction=0).sum(1), 1 - (top2[:, 0] - top2[:, 1])]
    return torch.cat([f0.unfold(m)[:, 0] for m in maps]).numpy()


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def main() -> None:
    p = development_parser(__doc__)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for ref in args.bundles:
        bundle = load_bundle(resolve_bundle(ref)).eval()
        if bundle.f0.config.mc_scope != "head":
            raise SystemExit(f"{ref}: this probe reads head-dropout passes (mc_scope 'head')")
        ph, pw = bundle.patch_size
        for name, (distribution, seeds) in SETS.items():
            table = build_table(make_volumes(seeds, args.slices, distribution=distribution), bundle, seed=0)
            gains = oracle_gains(table)  # (N, 2, GY, GX)
            stats = []
            for seg, zs in table.segs:
                for z in zs:
                    x = torch.from_numpy(seg._planes(z, bundle.f0.config.planes))[None]
                    maps = pass_statistics(bundle.f0, x, seg.mc_passes, slice_seed(seg.seed, seg.first_slice + z))
                    s, rows, cols = maps.shape
                    stats.append(maps.reshape(s, rows // ph, ph, cols // pw, pw).mean((2, 4)))
            stats = np.stack(stats, 1)  # (5, N, GY, GX)
            design = np.column_stack([m.ravel() for m in stats] + [np.ones(stats[0].size)])
            fits = []
            for k in range(2):
                coef, *_ = np.linalg.lstsq(design, gains[:, k].ravel(), rcond=None)
                fits.append(_r(design @ coef, gains[:, k]))
            cells = "; ".join(f"{label} {_r(m, gains[:, 0]):.3f} / {_r(m, gains[:, 1]):.3f}" for label, m in zip(STATISTICS, stats))
            print(f"{bundle.name}, {name} ({gains[:, 0].size} patches): r with the gains of f1 / f2: {cells}; "
                  f"least squares of all five (in sample) {fits[0]:.3f} / {fits[1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
