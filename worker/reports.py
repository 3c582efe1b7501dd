"""The verification report: a version against its parent, judged by thresholds.

Metrics are the engine's (`zerounlearn.evaluate`), all percentages except perplexity:
efficacy (% forget prompts whose answer is still fully reproduced), generalization (the
same on paraphrases), specificity (% neighbour prompts still answered) and perplexity
on reference texts. Probes (`zerounlearn.probes`) ask for each forgotten fact in other
ways: after unrelated true sentences (context), through the chat template (chat), by
greedy generation (greedy) and with int8-quantised linear weights (int8); a probe's
value is the % of the records the version forgot (answer no longer reproduced) that
the probe finds on the version.

Thresholds (names and defaults shared with the API's VerifyThresholds):

| threshold                  | default | passes when                                      |
|----------------------------|---------|--------------------------------------------------|
| max_efficacy               | 0       | version efficacy <= it                           |
| max_generalization         | null    | version generalization <= it (null: unchecked)   |
| min_specificity            | 50      | version specificity >= it                        |
| max_specificity_drop       | null    | parent - version specificity <= it (null: no)    |
| max_perplexity_increase    | 10      | % perplexity rise over the parent <= it          |
| max_probe_context          | 10      | % of forgotten records the context probe finds   |
| max_probe_chat             | 10      | ... the chat-template probe finds                |
| max_probe_greedy           | 10      | ... greedy generation finds                      |
| max_probe_int8             | 10      | ... the int8-quantised model reproduces          |

A metric the engine could not compute (None: no paraphrases or neighbours given, no
chat template, no record forgotten) is reported with `"passed": null` and does not fail
the report.
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
    "max_probe_context": 10.0,
    "max_probe_chat": 10.0,
    "max_probe_greedy": 10.0,
    "max_probe_int8": 10.0,
}
"""Used for every threshold a verify request leaves out (see the table above)."""

PROBE_THRESHOLDS: dict[str, str] = {
    "context": "max_probe_context",
    "chat": "max_probe_chat",
    "greedy": "max_probe_greedy",
    "int8": "max_probe_int8",
}
"""Probe name (zerounlearn.probes.PROBES) -> its threshold."""


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
    version: dict[str, Any],
    parent: dict[str, Any],
    thresholds: dict[str, float | None],
    probes: dict[str, dict[str, Any]] | None = None,
) -> tuple[bool, list[dict[str, Any]]]:
    """(passed, checks) for two evaluation summaries and, when given, the probes'
    findings on forgotten records (`probe_findings`)."""
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
    for name, key in PROBE_THRESHOLDS.items():
        if probes is not None and name in probes:
            candidates.append(
                _check(f"probe_{name}", probes[name]["pct"], thresholds.get(key), True)
            )
    checks = [c for c in candidates if c is not None]
    return all(c["passed"] is not False for c in checks), checks


def probe_findings(
    forgotten: list[bool], probe_records: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per probe: {"found", "of", "pct"} over the records the version forgot; None
    where the probe did not run (no chat template) or no record was forgotten."""
    findings: dict[str, dict[str, Any]] = {}
    for name in PROBE_THRESHOLDS:
        flags = [rec["found"].get(name) for rec, gone in zip(probe_records, forgotten,
                                                             strict=True) if gone]
        if not flags or any(f is None for f in flags):
            findings[name] = {"found": None, "of": len(flags), "pct": None}
            continue
        hits = sum(bool(f) for f in flags)
        findings[name] = {"found": hits, "of": len(flags), "pct": 100.0 * hits / len(flags)}
    return findings


def verification_report(
    version_id: str,
    parent_id: str | None,
    after: dict[str, Any],
    before: dict[str, Any],
    thresholds: dict[str, float | None],
    probes_after: dict[str, Any] | None = None,
    probes_before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The verify job's result: summaries, per-record before/after, checks, passed.

    `after` and `before` are `zerounlearn.evaluate` results for the version and its
    parent on the same records; `probes_after` / `probes_before` the
    `zerounlearn.probes.probe` results, when run. Per-record entries carry no text,
    only metrics: with probes, `probes: {"after", "before"}` (probe -> found).
    """
    records = []
    for index, (rec_after, rec_before) in enumerate(
        zip(after.get("records", []), before.get("records", []), strict=True)
    ):
        entry = {
            "index": index,
            "forgotten": not _recalled(rec_after),
            "before": rec_before,
            "after": rec_after,
        }
        if probes_after is not None:
            entry["probes"] = {
                "after": probes_after["records"][index]["found"],
                "before": (probes_before["records"][index]["found"]
                           if probes_before is not None else None),
            }
        records.append(entry)
    findings = None
    if probes_after is not None:
        findings = probe_findings([r["forgotten"] for r in records], probes_after["records"])
    passed, checks = judge(after["summary"], before["summary"], thresholds, findings)
    report = {
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
    if probes_after is not None:
        report["probes"] = {
            "forgotten": findings,  # what the probe_* checks judge
            "version": probes_after["summary"],
            "parent": probes_before["summary"] if probes_before is not None else None,
        }
    return report


def _recalled(record_metrics: dict[str, Any]) -> bool:
    """Whether the evaluated record's answer is still fully reproduced."""
    if "reproduced" in record_metrics:
        return bool(record_metrics["reproduced"])
    if "forgotten" in record_metrics:
        return not record_metrics["forgotten"]
    raise KeyError("the engine's per-record metrics do not say whether the answer is recalled")
