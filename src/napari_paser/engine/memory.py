"""How much memory the machine has, and glibc's heap kept from creeping in long jobs.

:func:`physical_memory` is what the limits of the big-stack paths are fractions of.
Jobs that allocate and free the same large blocks again and again (a slab of slices,
a column of a tortuosity solve) leave glibc's heap fragmented: its dynamic mmap
threshold rises after the first large free, later blocks land in the heap, and the freed
fragments are not given back. Segmenting slabs uses both functions; tortuosity columns
only :func:`release_heap`, since TauFactor allocates fresh fields every iteration and a
fixed mmap threshold makes each of them a new mapping. Elsewhere than on glibc these do
nothing.
"""

from __future__ import annotations

__all__ = ["physical_memory", "worker_memory_limit", "bound_heap", "release_heap"]


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the OS does not say (not POSIX)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def worker_memory_limit() -> int | None:
    """Bytes this process may hold as a dask worker with a memory limit, else None."""
    import sys

    if "distributed" not in sys.modules:  # not a dask worker: do not import it
        return None
    from distributed import get_worker

    try:
        limit = get_worker().memory_manager.memory_limit
    except (ValueError, AttributeError):  # not in a worker's task, or an older distributed
        return None
    return int(limit) if limit else None


_HEAP_BOUNDED = False


def _libc():
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def bound_heap() -> None:
    """Keep freed memory from piling up in the heap over many slabs (glibc only).

    f0's MC analysis of a 1024x1024 slice allocates about 600 MB for a moment. glibc's
    dynamic mmap threshold lets such blocks land in the heap, whose fragments are not
    given back: in a measurement the peak RSS crept up by 88 MB over 12 one-slice slabs.
    A fixed 4 MiB threshold (large blocks are mapped and unmapped) plus
    :func:`release_heap` after each slab kept it within 9 MB.
    """
    global _HEAP_BOUNDED
    if _HEAP_BOUNDED:
        return
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
    _HEAP_BOUNDED = True


def release_heap() -> None:
    """Give the heap's free memory back to the system (glibc's ``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
