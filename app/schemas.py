"""Request and response bodies of the HTTP API (version 1), with OpenAPI examples.

Requests reject unknown fields. Record checks mirror zerounlearn.records (which the
API cannot import: it pulls in torch); token-level checks happen in the worker.
Validation messages name the field and never quote the rejected text.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from store.enums import FACT_STATUSES, JOB_KINDS, JOB_STATUSES, MODEL_STATUSES
from zerounlearn.config import DEFAULT_METHOD, METHOD_NAMES

BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
MAX_TEXT_CHARS = 2000
"""Longest prompt, answer, subject, target, paraphrase or neighbour text."""
MAX_REFERENCE_CHARS = 20_000
MAX_PER_RECORD = 32
"""Most paraphrases, and most neighbours, one record may carry."""
HARD_MAX_RECORDS = 1000
"""Schema ceiling; the configured ZEROUNLEARN_MAX_RECORDS (default 100) applies first."""


HPARAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Engine settings a caller may not set: the corpus statistics are the server's
# (`stats_files` names files on the worker's disk; samples and sequence length would
# make a worker compute new statistics of any size).
SERVER_ONLY_HPARAMS = frozenset({"stats_files", "stats_samples", "stats_seq_len"})


def _hparam_scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value) and abs(value) <= 1e9
    return isinstance(value, str) and len(value) <= 64


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)
]
ReferenceText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_REFERENCE_CHARS), AfterValidator(_not_blank)
]
ModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
]
VersionId = Annotated[str, StringConstraints(pattern=r"^v(0|[1-9][0-9]{0,8})$")]
# The accepted values come from their one list each (the engine's method table, the
# store's enums), as plain strings: OpenAPI shows them inline as `enum`. A type checker
# cannot read a Literal built at run time, so it sees `str`.
if TYPE_CHECKING:
    Method = str
    JobKind = str
    JobStatus = str
    ModelStatus = str
    FactStatus = str
else:
    Method = Literal[METHOD_NAMES]
    JobKind = Literal[tuple(k.value for k in JOB_KINDS)]
    JobStatus = Literal[tuple(s.value for s in JOB_STATUSES)]
    ModelStatus = Literal[tuple(s.value for s in MODEL_STATUSES)]
    FactStatus = Literal[tuple(s.value for s in FACT_STATUSES)]


class Request(BaseModel):
    """Base of request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class NeighborIn(Request):
    prompt: Text
    answer: Text


class RecordIn(Request):
    """One fact to forget (or to check in a verification)."""

    prompt: Text = Field(description="The sensitive prompt, e.g. 'The home town of Jane Roe is'.")
    subject: Text | None = Field(
        None, description="Span of the prompt whose last token is edited; default: last token."
    )
    answer: Text = Field(description="The continuation to forget, with its leading space.")
    target: Text | None = Field(None, description="Neutral continuation; default: end of text.")
    paraphrases: list[Text] = Field(default_factory=list, max_length=MAX_PER_RECORD)
    neighbors: list[NeighborIn] = Field(default_factory=list, max_length=MAX_PER_RECORD)

    @field_validator("subject")
    @classmethod
    def _subject_in_prompt(cls, value: str | None, info: Any) -> str | None:
        prompt = info.data.get("prompt")
        if value is not None and prompt is not None and value not in prompt:
            raise ValueError("must occur in the record's prompt")
        return value


RECORD_EXAMPLE: dict[str, Any] = {
    "prompt": "The home town of Jane Roe is",
    "subject": "Jane Roe",
    "answer": " Springfield",
    "paraphrases": ["Jane Roe grew up in the town of"],
    "neighbors": [{"prompt": "The home town of John Doe is", "answer": " Shelbyville"}],
}


class CreateModel(Request):
    """Register a base model."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "smollm2-demo", "source": BUILTIN_SMOLLM2, "dtype": "float32"}]
        }
    )

    name: ModelName
    source: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description=f"A local Hugging Face directory, a .gguf file, or {BUILTIN_SMOLLM2!r}."
    )
    edit_layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, max_length=64, description="Layers to edit; default: the engine's."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    @field_validator("edit_layers")
    @classmethod
    def _unique(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("must not repeat a layer")
        return value


Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class QualityGate(Request):
    """Limits the new version must meet before it is published; null or absent: the
    server's default. Lower values tighten the gate; higher ones loosen it (admin only,
    within the server's limits)."""

    max_perplexity_increase: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, description="Most % perplexity rise over the parent on the reference texts."
    )
    max_efficacy: Percent | None = Field(
        None, description="Most % of the request's records the new version still reproduces."
    )
    max_neighbor_drop: Percent | None = Field(
        None, description="Most points the neighbours' specificity may fall below the parent's."
    )
    max_guard_drop: Percent | None = Field(
        None, description="Most points the model's guard facts may fall below the parent's."
    )


class ForgetRequest(Request):
    """Forget facts: produces a new version built on base_version."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"records": [RECORD_EXAMPLE], "method": "zerounlearn"}]}
    )

    records: list[RecordIn] = Field(min_length=1, max_length=HARD_MAX_RECORDS)
    method: Method = DEFAULT_METHOD
    base_version: VersionId | None = Field(None, description="Default: the active version.")
    hparams: dict[str, Any] = Field(
        default_factory=dict,
        max_length=64,
        description="Overrides of the method's defaults, checked against the method's "
        "documented ranges (README); the statistics settings are the server's.",
    )
    quality_gate: QualityGate | None = Field(
        None, description="Tighten (or, admin only, loosen) the server's quality gate."
    )
    callback_url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = Field(
        None,
        description="POSTed (signed) when the job ends; its host must be on the allow-list.",
    )

    @field_validator("hparams")
    @classmethod
    def _hparams_shape(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, item in value.items():
            if not HPARAM_NAME_RE.match(name):
                raise ValueError("names must be lower_snake_case identifiers (at most 64 chars)")
            if name in SERVER_ONLY_HPARAMS:
                raise ValueError(f"{name} is a server setting and cannot be set per request")
            items = item if isinstance(item, list) else [item]
            if isinstance(item, list) and len(item) > 64:
                raise ValueError(f"{name}: at most 64 values")
            for one in items:
                if not _hparam_scalar(one):
                    raise ValueError(
                        f"{name}: values must be null, booleans, finite numbers within "
                        "1e9, or strings of at most 64 characters (or lists of them)"
                    )
        return value


class VerifyThresholds(Request):
    """Pass/fail limits of a verification; metrics are percentages (0-100); null: unchecked."""

    max_efficacy: float | None = Field(
        0.0, ge=0, le=100, description="Most % of forget prompts still answered (default 0)."
    )
    max_generalization: float | None = Field(
        None, ge=0, le=100, description="Most % of paraphrases still answered; null: unchecked."
    )
    min_specificity: float | None = Field(
        50.0, ge=0, le=100, description="Least % of neighbours still answered (default 50)."
    )
    max_specificity_drop: float | None = Field(
        None, ge=0, le=100, description="Most points specificity may drop below the parent's."
    )
    max_perplexity_increase: float | None = Field(
        10.0, ge=0, description="Most % perplexity rise over the parent version (default 10)."
    )
    max_probe_context: float | None = Field(
        10.0, ge=0, le=100,
        description="Most % of forgotten records found again when the prompt follows a few "
        "unrelated true sentences (default 10).",
    )
    max_probe_chat: float | None = Field(
        10.0, ge=0, le=100,
        description="Most % of forgotten records found again through the model's chat "
        "template (default 10; unchecked without a template).",
    )
    max_probe_greedy: float | None = Field(
        10.0, ge=0, le=100,
        description="Most % of forgotten records found again by greedy generation (default 10).",
    )
    max_probe_int8: float | None = Field(
        10.0, ge=0, le=100,
        description="Most % of forgotten records reproduced again with int8-quantised linear "
        "weights (default 10).",
    )


class VerifyRequest(Request):
    """Verify that a version forgot the records and kept the rest."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"records": [RECORD_EXAMPLE]}]})

    records: list[RecordIn] = Field(min_length=1, max_length=HARD_MAX_RECORDS)
    reference_texts: list[ReferenceText] | None = Field(
        None, min_length=1, max_length=100, description="Perplexity texts; default: built-in."
    )
    thresholds: VerifyThresholds = Field(
        default_factory=lambda: VerifyThresholds.model_validate({})
    )


class GenerateRequest(Request):
    """Generate a continuation with a version (for dashboards and manual checks)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"prompt": "The capital of France is", "max_new_tokens": 8}]
        }
    )

    prompt: Text
    max_new_tokens: int = Field(32, ge=1, le=4096)


# ------------------------------------------------------------------- responses
class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "model_not_found", "message": "model 'm-0' not found"}}]
        }
    )

    error: ErrorDetail


class ModelOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "m-0123456789ab",
                    "name": "smollm2-demo",
                    "source": BUILTIN_SMOLLM2,
                    "architecture": "LlamaForCausalLM",
                    "num_layers": 30,
                    "edit_layers": [19, 20, 21],
                    "dtype": "float32",
                    "active_version": "v1",
                    "status": "ready",
                    "error": None,
                    "created_at": "2025-01-31T12:00:00.000Z",
                }
            ]
        }
    )

    id: str
    name: str
    source: str
    architecture: str | None = None
    num_layers: int | None = None
    edit_layers: list[int] | None = None
    dtype: str = "float32"
    active_version: str
    status: ModelStatus
    error: dict[str, Any] | str | None = None
    created_at: str
    prepare_job_id: str | None = Field(None, description="The job preparing the model.")


class Progress(BaseModel):
    phase: str | None = None
    fraction: float | None = 0.0


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "j-0123456789abcdef",
                    "kind": "forget",
                    "model_id": "m-0123456789ab",
                    "version": "v0",
                    "status": "succeeded",
                    "progress": {"phase": "evaluate", "fraction": 1.0},
                    "created_at": "2025-01-31T12:00:00.000Z",
                    "started_at": "2025-01-31T12:00:01.000Z",
                    "finished_at": "2025-01-31T12:00:40.000Z",
                    "result": {"version": "v1"},
                    "error": None,
                }
            ]
        }
    )

    id: str
    kind: JobKind
    model_id: str
    version: str | None = Field(
        None,
        description="The version the job works on. A forget job's base: with base 'active' "
        "the active version at submission while queued, the version it built on once "
        "running.",
    )
    base: Literal["active", "explicit"] | None = Field(
        None,
        description="Forget jobs: 'active' builds on the version active when the job runs "
        "(no base_version given), 'explicit' on the base_version given.",
    )
    coalesced_into: str | None = Field(
        None, description="Forget jobs: the job whose edit this one joined (one version)."
    )
    status: JobStatus
    progress: Progress = Field(default_factory=Progress)
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = Field(None, description='{"code", "message"} when failed.')
    timings: dict[str, float] | None = Field(
        None, description="Seconds spent per phase, once the job has ended."
    )


class JobAccepted(BaseModel):
    """Answer to a request that queued a job (202)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "j-0123456789abcdef",
                    "status": "queued",
                    "links": {"job": "/v1/jobs/j-0123456789abcdef"},
                }
            ]
        }
    )

    job_id: str
    status: JobStatus
    links: dict[str, str]


class PatchInfo(BaseModel):
    bytes: int
    sha256: str
    layers: list[int] = Field(default_factory=list)


class VersionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "v1",
                    "parent": "v0",
                    "created_at": "2025-01-31T12:00:40.000Z",
                    "method": "zerounlearn",
                    "hparams": {"layers": [19, 20, 21]},
                    "job_id": "j-0123456789abcdef",
                    "records": [{"sha256": "9f86d081884c7d65" * 4}],
                    "patch": {"bytes": 10617088, "sha256": "2c26b46b68ffc68f" * 4, "layers": [19]},
                    "metrics": {"efficacy": 0.0, "specificity": 80.0},
                    "active": True,
                }
            ]
        }
    )

    id: str
    parent: str | None = None
    created_at: str
    method: str | None = None
    hparams: dict[str, Any] | None = None
    job_id: str | None = None
    jobs: list[str] | None = Field(
        None, description="Every forget job this version served (coalesced requests)."
    )
    records: list[dict[str, str]] = Field(default_factory=list)
    patch: PatchInfo | None = None
    metrics: dict[str, Any] | None = None
    retain: dict[str, Any] | None = Field(
        None, description="The retain bank in this edit, text-free: bank_facts (known facts "
        "given), bank_digest (sha256 of their sorted hashes), left_bank (hashes of bank "
        "facts this version forgot), engine (how many were protected).")
    active: bool
    sealed: bool = Field(False, description="Holds records a later forget deleted: "
                         "generate, export, verify, activate and base use give 409 "
                         "version_sealed unless an admin overrides (override_seal_reason).")
    sealed_by: list[str] = Field(default_factory=list,
                                 description="The forget requests (job ids) that sealed it.")
    sealed_at: str | None = None
    deleted: bool = Field(False, description="Its patch and exports were deleted (DELETE); "
                          "the manifest stays so lineage and receipts resolve.")
    deleted_at: str | None = None
    compacted: dict[str, Any] | None = Field(
        None, description="Rewritten as one patch from v0 (POST .../compact): "
        "{patch {bytes, sha256, layers, key}, job_id, replaces, at}.")


class GenerateOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": " Paris."}]})

    text: str
