"""The verification report: a version against its parent, judged by thresholds.

Metrics are the engine's (`zerounlearn.evaluate`), all percentages except perplexity:
efficacy (% forget prompts whose answer is still fully reproduced), generalization (the
same on paraphrases), specificity (% neighbour prompts still answered) and perplexity
on reference texts.

Thresholds (names and defaults shared with the API's VerifyThresholds):

| threshold                  | default | passes when                                      |
|----------------------------|---------|--------------------------------------------------|
| max_efficacy               | 0       | version efficacy <= it                           |
| max_generalization         | null    | version generalization <= it (null: unchecked)   |
| min_specificity            | 50      | version specificity >= it                        |
| max_specificity_drop       | null    | parent - version specificity <= it (null: no)    |
| max_perplexity_increase    | 10      | % perplexity rise over the parent <= it          |

A metric the engine could not compute (None: no paraphrases or neighbours given) is
reported with `"passed": null` and does not fail the report.
"""

from __future__ import annotations

import math
from typing import Any

from worker.errors import InvalidThresholds

DEFAULT_THRESHOLDS: dict[str, float | None] = {
    "max_efficacy": 0.0,
    "max_generalization": None,
    "min_specificity": 50.0,
    "max_specificity_drop": None,
    "max_perplexity_increase": 10.0,
}
"""Used for every threshold a verify request leaves out (see the table above)."""


def merge_thresholds(given: dict[str, Any] | None) -> dict[str, float | None]:
    """DEFAULT_THRESHOLDS overridden by `given`; InvalidThresholds for a bad key or value."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InvalidThresholds("thresholds must be an object")
    unknown = sorted(set(given) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise InvalidThresholds(
            f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_THRESHOLDS)}"
        )
    merged = dict(DEFAULT_THRESHOLDS)
    for key, value in given.items():
        if value is None:
            merged[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value
        ):
            raise InvalidThresholds(f"threshold {key} must be a finite number or null")
        if value < 0:
            raise InvalidThresholds(f"threshold {key} must not be negative")
        merged[key] = float(value)
    return merged


def _check(name: str, value: float | None, limit: float | None, upper: bool) -> dict | None:
    if limit is None:
        return None
    passed = None if value is None else (value <= limit if upper else value >= limit)
    return {"name": name, "value": value, "threshold": limit, "passed": passed}


def perplexity_increase_pct(before: float | None, after: float | None) -> float | None:
    """% rise of perplexity from before to after (negative when it fell)."""
    if before is None or after is None or before <= 0 or not math.isfinite(before):
        return None
    return 100.0 * (after - before) / before


def judge(
    version: dict[str, Any], parent: dict[str, Any], thresholds: dict[str, float | None]
) -> tuple[bool, list[dict[str, Any]]]:
    """(passed, checks) for two evaluation summaries."""
    spec_v, spec_p = version.get("specificity"), parent.get("specificity")
    drop = spec_p - spec_v if spec_v is not None and spec_p is not None else None
    ppl = perplexity_increase_pct(parent.get("perplexity"), version.get("perplexity"))
    candidates = [
        _check("efficacy", version.get("efficacy"), thresholds["max_efficacy"], True),
        _check(
            "generalization", version.get("generalization"), thresholds["max_generalization"], True
        ),
        _check("specificity", spec_v, thresholds["min_specificity"], False),
        _check("specificity_drop", drop, thresholds["max_specificity_drop"], True),
        _check("perplexity_increase_pct", ppl, thresholds["max_perplexity_increase"], True),
    ]
    checks = [c for c in candidates if c is not None]
    return all(c["passed"] is not False for c in checks), checks


def verification_report(
    version_id: str,
    parent_id: str | None,
    after: dict[str, Any],
    before: dict[str, Any],
    thresholds: dict[str, float | None],
) -> dict[str, Any]:
    """The verify job's result: summaries, per-record before/after, checks, passed.

    `after` and `before` are `zerounlearn.evaluate` results for the version and its
    parent on the same records; per-record entries carry no text, only metrics.
    """
    records = []
    for index, (rec_after, rec_before) in enumerate(
        zip(after.get("records", []), before.get("records", []), strict=True)
    ):
        records.append(
            {
                "index": index,
                "forgotten": not _recalled(rec_after),
                "before": rec_before,
                "after": rec_after,
            }
        )
    passed, checks = judge(after["summary"], before["summary"], thresholds)
    return {
        "version": version_id,
        "parent": parent_id,
        "passed": passed,
        "thresholds": thresholds,
        "checks": checks,
        "summary": {"version": after["summary"], "parent": before["summary"]},
        "records": records,
        "forgotten": sum(r["forgotten"] for r in records),
        "total": len(records),
    }


def _recalled(record_metrics: dict[str, Any]) -> bool:
    """Whether the evaluated record's answer is still fully reproduced."""
    if "reproduced" in record_metrics:
        return bool(record_metrics["reproduced"])
    if "forgotten" in record_metrics:
        return not record_metrics["forgotten"]
    raise KeyError("the engine's per-record metrics do not say whether the answer is recalled")
