"""Named engine errors.

Each subclass also derives from the builtin it resembles, so callers can catch either
(`except KeyError` still catches an unknown method). Messages never contain the text of
a forget request: they name the field and the record index instead.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidRecord(EngineError, ValueError):
    """A forget record is malformed (empty answer, subject not in prompt, too long...)."""


class InvalidHyperParameters(EngineError, ValueError):
    """A hyper-parameter is missing, of the wrong type or out of range."""


class LayerOutOfRange(InvalidHyperParameters):
    """An edit layer index does not exist in the model."""


class UnsupportedArchitecture(EngineError, ValueError):
    """The model's architecture has no adapter; the message lists the supported ones."""


class ModelLoadError(EngineError, OSError):
    """A model source could not be found or loaded."""


class UnknownMethod(EngineError, KeyError):
    """No unlearning method is registered under that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateMethod(EngineError, ValueError):
    """A method name is registered twice."""


class NonFiniteResult(EngineError, ArithmeticError):
    """An edit produced NaN or inf weights; the patch is refused."""


class PatchMismatch(EngineError, ValueError):
    """A patch does not fit the model it is applied to (shape, layer or architecture)."""
