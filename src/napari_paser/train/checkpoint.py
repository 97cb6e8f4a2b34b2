"""Checkpoints of a training run, so that rerunning the same command resumes it.

Layout of ``OUT/checkpoints/``:

- ``state.json``: the run's configuration, split, finished stages, their minutes and
  loss histories (JSON, human readable);
- ``models.pt``: the state dicts of f0, f1, f2 and the policy after the last finished
  stage;
- ``partial-<stage>.pt``: progress inside a long stage (step, model, optimiser and
  RNG states), removed when the stage finishes;
- ``rewards-rl.pt``: the policy stage's reward caches (features and confusions of the
  frozen f0, f1 and f2), kept so a repeated policy stage does not rerun the networks.

Files are written to a temporary name and renamed, so an interrupted write never
leaves a corrupt checkpoint. Loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import PaserInputError

__all__ = ["Checkpointer"]


def _atomic_write(path: Path, write) -> None:
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False)
    tmp.close()
    try:
        write(tmp.name)
        os.replace(tmp.name, path)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


class Checkpointer:
    """Saves and restores the state of one run in ``folder``.

    Parameters
    ----------
    folder : path
        ``OUT/checkpoints``; created if needed.
    signature : dict
        What must match for a resume (preset, seed, data): a rerun with other settings
        is refused instead of silently mixing two runs.
    """

    def __init__(self, folder: str | os.PathLike, signature: dict[str, Any]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.signature = json.loads(json.dumps(signature))
        self.state: dict[str, Any] = {"signature": self.signature, "done": [], "minutes": {}, "history": {}, "extra": {}}
        # Seconds that interrupted earlier runs spent in a stage this run resumed (added to its minutes).
        self.resumed_seconds: dict[str, float] = {}
        path = self.folder / "state.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("signature") != self.signature:
                raise PaserInputError(
                    f"{self.folder} holds checkpoints of a different run (other data, preset or seed); "
                    "use a new --out folder or delete that one"
                )
            self.state = saved

    # ------------------------------------------------------------------ stages
    @property
    def done(self) -> list[str]:
        return list(self.state["done"])

    def is_done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def _write_state(self) -> None:
        text = json.dumps(self.state, indent=1)
        _atomic_write(self.folder / "state.json", lambda name: Path(name).write_text(text))

    def save_stage(self, stage: str, models: dict[str, torch.nn.Module], minutes: float, history: dict | None = None, **extra) -> None:
        """Record a finished stage with the weights of every network."""
        states = {k: m.state_dict() for k, m in models.items()}
        _atomic_write(self.folder / "models.pt", lambda name: torch.save(states, name))
        if stage not in self.state["done"]:
            self.state["done"].append(stage)
        self.state["minutes"][stage] = round(float(minutes), 3)
        if history is not None:
            self.state["history"][stage] = history
        self.state["extra"].update(extra)
        self._write_state()
        partial = self.folder / f"partial-{stage}.pt"
        if partial.exists():
            partial.unlink()

    def load_models(self, models: dict[str, torch.nn.Module]) -> bool:
        """Restore the weights after the last finished stage (False if none yet)."""
        path = self.folder / "models.pt"
        if not path.is_file():
            return False
        states = torch.load(path, weights_only=True, map_location="cpu")
        for k, m in models.items():
            m.load_state_dict(states[k])
        return True

    # ------------------------------------------------------------------ inside a stage
    def save_partial(self, stage: str, payload: dict[str, Any]) -> None:
        """Progress inside ``stage`` (any mix of tensors, state dicts and numbers)."""
        self.save_tensors(f"partial-{stage}.pt", payload)

    def save_tensors(self, name: str, payload: Any) -> None:
        """Any mix of tensors, lists and numbers as ``folder / name`` (written atomically)."""
        _atomic_write(self.folder / name, lambda path: torch.save(payload, path))

    def load_partial(self, stage: str) -> dict[str, Any] | None:
        path = self.folder / f"partial-{stage}.pt"
        if not path.is_file():
            return None
        return torch.load(path, weights_only=True, map_location="cpu")

    @property
    def extra(self) -> dict[str, Any]:
        return self.state["extra"]
