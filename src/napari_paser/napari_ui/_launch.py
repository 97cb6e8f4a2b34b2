"""Running a panel's job generator: in a napari thread worker, or here and now.

Every panel runs its work as a generator (see :mod:`._jobs`, :mod:`._metrics_jobs`,
:mod:`._finetune_controller`) with the same four callbacks: a message was yielded, the
job returned, it raised, it finished. :func:`job_worker` wires them to a worker;
:func:`run_here` calls them the same way on this thread (tests and scripts), so both
paths behave alike. A worker that stops early (Cancel) leaves its generator suspended:
:func:`job_worker` closes it once the worker has finished, so the job's own clean-up runs
(an export deletes its temporary files, a TauFactor solve is let go).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator

if TYPE_CHECKING:
    from napari.qt.threading import GeneratorWorker

__all__ = ["JobCallbacks", "job_worker", "run_here"]


@dataclass
class JobCallbacks:
    """What a panel does when its job yields, returns, raises, is aborted and finishes."""

    message: Callable[[Any], None]
    returned: Callable[[Any], None]
    errored: Callable[[Exception], None]
    finished: Callable[[], None]
    aborted: Callable[[], None] | None = None


def job_worker(job: Callable[..., Generator[Any, None, Any]], args: tuple, callbacks: JobCallbacks, owner: Any) -> GeneratorWorker:
    """A napari thread worker for ``job(*args)`` wired to ``callbacks``, not started yet
    (keep a reference to it first, then ``start()`` it).

    ``owner`` is the panel (a QWidget) the callbacks update. If it is destroyed first (the
    user closed the panel or the viewer), the worker is told to quit and its signals no
    longer reach the callbacks, which would touch deleted widgets.
    """
    from napari.qt.threading import create_worker

    steps = job(*args)
    worker = create_worker(_relay, steps, _start_thread=False, _ignore_errors=True)
    wiring = [(worker.yielded, callbacks.message), (worker.returned, callbacks.returned),
              (worker.errored, callbacks.errored), (worker.finished, callbacks.finished)]
    if callbacks.aborted is not None:
        wiring.append((worker.aborted, callbacks.aborted))
    for signal, slot in wiring:
        signal.connect(slot)

    def orphan(*_: Any) -> None:
        for signal, slot in wiring:
            signal.disconnect(slot)
        worker.quit()

    def release() -> None:  # one connection per job would pile up on a long-lived panel
        try:
            owner.destroyed.disconnect(orphan)
        except (RuntimeError, TypeError):  # the owner is gone, or orphan already ran
            pass

    owner.destroyed.connect(orphan)
    worker.finished.connect(release)
    worker.finished.connect(steps.close)  # runs the job's clean-up if it stopped early; no-op once it ended
    return worker


def _relay(steps: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """``steps`` as a generator function's generator, which is what a napari worker runs."""
    return (yield from steps)


def run_here(generator: Generator[Any, None, Any], callbacks: JobCallbacks) -> Any:
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
