"""PaSeR model bundles: a folder with ``manifest.json`` and ``weights.safetensors``.

Loading never unpickles anything: weights are safetensors, the rest is JSON. The
manifest follows timm's pretrained-config habit: architecture configs, input
normalisation, classes and colours, patch size, parameter counts, measured FLOPs and
how the weights were trained.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import CLASS_COLORS, CLASS_NAMES, __version__
from ..errors import PaserInputError
from .models import PolicyConfig, PolicyNet, UNet, UNetConfig, count_parameters, with_planes

__all__ = ["Bundle", "BundleError", "load_bundle", "save_bundle", "default_model_configs", "copy_matching_weights"]

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
FORMAT_VERSION = 1
MODEL_NAMES = ("f0", "f1", "f2")


class BundleError(PaserInputError):
    """A folder is not a valid PaSeR bundle."""


def default_model_configs(preset: str = "quick") -> dict[str, Any]:
    """Architecture configs of the presets.

    ``quick`` fits CPU training (f2 4.3 M, f1 0.42 M, f0 38 k parameters; one-pass FLOPs
    per 224x256 slice about 111 : 11 : 1); ``paper`` is the paper's sizes
    (17.3 M, 1.08 M, 16.5 k). ``v2`` is built to be cheap in seconds on a CPU, not only
    in FLOPs: f0 folds 4x4 pixel blocks into channels and keeps its MC dropout before
    the head only, f1 folds 2x2 blocks, f1 and f2 read an 8-pixel halo of context around
    their patch, and the policy sees f0's features through two residual blocks and its
    neighbouring patches.
    """
    if preset == "quick":
        return {
            "f0": UNetConfig(base_width=3, depth=4, dropout=0.1),
            "f1": UNetConfig(base_width=10, depth=4),
            "f2": UNetConfig(base_width=32, depth=4),
            "policy": PolicyConfig(),
        }
    if preset == "v2":
        return {
            "f0": UNetConfig(base_width=16, depth=2, dropout=0.2, stem=4, mc_scope="head"),
            "f1": UNetConfig(base_width=24, depth=3, stem=2, halo=8),
            "f2": UNetConfig(base_width=32, depth=4, halo=8),
            "policy": PolicyConfig(in_channels=22, width=32, features="v2", blocks=2, grid_context=True),
        }
    if preset == "v2.1":
        # v2's networks with a smaller policy that adds a linear model of its patch-mean
        # inputs (entropy among them) to its residual network.
        configs = default_model_configs("v2")
        configs["policy"] = PolicyConfig(in_channels=22, width=16, features="v2", blocks=1, grid_context=True, linear_skip=True)
        return configs
    if preset == "v2.6":
        # v2.1's networks; the policy reads f0's output statistics, not its features
        # (with them it memorised its RL volumes: gain correlation 0.94 there, 0.10 on
        # the validation volumes).
        configs = default_model_configs("v2.1")
        configs["policy"] = PolicyConfig(in_channels=6, width=16, features="v2", f0_features=False, blocks=1, grid_context=True, linear_skip=True)
        return configs
    if preset == "v2.7":
        # v2.6's networks with an f0 that reads the 2 planes above and below its slice:
        # its space-to-depth stem folds them into the first convolution, so they cost
        # f0 little (0.29 GFLOPs per analysed slice instead of 0.22); trained 6 000 steps it
        # gained 0.011 mean IoU in family and 0.009 out of family (BENCHMARKS.md).
        configs = default_model_configs("v2.6")
        configs["f0"] = UNetConfig(**{**configs["f0"].to_dict(), "planes": 5})
        return configs
    if preset == "v2.9":
        # v2.7's networks with a dense policy: the gain of every 4x4-pixel cell from f0's
        # probabilities and entropy and the image's local mean and spread
        # (train.dense_policy), a patch's gain the mean of its cells'. Reading the image
        # too tracked the true gains best on the development volumes
        # (benchmarks/probe_dense_policy.py).
        configs = default_model_configs("v2.7")
        configs["policy"] = PolicyConfig(in_channels=6, width=32, features="v2", f0_features=False, head="dense", dense_inputs=6, dense_layers=3)
        return configs
    if preset == "v2.10":
        # v2.9's networks with an f2 that reads the 2 planes above and below its slice.
        # Widened and trained 1 500 s on the pre-training volumes it went 0.030 above f1
        # in family (0.007 before), and where it gains became visible to a router: f0's
        # entropy tracks f2's gain over f1 with r 0.26 instead of -0.10
        # (benchmarks/probe_f2_choice.py).
        configs = default_model_configs("v2.9")
        configs["f2"] = UNetConfig(**{**configs["f2"].to_dict(), "planes": 5})
        return configs
    if preset == "v2.12":
        # v2.9's networks; the dense policy also reads f0's finest features, which f0
        # (stem 4, MC dropout in its head only) computes once per slice on the policy's
        # 4x4-pixel cell grid. Not shipped: trained, it tracked the gains worse in family
        # and no better out of family (benchmarks/probe_results.md).
        configs = default_model_configs("v2.9")
        configs["policy"] = PolicyConfig(in_channels=22, width=32, features="v2", f0_features=True, head="dense", dense_inputs=22, dense_layers=3)
        return configs
    if preset == "v2.13":
        # v2.9's networks; f0's prediction refined at half resolution by a Refiner of
        # width 32 (two 3x3 convolutions on 2x2 pixel blocks). On the development volumes
        # it lifted f0 from 0.763 to 0.801 in family (f1: 0.816) for 407 MFLOPs a slice,
        # and oracle routing within f1's GFLOPs and seconds above f1 for the first time
        # (benchmarks/probe_f0_refiner.py).
        configs = default_model_configs("v2.9")
        configs["f0"] = UNetConfig(**{**configs["f0"].to_dict(), "refine_width": 32, "refine_stem": 2})
        return configs
    if preset == "v2.15":
        # v2.9's networks; the dense policy also reads how much f0's MC passes disagree.
        # On the development volumes that spread alone tracked the true gains better than
        # f0's entropy out of family (r +0.06 to +0.09; 0.02 worse in family), but the
        # policy fitted on it did not, so it is not shipped (benchmarks/probe_mc_spread.py).
        configs = default_model_configs("v2.9")
        configs["policy"] = PolicyConfig(in_channels=7, width=32, features="v2", f0_features=False, head="dense", dense_inputs=7,
                                         dense_layers=3, mc_spread=True)
        return configs
    if preset == "v2.16":
        # v2.9's networks and dense policy network; the patch gains also add the image
        # residual, how far the slice departs from what f0's labels predict where f0 is
        # unsure, at the network's standing (train.dense_policy.calibrate_residual_prior).
        # Alone it tracked the gains of f1 and f2 better than f0's entropy on three
        # out-of-family development sets (r +0.13 to +0.30) and about as well in family
        # (benchmarks/probe_image_residual.py).
        configs = default_model_configs("v2.9")
        configs["policy"] = PolicyConfig(in_channels=7, width=32, features="v2", f0_features=False, head="dense", dense_inputs=6,
                                         dense_layers=3, image_residual=True)
        return configs
    if preset == "paper":
        return {
            "f0": UNetConfig(base_width=8, depth=2, dropout=0.1),
            "f1": UNetConfig(base_width=16, depth=4),
            "f2": UNetConfig(base_width=64, depth=4),
            "policy": PolicyConfig(),
        }
    raise ValueError(f"unknown preset {preset!r}; choose 'quick', 'v2', 'v2.1', 'v2.6', 'v2.7', 'v2.9', 'v2.10', 'v2.12', 'v2.13', 'v2.15', 'v2.16' or 'paper'")


def copy_matching_weights(dst: "Bundle", src: "Bundle") -> list[str]:
    """Copy into ``dst`` the weights of every network whose parameters match ``src``'s.

    A network is copied whole or not at all: every tensor must exist in both with the
    same shape (a halo or a new head does not change the weights of a UNet; a stem
    or other widths do), except a :class:`~napari_paser.engine.models.Refiner` the
    source lacks, which starts as the identity. A one-plane UNet is first widened to a destination that reads
    more planes (:func:`~napari_paser.engine.models.with_planes`). Returns the names of
    the networks copied.
    """
    copied = []
    for name, model in dst.models().items():
        source = getattr(src, name)
        planes = getattr(model.config, "planes", 1)
        if planes > 1 and getattr(source.config, "planes", 1) == 1:
            # A one-plane network warm-starts a reader of more planes (with_planes).
            source = with_planes(source, planes)
        mine, theirs = model.state_dict(), source.state_dict()
        # A refiner the source lacks keeps its initial weights (an identity correction).
        new_refiner = {k for k in mine.keys() - theirs.keys() if k.startswith("refiner.")}
        if mine.keys() - new_refiner == theirs.keys() and all(mine[k].shape == theirs[k].shape for k in theirs):
            model.load_state_dict(theirs, strict=not new_refiner)
            copied.append(name)
    return copied


@dataclass
class Bundle:
    """The four networks of PaSeR and what is needed to run them.

    Attributes
    ----------
    f0, f1, f2 : UNet
        Tiny whole-slice model with MC dropout, medium and large patch models.
    policy : PolicyNet
        Patch router.
    patch_size : tuple of int
        (rows, columns) of a patch.
    normalization : dict
        ``{"low_percentile": p, "high_percentile": q}``: per-volume robust scaling.
    mc_passes : int
        Default number of Monte-Carlo dropout passes.
    default_lam : float
        λ that the bundle recommends (chosen on validation data).
    meta : dict
        The rest of the manifest (name, version, classes, FLOPs, training record...).
    path : Path or None
        Folder it was loaded from.
    """

    f0: UNet
    f1: UNet
    f2: UNet
    policy: PolicyNet
    patch_size: tuple[int, int] = (56, 64)
    normalization: dict = field(default_factory=lambda: {"low_percentile": 0.5, "high_percentile": 99.5})
    mc_passes: int = 5
    default_lam: float = 0.5
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def from_configs(cls, configs: dict[str, Any], *, seed: int = 0, **kwargs) -> "Bundle":
        """Fresh, randomly initialised networks (seeded) from config dataclasses."""
        torch.manual_seed(seed)
        patch_size = tuple(kwargs.pop("patch_size", configs["policy"].patch_size))
        policy_cfg = configs["policy"]
        policy_cfg.patch_size = patch_size
        return cls(
            f0=UNet(configs["f0"]),
            f1=UNet(configs["f1"]),
            f2=UNet(configs["f2"]),
            policy=PolicyNet(policy_cfg),
            patch_size=patch_size,
            **kwargs,
        )

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.name if self.path else "unsaved")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c["name"] for c in self.meta.get("classes", [])) or CLASS_NAMES

    def models(self) -> dict[str, nn.Module]:
        return {"f0": self.f0, "f1": self.f1, "f2": self.f2, "policy": self.policy}

    def segmenters(self) -> tuple[UNet, UNet, UNet]:
        return self.f0, self.f1, self.f2

    def parameter_counts(self) -> dict[str, int]:
        return {k: count_parameters(m) for k, m in self.models().items()}

    def costs(self) -> torch.Tensor:
        """The paper's cost C(f) = params(f) / Σ params(f0, f1, f2), with C(f0) = 0."""
        n = self.parameter_counts()
        total = sum(n[k] for k in MODEL_NAMES)
        return torch.tensor([0.0, n["f1"] / total, n["f2"] / total])

    def eval(self) -> "Bundle":
        for m in self.models().values():
            m.eval()
        return self

    def to(self, device: str | torch.device) -> "Bundle":
        for m in self.models().values():
            m.to(device)
        return self

    def manifest(self) -> dict:
        """The JSON manifest describing this bundle."""
        counts = self.parameter_counts()
        meta = dict(self.meta)
        meta.setdefault("name", self.name)
        meta.setdefault("version", "0.0.0")
        meta.setdefault(
            "classes", [{"index": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(CLASS_NAMES, CLASS_COLORS))]
        )
        return {
            **meta,
            "format_version": FORMAT_VERSION,
            "napari_paser_version": __version__,
            "patch_size": list(self.patch_size),
            "normalization": dict(self.normalization),
            "mc_passes": int(self.mc_passes),
            "default_lam": float(self.default_lam),
            "models": {
                **{k: {"arch": "unet", "config": getattr(self, k).config.to_dict(), "parameters": counts[k]} for k in MODEL_NAMES},
                "policy": {"arch": "policy", "config": self.policy.config.to_dict(), "parameters": counts["policy"]},
            },
            "costs": [round(float(c), 6) for c in self.costs()],
        }


def _state_dict(bundle: Bundle) -> dict[str, torch.Tensor]:
    return {f"{k}.{name}": t.detach().cpu().contiguous() for k, m in bundle.models().items() for name, t in m.state_dict().items()}


def save_bundle(bundle: Bundle, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``bundle`` to ``folder`` (manifest.json + weights.safetensors), atomically.

    Refuses to replace an existing bundle unless ``overwrite`` is true.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if (folder / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds a bundle; pass overwrite=True to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = bundle.manifest()
    # Write into temporary names in the same folder, then rename: never half a bundle.
    tmp_w = tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False)
    tmp_w.close()
    save_file(_state_dict(bundle), tmp_w.name, metadata={"format": "napari-paser", "version": str(FORMAT_VERSION)})
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as tmp_m:
        json.dump(manifest, tmp_m, indent=2)
    from ..io import FILE_MODE

    for tmp in (tmp_w.name, tmp_m.name):  # temporary files are 0600: use the user's umask
        os.chmod(tmp, FILE_MODE)
    os.replace(tmp_w.name, folder / WEIGHTS)
    os.replace(tmp_m.name, folder / MANIFEST)
    bundle.path = folder
    return folder


def _unet_config(d: dict) -> UNetConfig:
    return UNetConfig(**d)


def _policy_config(d: dict) -> PolicyConfig:
    d = dict(d)
    d["patch_size"] = tuple(d["patch_size"])
    return PolicyConfig(**d)


def load_bundle(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle folder without executing any code (JSON + safetensors).

    Raises
    ------
    BundleError
        If the folder lacks the manifest or weights, or names and shapes disagree.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a folder; a PaSeR bundle is a folder with {MANIFEST} and {WEIGHTS}")
    if not (folder / MANIFEST).is_file() or not (folder / WEIGHTS).is_file():
        raise BundleError(f"{folder} is not a PaSeR bundle: it needs {MANIFEST} and {WEIGHTS}")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        specs = manifest["models"]
        bundle = Bundle(
            f0=UNet(_unet_config(specs["f0"]["config"])),
            f1=UNet(_unet_config(specs["f1"]["config"])),
            f2=UNet(_unet_config(specs["f2"]["config"])),
            policy=PolicyNet(_policy_config(specs["policy"]["config"])),
            patch_size=tuple(manifest["patch_size"]),
            normalization=manifest.get("normalization", {"low_percentile": 0.5, "high_percentile": 99.5}),
            mc_passes=int(manifest.get("mc_passes", 5)),
            default_lam=float(manifest.get("default_lam", 0.5)),
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise BundleError(f"{folder / MANIFEST} is not a valid PaSeR manifest: {err}") from err
    known = {"format_version", "napari_paser_version", "patch_size", "normalization", "mc_passes", "default_lam", "models", "costs"}
    bundle.meta = {k: v for k, v in manifest.items() if k not in known}
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:  # not MemoryError: that is no bad file
        raise BundleError(f"{folder / WEIGHTS} is not a readable safetensors file: {err}") from err
    for key, model in bundle.models().items():
        prefix = key + "."
        state = {k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise BundleError(f"weights of {key} in {folder} do not match its manifest: {err}") from err
    bundle.path = folder
    return bundle.to(device).eval()
