"""Does what f0's labels leave unexplained in the image tell which patches gain? (issue 11, line 4)

f0's entropy says where f0 is unsure, in f0's own terms; out of family its confidence
no longer says where it is wrong. The *image residual*
(:func:`napari_paser.engine.uncertainty.image_residual`) asks the image instead: each
class's mean intensity is measured in the slice under f0's probabilities, the image
f0's labels predict is their probability-weighted mix, and the squared difference from
the slice, weighted by f0's entropy, flags where f0's labels do not explain the data.

For each bundle and each set, per 56 × 64 patch, this prints the Pearson r with the true
gains of f1 and f2 over f0 (the first-order change of the set's mean IoU) of f0's
entropy, of the bundle's predicted gains, of the residual, and of the bundle's gains
plus w times the residual, both standardised with one scale over all sets (w 1 and 2;
``calibrate_residual_prior`` sets its scale on the training volumes instead). The sets
are ``probe_policy_fit``'s three (development volumes of both test distributions and
eight more out-of-family ones) and two of fresh seeds, v1 8501-8504 and oof 9301-9308; no
test set shares them. The bundles must share f0, f1 and f2 (they are run once, through
the first bundle's engine).

    python benchmarks/probe_image_residual.py paser-synth-v2.9 runs/paser-synth-v2.16 --threads 2
"""

from __future__ import annotations

import numpy as np
import torch

from common import build_table, make_volumes, oracle_gains
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import image_residual, mc_predict, policy_features, slice_seed
from probe_policy_choice import development_parser
from probe_policy_fit import SETS

FRESH = {"in-family 8501-8504": ("v1", (8501, 8502, 8503, 8504)), "out-of-family 9301-9308": ("oof", tuple(range(9301, 9309)))}


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@torch.no_grad()
def patch_signals(table, bundles) -> dict[str, np.ndarray]:
    """Per patch of ``table``: f0's entropy, the residual and every bundle's gains (N, 2, GY, GX)."""
    first = bundles[0]
    ph, pw = first.patch_size
    out = {"entropy": table.ent[:, 0], "residual": [], **{f"gains {i}": [] for i in range(len(bundles))}}
    for seg, zs in table.segs:
        for z in zs:
            planes = torch.from_numpy(seg._planes(z, first.f0.config.planes))[None]
            x = torch.from_numpy(seg._input(z))[None, None]
            seed = slice_seed(seg.seed, seg.first_slice + z)
            # One analysis per slice, as the engine draws it; every other bundle's policy reads it.
            prob, ent, feats, spread = mc_predict(first.f0, planes, seg.mc_passes, seed=seed, return_features=True, return_spread=True)
            prob, ent = prob.float().contiguous(), ent.float()
            res = image_residual(x, prob, ent)[0, 0].numpy()
            out["residual"].append(res.reshape(res.shape[0] // ph, ph, res.shape[1] // pw, pw).mean((1, 3)))
            out["gains 0"].append(seg.gains(z))
            for i, bundle in enumerate(bundles[1:], start=1):
                features = policy_features(x, prob, ent, feats, bundle.policy.config, spread)
                out[f"gains {i}"].append(bundle.policy.gains(features)[0].numpy())
    return {k: np.asarray(v) for k, v in out.items()}


def main() -> None:
    args = development_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    bundles = [load_bundle(resolve_bundle(ref)).eval() for ref in args.bundles]
    sets = {}
    for name, (distribution, seeds) in {**SETS, **FRESH}.items():
        table = build_table(make_volumes(seeds, args.slices, distribution=distribution), bundles[0], seed=0)
        sets[name] = {"true": oracle_gains(table), **patch_signals(table, bundles)}
        print(f"{name}: {len(table.conf)} slices", flush=True)

    def standardised(key: str, k: int | None = None) -> dict[str, np.ndarray]:
        pick = (lambda v: v) if k is None else (lambda v: v[:, k])
        pooled = np.concatenate([pick(s[key]).ravel() for s in sets.values()])
        return {name: (pick(s[key]) - pooled.mean()) / pooled.std() for name, s in sets.items()}

    res = standardised("residual")
    for i, ref in enumerate(args.bundles):
        print(f"\n{ref}: r with the true gains of f1 / f2")
        print("| set | f0's entropy | the bundle's gains | image residual | gains + residual | gains + 2 × residual |")
        print("|---|---|---|---|---|---|")
        gains = [standardised(f"gains {i}", k) for k in range(2)]
        for name, s in sets.items():
            cells = [[_r(s["entropy"], s["true"][:, k]), _r(s[f"gains {i}"][:, k], s["true"][:, k]), _r(s["residual"], s["true"][:, k]),
                      _r(gains[k][name] + res[name], s["true"][:, k]), _r(gains[k][name] + 2 * res[name], s["true"][:, k])] for k in range(2)]
            print(f"| {name} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(*cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
