"""Every list endpoint pages with `limit` and `cursor` and names the next page in a
`Link: <...>; rel="next"` header; jobs filter by model, status and kind; the client,
the CLI and a page of jobs read only what they must.

A real `python -m app` on a Redis database of its own over real HTTP, its store filled
through the store itself (no worker: listing needs none); the read counts in-process on
a real directory whose backend counts document reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.paging import decode_cursor, encode_cursor
from client import Client
from client.paging import next_link
from store import ArtifactStore
from tests.support import processes
from tests.support.processes import REPO, TEST_ADMIN_TOKEN
from tests.support.redis_dbs import redis_db

JOBS = 230
KINDS = ("forget", "verify", "export")
STATUSES = ("queued", "succeeded", "failed")


def fill(store: ArtifactStore, jobs: int = JOBS) -> list[dict[str, Any]]:
    """Two models and `jobs` jobs of every kind and status spread over them."""
    models = [store.create_model({"name": f"m{i}", "source": "builtin:x", "status": "ready"})
              for i in range(2)]
    docs = []
    for i in range(jobs):
        job = store.create_job({"kind": KINDS[i % 3], "model_id": models[i % 2]["id"]})
        status = STATUSES[(i // 3) % 3]
        if status != "queued":
            store.transition_job(job["id"], ["queued"], "running")
            job = store.transition_job(job["id"], ["running"], status) or job
        docs.append(job)
    for n in range(5):  # versions v0..v4 of the first model
        parent = f"v{n - 1}" if n else None
        store.publish_version(models[0]["id"], {"parent": parent, "method": "test"}, None)
    return sorted(docs, key=lambda j: (j["created_at"], j["id"]))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ArtifactStore]]:
    root = tmp_path_factory.mktemp("paging")
    data_dir, log_dir = root / "data", root / "logs"
    with redis_db("paging-api") as url:
        proc = processes.start_api(url, data_dir, log_dir, **processes.api_defaults(root))
        try:
            yield str(proc.extra["url"]), ArtifactStore(data_dir)
        finally:
            proc.stop()


@pytest.fixture(scope="module")
def jobs(api: tuple[str, ArtifactStore]) -> list[dict[str, Any]]:
    return fill(api[1])


def follow(http: httpx.Client, path: str, params: dict[str, Any] | None = None,
           field: str | None = None) -> tuple[list[Any], list[httpx.Response]]:
    """Every item of a list and the responses of its pages, following Link headers."""
    items: list[Any] = []
    responses = []
    url: str | None = path
    while url is not None:
        response = http.get(url, params=params if url == path else None)
        assert response.status_code == 200, response.text
        responses.append(response)
        body = response.json()
        items += body[field] if field else body
        url = next_link(response.headers.get("link"), str(response.url))
    return items, responses


def test_jobs_page_through_link_headers_in_order(
    api: tuple[str, ArtifactStore], jobs: list[dict[str, Any]]
) -> None:
    url, _ = api
    with httpx.Client(base_url=url, headers=processes.auth_headers()) as http:
        first = http.get("/v1/jobs")
        assert first.status_code == 200 and isinstance(first.json(), list)
        assert len(first.json()) == 100  # the default page
        link = first.headers["link"]
        assert link.startswith("</v1/jobs?") and link.endswith('>; rel="next"')
        got, pages = follow(http, "/v1/jobs", {"limit": 70})
        assert [len(p.json()) for p in pages] == [70, 70, 70, 20]
        assert "link" not in pages[-1].headers  # the last page
        assert [j["id"] for j in got] == [j["id"] for j in jobs]
        newest, _ = follow(http, "/v1/jobs", {"limit": 100, "order": "desc"})
        assert [j["id"] for j in newest] == [j["id"] for j in reversed(jobs)]


@pytest.mark.parametrize("query", [
    {"status": "failed"}, {"kind": "verify"}, {"kind": "forget", "status": "queued"},
    {"model": 0, "kind": "export"}, {"model": 1, "status": "succeeded", "kind": "forget"},
])
def test_jobs_filter_by_model_status_and_kind(
    api: tuple[str, ArtifactStore], jobs: list[dict[str, Any]], query: dict[str, Any]
) -> None:
    url, store = api
    params = {k: v for k, v in query.items() if k != "model"}
    if "model" in query:
        params["model_id"] = store.list_models()[query["model"]]["id"]
    want = [j["id"] for j in jobs
            if all(j[k] == v for k, v in params.items())]
    assert want  # the filter selects something
    with httpx.Client(base_url=url, headers=processes.auth_headers()) as http:
        got, pages = follow(http, "/v1/jobs", {**params, "limit": 7})
    assert [j["id"] for j in got] == want
    assert len(pages) == -(-len(want) // 7)
    assert all(f"{k}={v}" in pages[0].headers["link"] for k, v in params.items())


def test_every_list_endpoint_pages(api: tuple[str, ArtifactStore],
                                   jobs: list[dict[str, Any]]) -> None:
    url, store = api
    mid = store.list_models()[0]["id"]
    with httpx.Client(base_url=url, headers=processes.auth_headers()) as http:
        for _ in range(3):
            assert http.post("/v1/keys", json={"role": "viewer"}).status_code == 201
        models, pages = follow(http, "/v1/models", {"limit": 1})
        assert len(pages) == 2 and [m["id"] for m in models] == [
            m["id"] for m in store.list_models()]
        versions, pages = follow(http, f"/v1/models/{mid}/versions", {"limit": 2})
        assert [v["id"] for v in versions] == ["v0", "v1", "v2", "v3", "v4"]
        assert len(pages) == 3
        keys, pages = follow(http, "/v1/keys", {"limit": 2})
        assert len(keys) == 4 and len(pages) == 2 and len({k["id"] for k in keys}) == 4
        entries, pages = follow(http, "/v1/audit", {"limit": 2}, field="items")
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
        assert len(entries) >= 3 and pages[0].json()["next_after"] == 2
        # the old way still works: after=next_after
        assert http.get("/v1/audit", params={"after": 2, "limit": 2}).json()["items"] == \
            entries[2:4]
        assert http.post("/v1/audit/checkpoints").status_code == 201
        checkpoints, _ = follow(http, "/v1/audit/checkpoints", {"limit": 1}, field="items")
        assert len(checkpoints) == 1
        added = http.post(f"/v1/models/{mid}/retain", json=[
            {"prompt": f"Fact {i} is", "answer": f" {i}"} for i in range(5)])
        assert added.status_code == 202, added.text
        facts, pages = follow(http, f"/v1/models/{mid}/retain", {"limit": 2}, field="facts")
        assert len({f["id"] for f in facts}) == len(facts) >= 5
        assert len(pages) == -(-len(facts) // 2)
        assert all(p.json()["counts"] == pages[0].json()["counts"] for p in pages)


def test_bad_cursors_and_limits_are_422(api: tuple[str, ArtifactStore],
                                        jobs: list[dict[str, Any]]) -> None:
    url, store = api
    with httpx.Client(base_url=url, headers=processes.auth_headers()) as http:
        for cursor in ("not-a-cursor", encode_cursor([]), "eyJ9", "x" * 600):
            response = http.get("/v1/jobs", params={"cursor": cursor})
            assert response.status_code == 422, response.text
            assert set(response.json()["error"]) == {"code", "message"}
        bad = http.get("/v1/audit", params={"cursor": encode_cursor(["a"])})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"
        for limit in (0, 1001):
            assert http.get("/v1/models", params={"limit": limit}).status_code == 422
    assert decode_cursor(encode_cursor(["2026-01-01T00:00:00.000Z", "j-1"])) == [
        "2026-01-01T00:00:00.000Z", "j-1"]


def test_client_and_cli_follow_the_pages(api: tuple[str, ArtifactStore],
                                         jobs: list[dict[str, Any]]) -> None:
    url, store = api
    with Client(url, TEST_ADMIN_TOKEN) as client:
        # (jobs the other tests made, e.g. a retain measurement, come after)
        every = client.list_jobs()
        assert [j["id"] for j in every][:JOBS] == [j["id"] for j in jobs]
        assert len(client.list_jobs(limit=150)) == 150
        failed = client.list_jobs(status="failed", kind="export")
        assert failed and all(j["status"] == "failed" and j["kind"] == "export"
                              for j in failed)
        lazily = client.iter_jobs(newest_first=True)
        assert next(lazily)["id"] == every[-1]["id"]
        assert len(client.list_versions(store.list_models()[0]["id"], limit=3)) == 3
        assert len(list(client.iter_audit(limit=3))) == 3
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ZEROUNLEARN_")},
           "ZEROUNLEARN_URL": url, "ZEROUNLEARN_TOKEN": TEST_ADMIN_TOKEN}
    done = subprocess.run([sys.executable, "-m", "cli.main", "jobs", "list", "--json",
                           "--kind", "verify", "--limit", "60"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert len(listed) == 60 and {j["kind"] for j in listed} == {"verify"}


def test_next_link_stays_on_the_api() -> None:
    base = "http://127.0.0.1:8000/v1/jobs?limit=2"
    assert next_link('</v1/jobs?cursor=abc>; rel="next"', base) == \
        "http://127.0.0.1:8000/v1/jobs?cursor=abc"
    assert next_link('<https://evil.example/steal>; rel="next"', base) is None
    assert next_link('</v1/x>; rel="prev", </v1/y>; rel=next', base) == \
        "http://127.0.0.1:8000/v1/y"
    assert next_link(None, base) is None


