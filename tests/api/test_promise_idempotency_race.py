"""README "Idempotency-Key": a retry with the same key and body gets the first job;
another body is 409 `idempotency_key_reused`; while the first request is still being
accepted a retry may get 409 `idempotency_key_in_use`. Raced for real: two API
processes (`python -m app`) on one store and Redis database, several requests with one
key sent at the same moment from threads, over several rounds. Exactly one job per key
(counted in the job list, the audit trail and the queue), every 202 names it, nothing
else but the documented 409, never a 5xx.

The model is made ready by a real worker on the tiny GPT-2, which is then stopped: the
accepted jobs stay queued, so the queue's length counts the enqueued jobs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from tests.support import processes
from tests.support.processes import ServiceStack
from tests.support.tiny_model import tiny_facts

pytestmark = pytest.mark.timeout(300)
ROUNDS = 8
SENDERS = 4
"""Requests per key and round, alternating between the two API processes."""
FORGET_QUEUE = "rq:queue:zerounlearn-cpu"
IN_USE = (409, "idempotency_key_in_use")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Iterator[
    tuple[ServiceStack, list[str], dict[str, Any]]
]:
    """The stack, the base URLs of its API and of a second API process, the ready model."""
    root = tmp_path_factory.mktemp("idem-race")
    with processes.service_stack(root, db_name="promise-idempotency-race") as s:
        model = processes.register_ready(s.client, str(tiny_gpt2_dir), name="race")
        s.worker.stop()
        second = processes.start_api(s.redis_url, s.data_dir, root / "logs-2", **s.api_env)
        try:
            yield s, [s.api.extra["url"], second.extra["url"]], model
        finally:
            second.stop()


def _body(person: int) -> dict[str, Any]:
    fact = tiny_facts()[4 * person]
    return {"records": [{"prompt": fact["prompt"], "subject": fact["subject"],
                         "answer": fact["answer"]}]}


def _race(urls: list[str], path: str, key: str, bodies: list[dict[str, Any]]) -> list[
    httpx.Response
]:
    """POST bodies[i] with Idempotency-Key `key`, all released at once from threads, to
    the API processes in turn; the answers in the order of `bodies`."""
    clients = [httpx.Client(base_url=urls[i % len(urls)], timeout=60.0,
                            headers={**processes.auth_headers(), "Idempotency-Key": key})
               for i in range(len(bodies))]
    for c in clients:  # connections open before the start: the posts leave together
        assert c.get("/healthz").status_code == 200
    start = threading.Barrier(len(bodies))
    answers: list[httpx.Response | BaseException | None] = [None] * len(bodies)

    def send(i: int) -> None:
        start.wait()
        try:
            answers[i] = clients[i].post(path, json=bodies[i])
        except BaseException as exc:  # noqa: BLE001 - reported below, with the others
            answers[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    for c in clients:
        c.close()
    assert all(isinstance(a, httpx.Response) for a in answers), answers
    return [a for a in answers if isinstance(a, httpx.Response)]


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def _forget_jobs(client: httpx.Client, model_id: str) -> list[str]:
    jobs = client.get("/v1/jobs", params={"limit": 500}).json()
    return sorted(j["id"] for j in jobs if j["kind"] == "forget" and j["model_id"] == model_id)


def _queued(redis_url: str) -> int:
    conn = Redis.from_url(redis_url)
    try:
        return int(conn.llen(FORGET_QUEUE))
    finally:
        conn.close()


def test_racing_requests_with_one_key_make_one_job(
    stack: tuple[ServiceStack, list[str], dict[str, Any]],
) -> None:
    s, urls, model = stack
    path = f"/v1/models/{model['id']}/forget"
    jobs_before = _forget_jobs(s.client, model["id"])
    queued_before = _queued(s.redis_url)
    created: list[str] = []
    for round_ in range(ROUNDS):
        answers = _race(urls, path, f"race-{round_}", [_body(round_)] * SENDERS)
        assert all(a.status_code < 500 for a in answers), [a.text for a in answers]
        accepted = [a for a in answers if a.status_code == 202]
        assert accepted, [a.text for a in answers]
        assert all(_code(a) == IN_USE for a in answers if a.status_code != 202), \
            [a.text for a in answers]
        job_ids = {a.json()["job_id"] for a in accepted}
        assert len(job_ids) == 1, job_ids  # every 202 names the one job
        created += job_ids
        # a later retry (the first request is surely accepted now) gets that job too
        retry = s.client.post(path, json=_body(round_), headers={"Idempotency-Key":
                                                                 f"race-{round_}"})
        assert retry.status_code == 202 and retry.json()["job_id"] == created[-1], retry.text
    assert len(set(created)) == ROUNDS
    assert _forget_jobs(s.client, model["id"]) == sorted([*jobs_before, *created])
    assert _queued(s.redis_url) == queued_before + ROUNDS  # each enqueued once
    audit = s.client.get("/v1/audit", params={"limit": 1000}).json()["items"]
    accepted_jobs = [e["ids"]["job"] for e in audit if e["action"] == "request.accepted"
                     and e["ids"]["job"] in created]
    assert sorted(accepted_jobs) == sorted(created)  # one acceptance each


def test_racing_requests_with_one_key_and_different_bodies(
    stack: tuple[ServiceStack, list[str], dict[str, Any]],
) -> None:
    s, urls, model = stack
    path = f"/v1/models/{model['id']}/forget"
    jobs_before = _forget_jobs(s.client, model["id"])
    for round_ in range(ROUNDS):
        key = f"race-bodies-{round_}"
        answers = _race(urls, path, key, [_body(20 + round_), _body(40 + round_)])
        codes = sorted(a.status_code for a in answers)
        assert codes == [202, 409], [a.text for a in answers]
        (refused,) = [a for a in answers if a.status_code == 409]
        assert _code(refused) == (409, "idempotency_key_reused"), refused.text
        (winner,) = [a for a in answers if a.status_code == 202]
        # the loser's body, sent again later, is still refused; the winner's gets its job
        loser_body = _body(40 + round_) if answers[0] is winner else _body(20 + round_)
        again = s.client.post(path, json=loser_body, headers={"Idempotency-Key": key})
        assert _code(again) == (409, "idempotency_key_reused"), again.text
    assert len(_forget_jobs(s.client, model["id"])) == len(jobs_before) + ROUNDS
