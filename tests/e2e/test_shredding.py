"""Request text is shredded, not just deleted: `python -m app.local_stack` (API, a real
worker, the embedded Valkey with its append-only file) on the tiny GPT-2.

Run 1 (retention one hour): a verify and a forget request and a generate call, each
with a marker text of its own. The text opens with its data key, yet no file of the
data directory (store, Valkey persistence, Valkey log) and no log holds it in the
clear, raw or inside zlib/gzip/LZF payloads; the scanner is shown to reach those (the
generate job's arguments, control values). The embedded Valkey is owner-only and needs
its password. Run 2 (retention 0) on the same data directory: the reconciler purges the
requests at start-up, which destroys their data keys; after an AOF rewrite and a SAVE
nothing holds the markers, and a copy of a request taken before the purge (a backup)
no longer opens.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError

from store import ArtifactStore
from tests.support import processes
from tests.support.textsearch import files_under, find_text
from tests.support.tiny_model import tiny_facts

pytestmark = pytest.mark.timeout(600)
RUN = secrets.token_hex(4)
MARKERS = {
    "forget": f"Quintus Vellacott {RUN}f",
    "verify": f"Ottilie Brandauer {RUN}v",
    "generate": f"Marguerite Okonkwo {RUN}g",
}
ZLIB_CONTROL = f"zlib-control-{RUN}"
LZF_UNIT = f"lzf-control-{RUN}|"
"""Control values written into Valkey: found only by decompressing (zlib; RDB's LZF)."""
ALL_OWNER_ONLY = 0o077


def _record(fact: dict[str, str], marker: str) -> dict[str, Any]:
    return {"prompt": fact["prompt"], "subject": fact["subject"], "answer": fact["answer"],
            "paraphrases": [f"{marker} told this about {fact['subject']}:"]}


def _start(root: Path, demo: Path, retention_s: int) -> tuple[processes.ServiceProcess, str]:
    port = processes.free_port()
    env = processes.service_env(
        None, root / "data", **processes.api_defaults(root), ZEROUNLEARN_DEMO_MODEL=str(demo),
        ZEROUNLEARN_REQUEST_RETENTION_S=str(retention_s),
    )
    proc = processes.spawn("local-stack", ["-m", "app.local_stack", "--port", str(port)], env,
                           root / "logs")
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_http_ok(f"{url}/readyz", proc, timeout=120)
    except BaseException:
        proc.stop(kill=True)
        raise
    return proc, url


def _stop(proc: processes.ServiceProcess) -> None:
    proc.signal(signal.SIGTERM)
    try:
        assert proc.popen.wait(timeout=60) == 0, proc.log_tail()
    finally:
        proc.stop(kill=True)


def _valkey(root: Path, proc: processes.ServiceProcess, db: int = 0) -> Redis:
    """A client of the stack's Valkey: the port from its log line, the password from
    the owner-only secret file."""
    ports = re.findall(r"embedded Valkey at redis://zerounlearn:\*\*\*@127\.0\.0\.1:(\d+)",
                       proc.log_path.read_text())
    assert ports, proc.log_tail()
    secret = root / "data" / "secrets" / "valkey-password.key"
    password = secret.read_text().strip()
    return Redis(port=int(ports[-1]), username="zerounlearn", password=password, db=db)


def _persist(conn: Redis) -> None:
    """Rewrite the append-only file and SAVE an RDB snapshot; wait until both are done."""
    conn.bgrewriteaof()
    processes.wait_until(
        lambda: conn.info("persistence")["aof_rewrite_in_progress"] == 0
        and conn.info("persistence")["aof_rewrite_scheduled"] == 0, 60, 0.2, "AOF rewrite")
    conn.save()


def _check_owner_only(root: Path) -> None:
    redis_dir = root / "data" / "redis"
    paths = [redis_dir, *redis_dir.rglob("*"), root / "data" / "secrets" / "valkey-password.key"]
    loose = [(str(p), oct(p.stat().st_mode)) for p in paths
             if p.stat().st_mode & ALL_OWNER_ONLY]
    assert not loose, loose
    assert (redis_dir / "appendonlydir").is_dir()


def test_request_text_is_unreadable_after_the_purge(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    data_dir = tmp_path / "data"
    people = tiny_facts()[::4]
    proc, url = _start(tmp_path, tiny_gpt2_dir, retention_s=3600)
    try:
        c = httpx.Client(base_url=url, timeout=60.0, headers=processes.auth_headers())
        processes.wait_until(lambda: bool(c.get("/v1/models").json()), 60, 0.5, "demo model")
        (model,) = c.get("/v1/models").json()
        mid = model["id"]
        assert processes.wait_model_ready(c, mid)["status"] == "ready"
        verify = c.post(f"/v1/models/{mid}/versions/v0/verify",
                        json={"records": [_record(people[3], MARKERS["verify"])]})
        assert verify.status_code == 202, verify.text
        forget = c.post(f"/v1/models/{mid}/forget",
                        json={"records": [_record(people[0], MARKERS["forget"]),
                                          _record(people[1], MARKERS["forget"])]})
        assert forget.status_code == 202, forget.text
        jobs = {kind: processes.wait_job(c, r.json()["job_id"])
                for kind, r in (("verify", verify), ("forget", forget))}
        assert [j["status"] for j in jobs.values()] == ["succeeded"] * 2, jobs
        active = c.get(f"/v1/models/{mid}").json()["active_version"]
        answer = c.post(f"/v1/models/{mid}/versions/{active}/generate",
                        json={"prompt": f"{MARKERS['generate']} said that", "max_new_tokens": 8})
        assert answer.status_code == 200 and isinstance(answer.json()["text"], str), answer.text

        # the Valkey is owner-only and refuses a client without its password
        _check_owner_only(tmp_path)
        valkey = _valkey(tmp_path, proc)
        port = valkey.connection_pool.connection_kwargs["port"]
        with pytest.raises(NoPermissionError):
            Redis(port=port).set("anonymous", "write")
        with pytest.raises(AuthenticationError):
            Redis(port=port, username="zerounlearn", password="not-the-password").ping()
        control = _valkey(tmp_path, proc, db=1)  # values only the decompressing scan finds
        control.hset("zu-control", "data", zlib.compress(f"[{ZLIB_CONTROL}]".encode() * 3))
        control.set("zu-control-lzf", LZF_UNIT * 40)
        time.sleep(1.5)  # appendfsync everysec

        # before the purge: the text is there, sealed: it opens with its data key ...
        store = ArtifactStore(data_dir)
        assert MARKERS["forget"] in json.dumps(store.requests.task_text(jobs["forget"]["id"], 2))
        assert MARKERS["verify"] in json.dumps(store.requests.task_text(jobs["verify"]["id"], 2))
        backup = {kind: store.requests.get(job["id"]) for kind, job in jobs.items()}
        # close the database before reading its files: a plain open and close of the
        # SQLite files would drop this process's POSIX locks on them, and its open
        # connection could then read a -shm file another process deleted (stale reads)
        store.close()
        # ... and nowhere in the clear, though the scan reaches the generate job's
        # arguments in the append-only file (zlib inside) and the control value
        everything = files_under(data_dir, tmp_path / "logs")
        found = find_text(everything, [*MARKERS.values(), ZLIB_CONTROL, "worker.tasks.generate"])
        assert not [f for f in found if f[0] in MARKERS.values()], found
        assert any(f[0] == ZLIB_CONTROL and "zlib" in f[2] for f in found), found
        assert any(f[0] == "worker.tasks.generate" and "appendonlydir" in f[1]
                   and "zlib" in f[2] for f in found), found
    except BaseException:
        proc.stop(kill=True)
        raise
    _stop(proc)

    # run 2, retention 0: the reconciler purges at start-up, destroying the data keys
    proc, url = _start(tmp_path, tiny_gpt2_dir, retention_s=0)
    try:
        store = ArtifactStore(data_dir)
        processes.wait_until(
            lambda: all(store.requests.get(j["id"])["task_args"] is None for j in jobs.values())
            and not store.data_keys.names(), 30, 0.2, "requests purged")
        valkey = _valkey(tmp_path, proc)
        _persist(valkey)
        with httpx.Client(base_url=url, headers=processes.auth_headers()) as c:
            entries = c.get("/v1/audit", params={"limit": 1000}).json()["items"]
        purged = {e["ids"]["job"] for e in entries if e["action"] == "request.purged"}
        assert {j["id"] for j in jobs.values()} <= purged
    except BaseException:
        proc.stop(kill=True)
        raise
    _stop(proc)

    _check_owner_only(tmp_path)
    for kind, doc in backup.items():  # a copy from before the purge no longer opens
        assert doc["task_args"] is not None and store.requests.open_args(doc) is None, kind
    store.close()  # before reading the database's files (see above)
    everything = files_under(data_dir, tmp_path / "logs")
    found = find_text(everything, [*MARKERS.values(), LZF_UNIT * 2])
    assert not [f for f in found if f[0] in MARKERS.values()], found
    assert any(f[0] == LZF_UNIT * 2 and "lzf" in f[2] and f[1].endswith(".rdb")
               for f in found), found  # the scan opened the RDB files' LZF strings
