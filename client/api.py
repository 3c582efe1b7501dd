"""`Client`: one method per API call, JSON in and out, errors as exceptions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

from client.errors import ConnectionFailed, JobFailed, Timeout, error_for

Json = dict[str, Any]
ProgressCallback = Callable[[Json], None]
"""Called with the job document at every poll of `wait_job`."""
TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """The ZeroUnlearn API at `url`, calling with API key `token`."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *,
                 timeout: float = 90.0, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                 transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # --------------------------------------------------------------- plumbing
    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, content: bytes | None = None) -> Any:
        """One call; the decoded JSON answer, or the API's error raised."""
        try:
            response = self.http.request(method, path, json=json, params=params,
                                         headers=headers, content=content)
        except httpx.TimeoutException as exc:
            raise Timeout(f"no answer from {self.url} in time ({type(exc).__name__})",
                          status=0, code="client_timeout") from None
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise error_for(response.status_code, body)
        if not response.content:
            return None
        return response.json()

    # ------------------------------------------------------------------ health
    def health(self) -> Json:
        return self.request("GET", "/healthz")

    def ready(self) -> Json:
        """/readyz; Unavailable (503) when not ready."""
        return self.request("GET", "/readyz")

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    # ------------------------------------------------------------------ models
    def create_model(self, name: str, source: str, *, edit_layers: list[int] | None = None,
                     dtype: str | None = None) -> Json:
        body: Json = {"name": name, "source": source}
        if edit_layers is not None:
            body["edit_layers"] = edit_layers
        if dtype is not None:
            body["dtype"] = dtype
        return self.request("POST", "/v1/models", json=body)

    def list_models(self) -> list[Json]:
        return self.request("GET", "/v1/models")

    def get_model(self, model_id: str) -> Json:
        return self.request("GET", f"/v1/models/{model_id}")

    def wait_model_ready(self, model_id: str, timeout: float = 600.0,
                         interval: float = 0.5) -> Json:
        """Poll until the model is no longer preparing; JobFailed when it failed."""
        deadline = time.monotonic() + timeout
        while True:
            model = self.get_model(model_id)
            if model["status"] == "failed":
                raise JobFailed({"id": model.get("prepare_job_id"), "status": "failed",
                                 "error": model.get("error")})
            if model["status"] == "ready":
                return model
            if time.monotonic() > deadline:
                raise Timeout(f"model {model_id} still preparing after {timeout:g} s",
                              status=0, code="client_timeout")
            time.sleep(interval)

    # ----------------------------------------------------------------- forget
    def forget(self, model_id: str, records: list[Json], *, method: str | None = None,
               base_version: str | None = None, hparams: Json | None = None,
               callback_url: str | None = None, idempotency_key: str | None = None,
               quality_gate: Json | None = None,
               override_seal_reason: str | None = None) -> Json:
        """Queue a forget job: {"job_id", "status", "links"}. A sealed base_version
        needs an admin's `override_seal_reason` (audited)."""
        body: Json = {"records": records}
        for key, value in (("method", method), ("base_version", base_version),
                           ("hparams", hparams), ("callback_url", callback_url),
                           ("quality_gate", quality_gate)):
            if value is not None:
                body[key] = value
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", f"/v1/models/{model_id}/forget", json=body,
                            headers=headers, params=_override(override_seal_reason))

    # ------------------------------------------------------------ retain bank
    def add_retain(self, model_id: str, facts: list[Json]) -> Json:
        """Add facts the model must keep ({"prompt", "answer", "subject"?}): {"added",
        "existing", "ids", "counts", "job_id"...}."""
        return self.request("POST", f"/v1/models/{model_id}/retain", json=facts)

    def add_retain_jsonl(self, model_id: str, lines: str | bytes) -> Json:
        """Like add_retain, from JSON lines as they are (errors name the line)."""
        data = lines.encode("utf-8") if isinstance(lines, str) else lines
        return self.request("POST", f"/v1/models/{model_id}/retain", content=data,
                            headers={"Content-Type": "application/x-ndjson"})

    def list_retain(self, model_id: str, *, include_text: bool = False) -> Json:
        """The bank: ids, hashes, statuses (and the text: admin, include_text)."""
        params = {"include_text": "true"} if include_text else None
        return self.request("GET", f"/v1/models/{model_id}/retain", params=params)

    def remove_retain(self, model_id: str, fact_id: str) -> Json:
        return self.request("DELETE", f"/v1/models/{model_id}/retain/{fact_id}")

    def measure_retain(self, model_id: str) -> Json:
        """Queue a job measuring every bank fact on the active version."""
        return self.request("POST", f"/v1/models/{model_id}/retain/measure")

    # ------------------------------------------------------------------- jobs
    def list_jobs(self, model_id: str | None = None, status: str | None = None) -> list[Json]:
        params = {k: v for k, v in (("model_id", model_id), ("status", status)) if v}
        return self.request("GET", "/v1/jobs", params=params)

    def get_job(self, job_id: str) -> Json:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> Json:
        return self.request("DELETE", f"/v1/jobs/{job_id}")

    def receipt(self, job_id: str) -> Json:
        return self.request("GET", f"/v1/jobs/{job_id}/receipt")

    def verify_receipt(self, receipt: Json) -> Json:
        return self.request("POST", "/v1/receipts/verify", json=receipt)

    def receipt_keys(self) -> Json:
        """The JWKS of receipts and checkpoints (needs no API key)."""
        return self.request("GET", "/v1/receipts/keys")

    def rotate_receipt_key(self) -> Json:
        """Sign with a new key from now on (admin); the new public JWK."""
        return self.request("POST", "/v1/receipts/keys/rotate")

    def audit_checkpoints(self, after: int = 0, limit: int = 100) -> Json:
        return self.request("GET", "/v1/audit/checkpoints",
                            params={"after": after, "limit": limit})

    def make_audit_checkpoint(self) -> Json:
        """Sign the audit trail's head now (admin)."""
        return self.request("POST", "/v1/audit/checkpoints")

    def watch_job(self, job_id: str, *, interval: float = 0.5,
                  timeout: float | None = None) -> Iterator[Json]:
        """Yield the job document at every poll until it has ended (the last one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            yield job
            if job["status"] in TERMINAL:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"job {job_id} still {job['status']} after {timeout:g} s",
                              status=0, code="client_timeout")
            time.sleep(interval)

    def wait_job(self, job_id: str, *, timeout: float | None = 600.0, interval: float = 0.5,
                 on_progress: ProgressCallback | None = None, check: bool = True) -> Json:
        """The job once ended; JobFailed (when `check`) unless it succeeded."""
        job: Json = {}
        for job in self.watch_job(job_id, interval=interval, timeout=timeout):
            if on_progress is not None:
                on_progress(job)
        if check and job.get("status") != "succeeded":
            raise JobFailed(job)
        return job

    # --------------------------------------------------------------- versions
    def list_versions(self, model_id: str) -> list[Json]:
        return self.request("GET", f"/v1/models/{model_id}/versions")

    def get_version(self, model_id: str, version: str) -> Json:
        return self.request("GET", f"/v1/models/{model_id}/versions/{version}")

    def activate(self, model_id: str, version: str, *,
                 override_seal_reason: str | None = None) -> Json:
        """Make a version active (admin); a sealed one needs `override_seal_reason`."""
        return self.request("POST", f"/v1/models/{model_id}/versions/{version}/activate",
                            params=_override(override_seal_reason))

    def export(self, model_id: str, version: str, *,
               override_seal_reason: str | None = None) -> Json:
        return self.request("POST", f"/v1/models/{model_id}/versions/{version}/export",
                            params=_override(override_seal_reason))

    def delete_version(self, model_id: str, version: str) -> Json:
        """Delete a version's patch and exports (admin); its manifest stays, marked
        deleted. 409 for v0, the active version, or one a live version is built from."""
        return self.request("DELETE", f"/v1/models/{model_id}/versions/{version}")

    def compact(self, model_id: str, version: str, *,
                override_seal_reason: str | None = None) -> Json:
        """Queue the rewrite of a version as one patch from v0 (admin): a job whose
        result names the versions that can then be deleted."""
        return self.request("POST", f"/v1/models/{model_id}/versions/{version}/compact",
                            params=_override(override_seal_reason))

    def verify(self, model_id: str, version: str, records: list[Json], *,
               reference_texts: list[str] | None = None,
               thresholds: Json | None = None,
               override_seal_reason: str | None = None) -> Json:
        body: Json = {"records": records}
        if reference_texts is not None:
            body["reference_texts"] = reference_texts
        if thresholds is not None:
            body["thresholds"] = thresholds
        return self.request("POST", f"/v1/models/{model_id}/versions/{version}/verify",
                            json=body, params=_override(override_seal_reason))

    def generate(self, model_id: str, version: str, prompt: str,
                 max_new_tokens: int | None = None, *,
                 override_seal_reason: str | None = None) -> Json:
        body: Json = {"prompt": prompt}
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        return self.request("POST", f"/v1/models/{model_id}/versions/{version}/generate",
                            json=body, params=_override(override_seal_reason))

    # ------------------------------------------------------------------- keys
    def whoami(self) -> Json:
        return self.request("GET", "/v1/keys/me")

    def create_key(self, role: str, models: Iterable[str] | None = None) -> Json:
        body: Json = {"role": role}
        if models is not None:
            body["models"] = list(models)
        return self.request("POST", "/v1/keys", json=body)

    def list_keys(self) -> list[Json]:
        return self.request("GET", "/v1/keys")

    def revoke_key(self, key_id: str) -> Json:
        return self.request("DELETE", f"/v1/keys/{key_id}")

    # ------------------------------------------------------------------ audit
    def audit(self, after: int = 0, limit: int = 100) -> Json:
        return self.request("GET", "/v1/audit", params={"after": after, "limit": limit})

    def audit_verify(self) -> Json:
        return self.request("GET", "/v1/audit/verify")


def _override(reason: str | None) -> dict[str, str] | None:
    """The query of a call that uses a sealed version anyway (admin; audited)."""
    return {"override_seal_reason": reason} if reason is not None else None
