"""Which dense routing policy tracks the true gains best? (issue 11)

Fits dense policies of several sizes and inputs (``PolicyConfig(head="dense")``,
``train.dense_policy``) on a training run's own reward caches
(``runs/NAME/checkpoints/rewards-rl.pt``, early stopping on ``rewards-rl-holdout.pt``;
the run must have a dense policy, so its caches hold the cells' confusions), puts each
into a copy of the run's bundle and scores it on development volumes no test set shares
(in family 8001-8004, out of family 9201-9204, 8 slices each) with the benchmark's
patch tables: the Pearson r of its predicted gains and of f0's patch entropy with the
true per-patch gains of f1 / f2, and PaSeR at the run's default λ.

    python benchmarks/probe_dense_policy.py --run runs/paser-synth-v2.9
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from bench_testsets import gain_correlations
from common import build_table, make_volumes
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.models import PolicyConfig, PolicyNet
from napari_paser.train.dense_policy import fit_dense_policy
from napari_paser.train.rewards import load_reward_caches
from probe_policy_choice import DEVELOPMENT

VARIANTS = {
    "4 inputs, width 32, 3 layers": {"dense_inputs": 4, "width": 32, "dense_layers": 3},
    "4 inputs, width 16, 3 layers": {"dense_inputs": 4, "width": 16, "dense_layers": 3},
    "4 inputs, width 32, 5 layers": {"dense_inputs": 4, "width": 32, "dense_layers": 5},
    "6 inputs (+ image mean, spread), width 32, 3 layers (v2.9)": {"dense_inputs": 6, "width": 32, "dense_layers": 3},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = load_bundle(args.run).eval()
    caches = load_reward_caches(args.run / "checkpoints" / "rewards-rl.pt")
    holdout = load_reward_caches(args.run / "checkpoints" / "rewards-rl-holdout.pt")
    dev = {name: make_volumes(seeds, 8, distribution=dist) for name, (dist, seeds) in DEVELOPMENT.items()}
    lam = float(base.default_lam)
    print(f"{'policy':<52} {'held-out RL r':>14}   per development set: r policy (f1 / f2), r entropy, PaSeR at λ {lam:.3f} (× f2 IoU, × f2 GFLOPs)")
    for name, sizes in VARIANTS.items():
        t = time.time()
        bundle = copy.deepcopy(base)
        bundle.policy = PolicyNet(PolicyConfig(**{**base.policy.config.to_dict(), **sizes, "patch_size": tuple(base.policy.config.patch_size)}))
        h = fit_dense_policy(bundle.policy, caches, holdout, steps=args.steps, batch=16, lr=2e-3, eval_every=250, seed=0)
        line = f"{name:<52} {h['corr_holdout'][0]:.3f} / {h['corr_holdout'][1]:.3f}"
        for set_name, volumes in dev.items():
            table = build_table(volumes, bundle.eval(), seed=0)
            r = gain_correlations(table)
            f2, paser = table.score(table.constant(2), "f2"), table.score(table.paser(lam), "paser")
            line += (f" | {set_name.split()[0]}: {r['f1']['policy']:.3f} / {r['f2']['policy']:.3f}, {r['f1']['f0_entropy']:.3f} / "
                     f"{r['f2']['f0_entropy']:.3f}, {paser['mean_iou'] / f2['mean_iou']:.4f} × at {paser['gflops'] / f2['gflops']:.3f} ×")
        print(line + f"  (best step {h['best_step']}, {time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
