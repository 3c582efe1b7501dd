"""The typed client against a real API + worker: calls, waits and the error classes."""

from __future__ import annotations

import pytest

from client import (
    ApiError,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
)
from tests.support.live import LiveService, records
from tests.support.processes import free_port
from tests.support.tiny_model import TINY_REQUEST_HPARAMS

pytestmark = pytest.mark.timeout(600)


def test_forget_wait_and_read_back(live: LiveService) -> None:
    with live.client() as api:
        mid = live.model["id"]
        assert api.whoami()["role"] == "admin"
        assert [m["id"] for m in api.list_models()] == [mid]
        # no base_version: the retry below comes after the active version moved on, and
        # must still be recognised as the same request
        accepted = api.forget(mid, records(10), hparams=TINY_REQUEST_HPARAMS, idempotency_key="c-1")
        seen: list[str] = []
        job = api.wait_job(accepted["job_id"], timeout=300,
                           on_progress=lambda j: seen.append(j["status"]))
        assert job["status"] == "succeeded" and seen[-1] == "succeeded"
        assert job["timings"] and all(v >= 0 for v in job["timings"].values())
        version = job["result"]["version"]
        assert api.get_version(mid, version)["active"] is True
        assert version in [v["id"] for v in api.list_versions(mid)]
        again = api.forget(mid, records(10), hparams=TINY_REQUEST_HPARAMS, idempotency_key="c-1")
        assert again["job_id"] == accepted["job_id"]
        with pytest.raises(Conflict):  # same key, different body
            api.forget(mid, records(9), hparams=TINY_REQUEST_HPARAMS, idempotency_key="c-1")
        receipt = api.receipt(job["id"])
        assert api.verify_receipt(receipt)["genuine"] is True


def test_errors_are_the_apis(live: LiveService) -> None:
    mid = live.model["id"]
    with live.client() as api:
        with pytest.raises(NotFound) as missing:
            api.get_model("m-000000000000")
        assert missing.value.status == 404 and missing.value.code == "model_not_found"
        assert isinstance(missing.value, KeyError) and isinstance(missing.value, ApiError)
        with pytest.raises(Invalid) as invalid:
            api.forget(mid, [{"prompt": "x"}])
        assert invalid.value.status == 422 and "answer" in invalid.value.message
        prepare = api.get_model(mid)["prepare_job_id"]
        with pytest.raises(Conflict) as conflict:
            api.cancel_job(prepare)
        assert conflict.value.code == "job_not_cancellable"
        viewer = api.create_key("viewer")
    with Client(live.url, viewer["key"]) as as_viewer:
        assert as_viewer.whoami() == {"id": viewer["id"], "role": "viewer", "models": None}
        assert as_viewer.get_model(mid)["id"] == mid
        with pytest.raises(Forbidden):
            as_viewer.activate(mid, "v0")
    with Client(live.url, "not-a-key") as nobody, pytest.raises(Unauthorized):
        nobody.list_models()
    with Client(f"http://127.0.0.1:{free_port()}", "x") as down, pytest.raises(ConnectionFailed):
        down.health()
