"""Run one function in several threads at once (each with its own database
connections), released together by a barrier: real concurrent transactions."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """work(i) for i in range(count), all started together; their results (an
    exception a thread raised is its result)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # the caller inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results
