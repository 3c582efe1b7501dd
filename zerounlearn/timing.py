"""Wall-clock timing kept out of the maths: `with timed(timings, "keys"): ...`.

The seconds land in a dict entry (the Patch metadata's "timings"), added to what the
entry already holds, rounded to milliseconds as the metadata has always carried them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timer:
    """Seconds between __enter__ and __exit__ (read `seconds` after the block)."""

    started: float = field(default=0.0, init=False)
    seconds: float = field(default=0.0, init=False)

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def add_seconds(timings: dict[str, float], key: str, seconds: float) -> None:
    """timings[key] += seconds, rounded to milliseconds (a missing entry counts as 0)."""
    timings[key] = round(timings.get(key, 0.0) + seconds, 3)


@contextmanager
def timed(
    timings: dict[str, float], key: str, *, excluding: Sequence[str] = ()
) -> Iterator[Timer]:
    """Add the block's seconds to timings[key], less what the entries named in
    `excluding` grew by meanwhile (phases timed on their own inside the block, so that
    the phases add up to the whole). Nothing is added when the block raises."""
    before = {name: timings.get(name, 0.0) for name in excluding}
    with Timer() as timer:
        yield timer
    inner = sum(timings.get(name, 0.0) - seconds for name, seconds in before.items())
    add_seconds(timings, key, timer.seconds - inner)
