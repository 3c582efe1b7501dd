"""Store errors: small and flat; the API maps them to HTTP in one place."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class NotFound(StoreError, KeyError):
    """A model, version or job that does not exist (or an id that cannot exist).

    kind: "model" | "version" | "job" | "patch", so callers can name what is missing.
    """

    def __init__(self, message: str, *, kind: str = "item") -> None:
        super().__init__(message)
        self.kind = kind

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Conflict(StoreError):
    """The write would clash with what is already stored (an existing id, ...)."""


class InvalidDocument(StoreError, ValueError):
    """A document the store refuses to write (unknown kind or status, raw record text...)."""


class CorruptDocument(StoreError, ValueError):
    """A stored document that is not valid JSON or not a JSON object."""
