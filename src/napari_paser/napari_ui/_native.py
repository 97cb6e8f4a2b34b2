"""Load torch's native library without freezing the viewer.

``import torch`` first maps ``libtorch_cpu`` (hundreds of MB) and runs its static
initialisers inside ``dlopen``, which Python calls while holding the GIL: the event loop
stops for 0.2–0.3 s even though the import runs in a worker thread. A foreign call made
through :mod:`ctypes` releases the GIL, so calling libc's ``dlopen`` directly loads the
library while the GUI thread keeps running; the import then finds it already mapped.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["preload_torch_native", "worker_threads"]

_RTLD_NOW, _RTLD_GLOBAL = 0x2, 0x100  # <dlfcn.h> on Linux
_handles: list[int] = []


def preload_torch_native() -> bool:
    """Map torch's CPU library with the GIL released (Linux; elsewhere a no-op).

    Returns whether the library is now loaded by this call. Call from a worker thread
    before the first ``import torch``; harmless once torch is imported.
    """
    if not sys.platform.startswith("linux") or "torch" in sys.modules or _handles:
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    library = Path(spec.origin).parent / "lib" / "libtorch_cpu.so"
    if not library.is_file():
        return False
    try:
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
    except (OSError, AttributeError):
        return False
    dlopen.argtypes, dlopen.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_void_p
    handle = dlopen(os.fsencode(library), _RTLD_NOW | _RTLD_GLOBAL)
    if not handle:
        return False
    _handles.append(handle)  # never closed: torch keeps using the mapping
    return True


def worker_threads(cpu_count: int | None = None) -> int:
    """Compute threads for a run inside the viewer: all cores but one, which the GUI keeps.

    With every core busy in torch kernels the event loop waits for a time slice and the
    viewer stutters; one free core keeps it smooth at a cost of 1/cores of the speed.
    """
    cores = cpu_count or os.cpu_count() or 1
    return max(1, cores - 1)
