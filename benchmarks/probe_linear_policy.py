"""Would a linear policy on f0's patch statistics track the gains better than the trained one? (issue 11)

The bundled policy's predicted gains track the true per-patch gains worse than f0's
entropy alone (BENCHMARKS.md: 0.610 / 0.682 against 0.735 / 0.778 in family), and a
ridge regression on statistics of f0's output did better than both
(``probe_gain_predictability.py``). This probe asks it on a training run's own reward
caches (``runs/NAME/checkpoints/rewards-rl.pt`` and ``rewards-rl-holdout.pt``, written
by ``napari-paser train`` with a regression policy and ``policy_holdout``):

- the run's trained policy, f0's mean patch entropy, and ridge regressions (closed form,
  penalty chosen by the error on the held-out volumes) fitted on the fit volumes' caches:
  on the patch means of the policy's 6 input channels (what its linear skip reads, so
  it ships in the bundle format as it is), and on those plus the within-patch standard
  deviation and maximum of each channel;
- Pearson r with the true gains of f1 and f2 (first-order change of the dataset IoU, as
  the policy is fitted) on the held-out RL volumes, pooled and within each cache.

    python benchmarks/probe_linear_policy.py --run runs/paser-synth-v2.7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.uncertainty import ENTROPY_CHANNEL
from napari_paser.train.linear_policy import choose_ridge, patch_table
from napari_paser.train.rewards import load_reward_caches


@torch.no_grad()
def spread_and_maxima(policy, features: torch.Tensor) -> np.ndarray:
    """(patches, 2C) within-patch standard deviation and maximum of each input channel,
    rows in the order of :func:`~napari_paser.train.linear_policy.patch_table`."""
    out = []
    cells = policy.patch_cells()
    for i in range(0, len(features), 64):
        x = policy._grid_inputs(features[i : i + 64].float())
        mean = F.avg_pool2d(x, cells)
        sd = (F.avg_pool2d(x * x, cells) - mean * mean).clamp_min(0).sqrt()
        s = torch.cat([sd, F.max_pool2d(x, cells)], 1)
        out.append(s.permute(0, 2, 3, 1).reshape(-1, s.shape[1]))
    return torch.cat(out).double().numpy()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def report(name: str, preds: list[np.ndarray], truths: list[np.ndarray]) -> None:
    p, t = np.concatenate(preds), np.concatenate(truths)
    within = [[corr(pi[:, k], ti[:, k]) for pi, ti in zip(preds, truths) if pi[:, k].std() > 0] for k in (0, 1)]
    print(f"{name:<58} {corr(p[:, 0], t[:, 0]):7.3f} {corr(p[:, 1], t[:, 1]):7.3f}   "
          f"{np.mean(within[0]):.3f} / {np.mean(within[1]):.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run folder (a bundle with checkpoints/)")
    p.add_argument("--reward", default="dataset_iou")
    args = p.parse_args()
    run = Path(args.run)
    bundle = load_bundle(run).eval()
    policy = bundle.policy
    fit = load_reward_caches(run / "checkpoints" / "rewards-rl.pt")
    held = load_reward_caches(run / "checkpoints" / "rewards-rl-holdout.pt")
    print(f"run {run}: fit {sum(len(c) for c in fit)} slices, held out {sum(len(c) for c in held)} slices", flush=True)
    # Patch means of the policy's inputs (what the linear skip reads) and the true gains, per cache.
    fit_tables = [patch_table(policy, [c], args.reward) for c in fit]
    held_tables = [patch_table(policy, [c], args.reward) for c in held]
    truth_held = [y for _, y in held_tables]
    print(f"{'predictor (held-out RL volumes)':<58} {'corr f1':>7} {'corr f2':>7}   within caches f1 / f2")
    with torch.no_grad():
        trained = [torch.cat([policy.gains(c.features[i : i + 64].float()) for i in range(0, len(c), 64)])
                   .permute(0, 2, 3, 1).reshape(-1, 2).double().numpy() for c in held]
    report("the run's trained policy", trained, truth_held)
    ent = [np.repeat(x[:, ENTROPY_CHANNEL : ENTROPY_CHANNEL + 1], 2, 1) for x, _ in held_tables]
    report("f0's mean patch entropy", ent, truth_held)
    for extended, label in ((False, "channel means (the linear skip's inputs)"), (True, "means, sds and maxima")):
        def inputs(tables, caches):
            if not extended:
                return [x for x, _ in tables]
            return [np.concatenate([x, spread_and_maxima(policy, c.features)], 1) for (x, _), c in zip(tables, caches)]

        xf, yf = np.concatenate(inputs(fit_tables, fit)), np.concatenate([y for _, y in fit_tables])
        xh = inputs(held_tables, held)
        model, _ = choose_ridge((xf, yf), list(zip(xh, truth_held)))
        report(f"ridge on {label}, penalty {model.penalty:g}", [model.predict(x) for x in xh], truth_held)
        train_fit = model.predict(xf)
        print(f"  (on the fit volumes themselves: {corr(train_fit[:, 0], yf[:, 0]):.3f} / {corr(train_fit[:, 1], yf[:, 1]):.3f})")


if __name__ == "__main__":
    main()
