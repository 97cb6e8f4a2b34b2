"""Run a step generator to its end.

The long jobs of the engine and the training package (segmentation, tortuosity,
fine-tuning) are generators: they yield progress as they go and return their result,
so that napari can run them on a worker thread and a script can run them inline.
"""

from __future__ import annotations

from typing import Any, Callable, Generator

__all__ = ["run_steps"]


def run_steps(steps: Generator, on_step: Callable[[Any], None] | None = None) -> Any:
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
