"""Worker guards on a real store and the real tiny GPT-2: a patch with non-finite
weights is refused before it touches the resident model or the store, and a full disk
becomes a clear `storage_full` error."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from store import ArtifactStore
from worker.errors import error_document
from worker.jobs import TaskFailed


def test_storage_errors_have_a_clear_code() -> None:
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        error = error_document(OSError(number, "No space left on device"))
        assert error["code"] == "storage_full"
        assert "nothing was published" in error["message"]


def test_non_finite_patch_is_rejected_and_never_published(
    tmp_path: Path, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import worker.tasks as tasks
    from worker.context import WorkerContext, set_context
    from worker.settings import WorkerSettings
    from zerounlearn import Patch

    store = ArtifactStore(tmp_path / "data")
    model = store.create_model({"name": "tiny", "source": str(tiny_gpt2_dir), "status": "ready"})
    store.publish_version(model["id"], {"parent": None}, None)
    settings = WorkerSettings(redis_url="", data_dir=store.root)
    ctx = WorkerContext.from_settings(settings, name="guard-test")
    set_context(ctx)
    try:
        lm = ctx.models.get(model["id"], "v0")
        store.update_model(model["id"], fingerprint=lm.fingerprint, edit_layers=[1])
        before = lm.adapter.get_weight(lm.model, 1).clone()

        def blown_up(lm: Any, records: Any, method: Any, hparams: Any, **_: Any) -> Patch:
            weight = lm.adapter.get_weight(lm.model, 1)
            weight[0, 0] = float("nan")  # a solve that diverged
            return Patch(method=method, hparams={}, base_fingerprint=lm.fingerprint,
                         weights={1: weight})

        monkeypatch.setattr(tasks, "engine_forget", blown_up)
        job = store.create_job({"kind": "forget", "model_id": model["id"], "version": "v0"})
        record = {"prompt": "The code of Ada is", "subject": "Ada", "answer": " 42"}
        with pytest.raises(TaskFailed):
            tasks.forget(job["id"], model["id"], "v0", [record], "zerounlearn", {})
        failed = store.get_job(job["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "non_finite_result", failed["error"]
        assert [v["id"] for v in store.list_versions(model["id"])] == ["v0"]
        assert store.get_model(model["id"])["active_version"] == "v0"
        assert not store.backend.list_keys(f"models/{model['id']}/patches/")  # no blob
        assert not list(store.root.glob(".tmp-*"))
        resident = ctx.models.get(model["id"], "v0")  # still the untouched v0 weights
        assert torch.equal(resident.adapter.get_weight(resident.model, 1), before)
        actions = [e["action"] for e in store.audit.page(0, 100)[0]]
        assert actions == ["job.started", "job.failed"]
    finally:
        set_context(None)


def test_a_purged_request_fails_clearly(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    import worker.tasks as tasks
    from store.requests import FROM_REQUEST
    from worker.context import WorkerContext, set_context
    from worker.settings import WorkerSettings

    store = ArtifactStore(tmp_path / "data")
    model = store.create_model({"name": "tiny", "source": str(tiny_gpt2_dir), "status": "ready"})
    store.publish_version(model["id"], {"parent": None}, None)
    set_context(WorkerContext.from_settings(WorkerSettings(redis_url="", data_dir=store.root)))
    try:
        job = store.create_job({"kind": "forget", "model_id": model["id"], "version": "v0"})
        record = {"prompt": "The code of Ada is", "answer": " 42"}
        store.requests.create({"job_id": job["id"], "kind": "forget",
                               "task_args": [model["id"], "v0", [record], "zerounlearn", {}]})
        store.requests.purge(job["id"])
        with pytest.raises(TaskFailed):
            tasks.forget(job["id"], model["id"], "v0", FROM_REQUEST, "zerounlearn", {})  # type: ignore[arg-type]
        failed = store.get_job(job["id"])
        assert failed["error"]["code"] == "request_purged", failed["error"]
        assert [v["id"] for v in store.list_versions(model["id"])] == ["v0"]
    finally:
        set_context(None)
