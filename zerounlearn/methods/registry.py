"""The method registry: names -> unlearning method classes.

The names and their hyper-parameter classes are one table, zerounlearn.config's
HPARAMS_CLASSES (torch-free: the API reads its accepted names there). A method is a class
with a `name` and `compute_patch(lm, records, hparams, *, stats, progress=None,
retain=None) -> Patch` (retain: facts the model must keep, which a method may protect or
ignore); `@register_method("name")` attaches it to a name of that table. Registering a
name the table lacks raises UnknownMethod, a second registration of a name raises
DuplicateMethod, and importing the built-in methods with a name of the table left
without a class raises UnregisteredMethod. Unknown names in `get_method` raise
UnknownMethod (listing the registered ones). `get_method` returns a NEW instance: an
instance may keep caches (the context templates of the models it has seen), owned by
whoever holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from zerounlearn.config import HPARAMS_CLASSES
from zerounlearn.errors import DuplicateMethod, EngineError, UnknownMethod

Progress = Callable[[str, float], None]


@runtime_checkable
class UnlearningMethod(Protocol):
    name: str

    def compute_patch(
        self,
        lm: Any,
        records: Any,
        hparams: dict[str, Any] | None,
        *,
        stats: Any,
        progress: Progress | None = None,
        retain: Any = None,
    ) -> Any: ...


class UnregisteredMethod(EngineError, LookupError):
    """A name of HPARAMS_CLASSES that no class registered (a method half added)."""


_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: register `cls` under `name`, a name of HPARAMS_CLASSES (and set
    `cls.name`)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a method name must be a non-empty string")
    if name not in HPARAMS_CLASSES:
        raise UnknownMethod(
            f"method {name!r} has no hyper-parameter class: add it to "
            "zerounlearn.config.HPARAMS_CLASSES first"
        )

    def decorate(cls: T) -> T:
        if name in _REGISTRY:
            raise DuplicateMethod(f"method {name!r} is already registered")
        if not callable(getattr(cls, "compute_patch", None)):
            raise TypeError(f"{cls.__name__} has no compute_patch method")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove a registration (tests that take a method away put it back with it)."""
    _REGISTRY.pop(name, None)


def check_complete() -> None:
    """UnregisteredMethod unless every name of HPARAMS_CLASSES has a registered class."""
    missing = [name for name in HPARAMS_CLASSES if name not in _REGISTRY]
    if missing:
        raise UnregisteredMethod(
            f"no method class registered for {', '.join(map(repr, missing))}: decorate "
            "its class with @register_method and import its module in zerounlearn.methods"
        )


def get_method(name: str) -> UnlearningMethod:
    """A new instance of the method registered under `name`."""
    _load_builtins()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownMethod(
            f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY)) or 'none'}"
        )
    method: UnlearningMethod = cls()
    return method


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def _load_builtins() -> None:
    """Importing the package registers the built-in methods (idempotent)."""
    import zerounlearn.methods  # noqa: F401
