"""Request text under 6 characters never leaks either. The other privacy tests search
for prompts, subjects and answers of 6 characters or more (a short string turns up by
chance inside hex ids and binary data); here short answers (" Zq", " Vyk", the tiny
model's own " pilot") and a short subject ("Jx Qo") go through a forget, a verify, a
forget the worker rejects, a generate call and two requests the API rejects, on real
processes with the tiny GPT-2.

They are then searched for as whole tokens (not inside a longer run of letters,
digits or base64 characters) in everything text-shaped the service keeps or shows: the
logs, job documents, error messages, version manifests, receipts, the audit trail, the
metrics, every row of the metadata database and every text file of the data directory;
and, with their leading space or in full, as exact bytes in every file and every Redis
value, decompressed where compressed (tests/support/textsearch.py). A control marker
sent on purpose in a model name shows that each of the searches reaches its data."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from tests.support import processes
from tests.support.processes import ServiceStack
from tests.support.textsearch import files_under, payloads
from tests.support.tiny_model import tiny_facts

pytestmark = pytest.mark.timeout(600)
SUBJECT = "Jx Qo"
SHORT = {"prompt": f"The secret code of {SUBJECT} is", "subject": SUBJECT, "answer": " Zq"}
SHORT_VERIFY = {"prompt": f"{SUBJECT} lives in the city of", "subject": SUBJECT,
                "answer": " Vyk"}
KNOWN = tiny_facts()[22]  # "The profession of Felix Okafor is" -> " pilot", a fact it knows
assert KNOWN["answer"] == " pilot"
TOKENS = ("Zq", "Vyk", "Jx", "Qo", "pilot")
"""Searched as whole tokens in text."""
EXACT = (" Zq", " Vyk", SUBJECT, " pilot", SHORT["prompt"], SHORT_VERIFY["prompt"],
         KNOWN["prompt"])
"""Searched as bytes anywhere, binary data included (too long to turn up by chance)."""
CONTROL = "Kv"
"""In a model's name, which is stored, listed and logged: every search must find it."""
_NOT_A_BOUNDARY = rb"A-Za-z0-9+/=_\-"  # letters, digits, base64 and id characters


def token_pattern(token: str) -> re.Pattern[bytes]:
    """`token` not inside a longer run of letters, digits or base64/id characters."""
    bound = rb"[" + _NOT_A_BOUNDARY + rb"]"
    return re.compile(rb"(?<!" + bound + rb")" + re.escape(token.encode()) + rb"(?!" + bound
                      + rb")")


def tokens_in(data: bytes | str, tokens: tuple[str, ...] = TOKENS) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [t for t in tokens if token_pattern(t).search(raw)]


def test_the_token_search_finds_words_but_not_ids() -> None:
    assert tokens_in('{"answer": " Zq"}') == ["Zq"]
    assert tokens_in("records[0]: Jx Qo. pilot!") == ["Jx", "Qo", "pilot"]
    assert tokens_in("j-9fZq0a k-Zq1 /Zq+ab= cZq pilots Qo_1 AZqB ab+Zq/cd") == []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    with processes.service_stack(tmp_path_factory.mktemp("short-text"),
                                 db_name="promise-short-text") as s:
        yield s


def _requests(c: httpx.Client, source: Path) -> dict[str, Any]:
    """Every kind of call that carries request text; what came back of each."""
    model = processes.register_ready(c, str(source), name=f"tiny {CONTROL}")
    mid = model["id"]
    out: dict[str, Any] = {"model": model}
    known = {k: KNOWN[k] for k in ("prompt", "subject", "answer")}
    forget = c.post(f"/v1/models/{mid}/forget", json={"records": [known, SHORT]})
    assert forget.status_code == 202, forget.text
    out["forget"] = processes.wait_job(c, forget.json()["job_id"])
    version = out["forget"]["result"]["version"] if out["forget"]["status"] == "succeeded" \
        else "v0"
    verify = c.post(f"/v1/models/{mid}/versions/{version}/verify",
                    json={"records": [known, SHORT_VERIFY]})
    assert verify.status_code == 202, verify.text
    out["verify"] = processes.wait_job(c, verify.json()["job_id"])
    # too long for the tiny model's 64 positions: the worker rejects it (records[0])
    long_record = {**SHORT, "prompt": f"{SUBJECT} and " * 30 + SHORT["prompt"]}
    rejected = c.post(f"/v1/models/{mid}/forget", json={"records": [long_record]})
    assert rejected.status_code == 202, rejected.text
    out["rejected"] = processes.wait_job(c, rejected.json()["job_id"])
    assert out["rejected"]["status"] == "failed", out["rejected"]
    generated = c.post(f"/v1/models/{mid}/versions/{version}/generate",
                       json={"prompt": f"{SUBJECT} said that", "max_new_tokens": 4})
    assert generated.status_code == 200, generated.text  # the answer is the caller's
    out["invalid"] = [
        c.post(f"/v1/models/{mid}/forget",
               json={"records": [{**SHORT, "subject": "Zq Jx"}]}),  # not in the prompt
        c.post(f"/v1/models/{mid}/forget", json={"records": [{**SHORT, "note": " Zq"}]}),
    ]
    assert [r.status_code for r in out["invalid"]] == [422, 422]
    out["version"] = version
    return out


def _api_documents(c: httpx.Client, sent: dict[str, Any]) -> dict[str, str]:
    """Everything the API shows about the requests, as text, by where it came from."""
    mid = sent["model"]["id"]
    docs: dict[str, Any] = {
        "jobs": c.get("/v1/jobs", params={"limit": 500}).json(),
        "models": c.get("/v1/models").json(),
        "versions": c.get(f"/v1/models/{mid}/versions").json(),
        "audit": c.get("/v1/audit", params={"limit": 1000}).json(),
        "errors": [r.json() for r in sent["invalid"]],
    }
    for kind in ("forget", "verify", "rejected"):
        docs[f"job {kind}"] = c.get(f"/v1/jobs/{sent[kind]['id']}").json()
    for v in docs["versions"]:
        docs[f"version {v['id']}"] = c.get(f"/v1/models/{mid}/versions/{v['id']}").json()
    if sent["forget"]["status"] == "succeeded":
        docs["receipt"] = c.get(f"/v1/jobs/{sent['forget']['id']}/receipt").json()
    out = {where: json.dumps(doc, ensure_ascii=False) for where, doc in docs.items()}
    out["metrics"] = c.get("/metrics").text
    return out


def _database_rows(data_dir: Path) -> dict[str, str]:
    """Every row of the SQLite metadata database, as text, by table (none: PostgreSQL)."""
    path = data_dir / "metadata.sqlite3"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            cells = []
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - our own names
                for cell in row:
                    if isinstance(cell, bytes):
                        try:
                            cell = cell.decode("utf-8")
                        except UnicodeDecodeError:
                            continue  # binary (a hash, a wrapped key): searched as bytes below
                    cells.append(str(cell))
            out[f"table {table}"] = "\n".join(cells)
    finally:
        conn.close()
    return out


def _text_files(data_dir: Path) -> dict[str, str]:
    """The data directory's files that are text (JSON, keys, logs), and the JSON headers
    of its safetensors files (metadata a writer may fill)."""
    out: dict[str, str] = {}
    for path in files_under(data_dir):
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            size = int.from_bytes(data[:8], "little")
            out[str(path)] = data[8 : 8 + size].decode("utf-8")
            continue
        if b"\0" in data:
            continue  # binary: searched as bytes below
        try:
            out[str(path)] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return out


def _redis_values(url: str) -> dict[str, bytes]:
    conn = Redis.from_url(url)
    try:
        return {key.decode(errors="replace"): conn.dump(key) or b"" for key in conn.scan_iter()}
    finally:
        conn.close()


def test_short_request_text_is_nowhere(stack: ServiceStack, tiny_gpt2_dir: Path) -> None:
    c = stack.client
    sent = _requests(c, tiny_gpt2_dir)
    assert sent["rejected"]["error"]["message"].startswith("records[0]"), sent["rejected"]

    texts = {"logs": stack.logs(), **_api_documents(c, sent),
             **_database_rows(stack.data_dir), **_text_files(stack.data_dir)}
    found = {where: hits for where, text in texts.items() if (hits := tokens_in(text))}
    assert found == {}, found
    # the control reached each kind of place: the search looked where the text would be
    reached = {where for where, text in texts.items() if tokens_in(text, (CONTROL,))}
    sqlite = (stack.data_dir / "metadata.sqlite3").is_file()
    assert {"models", *(["table models"] if sqlite else [])} <= reached, reached

    blobs = [*((str(p), p.read_bytes()) for p in files_under(stack.data_dir)),
             *(("redis " + k, v) for k, v in _redis_values(stack.redis_url).items())]
    control = f"tiny {CONTROL}"
    exact = [(needle, where, route) for where, data in blobs
             for route, payload in payloads(data)
             for needle in (*EXACT, control) if needle.encode() in payload]
    assert [e for e in exact if e[0] != control] == [], exact
    if sqlite:  # the byte search read the database file
        assert any("metadata.sqlite3" in e[1] for e in exact), exact  # or its -wal
