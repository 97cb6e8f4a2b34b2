"""Would the default policy's network rank the gains better fitted another way? (issue 11)

v2.21's dense policy network is fitted by ``train.dense_policy.fit_dense_policy``: the
mean squared error of the standardised gains of 4×4-pixel cells, 3 000 steps, early
stopped on the Pearson r of the patch gains of 8 held-out RL volumes, which was still
rising at the last step. This probe fits the same network again on the reward caches its
training run kept (``checkpoints/rewards-rl.pt`` and ``rewards-rl-holdout.pt``) with other
settings, given as variants ``NAME:key=value,...`` over ``fit_dense_policy``'s keywords
(``steps``, ``lr``, ``batch``, ``weight_decay``, ``patch_weight``, ``corr_weight``,
``volumes_per_batch``, ``input_jitter``, ``target``, ``centre``, ``seed``; ``seeds=0+1+2`` averages the gains of one fit per
seed, an ensemble that costs its size in policy FLOPs), or over the network's size
(``width``, ``dense_layers``: a fresh network of the same inputs); ``tie_f2=1`` then ties the
fit's f2 gains to its f1 gains as preset v2.22 does (``train.dense_policy.tie_f2_gains``,
decided on the held-out RL volumes), and ``slice_level=1`` then reads each slice's level of
gains from its mean refiner KL as preset v2.23 does (``train.dense_policy.fit_slice_level``).
``NAME:of=A+B`` fits nothing: it averages the gains of the variants named A and B (given
before it), an ensemble of differently fitted networks.

Each fit is scored as ``probe_refined_ranking`` scores a policy, on the same fresh scans of
both test generators (its ``--cache``, which holds each scan's true confusions): pooled r
with the true gains, the lead over f0's entropy in drawn sets of four (line 4), and with
``--lines-draws`` lines 1-3 at the bundle's default λ and over the validation grid. The
policy's input on those scans is computed once from the bundle's f0 and kept in the cache.
Nothing is tuned on the scans: they only score the fits.

    python benchmarks/probe_policy_refit.py runs/paser-synth-v2.21 long:steps=6000 ens:seeds=0+1+2 --cache runs/rrcache
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import time
from pathlib import Path

import numpy as np
import torch

from common import make_volumes
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.models import PolicyNet
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle
from napari_paser.train.dense_policy import fit_dense_policy, fit_slice_level, tie_f2_gains
from napari_paser.train.rewards import load_reward_caches
from probe_refined_ranking import cached, policy_inputs, print_lines, print_ranking
from probe_testset_draws import _parse_set

FIT_KEYS = {"steps": int, "lr": float, "batch": int, "weight_decay": float, "patch_weight": float,
            "corr_weight": float, "volumes_per_batch": int, "input_jitter": float, "seed": int,
            "target": str, "centre": float}


ARCH_KEYS = {"width": int, "dense_layers": int}  # the network's size (PolicyConfig)
AFTER_KEYS = {"tie_f2", "slice_level"}  # what is done to the fitted network, in this order


def parse_variant(text: str) -> tuple[str, dict, dict, list[int], set[str]]:
    """``NAME:key=value,...`` → (name, fit_dense_policy keywords, PolicyConfig changes,
    seeds of the ensemble, what to do after the fit)."""
    name, _, spec = text.partition(":")
    kwargs, arch, seeds, after = {}, {}, [0], set()
    if spec.startswith("of="):
        return name, {"of": spec[3:].split("+")}, {}, [], set()
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "seeds":
            seeds = [int(v) for v in value.split("+")]
        elif key in FIT_KEYS:
            kwargs[key] = FIT_KEYS[key](value)
        elif key in ARCH_KEYS:
            arch[key] = ARCH_KEYS[key](value)
        elif key in AFTER_KEYS:
            if int(value):
                after.add(key)
        else:
            raise SystemExit(f"{text}: unknown key {key!r}; choose from seeds, {', '.join([*FIT_KEYS, *ARCH_KEYS, *AFTER_KEYS])}")
    if "seed" in kwargs:
        seeds = [kwargs.pop("seed")]
    return name, kwargs, arch, seeds, after


@torch.no_grad()
def scan_features(volumes, bundle) -> list[torch.Tensor]:
    """The policy's input (slices, channels, GY·k, GX·k) on each of ``volumes`` [(image,
    labels)], from f0's analysis as the engine runs it."""
    out = []
    for image, _ in volumes:
        seg = PaserSegmenter(bundle)
        seg.set_volume(image)
        feats = policy_inputs(seg, range(seg.num_slices), bundle.policy.config)
        # The engine's own gains from the same input: the probe scores what PaSeR would route by.
        np.testing.assert_allclose(bundle.policy.gains(feats[0])[0].numpy(), seg.gains(0), rtol=1e-4, atol=1e-6)
        out.append(torch.cat(feats))  # float32, as the engine routes by them (the reward caches keep half precision)
    return out


@torch.no_grad()
def predicted_gains(policies: list, features: torch.Tensor) -> np.ndarray:
    """Mean patch gains (slices, 2, GY, GX) of ``policies`` on one scan's input."""
    return np.mean([p.gains(features.float()).numpy() for p in policies], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the training run's folder (its bundle and checkpoints/)")
    ap.add_argument("variants", nargs="+", metavar="NAME:key=value,...")
    ap.add_argument("--base", default="paser-synth-v2.20", help="the bundle probe_refined_ranking's cache was made with (same networks)")
    ap.add_argument("--sets", nargs="+", default=["v1:8831-8850", "oof:9631-9650"])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--lines-draws", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, required=True, help="probe_refined_ranking's cache")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(str(args.run)))
    base = load_bundle(resolve_bundle(args.base))
    caches = load_reward_caches(args.run / "checkpoints" / "rewards-rl.pt")
    holdout = load_reward_caches(args.run / "checkpoints" / "rewards-rl-holdout.pt")
    stems = {}
    for text in args.sets:  # every set's scans must be cached before any fit is spent
        stems[text] = f"{text.replace(':', '_')}_{args.slices}_{base.name}-{base.meta.get('version')}"
        if not (args.cache / f"{stems[text]}.pkl").exists():
            raise SystemExit(f"no {args.cache / stems[text]}.pkl: run probe_refined_ranking.py {args.base} --sets {text} --cache {args.cache} first")
    variants = [parse_variant(text) for text in args.variants]  # a typo fails before any fit
    for i, (name, kwargs, *_) in enumerate(variants):
        missing = [m for m in kwargs.get("of", []) if m not in {v[0] for v in variants[:i]}]
        if missing:
            raise SystemExit(f"{name}: no variant {', '.join(missing)} before it")
    fits: dict[str, list] = {}
    for name, kwargs, arch, seeds, after in variants:
        if "of" in kwargs:  # an ensemble of variants fitted above
            fits[name] = [p for m in kwargs["of"] for p in fits[m]]
            continue
        fits[name] = []
        for seed in seeds:
            t0 = time.perf_counter()
            # Another size is a fresh network of the same inputs; the fit resets the weights anyway.
            policy = PolicyNet(dataclasses.replace(bundle.policy.config, **arch)).eval() if arch else copy.deepcopy(bundle.policy)
            history = fit_dense_policy(policy, caches, holdout, seed=seed, **kwargs)
            fits[name].append(policy)
            print(f"{name} seed {seed}: best step {history['best_step']}, held-out r {history['corr_holdout']} "
                  f"(fit {history['corr_fit']}), {time.perf_counter() - t0:.0f} s", flush=True)
            if "tie_f2" in after:
                print(f"{name} seed {seed}: f2's gains tied to f1's {tie_f2_gains(policy, caches, holdout)}", flush=True)
            if "slice_level" in after:
                print(f"{name} seed {seed}: each slice's level from its mean KL {fit_slice_level(policy, caches, holdout)}", flush=True)
    lam = float(bundle.default_lam)
    for text in args.sets:
        dist, seeds = _parse_set(text)
        stem = stems[text]
        scans = cached(args.cache / f"{stem}.pkl", None)
        volumes = functools.partial(make_volumes, seeds, args.slices, distribution=dist)
        features = cached(args.cache / f"{stem}_features_{bundle.name}-{bundle.meta.get('version')}.pkl", lambda: scan_features(volumes(), bundle))
        for scan, feats in zip(scans, features):
            # The shipped policy as "policy" (the mix and KL rows of print_lines build on it);
            # these policies have no prior, so each network is its policy.
            scan["policy"] = scan["policy network"] = predicted_gains([bundle.policy], feats)
            for name, policies in fits.items():
                scan[f"policy {name}"] = scan[f"policy network {name}"] = predicted_gains(policies, feats)
        print(f"\n{text} ({len(scans)} scans); 'policy' is {bundle.name}'s, the others fitted again on its reward caches")
        print_ranking(scans, ["entropy", "policy"] + [f"policy {n}" for n in fits] + ["KL"], args.draws)
        if args.lines_draws:
            print_lines(scans, bundle, {"": lam} | {f" {n}": lam for n in fits}, args.lines_draws)

if __name__ == "__main__":
    main()
