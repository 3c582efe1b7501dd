"""The CLI's commands: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.output import ProgressBar, emit_json, fields, table
from client import ApiError, Client, JobFailed

Command = Callable[[argparse.Namespace], int]

MODEL_COLUMNS = [("id", "id"), ("name", "name"), ("status", "status"),
                 ("active", "active_version"), ("architecture", "architecture"),
                 ("layers", "num_layers"), ("edit layers", "edit_layers")]
JOB_COLUMNS = [("id", "id"), ("kind", "kind"), ("model", "model_id"), ("version", "version"),
               ("status", "status"), ("phase", "progress.phase"),
               ("fraction", "progress.fraction"), ("error", "error.code")]
VERSION_COLUMNS = [("id", "id"), ("parent", "parent"), ("active", "active"),
                   ("sealed", "sealed"), ("deleted", "deleted"),
                   ("method", "method"), ("records", "record_count"),
                   ("created", "created_at")]
KEY_COLUMNS = [("id", "id"), ("role", "role"), ("models", "models"),
               ("created", "created_at"), ("revoked", "revoked_at")]


class UsageError(Exception):
    """Bad arguments or an unreadable input file (exit code 2)."""


def emit_error(exc: ApiError) -> None:
    emit_json({"error": {"status": exc.status, "code": exc.code, "message": exc.message}})


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token)


def read_records(path: str) -> list[dict[str, Any]]:
    """Records from JSON lines (blank lines skipped) or a JSON array; UsageError names
    the line, never its content (it is the text to forget)."""
    try:
        text = Path(path).read_text(encoding="utf-8") if path != "-" else sys.stdin.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError:
            raise UsageError(f"{path}: not valid JSON") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise UsageError(f"{path}, line {number}: not a JSON object") from None
    if not records or not all(isinstance(r, dict) for r in records):
        raise UsageError(f"{path}: expected one JSON object per line (at least one)")
    return records


def _json_arg(value: str | None, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        raise UsageError(f"{name}: not valid JSON") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{name}: must be a JSON object")
    return parsed


def _follow(api: Client, args: argparse.Namespace, job_id: str) -> int:
    """Wait for a job with a progress bar; print it; 1 unless it succeeded."""
    bar = ProgressBar()
    try:
        job = api.wait_job(job_id, timeout=args.timeout, on_progress=bar.update, check=False)
    finally:
        bar.close()
    _show_job(job, args.json)
    return 0 if job["status"] == "succeeded" else 1


def _show_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(job)
        return
    fields(job, ["id", "kind", "model_id", "version", "status", "progress.phase",
                 "progress.fraction", "created_at", "started_at", "finished_at"])
    if job.get("error"):
        print(f"error     {job['error'].get('code')}: {job['error'].get('message')}")
    result = job.get("result") or {}
    if "version" in result and job.get("kind") == "forget":
        print(f"new version  {result['version']} (parent {result.get('parent')})")
    if "passed" in result:
        print(f"passed    {result['passed']}  ({result.get('forgotten')}/"
              f"{result.get('total')} forgotten)")
        found = (result.get("probes") or {}).get("forgotten") or {}
        if found:  # per probe: forgotten records it found again ("-": not run)
            order = ("context", "chat", "greedy", "int8")  # zerounlearn.probes.PROBES
            names = sorted(found, key=lambda n: order.index(n) if n in order else len(order))
            shown = ["{} {}".format(n, "-" if found[n]["found"] is None else
                                    f"{found[n]['found']}/{found[n]['of']}") for n in names]
            print(f"probes    {', '.join(shown)} found again")
    if "path" in result:
        print(f"path      {result['path']}")


def _accepted(api: Client, args: argparse.Namespace, accepted: dict[str, Any]) -> int:
    if getattr(args, "wait", False):
        return _follow(api, args, accepted["job_id"])
    if args.json:
        emit_json(accepted)
    else:
        print(f"job {accepted['job_id']} {accepted['status']}; follow it with "
              f"`zerounlearn jobs watch {accepted['job_id']}`")
    return 0


# ----------------------------------------------------------------- processes
def serve(args: argparse.Namespace) -> int:
    argv = ["--host", args.host, "--port", str(args.port)]
    if args.api_only:
        from app.__main__ import main as api_main

        return api_main(argv)
    from app.local_stack import main as stack_main

    return int(stack_main(argv) or 0)


def worker(args: argparse.Namespace) -> int:
    from worker.__main__ import main as worker_main

    argv = ["--burst"] if args.burst else []
    if args.name:
        argv += ["--name", args.name]
    return worker_main(argv)


# -------------------------------------------------------------------- models
def models_add(args: argparse.Namespace) -> int:
    with _client(args) as api:
        model = api.create_model(args.name, args.source, edit_layers=args.edit_layers,
                                 dtype=args.dtype)
        if args.wait and model.get("prepare_job_id"):
            return _follow(api, args, model["prepare_job_id"])
    if args.json:
        emit_json(model)
    else:
        print(f"model {model['id']} registered ({model['status']}); prepare job "
              f"{model.get('prepare_job_id')}")
    return 0


def models_list(args: argparse.Namespace) -> int:
    with _client(args) as api:
        models = api.list_models(limit=args.limit)
    emit_json(models) if args.json else table(models, MODEL_COLUMNS)
    return 0


def models_show(args: argparse.Namespace) -> int:
    with _client(args) as api:
        model = api.get_model(args.model)
    if args.json:
        emit_json(model)
    else:
        fields(model, [k for _, k in MODEL_COLUMNS] + ["source", "dtype", "created_at",
                                                       "prepare_job_id", "error"])
    return 0


# ------------------------------------------------------------- forget / jobs
def forget(args: argparse.Namespace) -> int:
    records = read_records(args.file)
    hparams = _json_arg(args.hparams, "--hparams")
    gate = _json_arg(args.quality_gate, "--quality-gate")
    with _client(args) as api:
        accepted = api.forget(args.model, records, method=args.method,
                              base_version=args.base_version, hparams=hparams,
                              idempotency_key=args.idempotency_key, quality_gate=gate,
                              override_seal_reason=args.override_seal_reason)
        return _accepted(api, args, accepted)


def jobs_list(args: argparse.Namespace) -> int:
    with _client(args) as api:
        jobs = api.list_jobs(args.model, args.status, args.kind, limit=args.limit)
    emit_json(jobs) if args.json else table(jobs, JOB_COLUMNS)
    return 0


def jobs_show(args: argparse.Namespace) -> int:
    with _client(args) as api:
        _show_job(api.get_job(args.job), args.json)
    return 0


def jobs_watch(args: argparse.Namespace) -> int:
    with _client(args) as api:
        return _follow(api, args, args.job)


def jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as api:
        _show_job(api.cancel_job(args.job), args.json)
    return 0


# ------------------------------------------------------------------ versions
def versions_list(args: argparse.Namespace) -> int:
    with _client(args) as api:
        versions = api.list_versions(args.model, limit=args.limit)
    if args.json:
        emit_json(versions)
    else:
        table([{**v, "record_count": len(v.get("records") or [])} for v in versions],
              VERSION_COLUMNS)
    return 0


def versions_activate(args: argparse.Namespace) -> int:
    with _client(args) as api:
        version = api.activate(args.model, args.version,
                               override_seal_reason=args.override_seal_reason)
    if args.json:
        emit_json(version)
    else:
        print(f"model {args.model}: {version['id']} is active")
    return 0


def versions_export(args: argparse.Namespace) -> int:
    with _client(args) as api:
        return _accepted(api, args, api.export(
            args.model, args.version, override_seal_reason=args.override_seal_reason))


def versions_delete(args: argparse.Namespace) -> int:
    with _client(args) as api:
        version = api.delete_version(args.model, args.version)
    if args.json:
        emit_json(version)
    else:
        print(f"model {args.model}: {version['id']} deleted (its manifest stays)")
    return 0


def versions_compact(args: argparse.Namespace) -> int:
    with _client(args) as api:
        return _accepted(api, args, api.compact(
            args.model, args.version, override_seal_reason=args.override_seal_reason))


def verify(args: argparse.Namespace) -> int:
    records = read_records(args.file)
    references = None
    if args.reference_file:
        try:
            lines = Path(args.reference_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read {args.reference_file}: {exc.strerror}") from None
        references = [line for line in lines if line.strip()]
    with _client(args) as api:
        accepted = api.verify(args.model, args.version, records, reference_texts=references,
                              override_seal_reason=args.override_seal_reason)
        code = _accepted(api, args, accepted)
        if args.wait and code == 0:  # a report that did not pass fails the command
            report = api.get_job(accepted["job_id"]).get("result") or {}
            return 0 if report.get("passed") else 1
        return code


def generate(args: argparse.Namespace) -> int:
    with _client(args) as api:
        version = args.version or api.get_model(args.model)["active_version"]
        answer = api.generate(args.model, version, args.prompt, args.max_new_tokens,
                              override_seal_reason=args.override_seal_reason)
    if args.json:
        emit_json({"version": version, **answer})
    else:
        print(answer["text"])
    return 0


# ---------------------------------------------------------------------- keys
def keys_create(args: argparse.Namespace) -> int:
    with _client(args) as api:
        created = api.create_key(args.role, args.models)
    if args.json:
        emit_json(created)
    else:
        print(f"key {created['id']} ({created['role']}) created; it is shown only once:")
        print(created["key"])
    return 0


def keys_list(args: argparse.Namespace) -> int:
    with _client(args) as api:
        keys = api.list_keys(limit=args.limit)
    emit_json(keys) if args.json else table(keys, KEY_COLUMNS)
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    with _client(args) as api:
        key = api.revoke_key(args.key)
    emit_json(key) if args.json else print(f"key {key['id']} revoked")
    return 0


__all__ = ["Command", "JobFailed", "UsageError", "emit_error", "read_records"]
