"""Log set-up shared by the API and the worker: text or JSON lines, with ids.

`ZEROUNLEARN_LOG_FORMAT=json` writes one JSON object per line (`time, level, logger,
message`, plus `request_id` / `job_id` when one is current, and `exc_type` for an
exception); `text` (the default) writes the classic one-line format. The ids come from
context variables that the API's middleware and the worker's job runner set, so every
line logged while serving a request or running a job carries them. `start_logging` is
each process's first step: it loads the settings and sets logging up from them.

Messages are whatever the code logs; nothing here adds request bodies or exception
messages (which could quote forget-request text): exceptions are reduced to their type
and traceback frames.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from store.settings import LoggingSettings, SettingsError

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "zerounlearn_request_id", default=None
)
"""The id of the HTTP request being served (API), for log lines."""
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "zerounlearn_job_id", default=None
)
"""The id of the job being run (worker), for log lines."""


class ContextIds(logging.Filter):
    """Adds `request_id`, `job_id` and a text rendering `ids` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        job_id = getattr(record, "job_id", None) or job_id_var.get()
        parts = [f"{k}={v}" for k, v in (("request", request_id), ("job", job_id)) if v]
        record.__dict__.update(request_id=request_id, job_id=job_id,
                               ids=f" [{' '.join(parts)}]" if parts else "")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; exceptions as type + frames, never their message."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        for key in ("request_id", "job_id"):
            value = getattr(record, key, None)
            if value:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["frames"] = "".join(traceback.format_tb(record.exc_info[2]))
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line; an exception adds its type and frames, never its message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_text  # another handler may have cached the full text
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_text = saved

    def formatException(self, ei: tuple[Any, ...]) -> str:  # noqa: N802
        return f"{ei[0].__name__}\n" + "".join(traceback.format_tb(ei[2]))


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """ZEROUNLEARN_LOG_FORMAT (text or json); SettingsError (a ValueError) otherwise."""
    return LoggingSettings.load(environ).log_format


def configure_logging(
    service: str,
    level: int | str = logging.INFO,
    fmt: str | None = None,
    filters: Iterable[logging.Filter] = (),
) -> None:
    """Replace the root handlers with one stderr handler in the chosen format."""
    fmt = fmt or log_format()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter())
    handler.addFilter(ContextIds())
    for extra in filters:
        handler.addFilter(extra)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


Loaded = TypeVar("Loaded", bound=LoggingSettings)


def start_logging(
    service: str, load: Callable[[], Loaded], filters: Iterable[logging.Filter] = ()
) -> Loaded | None:
    """A process's first step: its settings from `load`, and logging set up from them
    (format, level; httpx quiet: its INFO lines quote URLs, and callback URLs may hold
    tokens). Bad settings: logged in the text format, one line per bad variable, and
    None returned; the caller exits with status 2."""
    filters = list(filters)
    try:
        settings = load()
    except SettingsError as exc:
        configure_logging(service, logging.INFO, "text", filters)
        logging.getLogger(service).error("%s", exc)
        return None
    configure_logging(service, settings.log_level, settings.log_format, filters)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return settings
