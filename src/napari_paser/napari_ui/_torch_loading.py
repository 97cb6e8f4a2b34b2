"""Import torch inside the viewer without freezing it.

The first run imports torch in a worker thread, but two parts of that import hold the
GIL and so stop napari's event loop:

- ``dlopen`` of ``libtorch_cpu`` (hundreds of MB, static initialisers: 0.2–0.3 s).
  A foreign call made through :mod:`ctypes` releases the GIL, so calling libc's
  ``dlopen`` directly maps the library while the GUI keeps running; the import then
  finds it already loaded.
- Full garbage collections. The import creates hundreds of thousands of objects, which
  triggers generation-2 collections over the whole heap (napari + torch: 0.1–0.25 s each,
  during the import and again later, e.g. while the result layers are built). The
  collector is paused during the import and the heap is then frozen
  (:func:`gc.freeze`), so later collections scan only objects made afterwards.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["preload_torch_native", "import_torch_quietly", "worker_threads"]

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


def import_torch_quietly(*modules: str) -> None:
    """Import torch (and ``modules``, e.g. the engine) without stalling the GUI thread.

    Only the first call does anything special; later ones are plain imports.
    """
    if "torch" in sys.modules:
        for name in modules:
            importlib.import_module(name)
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        preload_torch_native()
        importlib.import_module("torch")
        for name in modules:
            importlib.import_module(name)
    finally:
        gc.freeze()  # what exists now lives as long as the session: stop rescanning it
        if enabled:
            gc.enable()


def worker_threads(cpu_count: int | None = None) -> int:
    """Compute threads for a run inside the viewer: all cores but one, which the GUI keeps.

    With every core busy in torch kernels the event loop waits for a time slice and the
    viewer stutters; one free core keeps it smooth at a cost of 1/cores of the speed.
    """
    cores = cpu_count or os.cpu_count() or 1
    return max(1, cores - 1)
