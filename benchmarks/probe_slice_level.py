"""Does the policy know which slices gain? (issue 11, line 4)

Line 4 pools the patches of four scans, so a policy's r depends on its level per scan
(how much it says a scan gains) as well as on its ranking within each scan. On the fresh
scans that ``probe_refined_ranking.py`` cached (their true confusions) and the policy
input that ``probe_policy_refit.py`` cached for a bundle of the same networks, this probe
prints, for the bundle's policy:

- the median r within single scans, of the policy and of f0's entropy;
- the pooled r with each scan's level replaced by its true mean gain (scaled by the
  policy's spread over the truth's, times 0.5, 1, 2 and 4: a bound, it reads the truth), and
  with the level removed (every scan centred);
- the r over the scans of the policy's mean gain per scan, and of the scans' mean policy
  inputs, with the scans' true mean gains;
- the pooled r when each slice's level is a least-squares line of some of the slice's mean
  inputs fitted on the bundle's RL reward caches (``runs/NAME/checkpoints``), and the r of
  those lines with the slices' mean gains on the held-out RL volumes.

Nothing is fitted on the fresh scans. ``fit_slice_level`` is the line of the KL alone
(``kl`` below), what preset v2.23 ships.

    python benchmarks/probe_slice_level.py runs/paser-synth-v2.22 --cache runs/rrcache
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import dataset_iou_gains
from napari_paser.engine.registry import resolve_bundle
from napari_paser.train.rewards import load_reward_caches
from probe_refined_ranking import cached, set_r

INPUT_NAMES = ["pore", "carbon-binder", "nickel", "entropy", "image mean", "image spread", "KL"]
LEVEL_INPUTS = {"all": list(range(7)), "classes": [0, 1, 2], "KL + image mean": [4, 6], "KL": [6]}


def slice_means(features: torch.Tensor) -> np.ndarray:
    """Mean of each of the policy's 7 inputs over a slice's cells: (slices, 7)."""
    return features.float()[:, :7].mean((2, 3)).double().numpy()


@torch.no_grad()
def gains(policy, features: torch.Tensor) -> np.ndarray:
    return np.concatenate([policy.gains(features[i : i + 64].float()).numpy() for i in range(0, len(features), 64)])


def fit_lines(x: np.ndarray, y: np.ndarray, inputs: dict[str, list[int]] = LEVEL_INPUTS) -> dict[str, tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]:
    """Least squares of the slices' mean gains (slices, 2) on their standardised mean inputs
    (the columns ``inputs`` names, one line each)."""
    mu, sd = x.mean(0), x.std(0)
    lines = {}
    for name, cols in inputs.items():
        design = np.c_[(x[:, cols] - mu[cols]) / sd[cols], np.ones(len(x))]
        lines[name] = (cols, mu, sd, np.linalg.lstsq(design, y, rcond=None)[0])
    return lines


def line_level(line, x: np.ndarray) -> np.ndarray:
    cols, mu, sd, w = line
    return np.c_[(x[:, cols] - mu[cols]) / sd[cols], np.ones(len(x))] @ w


def rl_slices(run: Path) -> dict[str, tuple]:
    """The run's RL slices, ``fit`` and ``held`` (out): (reward caches, their slices' mean
    inputs (slices, 7), their slices' mean true gains (slices, 2))."""
    out = {}
    for split, name in (("fit", "rewards-rl.pt"), ("held", "rewards-rl-holdout.pt")):
        caches = load_reward_caches(run / "checkpoints" / name)
        out[split] = (caches, np.concatenate([slice_means(c.features) for c in caches]),
                      np.concatenate([c.dataset_gain().mean((2, 3)).double().numpy() for c in caches]))
    return out


def fresh_scans(cache: Path, text: str, slices: int, base, bundle) -> tuple[list[dict], list, np.ndarray]:
    """The fresh scans ``text`` ("generator:first-last") as ``probe_refined_ranking`` cached
    them with ``base``, ``bundle``'s policy input on them, and each scan's true mean gain (scans, 2)."""
    stem = f"{text.replace(':', '_')}_{slices}_{base.name}-{base.meta.get('version')}"
    scans = cached(cache / f"{stem}.pkl", None)
    features = cached(cache / f"{stem}_features_{bundle.name}-{bundle.meta.get('version')}.pkl", None)
    true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
    first = np.cumsum([0] + [len(s["conf"]) for s in scans])
    levels = np.stack([true[a:b].mean((0, 2, 3)) for a, b in zip(first[:-1], first[1:])])
    return scans, features, levels


def print_level_table(title: str, held_r: dict[str, list[float]], pooled: dict[str, list], sets: list[str]) -> None:
    """One row per level rule: its r with the held-out RL slices' mean gains and, per set of
    fresh scans, its :func:`pooled_and_line4` row."""
    print(f"\n| {title} | r with the held-out RL slices' mean gain | "
          + " | ".join(f"{t}: pooled r; sets of four meeting line 4" for t in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for name, r in held_r.items():
        print(f"| {name} | {r[0]:.3f} / {r[1]:.3f} | " + " | ".join(f"{p[0]:.3f} / {p[1]:.3f}; {100 * p[2]:.1f} %" for p in pooled[name]) + " |")


def level_probe_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments both level probes take: the run, the caches and the fresh scans."""
    ap.add_argument("run", type=Path, help="a training run's folder: its bundle and checkpoints/rewards-rl*.pt")
    ap.add_argument("--cache", type=Path, required=True, help="probe_refined_ranking's and probe_policy_refit's cache")
    ap.add_argument("--base", default="paser-synth-v2.20", help="the bundle probe_refined_ranking's cache was made with")
    ap.add_argument("--sets", nargs="+", default=["v1:8831-8850", "oof:9631-9650"])
    ap.add_argument("--slices", type=int, default=8)


def load_level_probe(args: argparse.Namespace) -> tuple:
    """The run's bundle, the bundle the scans were cached with and :func:`rl_slices` of the run."""
    return load_bundle(resolve_bundle(str(args.run))), load_bundle(resolve_bundle(args.base)), rl_slices(args.run)


def corr(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def pooled_and_line4(scans: list[dict], signals: list[str], draws: int, seed: int = 0) -> list[list[float]]:
    """Per signal: its pooled r with the true gains of f1 and f2 over ``scans``, and the
    share of ``draws`` sets of four of the scans on which it meets line 4 as the benchmark
    judges it (both leads over f0's entropy at least 0.1)."""
    rows = [[*r, 0.0] for r in set_r(scans, signals)]
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        r = set_r([scans[i] for i in rng.choice(len(scans), 4, replace=False)], ["entropy", *signals])
        for row, lead in zip(rows, r[1:] - r[0]):
            row[2] += bool(lead.min() >= 0.1) / draws
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    level_probe_arguments(ap)
    args = ap.parse_args()
    bundle, base, rl = load_level_probe(args)
    policy = bundle.policy.eval()
    (_, x_fit, y_fit), (held, x_held, y_held) = rl["fit"], rl["held"]
    lines = fit_lines(x_fit, y_fit)
    p_held = np.concatenate([gains(policy, c.features) for c in held]).mean((2, 3))
    print(f"{bundle.name}; held-out RL slices ({len(x_held)}): r of the slices' mean gain (f1 / f2) with the policy's "
          f"{corr(p_held[:, 0], y_held[:, 0]):.3f} / {corr(p_held[:, 1], y_held[:, 1]):.3f}; with the lines of")
    for name, line in lines.items():
        lv = line_level(line, x_held)
        print(f"  {name}: {corr(lv[:, 0], y_held[:, 0]):.3f} / {corr(lv[:, 1], y_held[:, 1]):.3f}")
    for text in args.sets:
        scans, features, levels = fresh_scans(args.cache, text, args.slices, base, bundle)
        true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
        all_pred = []
        for i, (scan, feats) in enumerate(zip(scans, features)):
            pred = gains(policy, feats)
            all_pred.append(pred)
            scan["policy"] = pred
            scan["policy, every scan centred"] = pred - pred.mean((0, 2, 3), keepdims=True)
            scan["_x"] = slice_means(feats)
            for name, line in lines.items():
                scan[f"policy, slice level from {name}"] = pred - pred.mean((2, 3), keepdims=True) + line_level(line, scan["_x"])[:, :, None, None]
        spread = np.concatenate(all_pred).std((0, 2, 3)) / true.std((0, 2, 3))
        for i, scan in enumerate(scans):
            for a in (0.5, 1.0, 2.0, 4.0):
                scan[f"policy, scan level the truth's x {a:g} (bound)"] = scan["policy, every scan centred"] + a * (spread * levels[i]).reshape(1, 2, 1, 1)
        within = np.array([set_r([s], ["entropy", "policy"]) for s in scans])
        print(f"\n{text} ({len(scans)} scans): median r within a scan (f1 / f2), entropy "
              f"{np.median(within[:, 0, 0]):.3f} / {np.median(within[:, 0, 1]):.3f}, policy "
              f"{np.median(within[:, 1, 0]):.3f} / {np.median(within[:, 1, 1]):.3f}")
        mean_pred = np.stack([s["policy"].mean((0, 2, 3)) for s in scans])
        print(f"r over the scans of their true mean gain with the policy's mean gain {corr(mean_pred[:, 0], levels[:, 0]):+.2f} / "
              f"{corr(mean_pred[:, 1], levels[:, 1]):+.2f}, and with their mean")
        inputs = np.stack([s["_x"].mean(0) for s in scans])
        for j, name in enumerate(INPUT_NAMES):
            print(f"  {name}: {corr(inputs[:, j], levels[:, 0]):+.2f} / {corr(inputs[:, j], levels[:, 1]):+.2f}")
        signals = ["entropy", "policy", "policy, every scan centred"] + [k for k in scans[0] if k.startswith("policy, s")]
        print("| signal | pooled r (f1 / f2) |\n|---|---|")
        for name, r in zip(signals, set_r(scans, signals)):
            print(f"| {name} | {r[0]:.3f} / {r[1]:.3f} |")


if __name__ == "__main__":
    main()
