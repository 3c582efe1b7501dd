"""exclusive(name): one holder at a time over every process using the database, taken
without waiting, released at the end of the block and when the holder dies (the
reconciler's one-pass-at-a-time lock; it replaced the object-store lease)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from store.sql import SqlMetadata
from store.sql.locks import exclusive

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from store.sql.engine import Database
from store.sql.locks import exclusive
with exclusive(Database(sys.argv[1]), "reconciler") as mine:
    print("held" if mine else "busy", flush=True)
    time.sleep(60)
"""


def test_one_holder_at_a_time(meta: SqlMetadata, db_url: str) -> None:
    other = SqlMetadata(db_url, meta.requests.data_keys)
    try:
        with exclusive(meta.db, "reconciler") as mine:
            assert mine is True
            with exclusive(other.db, "reconciler") as theirs:
                assert theirs is False
            with exclusive(other.db, "another") as theirs:  # names are independent
                assert theirs is True
        with exclusive(other.db, "reconciler") as theirs:  # released: free again
            assert theirs is True
    finally:
        other.close()


def test_a_dead_holder_releases_it(meta: SqlMetadata, db_url: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db_url], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with exclusive(meta.db, "reconciler") as mine:
            assert mine is False
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: no lease to expire
        holder.wait(timeout=30)
        deadline = time.monotonic() + 30
        while True:
            with exclusive(meta.db, "reconciler") as mine:
                if mine:
                    break
            assert time.monotonic() < deadline, "the dead holder's lock was never freed"
            time.sleep(0.1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
