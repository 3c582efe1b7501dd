"""The quality gate a forget request asks for.

The worker publishes a new version only if it meets the gate (worker/gate.py). The
server's defaults apply (ZEROUNLEARN_GATE_*); any caller may tighten them (lower
values); only an admin key may loosen them (higher values), never past the server's
limits (ZEROUNLEARN_GATE_LIMIT_*), and a loosening is written to the audit trail.
"""

from __future__ import annotations

from typing import Any

from app.auth import Principal
from app.errors import Forbidden, InvalidInput
from app.schemas import QualityGate
from app.settings import Settings

LOOSENED = "quality_gate.loosened"
"""Audit action of a request that loosened the gate (detail: default and requested)."""


def requested_gate(
    settings: Settings, who: Principal, gate: QualityGate | None
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """(the request's own gate values, for the worker; the audit detail of a loosening
    or None). 422 past a server limit; 403 when a non-admin key loosens."""
    asked = gate.model_dump(exclude_none=True) if gate is not None else {}
    defaults, limits = settings.gate_defaults, settings.gate_limits
    loosened: dict[str, dict[str, float]] = {}
    for name, value in asked.items():
        if value > limits[name]:
            raise InvalidInput(
                f"quality_gate.{name}: at most {limits[name]:g} (the server's limit)"
            )
        if value > defaults[name]:
            loosened[name] = {"default": defaults[name], "requested": value}
    if loosened and not who.at_least("admin"):
        raise Forbidden(
            f"quality_gate: {', '.join(sorted(loosened))} looser than the server's default; "
            "only an admin key may loosen the quality gate"
        )
    return asked, ({"loosened": loosened} if loosened else None)
