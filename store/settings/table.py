"""The configuration table: every variable, rendered from the settings classes.

`python -m store.settings` prints it (Markdown); the README's "Configuration" section
lists the same variables (tests/store/test_settings.py checks it).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from store.settings.api import ApiSettings, ConnectionSettings, LocalStackSettings
from store.settings.service import (
    BlobSettings,
    DatabaseSettings,
    LoggingSettings,
    ServiceSettings,
)
from store.settings.source import FILE_SUFFIX, EnvSettings, annotation_types, is_secret
from store.settings.worker import WorkerSettings

SETTINGS_CLASSES: tuple[type[EnvSettings], ...] = (
    DatabaseSettings, BlobSettings, LoggingSettings, ServiceSettings,
    ConnectionSettings, ApiSettings, LocalStackSettings, WorkerSettings,
)
"""Every settings class; each variable is declared by exactly one of them."""


def own_fields(cls: type[EnvSettings]) -> list[str]:
    """The fields `cls` declares itself (not those it inherits)."""
    return [name for name in vars(cls).get("__annotations__", {}) if name in cls.model_fields]


def variables() -> dict[str, tuple[type[EnvSettings], str]]:
    """Every variable: the class that declares it and the field's name."""
    return {cls.variable(name): (cls, name) for cls in SETTINGS_CLASSES
            for name in own_fields(cls)}


def _type(field: FieldInfo) -> str:
    if is_secret(field):
        return "secret"
    kinds = [t for t in annotation_types(field.annotation) if t is not type(None)]
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is typing.Literal:
        return " \\| ".join(str(v) for v in typing.get_args(kinds[0]))
    names = {Path: "path", int: "integer", float: "number", bool: "0/1", str: "text"}
    return " \\| ".join(names.get(t, getattr(t, "__name__", str(t))) for t in kinds)


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if value == "":
        return '`""`'
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"`{value}`"


def render_table() -> str:
    """A Markdown table of every variable: name, type, default, readers, description."""
    lines = ["| variable | type | default | read by | description |", "|---|---|---|---|---|"]
    for variable, (cls, name) in variables().items():
        field = cls.model_fields[name]
        default = "unset" if is_secret(field) else _default(field.default)
        also = f" (or `{variable}{FILE_SUFFIX}`: a file holding it)" if is_secret(field) else ""
        lines.append(f"| `{variable}` | {_type(field)} | {default} | {cls.readers} | "
                     f"{field.description or ''}{also} |")
    return "\n".join(lines)
