"""The method registry: names -> unlearning method classes.

A method is a class with a `name` and `compute_patch(lm, records, hparams, *, stats,
progress=None, retain=None) -> Patch` (retain: facts the model must keep, which a
method may protect or ignore); `@register_method("name")` adds it. Unknown names raise
UnknownMethod (listing the registered ones), a second registration of a name raises
DuplicateMethod. `get_method` returns a NEW instance: an instance may keep caches (the
context templates of the models it has seen), owned by whoever holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from zerounlearn.errors import DuplicateMethod, UnknownMethod

Progress = Callable[[str, float], None]


@runtime_checkable
class UnlearningMethod(Protocol):
    name: str

    def compute_patch(
        self,
        lm: Any,
        records: Any,
        hparams: dict | None,
        *,
        stats: Any,
        progress: Progress | None = None,
        retain: Any = None,
    ) -> Any: ...


_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: register `cls` under `name` (and set `cls.name`)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a method name must be a non-empty string")

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
    """Remove a registration (tests that register their own methods clean up with it)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> UnlearningMethod:
    """A new instance of the method registered under `name`."""
    _load_builtins()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownMethod(
            f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY)) or 'none'}"
        )
    return cls()


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def _load_builtins() -> None:
    """Importing the package registers the built-in methods (idempotent)."""
    import zerounlearn.methods  # noqa: F401
