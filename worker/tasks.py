"""The job functions the API enqueues by dotted path ("worker.tasks.<name>").

Signatures are the contract of docs/design.md; arguments are plain JSON. Each function
with a job document runs through `worker.jobs.run_job`: queued -> running (skipped when
cancelled meanwhile), progress into the document, then succeeded with a result or failed
with a `{"code", "message"}` error that never holds request text. Record text reaches a
task sealed (a placeholder in Redis, the sealed text in the store; a generate prompt
sealed in its arguments) and is opened in memory only: never in logs or error messages.

Versions are written only through `ArtifactStore.publish_version` (temp dir + atomic
rename): a crash mid-job leaves no half-written version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rq import get_current_job

from store import ArtifactStore, datakeys, utc_now
from store.enums import JobKind, ModelStatus
from store.requests import FROM_REQUEST, RequestPurged
from store.sealing import delete_exports, seal_model
from worker import bank, coalesce, gate
from worker.context import WorkerContext, get_context
from worker.edit_lock import EditLock, model_edit_lock
from worker.errors import (
    InvalidRequest,
    ModelNotReady,
    RequestGone,
    error_document,
    record_texts,
)
from worker.jobs import JobRun, TaskFailed, run_job
from worker.reports import merge_thresholds, verification_report
from worker.version_guard import check_job_version
from zerounlearn import (
    LoadedModel,
    Patch,
    apply_patch,
    inspect_model_source,
    save_patch,
    validate_records,
)
from zerounlearn import forget as engine_forget
from zerounlearn.api import check_patch_finite, check_records
from zerounlearn.config import default_layers, hparams_class, statistics_layers
from zerounlearn.errors import NonFiniteResult

# from the submodule: the package attribute `zerounlearn.evaluate` is the module itself
# whenever something imported zerounlearn.evaluate first
from zerounlearn.evaluate import evaluate, greedy_generate
from zerounlearn.stats import CorpusSpec, StatsCache

logger = logging.getLogger(__name__)

EXPORT_MARKER = "zerounlearn-export.json"
"""Written last into an export: its presence means the checkpoint is complete."""

MAX_GENERATE_TOKENS = 4096
"""Backstop for generate; the API enforces its own (lower) limit first."""

SERVER_ONLY_HPARAMS = frozenset({"stats_files", "stats_samples", "stats_seq_len"})
"""Statistics settings: the worker's (ZEROUNLEARN_STATS_SAMPLES), never a request's."""


# ------------------------------------------------------------------ prepare
def prepare_model(job_id: str, model_id: str) -> dict[str, Any]:
    """Fill architecture, layers and fingerprint into model.json; compute the statistics."""
    ctx = get_context()
    store = ctx.store

    def body(run: JobRun) -> dict[str, Any]:
        model = store.get_model(model_id)
        run.progress("inspect", 0.0)
        info = inspect_model_source(model["source"], cache_dir=store.cache_dir)
        run.progress("load", 0.02)
        ctx.models.discard(model_id)  # a re-prepare must not trust resident weights
        lm = ctx.models.get(model_id, "v0")
        layers = model.get("edit_layers") or default_layers(lm)
        for layer in layers:
            lm.adapter.check_layer(lm.model, layer)  # LayerOutOfRange names the layer
        store.update_model(
            model_id,
            architecture=info["architecture"],
            num_layers=info["num_layers"],
            family=lm.family,
            edit_layers=list(layers),
            fingerprint=lm.fingerprint,
        )
        run.progress("statistics", 0.05)
        stats_layers = statistics_layers(lm, list(layers))  # + the retry rounds' layers
        _stats(store).ensure(
            lm, stats_layers, _corpus(ctx), progress=run.scaled(0.05, 1.0)
        )
        store.push_stats()  # a shared store: other workers reuse them
        measured = bank.prepare_bank(ctx, model_id)["measured"]  # seed, measure the bank
        store.update_model(model_id, status=ModelStatus.READY, error=None)
        retain = bank.measure_bank(ctx, model_id)  # facts added while it prepared
        return {
            "architecture": info["architecture"],
            "num_layers": info["num_layers"],
            "edit_layers": list(layers),
            "statistics": {"samples": ctx.settings.stats_samples, "layers": stats_layers},
            "retain": {**retain, "measured": measured + retain["measured"]},
        }

    def failed(error: dict[str, str]) -> None:
        store.update_model(model_id, status=ModelStatus.FAILED, error=error)

    return run_job(
        store, job_id, JobKind.PREPARE, body, worker_name=ctx.name, on_failure=failed
    )


# ------------------------------------------------------------------- forget
def forget(
    job_id: str,
    model_id: str,
    base_version: str,
    records: list[dict],
    method: str = "zerounlearn",
    hparams: dict | None = None,
    quality_gate: dict | None = None,
) -> dict[str, Any]:
    """Forget `records`; publish and activate the new version if it passes the quality
    gate (worker.gate; `quality_gate`: the request's own limits over the server's).

    A job submitted without a base version ("base": "active" in its document) builds on
    the model's active version when it runs, read under the model's edit lock; then
    `base_version` is only the active version at submission and is not used. Other
    queued jobs asking for the same edit may join this one (worker.coalesce).
    """
    ctx = get_context()
    store = ctx.store

    stored = _stored_text(store, job_id, records, 2)
    # run_job reads these when a failure's message must be scrubbed: the batch adds the
    # text of the jobs it claims
    secrets = record_texts(stored or [])

    def body(run: JobRun) -> dict[str, Any]:
        picked = time.time()
        records = _require_records(stored, job_id)
        model = _ready_model(ctx, model_id)
        validate_records(records)  # this job's own fault: it fails before any job joins
        overrides = _method_overrides(ctx, model, method, hparams)
        plan = gate.GatePlan(gate.gate_limits(ctx.settings, quality_gate),
                             gate.guard_facts(ctx, model))
        spec = coalesce.EditSpec(model_id, coalesce.base_spec(run.job), method, hparams or {},
                                 quality_gate or {})
        if spec.base[0] == "explicit":
            store.get_version(model_id, base_version)  # NotFound before any heavy work
        queue = coalesce.current_queue() if ctx.settings.coalescing else None
        window_s = coalesce.wait_window(run.job, ctx.settings.coalesce_window_s) if queue else 0.0
        connection = queue.connection if queue is not None else _redis_of_current_job()
        with model_edit_lock(connection, model_id, ctx.name) as lock:
            base = base_version
            if spec.base[0] == "active":
                base = store.get_model(model_id)["active_version"]
                store.update_job(job_id, version=base)
            else:  # sealed since it was accepted: a branch without that deletion
                check_job_version(store, run.job, model_id, base)
            run.progress("load", 0.0)
            hit = ctx.models.key(model_id, base) in ctx.models
            began = time.monotonic()
            lm = ctx.models.take(model_id, base)  # _edit owns it now
            timings = {"queue_wait_s": _since(run.job.get("created_at"), picked),
                       "window_wait_s": window_s, "lock_wait_s": lock.waited_s,
                       "load_s": time.monotonic() - began}
            return _edit(ctx, run, lm, spec, base, overrides, records, queue, lock, secrets,
                         timings, hit, plan)

    return run_job(store, job_id, JobKind.FORGET, body, worker_name=ctx.name, secrets=secrets)


def _edit(
    ctx: WorkerContext,
    run: JobRun,
    lm: LoadedModel,
    spec: coalesce.EditSpec,
    base: str,
    overrides: dict[str, Any],
    records: list[dict],
    queue: Any,
    lock: EditLock,
    secrets: list[str],
    timings: dict[str, float],
    cache_hit: bool,
    plan: gate.GatePlan,
) -> dict[str, Any]:
    """Check, gather the batch, edit once, gate, publish + activate; the leader's result.

    `lm` (the materialised base, taken from the cache) goes back to the cache as the
    base when nothing was applied to it, as the new version once published, and not at
    all when the edit was applied and then stopped (by the quality gate or anything
    else): the next job loads the base again."""
    store, model_id = ctx.store, spec.model_id
    batch: coalesce.Batch | None = None
    applied = False
    try:
        # the leader's token-level check fails it alone, before any job has joined
        leader = coalesce.Member(run.job_id, records, check_records(lm, records),
                                 timings["queue_wait_s"])
        batch = coalesce.Batch(leader)
        if queue is not None:
            coalesce.gather(
                store, queue, spec, batch, max_records=ctx.settings.coalesce_max_batch,
                base_version=base, worker_name=ctx.name,
                check=lambda raw: check_records(lm, raw),
            )
            secrets.extend(record_texts(batch.raw_records()[len(records):]))
        parsed = batch.parsed_records()
        began = time.monotonic()
        before = evaluate(lm, parsed, progress=run.scaled(0.0, 0.05))
        guards = gate.unrelated(plan.guard, parsed)
        guard_before = gate.reproduced_facts(lm, guards)  # the parent: nothing applied yet
        retain = bank.retain_for(store, model_id, batch.raw_records(), secrets)
        patch = engine_forget(
            lm,
            parsed,
            ctx.method(spec.method),
            overrides,
            stats=_stats(store),
            progress=run.scaled(0.05, 0.85),
            retain=retain.facts,
        )
        patch.metadata["bank"] = retain.summary()  # hashes and counts: the manifest's
        run.progress("apply", 0.85)
        check_finite(patch)  # before the resident model is touched
        apply_patch(lm, patch)
        applied = True
        after = evaluate(lm, parsed, progress=run.scaled(0.88, 0.97))
        figures = gate.judge(
            plan.limits, before["summary"], after["summary"],
            (gate.neighbor_flags(parsed, before), gate.neighbor_flags(parsed, after)),
            (guard_before, gate.reproduced_facts(lm, guards)),
        )
        compute_s = time.monotonic() - began
        metrics = {"before": before["summary"], "after": after["summary"],
                   "quality_gate": figures}
        hashes = store.record_hashes(batch.raw_records())
        if not figures["passed"]:  # nothing goes live; `lm` is dropped (except below)
            gate.audit_failure(store, ctx.name, model_id, base, batch.job_ids, hashes, figures)
            raise gate.failure(figures)
        run.progress("publish", 0.97)
        lock.check()  # still ours: nobody else built on `base` meanwhile
        published = _publish(ctx, model_id, base, batch.job_ids, hashes, patch, metrics)
        seal_model(store, f"worker:{ctx.name or 'unnamed'}", model_id, published["id"])
        store.update_model(model_id, active_version=published["id"])
        bank.release_forgotten(store, ctx.name, model_id, retain, published["id"],
                               batch.job_ids)  # the request won over the bank
    except BaseException as exc:
        if not applied:  # the engine leaves the model unchanged: keep it resident
            ctx.models.put(model_id, base, lm)
        if batch is not None:
            coalesce.fail_peers(store, ctx.name, batch, exc)
        raise
    ctx.models.put(model_id, published["id"], lm)  # its weights ARE the new version
    if batch.peers:
        logger.info("job %s: one edit for %d job(s), %d record(s) -> %s/%s", run.job_id,
                    len(batch.members), batch.size, model_id, published["id"])

    def result_for(member: coalesce.Member) -> dict[str, Any]:
        mine = dict(timings) if member is leader else {
            **timings, "queue_wait_s": member.queue_wait_s, "window_wait_s": 0.0,
            "lock_wait_s": 0.0,
        }
        return {
            "version": published["id"],
            "parent": base,
            "metrics": metrics,
            **coalesce.own_records(member, before, after),
            "coalesced_with": [j for j in batch.job_ids if j != member.job_id],
            "batch_records": batch.size,
            "timings": {k: round(v, 4) for k, v in {**mine, "compute_s": compute_s}.items()},
            "model_cache_hit": cache_hit,
        }

    coalesce.finish_peers(store, ctx.name, batch, result_for)
    return result_for(leader)


def _since(stamp: str | None, now: float) -> float:
    created = coalesce.epoch(stamp)
    return max(0.0, now - created) if created is not None else 0.0


def _redis_of_current_job() -> Any:
    """The Redis of the RQ job being run (for the edit lock); None outside RQ."""
    rq_job = get_current_job()
    return rq_job.connection if rq_job is not None else None


def _method_overrides(
    ctx: WorkerContext, model: dict[str, Any], method: str, hparams: dict | None
) -> dict[str, Any]:
    """The caller's overrides plus the model's edit layers and the worker's sample count."""
    if hparams is not None and not isinstance(hparams, dict):
        raise InvalidRequest("hparams must be an object")
    server_only = sorted(SERVER_ONLY_HPARAMS.intersection(hparams or {}))
    if server_only:  # the API refuses them first: this is the backstop
        raise InvalidRequest(f"hparams: {', '.join(server_only)} are server settings")
    overrides = dict(hparams or {})
    names = {f.name for f in dataclasses.fields(hparams_class(method))}  # UnknownMethod
    if model.get("edit_layers") and "layers" in names:
        overrides.setdefault("layers", list(model["edit_layers"]))
    if "stats_samples" in names:  # the statistics prepare computed: a cache hit
        overrides.setdefault("stats_samples", ctx.settings.stats_samples)
    return overrides


def check_finite(patch: Patch) -> None:
    """The engine's check_patch_finite (never publish NaN/inf), again here because the
    patch is about to touch the resident model; the message says nothing was published."""
    try:
        check_patch_finite(patch)
    except NonFiniteResult as exc:
        raise NonFiniteResult(f"{exc}; nothing was published") from None


def _publish(
    ctx: WorkerContext,
    model_id: str,
    parent: str,
    job_ids: list[str],
    record_hashes: list[str],
    patch: Any,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Save the patch to a temp file and publish it as the next version (atomic).
    job_id names the job that ran the edit; jobs lists every job it served."""
    store = ctx.store
    store.push_stats()  # statistics the edit computed: shared before the version shows
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-worker-", dir=store.root) as tmp:
        patch_file = Path(tmp) / "patch.safetensors"
        info = save_patch(patch, patch_file)
        manifest = {
            "parent": parent,
            "method": patch.method,
            "hparams": patch.hparams,
            "job_id": job_ids[0],
            "jobs": list(job_ids),
            "records": [{"sha256": h} for h in record_hashes],
            "patch": {"bytes": info["bytes"], "sha256": info["sha256"], "layers": info["layers"]},
            "metrics": metrics,
            "retain": bank.manifest_entry(patch.metadata),
        }
        return store.publish_version(model_id, manifest, patch_file)


# ------------------------------------------------------------------- verify
def verify(
    job_id: str,
    model_id: str,
    version: str,
    records: list[dict],
    reference_texts: list[str] | None = None,
    thresholds: dict | None = None,
) -> dict[str, Any]:
    """Evaluate and probe `version` and its parent on the records; judge against
    thresholds. Probes put the packaged generic sentences before a prompt, never the
    request's text (zerounlearn.probes)."""
    from zerounlearn.probes import probe

    ctx = get_context()
    store = ctx.store

    stored = _stored_text(store, job_id, records, 2)
    reference_texts = _stored_text(store, job_id, reference_texts, 3)

    def body(run: JobRun) -> dict[str, Any]:
        limits = merge_thresholds(thresholds)
        parsed = validate_records(_require_records(stored, job_id))
        parent = store.get_version(model_id, version).get("parent")
        check_job_version(store, run.job, model_id, version)
        run.progress("load", 0.0)
        lm = ctx.models.get(model_id, version)
        after = evaluate(lm, parsed, reference_texts, progress=run.scaled(0.05, 0.25))
        probes_after = probe(lm, parsed, progress=run.scaled(0.25, 0.5))
        if parent is None:  # v0 has no parent: it is compared with itself
            before, probes_before = after, probes_after
        else:
            run.progress("load", 0.5)
            parent_lm = ctx.models.get(model_id, parent)
            before = evaluate(
                parent_lm, parsed, reference_texts, progress=run.scaled(0.55, 0.75)
            )
            probes_before = probe(parent_lm, parsed, progress=run.scaled(0.75, 1.0))
        return verification_report(version, parent, after, before, limits, probes_after,
                                   probes_before)

    secrets = record_texts(stored or []) + record_texts(reference_texts or [])
    return run_job(store, job_id, JobKind.VERIFY, body, worker_name=ctx.name, secrets=secrets)


# ------------------------------------------------------------------- export
def export(job_id: str, model_id: str, version: str) -> dict[str, Any]:
    """Write a full HF checkpoint of `version` to exports/<model>/<version> (atomic)."""
    ctx = get_context()
    store = ctx.store

    def body(run: JobRun) -> dict[str, Any]:
        target = store.exports_dir / model_id / version
        check_job_version(store, run.job, model_id, version)
        store.get_version(model_id, version)
        if (target / EXPORT_MARKER).is_file():  # versions are immutable: reuse
            return {"path": store.publish_export(model_id, version, target, EXPORT_MARKER),
                    "reused": True}
        run.progress("load", 0.0)
        lm = ctx.models.get(model_id, version)
        run.progress("export", 0.3)
        _write_export(ctx, model_id, version, lm, target)
        _unless_sealed_meanwhile(store, run.job, model_id, version)
        return {"path": store.publish_export(model_id, version, target, EXPORT_MARKER),
                "reused": False}

    return run_job(store, job_id, JobKind.EXPORT, body, worker_name=ctx.name)


def _unless_sealed_meanwhile(
    store: ArtifactStore, job: dict[str, Any], model_id: str, version: str
) -> None:
    """A seal that came while the export was written deletes it and fails the job."""
    try:
        check_job_version(store, job, model_id, version)
    except Exception:
        delete_exports(store, model_id, version)
        raise


def _write_export(
    ctx: WorkerContext, model_id: str, version: str, lm: LoadedModel, target: Path
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        lm.model.save_pretrained(str(tmp))
        lm.tokenizer.save_pretrained(str(tmp))
        marker = {
            "model_id": model_id,
            "version": version,
            "lineage": ctx.store.lineage(model_id, version),
            "base_fingerprint": lm.fingerprint,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "exported_at": utc_now(),
        }
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / EXPORT_MARKER).is_file():
                raise
            logger.info("export %s/%s was written by another job; reusing it", model_id, version)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------- generate
def generate(
    model_id: str, version: str, prompt: dict, max_new_tokens: int = 32, request_id: str = ""
) -> dict[str, Any]:
    """Greedy continuation of `prompt` by `version` (no job document): {"text"}.

    The prompt comes sealed under the data key of `request_id` (the API made it) and the
    answer goes back sealed under the same key: neither is ever in Redis in the clear.
    The key is read, never made here: once the API destroyed it (answered, or gave up),
    this fails."""
    ctx = get_context()
    text_prompt: Any = None
    try:
        key = ctx.store.data_keys.get(request_id)
        text_prompt = datakeys.unseal(key, request_id, datakeys.GENERATE_PROMPT, prompt)
        if not isinstance(text_prompt, str) or not text_prompt:
            raise InvalidRequest("prompt must be a non-empty string")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not (
            1 <= max_new_tokens <= MAX_GENERATE_TOKENS
        ):
            raise InvalidRequest(f"max_new_tokens must be an integer in 1..{MAX_GENERATE_TOKENS}")
        lm = ctx.models.get(model_id, version)
        text = greedy_generate(lm, text_prompt, max_new_tokens=max_new_tokens)
        answer = datakeys.seal(key, request_id, datakeys.GENERATE_ANSWER, text)
    except Exception as exc:
        secrets = [text_prompt] if isinstance(text_prompt, str) else []
        error = error_document(exc, secrets=secrets)
        logger.warning("generate on %s/%s failed: %s (%s)", model_id, version, error["code"],
                       type(exc).__name__)
        raise TaskFailed(error) from None
    return {"text": answer}


# ------------------------------------------------------------------ helpers
def _stored_text(store: ArtifactStore, job_id: str, value: Any, position: int) -> Any:
    """The request text the API left in the store (the queue carries a placeholder);
    None when it was purged (the task body then fails with `request_purged`)."""
    if value != FROM_REQUEST:
        return value
    try:
        return store.requests.task_text(job_id, position)
    except RequestPurged:
        return None


def _require_records(records: list[dict] | None, job_id: str) -> list[dict]:
    if records is None:
        raise RequestGone(f"the text of request {job_id} was purged before the job ran; "
                          "submit it again")
    return records
def _ready_model(ctx: WorkerContext, model_id: str) -> dict[str, Any]:
    model = ctx.store.get_model(model_id)
    if model.get("status") != ModelStatus.READY:
        raise ModelNotReady(
            f"model {model_id} is {model.get('status')!r}, not 'ready': wait for its "
            "prepare job to succeed"
        )
    return model


def _stats(store: ArtifactStore) -> StatsCache:
    """The statistics cache, with what other workers computed fetched first (shared store)."""
    store.pull_stats()
    return StatsCache(store.stats_dir)


def _corpus(ctx: WorkerContext) -> CorpusSpec:
    """The statistics corpus: model-sampled text, ZEROUNLEARN_STATS_SAMPLES tokens."""
    return CorpusSpec(samples=ctx.settings.stats_samples)
