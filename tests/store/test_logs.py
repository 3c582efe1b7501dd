"""store.logs: JSON lines and text lines with request/job ids; exceptions without text."""

from __future__ import annotations

import io
import json
import logging

import pytest

from store.logs import ContextIds, JsonFormatter, TextFormatter, job_id_var, log_format

SECRET = "The secret code of " + "Jane" + " Roe is 1234"


def _emit(formatter: logging.Formatter, *, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextIds())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    token = job_id_var.set("j-0123")
    try:
        if exc:
            try:
                raise ValueError(SECRET)  # frames show source lines, never values
            except ValueError:
                logger.exception("job failed")
        else:
            logger.warning("job %s started", "j-0123")
    finally:
        job_id_var.reset(token)
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_lines_carry_the_job_id_and_no_exception_text() -> None:
    line = json.loads(_emit(JsonFormatter("worker")))
    assert line["job_id"] == "j-0123" and line["service"] == "worker"
    assert line["message"] == "job j-0123 started" and line["level"] == "WARNING"
    failed = _emit(JsonFormatter("worker"), exc=True)
    parsed = json.loads(failed)
    assert parsed["exc_type"] == "ValueError" and SECRET not in failed


def test_text_lines_name_the_ids() -> None:
    assert "[job=j-0123]" in _emit(TextFormatter())
    assert SECRET not in _emit(TextFormatter(), exc=True)


def test_log_format_is_validated() -> None:
    assert log_format({}) == "text"
    assert log_format({"ZEROUNLEARN_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ValueError, match="ZEROUNLEARN_LOG_FORMAT"):
        log_format({"ZEROUNLEARN_LOG_FORMAT": "xml"})
