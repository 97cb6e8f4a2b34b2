"""Does a scan's noise tell which scans gain? (issue 11, line 4)

``probe_slice_level.py`` found that line 4 is held back by the level of the gains per
scan, and that of f0's pooled outputs only the refiner's mean KL gives a level that
carries over from the RL volumes to fresh scans of both test generators. The policy's
inputs are pooled by 4, so they average the pixel noise away. This probe asks whether
the noise itself, measured at full resolution, does better. Two label-free statistics of
each slice, both relative to the slice's own spread (so any intensity scale reads alike):

- ``noise σ``: Immerkær's estimate of the noise's standard deviation (the mean absolute
  response to a 3 x 3 kernel that cancels planes and ramps);
- ``residual``: the spread of what a Gaussian of σ 1 pixel removes.

On the 20 + 20 fresh scans that ``probe_refined_ranking.py`` cached (their true gains) and
the bundle's policy input that ``probe_policy_refit.py`` cached, it prints the r over the
scans of their mean statistics with their true mean gains, then the pooled r (and the share of sets of four
scans meeting line 4) when each slice's level (under the policy's ranking within the slice) is a line fitted on the RL
slices of the run in the statistics, the KL, or both, as ``probe_slice_level.py`` does.
The RL slices are replayed from the run's split and seed with the draws of its reward
caches (:func:`napari_paser.train.stages.reward_copies`) and checked against the cached
policy input; the fresh scans are generated again (about 10 minutes, kept in ``--cache``).
Nothing is fitted on the fresh scans.

    python benchmarks/probe_scan_noise.py runs/paser-synth-v2.22 --cache runs/rrcache
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import convolve, gaussian_filter

from common import make_volumes
from napari_paser.train.datasets import SliceBank, labelled_slices, load_data_dir, normalize_volume
from napari_paser.train.presets import TrainConfig
from napari_paser.train.stages import StageContext, reward_copies
from probe_refined_ranking import cached
from probe_slice_level import (
    corr,
    fit_lines,
    fresh_scans,
    gains,
    level_probe_arguments,
    line_level,
    load_level_probe,
    pooled_and_line4,
    print_level_table,
    slice_means,
)

STATS = ["noise σ", "residual"]
# Columns 0-6 are the policy's slice means (probe_slice_level.INPUT_NAMES, the KL at 6), then STATS.
LINES = {"KL": [6], "noise σ": [7], "residual": [8], "KL + noise σ": [6, 7], "KL + residual": [6, 8], "KL + both": [6, 7, 8]}
# Immerkær (1996): zero on planes and ramps; the mean absolute response of white noise of
# deviation σ is σ · 6 · sqrt(2 / π).
IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


def noise_stats(slices: np.ndarray) -> np.ndarray:
    """``STATS`` (slices, 2) of ``slices`` (slices, rows, columns), each over the slice's spread."""
    out = []
    for s in np.asarray(slices, np.float64):
        s = (s - s.mean()) / max(s.std(), 1e-12)
        sigma = np.sqrt(np.pi / 2) * np.abs(convolve(s, IMMERKAER)[1:-1, 1:-1]).mean() / 6
        out.append([sigma, (s - gaussian_filter(s, 1.0)).std()])
    return np.array(out)


def rl_noise(run: Path, bundle, volumes: dict, split: str, caches) -> tuple[np.ndarray, np.ndarray]:
    """``STATS`` of the slices of the run's (its ``bundle``'s) reward caches of ``split``
    ("rl" or "rl_holdout"), in their order, and the index of each slice's volume in the
    split (-1 for augmented copies); ``volumes`` by name, as the run loaded them."""
    report = json.loads((run / "training_report.json").read_text())
    planes = max(m.config.planes for m in bundle.segmenters())
    chosen = [volumes[n] for n in report["split"][split]]
    bank = SliceBank(chosen, bundle.patch_size, planes)
    owner = np.repeat(np.arange(len(chosen)), [len(labelled_slices(v.labels)) for v in chosen])  # as SliceBank lists them
    cfg = TrainConfig.from_dict(report["config"])
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=None, seed=report["seed"], progress=False)  # type: ignore[arg-type]
    groups: dict[int, list[torch.Tensor]] = {}
    for number, images, _ in reward_copies(ctx, bank, cfg.rl_copies):
        groups.setdefault(number, []).append(images[:, images.shape[1] // 2])  # the centre plane: the slice itself
    out, owners = [], []
    for indices, centres, cache in zip(bank.groups(), groups.values(), caches, strict=True):
        centre = torch.cat(centres)
        pooled = F.avg_pool2d(centre[:, None].float(), bundle.policy.config.pool)[:, 0]
        # The replay must be the cache's slices: the policy's image channel is their pooled centre plane.
        np.testing.assert_allclose(pooled.numpy(), cache.features[:, 4].float().numpy(), atol=2e-3)
        out.append(noise_stats(centre.numpy()))
        owners.append(np.concatenate([owner[indices], np.full(len(centre) - len(indices), -1)]))
    return np.concatenate(out), np.concatenate(owners)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    level_probe_arguments(ap)  # the run's folder also holds the training_report.json of its split
    ap.add_argument("--data", type=Path, nargs="+", default=[Path("data/synth_v2"), Path("data/synth_rl_extra")],
                    help="the folders the run's volumes came from (--data and --extra-rl of its training)")
    ap.add_argument("--draws", type=int, default=1000, help="sets of four scans drawn per generator for line 4")
    args = ap.parse_args()
    bundle, base, rl = load_level_probe(args)
    policy = bundle.policy.eval()
    (fit, x_fit, y_fit), (held, x_held, y_held) = rl["fit"], rl["held"]
    volumes = {v.name: v for folder in args.data for v in load_data_dir(folder)[0]}  # read once for both splits
    fit_noise, fit_owner = rl_noise(args.run, bundle, volumes, "rl", fit)
    x_fit = np.c_[x_fit, fit_noise]
    x_held = np.c_[x_held, rl_noise(args.run, bundle, volumes, "rl_holdout", held)[0]]
    lines = fit_lines(x_fit, y_fit, LINES)
    print(f"{bundle.name}; {len(x_fit)} RL slices (replayed and checked against the cached policy input), {len(x_held)} held out")
    print(f"r over the RL slices of the slices' mean gain (f1 / f2) with their {', '.join(STATS)}: "
          + ", ".join(f"{corr(x_fit[:, 7 + j], y_fit[:, 0]):+.3f} / {corr(x_fit[:, 7 + j], y_fit[:, 1]):+.3f}" for j in range(len(STATS))))
    volumes = np.unique(fit_owner[fit_owner >= 0])
    x_vol = np.stack([x_fit[fit_owner == v].mean(0) for v in volumes])
    y_vol = np.stack([y_fit[fit_owner == v].mean(0) for v in volumes])
    print(f"r over the {len(volumes)} RL volumes (unaugmented) of their mean gain with their mean "
          + ", ".join(f"{n} {corr(x_vol[:, c], y_vol[:, 0]):+.2f} / {corr(x_vol[:, c], y_vol[:, 1]):+.2f}"
                      for n, c in (("KL", 6), *((s, 7 + j) for j, s in enumerate(STATS)))))
    rows = {name: [corr(lv[:, 0], y_held[:, 0]), corr(lv[:, 1], y_held[:, 1])] for name, lv in
            ((name, line_level(line, x_held)) for name, line in lines.items())}
    pooled: dict[str, list] = {name: [] for name in lines}
    for text in args.sets:
        family, seeds = text.split(":")
        first_seed, last_seed = (int(v) for v in seeds.split("-"))
        scans, features, levels = fresh_scans(args.cache, text, args.slices, base, bundle)
        noise = cached(args.cache / f"{text.replace(':', '_')}_{args.slices}_noise.pkl",
                       lambda: [noise_stats(normalize_volume(image, bundle.normalization)) for image, _ in make_volumes(range(first_seed, last_seed + 1), args.slices, distribution=family)])
        for scan, feats, stats in zip(scans, features, noise, strict=True):
            pred = gains(policy, feats)
            x = np.c_[slice_means(feats), stats]
            scan["_x"] = x
            for name, line in lines.items():
                scan[name] = pred - pred.mean((2, 3), keepdims=True) + line_level(line, x)[:, :, None, None]
        means = np.stack([s["_x"].mean(0) for s in scans])
        print(f"\n{text} ({len(scans)} scans): r over the scans of their true mean gain with their mean "
              + ", ".join(f"{n} {corr(means[:, c], levels[:, 0]):+.2f} / {corr(means[:, c], levels[:, 1]):+.2f}"
                          for n, c in (("KL", 6), *((s, 7 + j) for j, s in enumerate(STATS)))))
        for name, row in zip(lines, pooled_and_line4(scans, list(lines), args.draws)):
            pooled[name].append(row)
    print_level_table("slice level from a line (fitted on the RL slices) in", rows, pooled, args.sets)


if __name__ == "__main__":
    main()
