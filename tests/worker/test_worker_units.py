"""The worker's parts on their own: settings, error documents, reports, the job life
cycle against a real store, orphan recovery against a real Redis (own db), and the model
cache on the tiny GPT-2 with real patches."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from store import ArtifactStore
from tests.support.redis_dbs import NEVER_CONTACTED, redis_db
from worker.errors import (
    SCRUBBED_MESSAGE,
    InvalidThresholds,
    PatchIntegrityError,
    error_document,
    record_texts,
)
from worker.jobs import JobRun, TaskFailed, recover_orphaned_jobs, run_job
from worker.reports import DEFAULT_THRESHOLDS, judge, merge_thresholds, verification_report
from worker.settings import SettingsError, WorkerSettings


# ----------------------------------------------------------------- settings
def test_settings_defaults(tmp_path: Path) -> None:
    s = WorkerSettings.from_env({"REDIS_URL": "redis://h:6379/0"})
    assert s.queue_name == "zerounlearn-cpu" and s.device == "cpu"
    assert (s.torch_threads, s.stats_samples, s.model_cache_size) == (1, 20_000, 2)
    assert s.data_dir == Path("data").resolve()
    assert s.model_cache_mb is None  # worker.context picks a budget for the device
    budget = WorkerSettings.from_env({"REDIS_URL": "redis://h/0",
                                      "ZEROUNLEARN_MODEL_CACHE_MB": "2048"})
    assert budget.model_cache_mb == 2048
    assert s.edit_history is False  # resident models keep no edit keys unless asked
    assert WorkerSettings.from_env({"REDIS_URL": "redis://h/0",
                                    "ZEROUNLEARN_EDIT_HISTORY": "1"}).edit_history is True


def test_settings_list_every_bad_value() -> None:
    env = {
        "REDIS_URL": "http://nope",
        "ZEROUNLEARN_DEVICE": "tpu",
        "ZEROUNLEARN_DEVICE_CLASS": "GPU!",
        "ZEROUNLEARN_TORCH_THREADS": "zero",
        "ZEROUNLEARN_STATS_SAMPLES": "-5",
        "ZEROUNLEARN_LOG_LEVEL": "loud",
        "ZEROUNLEARN_MODEL_CACHE_MB": "lots",
        "ZEROUNLEARN_EDIT_HISTORY": "maybe",
    }
    with pytest.raises(SettingsError) as info:
        WorkerSettings.from_env(env)
    message = str(info.value)
    for name in env:
        assert name in message, name


def test_settings_require_redis_url_and_say_how() -> None:
    with pytest.raises(SettingsError, match="app.local_stack"):
        WorkerSettings.from_env({})
    assert WorkerSettings.from_env({}, require_redis=False).redis_url == ""


# ------------------------------------------------------------------- errors
def test_error_documents_never_carry_record_text() -> None:
    from zerounlearn.errors import InvalidRecord, LayerOutOfRange

    secrets = record_texts([{"prompt": "The vault code of Ann Roe is", "answer": " 5512"}])
    leaked = error_document(
        InvalidRecord("records[0]: The vault code of Ann Roe is"), secrets=secrets
    )
    assert leaked == {"code": "invalid_record", "message": SCRUBBED_MESSAGE}
    assert error_document(LayerOutOfRange("layer 9"))["code"] == "layer_out_of_range"
    internal = error_document(RuntimeError("The vault code of Ann Roe is 5512"), job_id="j-1")
    assert internal["code"] == "internal_error" and "Ann Roe" not in internal["message"]
    assert "RuntimeError" in internal["message"] and "j-1" in internal["message"]


# ------------------------------------------------------------------ reports
def test_thresholds_merge_and_refuse_bad_ones() -> None:
    assert merge_thresholds(None) == DEFAULT_THRESHOLDS
    assert merge_thresholds({"max_efficacy": 5})["max_efficacy"] == 5.0
    for bad in ({"efficacy_max": 1}, {"max_efficacy": -1}, {"max_efficacy": True}, []):
        with pytest.raises(InvalidThresholds):
            merge_thresholds(bad)  # type: ignore[arg-type]


def test_judge_and_report() -> None:
    parent = {"efficacy": 100.0, "generalization": None, "specificity": 90.0, "perplexity": 10.0}
    version = {"efficacy": 0.0, "generalization": None, "specificity": 80.0, "perplexity": 10.5}
    limits = merge_thresholds({"max_specificity_drop": 5, "max_generalization": 0})
    passed, checks = judge(version, parent, limits)
    by_name = {c["name"]: c for c in checks}
    assert not passed and by_name["specificity_drop"]["passed"] is False
    assert by_name["generalization"]["passed"] is None  # not measured: does not fail
    assert by_name["perplexity_increase_pct"]["value"] == pytest.approx(5.0)
    after = {"summary": version, "records": [{"reproduced": False}]}
    before = {"summary": parent, "records": [{"reproduced": True}]}
    report = verification_report("v1", "v0", after, before, merge_thresholds({}))
    assert report["passed"] is True and report["records"][0]["forgotten"] is True
    assert report["summary"] == {"version": version, "parent": parent}


def test_report_judges_probes_on_forgotten_records() -> None:
    summary = {"efficacy": 50.0, "generalization": None, "specificity": None,
               "perplexity": None}
    after = {"summary": summary, "records": [{"reproduced": False}, {"reproduced": False},
                                             {"reproduced": True}]}
    before = {"summary": summary, "records": [{"reproduced": True}] * 3}

    def probes(*found: dict) -> dict:
        return {"summary": {"found_pct": {}}, "records": [
            {"index": i, "found": f} for i, f in enumerate(found)]}

    no = {"context": False, "chat": None, "greedy": False, "int8": False}
    back = {"context": True, "chat": None, "greedy": False, "int8": False}
    kept = {"context": True, "chat": None, "greedy": True, "int8": True}
    limits = merge_thresholds({"max_efficacy": None, "max_probe_context": 60})
    report = verification_report("v1", "v0", after, before, limits,
                                 probes(no, back, kept), probes(kept, kept, kept))
    # judged over the 2 forgotten records; the one still reproduced does not count
    assert report["probes"]["forgotten"]["context"] == {"found": 1, "of": 2, "pct": 50.0}
    assert report["probes"]["forgotten"]["greedy"] == {"found": 0, "of": 2, "pct": 0.0}
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["probe_context"] == {"name": "probe_context", "value": 50.0,
                                        "threshold": 60.0, "passed": True}
    assert by_name["probe_chat"]["passed"] is None  # no chat template: not judged
    assert report["passed"] is True
    assert report["records"][1]["probes"] == {"after": back, "before": kept}
    strict = verification_report("v1", "v0", after, before, merge_thresholds({}),
                                 probes(no, back, kept), None)
    assert strict["passed"] is False  # 50% > the default 10
    assert strict["probes"]["parent"] is None


# ------------------------------------------------------------- job life cycle
@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "data")


def _job(store: ArtifactStore, kind: str = "export") -> str:
    model = store.create_model({"name": "m", "source": "/nowhere"})
    return store.create_job({"kind": kind, "model_id": model["id"], "version": "v0"})["id"]


def test_run_job_success_records_result_and_progress(store: ArtifactStore) -> None:
    job_id = _job(store)

    def body(run: JobRun) -> dict:
        run.progress("statistics", 0.5)
        assert store.get_job(job_id)["progress"] == {"phase": "statistics", "fraction": 0.5}
        return {"path": "/x"}

    assert run_job(store, job_id, "export", body, worker_name="w") == {"path": "/x"}
    job = store.get_job(job_id)
    assert job["status"] == "succeeded" and job["result"] == {"path": "/x"}
    assert job["worker"] == "w" and job["started_at"] and job["finished_at"]


def test_run_job_skips_a_cancelled_job(store: ArtifactStore) -> None:
    job_id = _job(store)
    store.transition_job(job_id, ["queued"], "cancelled")
    ran = []
    result = run_job(store, job_id, "export", lambda run: ran.append(1) or {})
    assert result == {"skipped": True, "status": "cancelled"} and not ran


def test_run_job_failure_is_safe_and_reaches_rq(store: ArtifactStore) -> None:
    from zerounlearn.errors import UnknownMethod

    job_id = _job(store)
    seen = []

    def body(run: JobRun) -> dict:
        raise UnknownMethod("no method 'nope'")

    with pytest.raises(TaskFailed) as info:
        run_job(store, job_id, "forget", body, on_failure=seen.append)
    job = store.get_job(job_id)
    assert job["status"] == "failed"
    assert job["error"] == {"code": "unknown_method", "message": "no method 'nope'"}
    assert seen == [job["error"]] and info.value.__cause__ is None


def test_run_job_cold_stop_marks_the_job_and_stops(store: ArtifactStore) -> None:
    job_id = _job(store)

    def body(run: JobRun) -> dict:
        raise SystemExit()

    with pytest.raises(SystemExit):
        run_job(store, job_id, "export", body)
    assert store.get_job(job_id)["error"]["code"] == "worker_stopped"


@pytest.fixture
def redis_conn() -> Iterator[Redis]:
    with redis_db("worker-units") as url:
        conn = Redis.from_url(url)
        yield conn
        conn.close()


def test_recover_fails_jobs_of_dead_local_workers(
    store: ArtifactStore, redis_conn: Redis
) -> None:
    from rq import Queue, SimpleWorker

    finished = subprocess.Popen(["true"])
    finished.wait()  # reaped: its pid names no process now
    dead_pid = finished.pid
    ghost = SimpleWorker([Queue("zerounlearn-cpu", connection=redis_conn)],
                         connection=redis_conn, name="ghost")
    ghost.pid = dead_pid
    ghost.register_birth()
    running = _job(store, "prepare")
    store.transition_job(running, ["queued"], "running", worker="ghost")
    queued = store.create_job({"kind": "export", "model_id": store.get_job(running)["model_id"]})
    failed = recover_orphaned_jobs(store, redis_conn, me="me")
    assert failed == [running]
    assert store.get_job(running)["error"]["code"] == "worker_lost"
    assert store.get_job(queued["id"])["status"] == "queued"
    assert not SimpleWorker.all(connection=redis_conn)  # the ghost's registration is gone


# -------------------------------------------------------------- model cache
@pytest.fixture
def tiny_model_store(store: ArtifactStore, tiny_gpt2_dir: Path) -> tuple[ArtifactStore, str]:
    """A model with v0 and v1 (layer 1 scaled by 0.5, two edit keys), in the store."""
    import torch

    from zerounlearn import Patch, load_model, save_patch

    model = store.create_model({"name": "tiny", "source": str(tiny_gpt2_dir), "status": "ready"})
    store.publish_version(model["id"], {"parent": None}, None)
    lm = load_model(str(tiny_gpt2_dir))
    patch = Patch(
        method="test", hparams={}, base_fingerprint=lm.fingerprint,
        weights={1: lm.adapter.get_weight(lm.model, 1) * 0.5},
        keys={1: torch.ones(lm.adapter.weight_shape(lm.model, 1)[1], 2)},
    )
    path = store.root / "p.safetensors"
    info = save_patch(patch, path)
    store.publish_version(model["id"], {"parent": "v0", "patch": info}, path)
    store.update_model(model["id"], fingerprint=lm.fingerprint)
    return store, model["id"]


def test_model_cache_materialises_exactly_and_evicts(
    tiny_model_store: tuple[ArtifactStore, str]
) -> None:
    import torch

    from worker.model_cache import ModelCache

    store, mid = tiny_model_store
    cache = ModelCache(store, max_entries=1)
    v1 = cache.get(mid, "v1")
    w1 = v1.adapter.get_weight(v1.model, 1).clone()
    assert cache.get(mid, "v1") is v1 and cache.loads == 1
    v0 = cache.get(mid, "v0")
    assert len(cache) == 1 and cache.loads == 2  # v1 was evicted
    assert torch.equal(w1, v0.adapter.get_weight(v0.model, 1) * 0.5)
    assert torch.equal(
        v1.adapter.get_weight(v1.model, 0), v0.adapter.get_weight(v0.model, 0)
    )
    taken = cache.take(mid, "v0")
    assert taken is v0 and len(cache) == 0
    cache.put(mid, "v0", taken)
    assert cache.get(mid, "v0") is v0
    assert v1.edit_keys is None  # not tracked by default
    tracked = ModelCache(store, max_entries=1, track_edit_keys=True).get(mid, "v1")
    assert tracked.edit_keys is not None and tracked.edit_keys[1].shape[1] == 2


def test_model_cache_evicts_least_recently_used_under_a_byte_budget(
    tiny_model_store: tuple[ArtifactStore, str]
) -> None:
    from worker.model_cache import ModelCache, model_bytes

    store, mid = tiny_model_store
    probe = ModelCache(store, max_entries=4)
    size = model_bytes(probe.get(mid, "v0"))
    assert size > 0 and probe.resident_bytes == size

    # room for one version and a half: the count limit (4) never binds, the bytes do
    cache = ModelCache(store, max_entries=4, max_bytes=size * 3 // 2)
    v1 = cache.get(mid, "v1")
    cache.get(mid, "v0")  # made room before loading: v1 is gone, v0 resident
    assert cache.keys() == [cache.key(mid, "v0")] and cache.evictions == 1
    assert cache.resident_bytes <= size * 3 // 2
    assert cache.get(mid, "v0") is not v1 and cache.loads == 2

    # a budget smaller than one model still serves it (the newest entry always stays)
    small = ModelCache(store, max_entries=4, max_bytes=1)
    assert small.get(mid, "v1") is small.get(mid, "v1") and small.loads == 1
    small.get(mid, "v0")
    assert len(small) == 1 and small.loads == 2


def test_model_cache_refuses_a_tampered_patch(
    tiny_model_store: tuple[ArtifactStore, str]
) -> None:
    from worker.model_cache import ModelCache

    store, mid = tiny_model_store
    path = store.patch_path(mid, "v1")
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(PatchIntegrityError):
        ModelCache(store).get(mid, "v1")


def test_model_cache_refuses_a_changed_base(tiny_model_store: tuple[ArtifactStore, str]) -> None:
    from worker.errors import BaseModelChanged
    from worker.model_cache import ModelCache

    store, mid = tiny_model_store
    store.update_model(mid, fingerprint="0" * 64)
    with pytest.raises(BaseModelChanged):
        ModelCache(store).get(mid, "v0")


def test_healthcheck_finds_a_worker_of_this_host(redis_conn: Redis) -> None:
    import socket

    from rq import Queue, SimpleWorker

    from worker.healthcheck import worker_alive

    host = socket.gethostname()
    assert not worker_alive(redis_conn, host)
    worker = SimpleWorker([Queue("zerounlearn-cpu", connection=redis_conn)],
                          connection=redis_conn, name=f"{host}-1-abc")
    worker.register_birth()
    assert worker_alive(redis_conn, host)
    assert not worker_alive(redis_conn, "other-host")


def test_method_instances_are_resident(tmp_path: Path) -> None:
    """Later jobs reuse the same method instance, and so its sampled context templates."""
    from worker.context import WorkerContext
    from zerounlearn.errors import UnknownMethod

    ctx = WorkerContext.from_settings(
        WorkerSettings(redis_url=NEVER_CONTACTED, data_dir=tmp_path)
    )
    assert ctx.method("zerounlearn") is ctx.method("zerounlearn")
    assert ctx.method("zerounlearn") is not ctx.method("zerounlearn-paper")
    with pytest.raises(UnknownMethod):
        ctx.method("no-such-method")
