"""The training report: ``training_report.json``, ``loss_curves.png``, ``patch_fractions.png``."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_report", "plot_losses", "plot_fractions"]


def plot_losses(histories: dict[str, dict], path: Path) -> Path:
    """One panel per stage with its loss curve(s) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s, h in histories.items() if h and h.get("step")]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(3.6 * max(1, len(stages)), 3.0), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        h = histories[stage]
        curves = [k for k, v in h.items() if k not in ("step", "acc", "f1", "f2", "reward") and isinstance(v, list) and len(v) == len(h["step"])]
        for key in curves[:3]:
            ax.plot(h["step"], h[key], label=key)
        if h.get("holdout_error"):  # (step, error) pairs of the policy's early stopping
            steps, errors = zip(*h["holdout_error"])
            ax.plot(steps, errors, label="held-out error")
            ax.axvline(h["best_step"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_fractions(validation: dict, path: Path) -> Path:
    """Patch fraction per model and IoU/GFLOP ratios to f2 across λ (validation split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = validation["curve"]
    lam = [r["lam"] for r in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.0))
    for i, name in enumerate(("f0", "f1", "f2")):
        a.plot(lam, [r["fractions"][i] for r in curve], label=name)
    a.axvline(validation["default_lam"], color="k", ls=":", lw=1)
    a.set_xlabel("λ")
    a.set_ylabel("patch fraction")
    a.legend(fontsize=7)
    b.plot(lam, [r["iou_ratio"] for r in curve], label="IoU / f2")
    b.plot(lam, [r["flops_ratio"] for r in curve], label="GFLOPs / f2")
    b.axvline(validation["default_lam"], color="k", ls=":", lw=1)
    b.set_xlabel("λ")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(out: Path, report: dict) -> Path:
    """Write the JSON report and its figures into ``out``; returns the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"loss_curves": plot_losses(report.get("history", {}), out / "loss_curves.png").name}
    if report.get("validation"):
        figures["patch_fractions"] = plot_fractions(report["validation"], out / "patch_fractions.png").name
    report = {**report, "figures": figures}
    path = out / "training_report.json"
    path.write_text(json.dumps(report, indent=1))
    return path
