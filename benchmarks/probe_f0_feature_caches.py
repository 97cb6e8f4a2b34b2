"""Reward caches whose policy input also holds f0's finest features (issue 11, line 4).

f0 (stem 4) computes its finest decoder features on the policy's 4×4-pixel cell grid,
once per slice (its MC dropout is in the head only), so a policy can read them for free
(``PolicyConfig.f0_features``). A training run's reward caches hold only f0's
probabilities, its entropy and the image's local mean and spread. This rebuilds the
features of exactly the same slices (the runner's split of the RL volumes, the same
augmented copies and dropout seeds) with f0's features appended, checks that the image's
channels equal the stored ones, and saves the caches with the stored confusions of f0,
f1 and f2 beside the run's (``*-f0feat.pt``): minutes instead of an hour of f1 and f2.
(``probe_policy_fit``'s development caches hold f0's features already.)

    python benchmarks/probe_f0_feature_caches.py --run runs/paser-synth-v2.9 --data data/synth_v2 --extra-rl data/synth_rl_extra

``--config`` appends other inputs instead, for example the image residual
(``PolicyConfig.image_residual``) to a run whose caches hold the MC spread:

    python benchmarks/probe_f0_feature_caches.py --run runs/paser-synth-v2.15 --data data/synth_v2 --extra-rl data/synth_rl_extra \
        --config f0_features=0 mc_spread=1 image_residual=1 --suffix=-residual
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

import napari_paser.train.stages as stages
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.models import PolicyConfig, PolicyNet, centre_planes
from napari_paser.engine.uncertainty import analyse_slices, slice_seed
from napari_paser.train.datasets import SliceBank, load_data_dir, split_volumes
from napari_paser.train.presets import get_preset
from napari_paser.train.rewards import RewardCache
from napari_paser.train.runner import split_policy_holdout


def _features_only(bundle, images, labels, *, mc_passes=None, seed=0, batch=8, first_index=0) -> RewardCache:
    """``build_reward_cache``'s policy features of the same slices, without f1 and f2."""
    passes = mc_passes or bundle.mc_passes
    feats = []
    with torch.no_grad():
        x0 = centre_planes(images.float(), bundle.f0.config.planes)
        for i in range(len(x0)):
            out = analyse_slices(bundle.f0, bundle.policy.config, x0[i : i + 1], passes, slice_seed(seed, first_index + i))
            feats.append(out[2].half())
    n = len(feats)
    return RewardCache(torch.cat(feats), torch.zeros(n, 3, 1, 1, 1, 1, dtype=torch.int32), torch.zeros(n, 3, 1, 1, 1, dtype=torch.uint8))


def _merge(new: list[RewardCache], old: list[RewardCache]) -> list[RewardCache]:
    """The stored caches with f0's features appended. f0's probabilities and entropy are
    kept as stored (they depend on how the MC masks were drawn when the caches were
    built); the image's channels must agree, or these are not the same slices."""
    out = []
    for a, b in zip(new, old, strict=True):
        k = b.features.shape[1]
        if not torch.equal(a.features[:, 4:k], b.features[:, 4:]):
            diff = (a.features[:, 4:k].float() - b.features[:, 4:].float()).abs().max()
            raise SystemExit(f"the rebuilt image channels differ from the stored ones (max |Δ| {diff}): not the same slices")
        out.append(RewardCache(torch.cat([b.features, a.features[:, k:]], 1), b.conf, b.cells))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--extra-rl", type=Path)
    p.add_argument("--preset", default="v2.9")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", nargs="*", default=["f0_features=1"], help="PolicyConfig overrides key=value (ints) of the rebuilt input")
    p.add_argument("--suffix", default="-f0feat", help="the caches are saved as rewards-rl{SUFFIX}.pt etc.")
    args = p.parse_args()
    overrides = {k: bool(int(v)) for k, v in (kv.split("=") for kv in args.config)}
    torch.set_num_threads(args.threads)
    ck = args.run / "checkpoints"
    bundle = copy.deepcopy(load_bundle(args.run)).eval()
    cfg = bundle.policy.config
    bundle.policy = PolicyNet(PolicyConfig(**{**cfg.to_dict(), **overrides, "patch_size": tuple(cfg.patch_size)}))
    stages.build_reward_cache = _features_only  # cache_rewards then computes the features alone

    tc = get_preset(args.preset)
    volumes, validation = load_data_dir(args.data, None)
    extra_rl = load_data_dir(args.extra_rl, None)[0] if args.extra_rl else []
    split = split_volumes(len(volumes), tc.splits, args.seed, has_validation=validation is not None)
    rl = [volumes[i] for i in split["rl"]] + list(extra_rl)
    fit_vols, held_vols = split_policy_holdout(rl, tc.policy_holdout, args.seed)
    planes = max(m.config.planes for m in bundle.segmenters())
    ctx = stages.StageContext(cfg=tc, device=torch.device("cpu"), ckpt=None, seed=args.seed, log=print, progress=False)
    for name, vols in (("rewards-rl", fit_vols), ("rewards-rl-holdout", held_vols)):
        old = [RewardCache(*t) for t in torch.load(ck / f"{name}.pt", weights_only=True)]
        new = stages.cache_rewards(ctx, bundle, SliceBank(vols, bundle.patch_size, planes), tc.rl_copies)
        merged = _merge(new, old)
        torch.save([c.tensors() for c in merged], ck / f"{name}{args.suffix}.pt")
        print(f"{name}: {sum(len(c) for c in merged)} slices, {merged[0].features.shape[1]} input channels", flush=True)


if __name__ == "__main__":
    main()
