"""Run a step generator to its end.

The long jobs of the engine and the training package (segmentation, tortuosity,
fine-tuning) are generators: they yield progress as they go and return their result,
so that napari can run them on a worker thread and a script can run them inline.
"""

from __future__ import annotations

from typing import Any, Callable, Generator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["run_steps", "relay_steps"]


def run_steps(steps: Generator[Any, Any, R], on_step: Callable[[Any], None] | None = None) -> R:
    """Exhaust ``steps``, calling ``on_step`` with every item it yields.

    Returns
    -------
    The generator's return value.
    """
    while True:
        try:
            item = next(steps)
        except StopIteration as end:
            return end.value
        if on_step is not None:
            on_step(item)


def relay_steps(steps: Generator[Any, Any, R], message: Callable[[Any], T]) -> Generator[T, None, R]:
    """Yield ``message(item)`` for every item ``steps`` yields; return its return value.

    For a job made of smaller jobs: each part's progress is passed on in the job's own
    terms. ``steps`` is closed when the caller stops early (a cancelled napari worker), so
    that a part such as a TauFactor solve stops at once.
    """
    try:
        while True:
            try:
                item = next(steps)
            except StopIteration as end:
                return end.value
            yield message(item)
    finally:
        steps.close()
