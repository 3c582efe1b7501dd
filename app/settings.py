"""The API's settings: store.settings.ApiSettings, under the names the API's modules use.

Every variable, the API's and those it shares with the worker, is declared and validated
once in store.settings (`python -m store.settings` prints them all).
"""

from __future__ import annotations

from typing import Any

from store.settings import ApiSettings, SettingsError

Settings = ApiSettings
"""Everything the API can be told from outside; one instance per app (app.state)."""

__all__ = ["Settings", "SettingsError", "load_settings"]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (keyword arguments win); SettingsError with one line
    per bad variable."""
    return Settings.load(**overrides)
