"""engine.steps: running and relaying the step generators of long jobs."""

from __future__ import annotations

from napari_paser.engine.steps import relay_steps, run_steps


def counting(n: int, closed: list[str]):
    """Yields 0..n-1 and returns "done"; notes in ``closed`` when it is closed early."""
    try:
        for i in range(n):
            yield i
    except GeneratorExit:
        closed.append("closed")
        raise
    return "done"


def test_run_steps_returns_the_value_and_passes_every_item():
    seen: list[int] = []
    assert run_steps(counting(3, []), seen.append) == "done"
    assert seen == [0, 1, 2]
    assert run_steps(counting(2, [])) == "done"


def test_relay_steps_maps_items_and_hands_on_the_return_value():
    def job():
        result = yield from relay_steps(counting(3, []), lambda i: f"step {i}")
        return result.upper()

    seen: list[str] = []
    assert run_steps(job(), seen.append) == "DONE"
    assert seen == ["step 0", "step 1", "step 2"]


def test_relay_steps_closes_the_part_when_the_caller_stops_early():
    closed: list[str] = []
    part = counting(5, closed)  # still referenced here, so only an explicit close ends it
    job = relay_steps(part, str)
    assert next(job) == "0"
    job.close()  # what a cancelled napari worker does
    assert closed == ["closed"]
