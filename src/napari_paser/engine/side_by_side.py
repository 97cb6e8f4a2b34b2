"""Independent pieces of a segmenter's work run side by side, one torch thread each.

f0's analysis of a 224 × 256 slice and a batch of 32 patch windows are small tensors:
torch's intra-op threads split each convolution and each elementwise step across the
cores, and on such tensors the splitting costs much of what it gains. So a segmenter
with several slices to analyse, or several batches of patches to run, runs as many at
once as torch has threads, each with ``threads // workers`` of them. Each piece is
computed as it would be alone with that many threads: on both test sets the labels are
those of one thread (the benchmark below checks it). Pieces over :data:`MAX_PIXELS` pixels (large slices) keep torch's intra-op
threads instead: their tensors split well, and pieces side by side would multiply the
memory they hold.

On the 2-core Intel Xeon (``benchmarks/bench_side_by_side.py``, two runs of 5 and 7
rotated rounds on both test sets) this sped f0's analysis up over one thread by
1.49-1.62 × where one piece at a time with both threads gave 1.28-1.60 ×, f1 by
1.43-1.82 × (1.44-1.76 ×) and f2 by 1.59-1.82 × (1.56-1.82 ×): a gain for the analysis
in 3 of the 4 comparisons, level or a gain for f2, mixed for f1, on a machine whose
shared cores move such numbers by 10 % from run to run.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generator, Iterable, Iterator, TypeVar

import numpy as np
import torch

__all__ = ["MAX_PIXELS", "workers_for", "ordered_map", "one_torch_thread", "share_wall"]

MAX_PIXELS = 1 << 20
"""Pixels of one piece of work (a slice's planes, a batch's windows) above which pieces
run one at a time with every thread."""

T = TypeVar("T")
R = TypeVar("R")


def workers_for(pieces: int, pixels: int, device: torch.device) -> int:
    """How many of ``pieces`` pieces of ``pixels`` pixels each to run at once.

    Parameters
    ----------
    pieces : int
        Pieces of work waiting (slices, batches).
    pixels : int
        Input pixels of one piece (planes and windows included).
    device : torch.device
        Where the networks run; only a CPU runs pieces side by side.

    Returns
    -------
    int
        1 to run them one at a time with torch's threads, else at most
        ``torch.get_num_threads()``.
    """
    if device.type != "cpu" or pieces < 2 or pixels > MAX_PIXELS:
        return 1
    return max(1, min(torch.get_num_threads(), pieces))


def ordered_map(compute: Callable[[T], R], inputs: Iterable[T], workers: int) -> Generator[R, None, None]:
    """``compute(x)`` for every ``x`` of ``inputs``, in order, up to ``workers`` at once.

    ``inputs`` is read on the calling thread, at most ``2 * workers`` ahead of the
    results, so that work done there (reading planes, caches that are not thread-safe)
    stays on one thread and the inputs held at once stay few. ``compute`` runs on worker
    threads with ``threads // workers`` torch threads each (``threads`` as
    :func:`torch.get_num_threads` gives it on the calling thread), and must touch no
    state that another call changes. With one worker everything runs on the calling
    thread, as a plain loop would.

    Leaving the loop early (``break``, an exception, closing the generator) cancels
    what has not started, waits for what has, and gives the calling thread its torch
    threads back.
    """
    if workers <= 1:
        for x in inputs:
            yield compute(x)
        return
    threads = torch.get_num_threads()
    # torch.set_num_threads sets the calling thread's OpenMP threads and the default of
    # threads that start later: each worker sets its own, the caller's are restored last.
    pool = ThreadPoolExecutor(workers, thread_name_prefix="paser", initializer=torch.set_num_threads,
                              initargs=(max(1, threads // workers),))
    pending: deque[Future[R]] = deque()
    source = iter(inputs)
    try:
        for x in itertools.islice(source, 2 * workers):
            pending.append(pool.submit(compute, x))
        while pending:
            result = pending.popleft().result()
            for x in itertools.islice(source, 1):
                pending.append(pool.submit(compute, x))
            yield result
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
        torch.set_num_threads(threads)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch thread on the calling thread, then give the rest back.

    For small computations whose result must not depend on whether they ran on a worker
    (one thread) or on the calling thread (all of them): oneDNN picks a convolution's
    kernel by the thread count, and on an AMD EPYC the policy's last 1 × 1 convolution
    then differed in the last bit of a gain. On such tensors one thread is also faster.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def share_wall(wall: float, *seconds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pieces' own seconds, scaled so that together they are ``wall``.

    Pieces that ran side by side each measured their own seconds, which overlap; what
    they cost together is the wall time they took. Each keeps its share of it.
    """
    total = sum(float(s.sum()) for s in seconds)
    scale = wall / total if total > 0 else 0.0
    return tuple(s * scale for s in seconds)
