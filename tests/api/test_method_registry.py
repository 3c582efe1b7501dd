"""One registration of a method: its name and hyper-parameter class in
zerounlearn.config.HPARAMS_CLASSES, its class attached with @register_method. The API
accepts exactly those names; the registry refuses a class under any other name and a
name left without a class."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.main import create_app
from app.schemas import ForgetRequest
from app.settings import Settings
from tests.support.redis_dbs import NEVER_CONTACTED
from zerounlearn.config import DEFAULT_METHOD, HPARAMS_CLASSES, METHOD_NAMES
from zerounlearn.errors import DuplicateMethod, UnknownMethod
from zerounlearn.methods import (
    UnregisteredMethod,
    check_complete,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)

REPO = Path(__file__).parents[2]
RECORD = {"prompt": "The code of Ada is", "answer": " 42"}


def _openapi(tmp_path: Path) -> dict:
    # no request is served: the schema needs no Redis connection
    settings = Settings(redis_url=NEVER_CONTACTED, data_dir=tmp_path / "data",
                        admin_token="t" * 40, model_roots=str(tmp_path))
    return create_app(settings).openapi()


def test_the_api_accepts_exactly_the_registered_methods(tmp_path: Path) -> None:
    method = _openapi(tmp_path)["components"]["schemas"]["ForgetRequest"]["properties"][
        "method"]
    assert method["enum"] == list(METHOD_NAMES)  # the table's order, as documented
    assert set(method["enum"]) == set(list_methods()) == set(HPARAMS_CLASSES)
    assert method["default"] == DEFAULT_METHOD == ForgetRequest(records=[RECORD]).method
    for name in list_methods():  # each validates at the door and resolves in the worker
        assert ForgetRequest(records=[RECORD], method=name).method == name
        assert get_method(name).name == name
    with pytest.raises(ValidationError):
        ForgetRequest(records=[RECORD], method="memit")


def test_a_class_under_a_name_outside_the_table_is_refused() -> None:
    with pytest.raises(UnknownMethod, match="HPARAMS_CLASSES") as info:
        @register_method("not-in-the-table")
        class Stray:
            def compute_patch(self, *args: object, **kwargs: object) -> None:
                raise AssertionError

    assert isinstance(info.value, KeyError)  # callers may catch the builtin
    assert "not-in-the-table" not in list_methods()


def test_a_second_class_for_a_name_is_refused() -> None:
    with pytest.raises(DuplicateMethod):
        @register_method("npo")
        class Again:
            def compute_patch(self, *args: object, **kwargs: object) -> None:
                raise AssertionError

    assert type(get_method("npo")).__name__ == "NPO"  # the first registration stands


def test_a_name_left_without_a_class_is_refused() -> None:
    check_complete()  # the built-ins cover the table
    npo = type(get_method("npo"))
    unregister_method("npo")
    try:
        with pytest.raises(UnregisteredMethod, match="'npo'"):
            check_complete()
    finally:
        register_method("npo")(npo)
    check_complete()


def test_a_method_half_added_fails_at_import() -> None:
    """A name added to the table without a class: importing the methods fails at once."""
    code = ("import zerounlearn.config as c\n"
            "c.HPARAMS_CLASSES['half-added'] = c.NPOHParams\n"
            "import zerounlearn.methods\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode != 0
    assert "UnregisteredMethod" in out.stderr and "'half-added'" in out.stderr
