"""`Client`: one method per API call, JSON in and out, errors as exceptions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import httpx

from client.errors import ConnectionFailed, JobFailed, Timeout, error_for
from client.paging import next_link

Json = dict[str, Any]
ProgressCallback = Callable[[Json], None]
"""Called with the job document at every poll of `wait_job`."""
TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT_URL = "http://127.0.0.1:8000"
MAX_PAGE = 1000
"""The largest page the API serves."""


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
        response = self._send(method, path, json=json, params=params, headers=headers,
                              content=content)
        if not response.content:
            return None
        return response.json()

    def _object(self, method: str, path: str, **options: Any) -> Json:
        """`request`, for the calls whose answer is a JSON object (every call but the
        list pages, whose items `items` yields)."""
        return cast(Json, self.request(method, path, **options))

    def pages(self, path: str, params: dict[str, Any] | None = None, *,
              page_size: int | None = None) -> Iterator[Any]:
        """GET `path` and every next page its `Link: rel="next"` header names: each
        page's decoded JSON body, in order (the last page has no such header)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if page_size is not None:
            query["limit"] = page_size
        url: str | None = path
        while url is not None:
            response = self._send("GET", url, params=query or None)
            yield response.json()
            url, query = next_link(response.headers.get("link"), str(response.url)), {}

    def items(self, path: str, params: dict[str, Any] | None = None, *,
              limit: int | None = None, field: str | None = None) -> Iterator[Json]:
        """The items of every page of a list (`field`: where an object page keeps
        them, e.g. "items"); at most `limit` of them (pages sized to match)."""
        if limit is not None and limit <= 0:
            return
        size = min(limit, MAX_PAGE) if limit is not None else None
        count = 0
        for page in self.pages(path, params, page_size=size):
            for item in (page[field] if field else page):
                yield item
                count += 1
                if limit is not None and count >= limit:
                    return

    def _send(self, method: str, path: str, *, json: Any = None,
              params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
              content: bytes | None = None) -> httpx.Response:
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
        return response

    # ------------------------------------------------------------------ health
    def health(self) -> Json:
        return self._object("GET", "/healthz")

    def ready(self) -> Json:
        """/readyz; Unavailable (503) when not ready."""
        return self._object("GET", "/readyz")

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
        return self._object("POST", "/v1/models", json=body)

    def list_models(self, *, limit: int | None = None) -> list[Json]:
        """The models (every page; at most `limit`), oldest first."""
        return list(self.items("/v1/models", limit=limit))

    def get_model(self, model_id: str) -> Json:
        return self._object("GET", f"/v1/models/{model_id}")

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
        return self._object("POST", f"/v1/models/{model_id}/forget", json=body,
                             headers=headers, params=_override(override_seal_reason))

    # ------------------------------------------------------------ retain bank
    def add_retain(self, model_id: str, facts: list[Json]) -> Json:
        """Add facts the model must keep ({"prompt", "answer", "subject"?}): {"added",
        "existing", "ids", "counts", "job_id"...}."""
        return self._object("POST", f"/v1/models/{model_id}/retain", json=facts)

    def add_retain_jsonl(self, model_id: str, lines: str | bytes) -> Json:
        """Like add_retain, from JSON lines as they are (errors name the line)."""
        data = lines.encode("utf-8") if isinstance(lines, str) else lines
        return self._object("POST", f"/v1/models/{model_id}/retain", content=data,
                             headers={"Content-Type": "application/x-ndjson"})

    def list_retain(self, model_id: str, *, include_text: bool = False) -> Json:
        """The bank: ids, hashes, statuses (and the text: admin, include_text), every
        page's facts in one list."""
        params = {"include_text": "true"} if include_text else None
        bank: Json = {}
        facts: list[Json] = []
        for page in self.pages(f"/v1/models/{model_id}/retain", params):
            bank = bank or page
            facts += page["facts"]
        return {**bank, "facts": facts}

    def remove_retain(self, model_id: str, fact_id: str) -> Json:
        return self._object("DELETE", f"/v1/models/{model_id}/retain/{fact_id}")

    def measure_retain(self, model_id: str) -> Json:
        """Queue a job measuring every bank fact on the active version."""
        return self._object("POST", f"/v1/models/{model_id}/retain/measure")

    # ------------------------------------------------------------------- jobs
    def list_jobs(self, model_id: str | None = None, status: str | None = None,
                  kind: str | None = None, *, limit: int | None = None,
                  newest_first: bool = False) -> list[Json]:
        """Jobs, oldest (or newest) first, filtered by model, status and kind (every
        page; at most `limit`)."""
        return list(self.iter_jobs(model_id, status, kind, limit=limit,
                                   newest_first=newest_first))

    def iter_jobs(self, model_id: str | None = None, status: str | None = None,
                  kind: str | None = None, *, limit: int | None = None,
                  newest_first: bool = False) -> Iterator[Json]:
        """Like list_jobs, a page at a time: the next page is fetched when needed."""
        params = {"model_id": model_id, "status": status, "kind": kind,
                  "order": "desc" if newest_first else None}
        return self.items("/v1/jobs", params, limit=limit)

    def get_job(self, job_id: str) -> Json:
        return self._object("GET", f"/v1/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> Json:
        return self._object("DELETE", f"/v1/jobs/{job_id}")

    def receipt(self, job_id: str) -> Json:
        return self._object("GET", f"/v1/jobs/{job_id}/receipt")

    def verify_receipt(self, receipt: Json) -> Json:
        return self._object("POST", "/v1/receipts/verify", json=receipt)

    def receipt_keys(self) -> Json:
        """The JWKS of receipts and checkpoints (needs no API key)."""
        return self._object("GET", "/v1/receipts/keys")

    def rotate_receipt_key(self) -> Json:
        """Sign with a new key from now on (admin); the new public JWK."""
        return self._object("POST", "/v1/receipts/keys/rotate")

    def audit_checkpoints(self, after: int = 0, limit: int = 100) -> Json:
        return self._object("GET", "/v1/audit/checkpoints",
                             params={"after": after, "limit": limit})

    def make_audit_checkpoint(self) -> Json:
        """Sign the audit trail's head now (admin)."""
        return self._object("POST", "/v1/audit/checkpoints")

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
    def list_versions(self, model_id: str, *, limit: int | None = None) -> list[Json]:
        """A model's versions, v0 first (every page; at most `limit`)."""
        return list(self.items(f"/v1/models/{model_id}/versions", limit=limit))

    def get_version(self, model_id: str, version: str) -> Json:
        return self._object("GET", f"/v1/models/{model_id}/versions/{version}")

    def activate(self, model_id: str, version: str, *,
                 override_seal_reason: str | None = None) -> Json:
        """Make a version active (admin); a sealed one needs `override_seal_reason`."""
        return self._object("POST", f"/v1/models/{model_id}/versions/{version}/activate",
                             params=_override(override_seal_reason))

    def export(self, model_id: str, version: str, *,
               override_seal_reason: str | None = None) -> Json:
        return self._object("POST", f"/v1/models/{model_id}/versions/{version}/export",
                             params=_override(override_seal_reason))

    def delete_version(self, model_id: str, version: str) -> Json:
        """Delete a version's patch and exports (admin); its manifest stays, marked
        deleted. 409 for v0, the active version, or one a live version is built from."""
        return self._object("DELETE", f"/v1/models/{model_id}/versions/{version}")

    def compact(self, model_id: str, version: str, *,
                override_seal_reason: str | None = None) -> Json:
        """Queue the rewrite of a version as one patch from v0 (admin): a job whose
        result names the versions that can then be deleted."""
        return self._object("POST", f"/v1/models/{model_id}/versions/{version}/compact",
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
        return self._object("POST", f"/v1/models/{model_id}/versions/{version}/verify",
                             json=body, params=_override(override_seal_reason))

    def generate(self, model_id: str, version: str, prompt: str,
                 max_new_tokens: int | None = None, *,
                 override_seal_reason: str | None = None) -> Json:
        body: Json = {"prompt": prompt}
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        return self._object("POST", f"/v1/models/{model_id}/versions/{version}/generate",
                             json=body, params=_override(override_seal_reason))

    # ------------------------------------------------------------------- keys
    def whoami(self) -> Json:
        return self._object("GET", "/v1/keys/me")

    def create_key(self, role: str, models: Iterable[str] | None = None) -> Json:
        body: Json = {"role": role}
        if models is not None:
            body["models"] = list(models)
        return self._object("POST", "/v1/keys", json=body)

    def list_keys(self, *, limit: int | None = None) -> list[Json]:
        """The API keys, oldest first (every page; at most `limit`)."""
        return list(self.items("/v1/keys", limit=limit))

    def revoke_key(self, key_id: str) -> Json:
        return self._object("DELETE", f"/v1/keys/{key_id}")

    # ------------------------------------------------------------------ audit
    def audit(self, after: int = 0, limit: int = 100) -> Json:
        """One page of the audit trail: {"items", "next_after"}."""
        return self._object("GET", "/v1/audit", params={"after": after, "limit": limit})

    def iter_audit(self, after: int = 0, *, limit: int | None = None) -> Iterator[Json]:
        """The audit entries after seq `after`, oldest first, page after page."""
        return self.items("/v1/audit", {"after": after}, limit=limit, field="items")

    def audit_verify(self) -> Json:
        return self._object("GET", "/v1/audit/verify")


def _override(reason: str | None) -> dict[str, str] | None:
    """The query of a call that uses a sealed version anyway (admin; audited)."""
    return {"override_seal_reason": reason} if reason is not None else None
