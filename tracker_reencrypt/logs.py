"""Log lines for people, or for a log pipeline: ``REENCRYPT_LOG_FORMAT=text`` (the default) or ``json``.

In JSON every record is one object on one line (Azure Monitor Container Insights, Loki and
the like parse it into columns without a regex). The fields are stable:

=============  ==========================================================================
``time``       when, ISO-8601 in UTC with milliseconds: ``2026-01-03T10:00:00.123Z``
``level``      ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL``
``logger``     the logger's name: ``reencrypt.worker``, ``celery.worker.strategy``, ...
``process``    the process's name: ``MainProcess``, ``ForkPoolWorker-1``
``message``    the message, as the text format shows it
``sweep``      during a batch (and on Celery's lines about a task: ``task_id``,
``slice``      ``task_name``): the sweep id and slice index it works on
``error``      with an exception: ``TypeName: message`` on one line, never a traceback
               (a traceback's frames could show a document's values; the message of every
               error of ours names what is wrong without them)
=============  ==========================================================================

A field without a value is left out. Nothing else of a record is written: Celery's own extra
``data`` (a task's arguments and traceback) stays out, and so do ``extra=`` keys not listed
above, so a field only appears once it is documented here.

The variable is read here, where it is used, not with the settings: logging is set up first
(the CLI's first step, Celery's ``celeryd_init``), and an invalid setting's own error line must
already come out in the chosen format.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from tracker_reencrypt.errors import ConfigError

VARIABLE = "REENCRYPT_LOG_FORMAT"
TEXT, JSON = "text", "json"

#: The fields a record may carry besides time, level, logger, process and message (the table above).
CONTEXT_FIELDS = ("sweep", "slice", "task_id", "task_name")

_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("reencrypt_log", default=None)


def log_format(environ: Mapping[str, str] = os.environ) -> str:
    """``text`` or ``json``, from ``REENCRYPT_LOG_FORMAT`` (unset or empty: text)."""
    value = environ.get(VARIABLE, "").strip().lower() or TEXT
    if value not in (TEXT, JSON):
        raise ConfigError(f"{VARIABLE}={environ[VARIABLE]!r} is not a log format: use text (the default) or json")
    return value


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (of :data:`CONTEXT_FIELDS`) to every record logged inside, in this thread
    or task only: a batch's lines carry its sweep and slice whoever logs them."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a documented log field: {sorted(unknown)}")
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def one_line(text: str) -> str:
    return " ".join(text.split())


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, with the fields of this module's table."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        entry.update(_task_of(record))
        entry.update({name: value for name, value in (_context.get() or {}).items() if value is not None})
        for name in CONTEXT_FIELDS:  # extra={"sweep": ...} on the call itself wins
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry["error"] = one_line(f"{type(error).__name__}: {error}")
        return json.dumps(entry, ensure_ascii=False, default=str)


def _task_of(record: logging.LogRecord) -> dict[str, str]:
    """The task id and name of Celery's own lines about a task (its ``data`` extra), and nothing
    else of that extra: it holds the task's arguments and, on a failure, its traceback."""
    data = record.__dict__.get("data")
    if not isinstance(data, dict):
        return {}
    found = {"task_id": data.get("id"), "task_name": data.get("name")}
    return {name: str(value) for name, value in found.items() if value}


def use_json(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter (Celery's after_setup_logger hooks)."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def configure(level: int | str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """Set up the process's logging for the format chosen, and return it.

    ``text``: nothing changes (a command's warnings print as they always did; a worker's lines
    are Celery's). ``json``: the root logger writes JSON lines to stderr through one handler,
    and Python warnings become records too. ``level``, if given, sets the root logger's level.
    Raises ConfigError for an unknown format.
    """
    chosen = log_format(environ)
    if chosen == JSON:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        root.handlers = [handler]
        logging.captureWarnings(True)
    if level is not None:
        logging.getLogger().setLevel(level)
    return chosen


def fatal(message: str, code: int, environ: Mapping[str, str] = os.environ) -> SystemExit:
    """The exit of a process that cannot start, its one line in the chosen format, with the
    exit code of the table in tracker_reencrypt.errors: ``raise fatal("error: ...", exc.exit_code)``.
    Before logging is set up (or with a bad format), the plain line."""
    try:
        chosen = log_format(environ)
    except ConfigError:
        chosen = TEXT
    if chosen == TEXT:
        print(message, file=sys.stderr, flush=True)
    else:
        print(json_line(message, level=logging.CRITICAL), file=sys.stderr, flush=True)
    return SystemExit(code)


def json_line(message: str, *, logger: str = "reencrypt", level: int = logging.INFO) -> str:
    """One JSON log line written without logging (at start, at exit, in a signal handler)."""
    return JsonFormatter().format(logging.LogRecord(logger, level, __file__, 0, message, None, None))
