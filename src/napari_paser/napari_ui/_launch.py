"""Running a panel's job generator: in a napari thread worker, or here and now.

Every panel runs its work as a generator (see :mod:`._jobs`, :mod:`._metrics_jobs`,
:mod:`._finetune_controller`) with the same four callbacks: a message was yielded, the
job returned, it raised, it finished. :func:`job_worker` wires them to a worker;
:func:`run_here` calls them the same way on this thread (tests and scripts), so both
paths behave alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator

__all__ = ["JobCallbacks", "job_worker", "run_here"]


@dataclass
class JobCallbacks:
    """What a panel does when its job yields, returns, raises, is aborted and finishes."""

    message: Callable[[Any], None]
    returned: Callable[[Any], None]
    errored: Callable[[Exception], None]
    finished: Callable[[], None]
    aborted: Callable[[], None] | None = None


def job_worker(job: Callable[..., Generator], args: tuple, callbacks: JobCallbacks) -> Any:
    """A napari thread worker for ``job(*args)`` wired to ``callbacks``, not started yet
    (keep a reference to it first, then ``start()`` it)."""
    from napari.qt.threading import create_worker

    worker = create_worker(job, *args, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(callbacks.message)
    worker.returned.connect(callbacks.returned)
    worker.errored.connect(callbacks.errored)
    if callbacks.aborted is not None:
        worker.aborted.connect(callbacks.aborted)
    worker.finished.connect(callbacks.finished)
    return worker


def run_here(generator: Generator, callbacks: JobCallbacks) -> Any:
    """Drive ``generator`` to its end on this thread with the worker's callbacks; returns
    its return value (None if it raised: the error went to ``callbacks.errored``)."""
    outcome = None
    try:
        while True:
            callbacks.message(next(generator))
    except StopIteration as stop:
        outcome = stop.value
        callbacks.returned(outcome)
    except Exception as err:  # every failure becomes a notification, as in the worker
        callbacks.errored(err)
    finally:
        callbacks.finished()
    return outcome
