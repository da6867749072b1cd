"""REENCRYPT_LOG_FORMAT=json: one object per line with the documented fields, and nothing else
of a record (Celery's task data, tracebacks, undeclared extras stay out)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tracker_reencrypt import logs
from tracker_reencrypt.errors import ConfigError


def formatted(
    record_name: str = "reencrypt.worker", message: str = "slice %s/%d: %s", args=("sw-1", 3, "continued"), **extra
):
    logger = logging.getLogger(record_name)
    record = logger.makeRecord(record_name, logging.INFO, __file__, 1, message, args, None, extra=extra or None)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_a_record_is_one_object_with_the_documented_fields():
    entry = formatted()
    assert set(entry) == {"time", "level", "logger", "process", "message"}
    assert entry["message"] == "slice sw-1/3: continued" and entry["level"] == "INFO"
    assert entry["logger"] == "reencrypt.worker" and entry["process"] == "MainProcess"
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-01-03T10:00:00.123Z")


def test_a_batch_context_adds_sweep_and_slice_to_every_line_inside_only():
    with logs.context(sweep="sw-1", slice=3, task_id="t-1", task_name="reencrypt.process_slice"):
        inside = formatted(record_name="reencrypt.store", message="page read", args=())
    outside = formatted(message="after", args=())
    assert (inside["sweep"], inside["slice"], inside["task_id"]) == ("sw-1", 3, "t-1")
    assert "sweep" not in outside and "slice" not in outside
    with pytest.raises(ValueError, match="not a documented log field"):
        with logs.context(document="x"):
            pass


def test_celery_task_data_gives_its_id_and_name_and_nothing_else():
    data = {"id": "t-9", "name": "reencrypt.process_slice", "args": "('sw-1', 3, 7)", "traceback": "Traceback ..."}
    entry = formatted(record_name="celery.app.trace", message="Task %(name)s[%(id)s] failed", args=(data,), data=data)
    assert (entry["task_id"], entry["task_name"]) == ("t-9", "reencrypt.process_slice")
    assert "args" not in entry and "traceback" not in entry and "data" not in entry
    assert "undeclared" not in formatted(undeclared="value")


def test_an_exception_is_its_type_and_message_on_one_line_never_a_traceback():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.json.exception")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        secret_local = "a document's field value"  # noqa: F841 - what a traceback with locals would show
        raise ValueError("bad page\nsecond line")
    except ValueError:
        logger.exception("batch failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["error"] == "ValueError: bad page second line" and entry["level"] == "ERROR"
    assert "Traceback" not in lines[0] and "secret_local" not in lines[0] and "field value" not in lines[0]


def test_the_format_is_text_unless_json_and_a_typo_is_refused():
    assert logs.log_format({}) == "text"
    assert logs.log_format({"REENCRYPT_LOG_FORMAT": ""}) == "text"
    assert logs.log_format({"REENCRYPT_LOG_FORMAT": " JSON "}) == "json"
    with pytest.raises(ConfigError, match="REENCRYPT_LOG_FORMAT='jsno' is not a log format"):
        logs.log_format({"REENCRYPT_LOG_FORMAT": "jsno"})


def test_configure_json_routes_the_root_logger_and_warnings_to_one_json_handler(monkeypatch, capsys):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        assert logs.configure(environ={}) == "text" and root.handlers == saved[0]  # text: nothing changes
        assert logs.configure(logging.INFO, environ={"REENCRYPT_LOG_FORMAT": "json"}) == "json"
        logging.getLogger("reencrypt.exporter").warning("reading the %s failed", "sweep state")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("always")  # shown even if an earlier test already showed one from here
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
        lines = capsys.readouterr().err.splitlines()
        entries = [json.loads(line) for line in lines]
        assert entries[0]["message"] == "reading the sweep state failed" and entries[0]["level"] == "WARNING"
        assert entries[1]["logger"] == "py.warnings" and "deprecated thing" in entries[1]["message"]
    finally:
        logging.captureWarnings(False)
        root.handlers = saved[0]
        root.setLevel(saved[1])


def test_fatal_is_the_plain_line_in_text_and_one_json_line_in_json_with_the_tables_exit_code(capsys):
    exit_text = logs.fatal("error: worker not started: no store", 2, environ={})
    assert exit_text.code == 2 and capsys.readouterr().err == "error: worker not started: no store\n"
    exit_json = logs.fatal("error: worker not started: no store", 3, environ={"REENCRYPT_LOG_FORMAT": "json"})
    assert exit_json.code == 3
    entry = json.loads(capsys.readouterr().err)
    assert (entry["level"], entry["message"]) == ("CRITICAL", "error: worker not started: no store")
    assert logs.fatal("x", 2, environ={"REENCRYPT_LOG_FORMAT": "yaml"}).code == 2  # a bad format: the plain line
    assert capsys.readouterr().err == "x\n"
