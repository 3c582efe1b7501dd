"""The worker's settings: store.settings.WorkerSettings, under the names the worker uses.

Every variable, the worker's and those it shares with the API, is declared and validated
once in store.settings (`python -m store.settings` prints them all).
"""

from __future__ import annotations

from store.settings import GATE_DEFAULTS, GATE_LIMITS, SettingsError, WorkerSettings

__all__ = ["GATE_DEFAULTS", "GATE_LIMITS", "SettingsError", "WorkerSettings"]
