"""How every settings class reads its values: variables, `*_FILE` secrets, clear errors.

A settings class (`EnvSettings` subclass) declares fields; field `name` is the variable
`ZEROUNLEARN_<NAME>`, or the alias the field gives (REDIS_URL). `EnvironSource` reads
them, the same way for every class:

- an empty variable counts as unset (compose's `${X:-}` passes one), unless the field is
  marked `EMPTY_IS_A_VALUE` (a rate limit: "" switches it off);
- a secret field (typed SecretStr or SecretText) may be given as a file instead: `X_FILE`
  names a file whose content, stripped, is the value (Docker and Kubernetes secrets).
  X and X_FILE both set is an error, and so is an unreadable or empty file;
- names match whatever their case (pydantic-settings' default);
- `EnvSettings.load` turns every bad value into one line of a SettingsError that names
  the variable and, unless the field is secret, quotes the value.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import GetCoreSchemaHandler, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import CoreSchema, ErrorDetails, core_schema
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "ZEROUNLEARN_"
FILE_SUFFIX = "_FILE"
"""`X_FILE` holds the path of a file whose content is secret X."""


class SettingsError(ValueError):
    """Bad settings: one line per problem, each naming its variable."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class SecretText(str):
    """A secret that code passes on as text (a URL with a password in it): a str, so it
    goes to SQLAlchemy or redis unchanged, hidden from repr (and so from the settings'
    repr), with SecretStr's get_secret_value() for code written for that."""

    def __repr__(self) -> str:
        return "SecretText('**********')" if self else "SecretText('')"

    def get_secret_value(self) -> str:
        return str(self)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(cls, core_schema.str_schema())


class EmptyIsAValue:
    """Field marker (`Annotated[str, EMPTY_IS_A_VALUE]`): an empty variable is the value
    "", not "unset"."""


EMPTY_IS_A_VALUE = EmptyIsAValue()

# The variables EnvironSource reads: os.environ unless EnvSettings.load was given others.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("zerounlearn_environ", default=None)


def annotation_types(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation admits (`X | None` -> (X, NoneType))."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def is_secret(field: FieldInfo) -> bool:
    """Is this field a secret (never echoed; may be given as a file)?"""
    return any(isinstance(t, type) and issubclass(t, SecretStr | SecretText)
               for t in annotation_types(field.annotation))


def _empty_is_a_value(field: FieldInfo) -> bool:
    return any(isinstance(m, EmptyIsAValue) for m in field.metadata)


class EnvironSource(PydanticBaseSettingsSource):
    """The settings source of every EnvSettings class (see the module docstring)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads every field itself

    def __call__(self) -> dict[str, Any]:
        given = _ENVIRON.get()
        environ = {k.upper(): v for k, v in (os.environ if given is None else given).items()}
        settings_cls = typing.cast(type[EnvSettings], self.settings_cls)
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, field in settings_cls.model_fields.items():
            variable = settings_cls.variable(name)
            value = environ.get(variable)
            if value is not None and not value.strip() and not _empty_is_a_value(field):
                value = None
            if is_secret(field):
                value = _from_file(variable, value, environ, problems)
            if value is not None:
                values[name] = value
        if problems:
            raise SettingsError(*problems)
        return values


def _from_file(
    variable: str, value: str | None, environ: Mapping[str, str], problems: list[str]
) -> str | None:
    """The secret's value: `variable`, or the content of the file `variable_FILE` names."""
    path = (environ.get(variable + FILE_SUFFIX) or "").strip()
    if not path:
        return value
    if value is not None:
        problems.append(f"{variable} and {variable}{FILE_SUFFIX} are both set: give one")
        return None
    try:
        content = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{variable}{FILE_SUFFIX}: cannot read {path} ({type(exc).__name__})")
        return None
    if not content:
        problems.append(f"{variable}{FILE_SUFFIX}: {path} is empty")
        return None
    return content


def variable_given(environ: Mapping[str, str] | None, variable: str) -> bool:
    """Is `variable` (or `variable_FILE`) set to something non-empty?"""
    env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    return any((env.get(name) or "").strip() for name in (variable, variable + FILE_SUFFIX))


@contextmanager
def _reading(environ: Mapping[str, str] | None) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


class EnvSettings(BaseSettings):
    """Base of every settings class: read by EnvironSource, frozen once read."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, populate_by_name=True, extra="ignore", frozen=True
    )
    readers: ClassVar[str] = ""
    """Who reads the variables this class declares (the configuration table's column)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # keyword arguments first (tests, overrides), then the variables; no .env files
        return init_settings, EnvironSource(settings_cls)

    @classmethod
    def variable(cls, name: str) -> str:
        """The variable that sets field `name`."""
        alias = cls.model_fields[name].validation_alias
        return alias if isinstance(alias, str) else ENV_PREFIX + name.upper()

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """The settings from `environ` (default os.environ), keyword arguments winning;
        SettingsError with one line per bad value."""
        try:
            with _reading(environ):
                return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(*(cls._problem(err) for err in exc.errors())) from None

    @classmethod
    def _problem(cls, err: ErrorDetails) -> str:
        if not err["loc"]:  # a check across fields: its message names the variables
            return _message(err, seconds=False)
        name = str(err["loc"][0])
        field_name = next((f for f in cls.model_fields if cls.variable(f) == name), name)
        if field_name not in cls.model_fields:
            return f"{name}: {_message(err, seconds=False)}"
        shown = "" if is_secret(cls.model_fields[field_name]) else f" (got {err['input']!r})"
        message = _message(err, seconds=field_name.endswith("_s"))
        return f"{cls.variable(field_name)}: {message}{shown}"


_PLAIN_MESSAGES = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "bool_parsing": "must be 1 or 0 (true or false)",
    "finite_number": "must be a finite number",
}


def _message(err: ErrorDetails, seconds: bool) -> str:
    """pydantic's message in the words of a configuration error."""
    if err["type"] in ("float_parsing", "float_type"):
        return "must be a number of seconds" if seconds else "must be a number"
    if err["type"] in _PLAIN_MESSAGES:
        return _PLAIN_MESSAGES[err["type"]]
    context = err.get("ctx") or {}
    if err["type"] in ("too_short", "string_too_short"):
        return f"must be at least {context.get('min_length')} characters long"
    if err["type"] in ("too_long", "string_too_long"):
        return f"must be at most {context.get('max_length')} characters long"
    message = err["msg"].removeprefix("Value error, ")
    return message.replace("Input should be", "must be", 1)
