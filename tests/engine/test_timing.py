"""zerounlearn.timing: phases add their seconds to a dict entry; an enclosing phase can
leave out what inner phases timed on their own (the layer loop's "solve")."""

from __future__ import annotations

import time

import pytest

from zerounlearn.timing import Timer, add_seconds, timed


def test_timed_adds_to_the_entry_and_rounds_to_milliseconds() -> None:
    timings: dict[str, float] = {"keys": 1.0}
    with timed(timings, "keys") as lap:
        time.sleep(0.02)
    assert lap.seconds >= 0.02
    assert timings["keys"] == round(1.0 + lap.seconds, 3)
    add_seconds(timings, "verify", 0.12345)
    assert timings["verify"] == 0.123


def test_excluding_leaves_out_the_inner_phases() -> None:
    timings: dict[str, float] = {}
    with timed(timings, "solve", excluding=("keys",)) as outer:
        with timed(timings, "keys"):
            time.sleep(0.05)
        time.sleep(0.01)
    assert timings["keys"] >= 0.05
    # solve is the rest: at least the outer sleep, and the phases add up to the whole (each
    # entry is rounded to milliseconds; no upper bound on wall time: machines are loaded)
    assert timings["solve"] >= 0.009
    assert abs(timings["solve"] + timings["keys"] - outer.seconds) < 0.002


def test_nothing_is_added_when_the_block_raises() -> None:
    timings: dict[str, float] = {}
    with pytest.raises(ValueError), timed(timings, "targets"):
        raise ValueError("boom")
    assert timings == {}


def test_timer_measures_its_block() -> None:
    with Timer() as timer:
        time.sleep(0.01)
    assert timer.seconds >= 0.01
