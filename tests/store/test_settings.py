"""The service's one configuration (store.settings): each variable declared once, secrets
from files, one clear line per bad value, the API and the worker reading the same values,
and the README's table listing every variable."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from store import ArtifactStore
from store.settings import (
    ApiSettings,
    LocalStackSettings,
    ServiceSettings,
    SettingsError,
    WorkerSettings,
)
from store.settings.source import is_secret
from store.settings.table import SETTINGS_CLASSES, own_fields, render_table, variables
from tests.support.redis_dbs import NEVER_CONTACTED

REPO = Path(__file__).resolve().parents[2]
REDIS = NEVER_CONTACTED
SECRET_VALUES = {  # a valid value of every secret variable
    "REDIS_URL": "redis://:pass-7f3a@redis.test:6379/0",
    "ZEROUNLEARN_DATABASE_URL": "postgresql+psycopg://zu:pass-7f3a@db:5432/zerounlearn",
    "ZEROUNLEARN_ADMIN_TOKEN": "admin-" + "7f3a" * 10,
    "ZEROUNLEARN_RECEIPT_KEY": "ab" * 32,
    "ZEROUNLEARN_CALLBACK_SECRET": "callback-" + "7f3a" * 10,
}


def _secret_variables() -> list[str]:
    return [v for v, (cls, name) in variables().items() if is_secret(cls.model_fields[name])]


# ------------------------------------------------------------- declared once
def test_every_variable_is_declared_by_exactly_one_class() -> None:
    declared = [(cls, name) for cls in SETTINGS_CLASSES for name in own_fields(cls)]
    names = [name for _, name in declared]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    names_of = {cls.variable(name) for cls, name in declared}
    assert len(names_of) == len(declared)
    for cls in SETTINGS_CLASSES:  # whatever a class has, some class declares
        assert set(cls.model_fields) <= set(names), cls.__name__
    # the shared ones are ServiceSettings' (or its bases'), inherited by API and worker
    shared = set(ApiSettings.model_fields) & set(WorkerSettings.model_fields)
    assert shared == set(ServiceSettings.model_fields)
    assert {"redis_url", "data_dir", "database_url", "device_class", "log_level",
            "log_format", "store_url"} <= shared


def test_no_validator_hides_another() -> None:
    """pydantic keys validators by name: a subclass's `_x` would silently replace a base
    class's `_x` (and its check) in every class below both."""
    own = []
    for cls in SETTINGS_CLASSES:
        found = cls.__pydantic_decorators__
        own += [n for n in vars(cls) if n in found.field_validators or n in found.model_validators]
    assert len(own) == len(set(own)), sorted(n for n in own if own.count(n) > 1)


def test_every_variable_is_typed_and_described() -> None:
    for variable, (cls, name) in variables().items():
        field = cls.model_fields[name]
        assert field.annotation is not None, variable
        assert field.description and "\n" not in field.description, variable


def test_the_table_has_one_row_per_variable() -> None:
    rows = render_table().splitlines()[2:]
    assert len(rows) == len(variables())
    for variable in variables():
        assert sum(f"| `{variable}` |" in row for row in rows) == 1, variable
    assert "ZEROUNLEARN_ADMIN_TOKEN_FILE" in render_table()


def _readme_configuration_names() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for token in re.findall(r"`([A-Z][A-Z0-9_{},]*)`", section):
        # `ZEROUNLEARN_{PREPARE,FORGET}_TIMEOUT_S` stands for each name it spells
        parts = re.split(r"\{([A-Z0-9_,]+)\}", token)
        choices = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
        names.update("".join(c) for c in itertools.product(*choices))
    return names


def test_the_readme_lists_every_variable() -> None:
    listed = _readme_configuration_names()
    missing = [v for v in variables() if v not in listed]
    assert not missing, f"add to README.md's Configuration table: {missing}"


# ---------------------------------------------------------- secrets as files
@pytest.mark.parametrize("variable", _secret_variables())
def test_a_secret_can_be_given_as_a_file(variable: str, tmp_path: Path) -> None:
    cls, name = variables()[variable]
    target = WorkerSettings if cls is WorkerSettings else LocalStackSettings
    path = tmp_path / "secret"
    path.write_text(SECRET_VALUES[variable] + "\n")  # as `echo value > file` writes it
    path.chmod(0o600)
    settings = target.load({f"{variable}_FILE": str(path)})
    value = getattr(settings, name)
    assert value.get_secret_value() == SECRET_VALUES[variable]
    assert SECRET_VALUES[variable] not in repr(settings)  # hidden, as when given directly

    with pytest.raises(SettingsError) as both:
        target.load({variable: SECRET_VALUES[variable], f"{variable}_FILE": str(path)})
    assert f"{variable} and {variable}_FILE are both set" in str(both.value)


def test_an_unreadable_or_empty_secret_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="ZEROUNLEARN_ADMIN_TOKEN_FILE: cannot read"):
        ApiSettings.load({"ZEROUNLEARN_ADMIN_TOKEN_FILE": str(tmp_path / "absent")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="REDIS_URL_FILE: .* is empty"):
        WorkerSettings.from_env({"REDIS_URL_FILE": str(tmp_path / "empty")})


def test_an_empty_variable_beside_its_file_is_unset(tmp_path: Path) -> None:
    """Compose's `${X:-}` passes X empty: the file then gives the value."""
    (tmp_path / "url").write_text(SECRET_VALUES["REDIS_URL"])
    env = {"REDIS_URL": "", "REDIS_URL_FILE": str(tmp_path / "url")}
    assert WorkerSettings.from_env(env).redis_url == SECRET_VALUES["REDIS_URL"]


def test_the_store_reads_the_database_url_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    (tmp_path / "db-url").write_text(url + "\n")
    monkeypatch.delenv("ZEROUNLEARN_DATABASE_URL", raising=False)
    monkeypatch.setenv("ZEROUNLEARN_DATABASE_URL_FILE", str(tmp_path / "db-url"))
    store = ArtifactStore(tmp_path / "data")
    try:
        assert store.database_url == url and store.database_url_given
    finally:
        store.close()


# ------------------------------------------------------------- bad values
@pytest.mark.parametrize(("variable", "value"), [
    ("ZEROUNLEARN_API_WORKERS", "abc"),
    ("ZEROUNLEARN_LOG_LEVEL", "loud"),
    ("ZEROUNLEARN_LOG_FORMAT", "xml"),
    ("ZEROUNLEARN_DEVICE_CLASS", "GPU!"),
    ("ZEROUNLEARN_STORE_URL", "ftp://bucket"),
    ("ZEROUNLEARN_GATE_MAX_EFFICACY", "nan"),
    ("ZEROUNLEARN_INTERACTIVE_WORKER", "maybe"),
])
def test_a_bad_value_is_one_line_naming_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        LocalStackSettings.load({variable: value})
    assert len(info.value.problems) == 1
    (line,) = info.value.problems
    assert line.startswith(f"{variable}: ") and repr(value).lower() in line.lower(), line


def test_secret_values_are_never_quoted() -> None:
    env = {"REDIS_URL": "http://:pass-7f3a@host", "ZEROUNLEARN_ADMIN_TOKEN": "pass-7f3a",
           "ZEROUNLEARN_DATABASE_URL": "mysql://zu:pass-7f3a@db/zu",
           "ZEROUNLEARN_RECEIPT_KEY": "pass-7f3a", "ZEROUNLEARN_CALLBACK_SECRET": "pass-7f3a"}
    with pytest.raises(SettingsError) as info:
        ApiSettings.load(env)
    assert len(info.value.problems) == len(env)
    assert "pass-7f3a" not in str(info.value)


def test_an_empty_variable_is_unset_except_where_empty_means_off() -> None:
    settings = ApiSettings.load({"ZEROUNLEARN_MAX_RECORDS": "", "ZEROUNLEARN_LOG_LEVEL": " ",
                                 "ZEROUNLEARN_RATE_LIMIT_PER_KEY": ""})
    assert settings.max_records == 100 and settings.log_level == "INFO"
    assert settings.rate_limit_per_key == ""  # "" switches the limit off
    assert settings.rate_limit_per_address == "2400/minute"


# ------------------------------------------------------- one shared value
def test_the_worker_and_the_api_read_the_same_shared_values(tmp_path: Path) -> None:
    (tmp_path / "db-url").write_text(SECRET_VALUES["ZEROUNLEARN_DATABASE_URL"])
    env = {"REDIS_URL": REDIS, "ZEROUNLEARN_DATA_DIR": str(tmp_path / "d"),
           "ZEROUNLEARN_DATABASE_URL_FILE": str(tmp_path / "db-url"),
           "ZEROUNLEARN_DEVICE_CLASS": " a100 ", "ZEROUNLEARN_LOG_LEVEL": "debug",
           "ZEROUNLEARN_LOG_FORMAT": "JSON", "ZEROUNLEARN_GATE_MAX_EFFICACY": "20",
           "ZEROUNLEARN_STORE_URL": "s3://bucket/prefix"}
    api, worker = ApiSettings.load(env), WorkerSettings.from_env(env)
    for name in ServiceSettings.model_fields:
        assert getattr(api, name) == getattr(worker, name), name
    assert worker.queue_name == api.queue_name == "zerounlearn-a100"
    assert worker.gate == api.gate_defaults and worker.gate["max_efficacy"] == 20.0
    assert worker.database_url == SECRET_VALUES["ZEROUNLEARN_DATABASE_URL"]
    assert (worker.log_level, worker.log_format) == ("DEBUG", "json")
    assert worker.data_dir == (tmp_path / "d").resolve()


def test_keyword_arguments_win_over_the_environment(tmp_path: Path) -> None:
    settings = ApiSettings.load({"ZEROUNLEARN_MAX_RECORDS": "7"}, data_dir=tmp_path)
    assert settings.max_records == 7 and settings.data_dir == tmp_path.resolve()


def test_only_the_worker_refuses_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    env = {"REDIS_URL": REDIS, "ZEROUNLEARN_DATA_DIR": str(tmp_path / "file")}
    assert ApiSettings.load(env).data_dir == tmp_path / "file"  # it answers /readyz 503
    with pytest.raises(SettingsError, match="ZEROUNLEARN_DATA_DIR: exists and is not a dir"):
        WorkerSettings.from_env(env)


# ------------------------------------------------------ processes at start
def _run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("ZEROUNLEARN_") and k != "REDIS_URL"}
    return subprocess.run([sys.executable, "-m", module], env={**base, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_the_api_refuses_a_bad_value_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    done = _run("app", {"ZEROUNLEARN_API_WORKERS": "abc",
                        "ZEROUNLEARN_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert "ZEROUNLEARN_API_WORKERS: must be a whole number (got 'abc')" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_worker_refuses_a_bad_value_in_one_line_without_a_traceback(
    tmp_path: Path,
) -> None:
    done = _run("worker", {"REDIS_URL": REDIS, "ZEROUNLEARN_DEVICE_CLASS": "GPU!",
                           "ZEROUNLEARN_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert "ZEROUNLEARN_DEVICE_CLASS: must be lower-case" in done.stderr
    assert "Traceback" not in done.stderr
