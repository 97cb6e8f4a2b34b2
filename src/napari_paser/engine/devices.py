"""Which torch device a job runs on: one rule for the command line, the panels and TauFactor.

A GPU is used when there is one (``auto``); a device the machine lacks is a one-line
:class:`~napari_paser.errors.PaserInputError` before any work starts, not a CUDA
traceback half-way through a stack.
"""

from __future__ import annotations

from ..errors import PaserInputError

__all__ = ["AUTO", "default_device", "resolve_device"]

AUTO = "auto"
"""The device argument that means :func:`default_device`."""


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA device, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None) -> str:
    """The torch device ``name`` names, checked against this machine.

    Parameters
    ----------
    name : str or None
        ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` / None for :func:`default_device`.

    Returns
    -------
    str
        The device, as torch writes it (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Raises
    ------
    PaserInputError
        An unknown device, or a CUDA device this machine does not have.
    """
    import torch

    if name is None or name == AUTO:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise PaserInputError(f"unknown device {name!r} ({err}); use cpu, cuda, cuda:N or {AUTO}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PaserInputError(f"device {name}: no CUDA device is available here (torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PaserInputError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise PaserInputError(f"device {name}: napari-paser runs on cpu or cuda")
    return str(device)
