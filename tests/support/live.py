"""A running service with the tiny GPT-2 registered and ready, for client, CLI, metrics
and browser tests: real Redis (a database leased by name), `python -m app`, `python -m worker`.

Each test package that needs one starts it once per session (`live_service`), on a
Redis database leased to it (tests/support/redis_dbs.py) so packages never share queues.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import Client
from tests.support import processes
from tests.support.processes import TEST_ADMIN_TOKEN, ServiceStack
from tests.support.tiny_model import tiny_facts


@dataclass
class LiveService:
    stack: ServiceStack
    model: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.stack.api.extra["url"])

    def client(self, token: str = TEST_ADMIN_TOKEN) -> Client:
        return Client(self.url, token)


def records(person: int, count: int = 1) -> list[dict[str, Any]]:
    """Secret codes of `count` people from `person` on; neighbours: their own city and
    another person's code (facts that must be kept). No subject: the toy model is edited
    at the prompt's last token, as the engine's own tiny tests do."""
    facts = tiny_facts()
    out = []
    for i in range(person, person + count):
        code, city = facts[4 * i], facts[4 * i + 1]
        other = facts[4 * ((i + 25) % 50)]
        out.append({
            "prompt": code["prompt"], "answer": code["answer"],
            "neighbors": [{"prompt": city["prompt"], "answer": city["answer"]},
                          {"prompt": other["prompt"], "answer": other["answer"]}],
        })
    return out


@contextlib.contextmanager
def live_service(
    root: Path, tiny_dir: Path, db_name: str, **env: str
) -> Iterator[LiveService]:
    """The stack on a Redis database leased to `db_name` with the tiny model ready; `env` goes
    to both processes (e.g. ZEROUNLEARN_LOG_FORMAT=json)."""
    with processes.service_stack(root, db_name=db_name, api_env=dict(env), **env) as stack:
        created = stack.client.post("/v1/models", json={"name": "tiny", "source": str(tiny_dir)})
        assert created.status_code == 201, created.text
        model = processes.wait_model_ready(stack.client, created.json()["id"], timeout=300)
        assert model["status"] == "ready", model
        yield LiveService(stack, model)
