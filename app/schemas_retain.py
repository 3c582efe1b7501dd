"""Bodies of the retain-bank endpoints: facts a model must keep.

A fact in: {"prompt", "answer", "subject"?, "relation"?}, the same text rules as a
forget record. Out: its id, salted sha256 and measurement status; the text only for an
admin who asks for it (?include_text=true).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.schemas import FactStatus, JobStatus, Request, Text

MAX_FACTS_PER_REQUEST = 1000
"""Most facts one POST may add (the body limit, 1 MiB by default, applies too)."""
FACT_EXAMPLE: dict[str, Any] = {
    "prompt": "The capital of Spain is", "answer": " Madrid", "subject": "Spain",
}


class RetainFactIn(Request):
    """One fact the model must keep."""

    model_config = ConfigDict(json_schema_extra={"examples": [FACT_EXAMPLE]})

    prompt: Text = Field(description="The prompt, e.g. 'The capital of Spain is'.")
    answer: Text = Field(description="The continuation the model must keep, leading space "
                         "included.")
    subject: Text | None = Field(None, description="Span of the prompt naming the subject.")
    relation: Text | None = Field(None, description="Optional label, e.g. 'capital'.")

    @field_validator("subject")
    @classmethod
    def _subject_in_prompt(cls, value: str | None, info: Any) -> str | None:
        prompt = info.data.get("prompt")
        if value is not None and prompt is not None and value not in prompt:
            raise ValueError("must occur in the fact's prompt")
        return value


class RetainFactOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "f-0123456789abcdef",
                    "sha256": "9f86d081884c7d65" * 4,
                    "status": "known",
                    "measured_on": "v0",
                    "measured_at": "2025-01-31T12:00:40.000Z",
                    "origin": "api",
                    "added_by": "k-0123456789abcdef",
                    "added_at": "2025-01-31T12:00:00.000Z",
                }
            ]
        }
    )

    id: str
    sha256: str = Field(description="HMAC-SHA256 of prompt and answer (installation salt).")
    status: FactStatus = Field(description="pending: not measured yet; known: the model "
                               "reproduces it (protected); unknown: it does not; invalid: "
                               "it does not fit the model.")
    measured_on: str | None = None
    measured_at: str | None = None
    origin: str = Field(description="api, or builtin (the built-in model's bank).")
    added_by: str | None = None
    added_at: str
    prompt: str | None = Field(None, description="Only with ?include_text=true (admin).")
    answer: str | None = None
    subject: str | None = None
    relation: str | None = None


class RetainCounts(BaseModel):
    pending: int = 0
    known: int = 0
    unknown: int = 0
    invalid: int = 0
    total: int = 0


class RetainBankOut(BaseModel):
    """A model's retain bank: ids, hashes and statuses (text only on request, admin)."""

    model_id: str
    counts: RetainCounts
    facts: list[RetainFactOut]


class RetainAdded(BaseModel):
    """Answer to adding facts: their ids in the order given, and the measuring job."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "added": 2,
                    "existing": 1,
                    "ids": ["f-0123456789abcdef", "f-fedcba9876543210", "f-00112233aabbccdd"],
                    "counts": {"pending": 2, "known": 40, "unknown": 1, "invalid": 0,
                               "total": 43},
                    "job_id": "j-0123456789abcdef",
                    "status": "queued",
                    "links": {"job": "/v1/jobs/j-0123456789abcdef"},
                }
            ]
        }
    )

    added: int
    existing: int = Field(description="Facts that were in the bank already (left as they are).")
    ids: list[str]
    counts: RetainCounts
    job_id: str | None = Field(None, description="The job measuring the pending facts; null "
                               "while the model prepares (its prepare job measures them).")
    status: JobStatus | None = None
    links: dict[str, str] = Field(default_factory=dict)
