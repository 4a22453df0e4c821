"""Structured logs: one JSON object per line, carrying the fields passed as ``extra``."""

from __future__ import annotations

import json
import logging

from slimtune.serve.logs import JsonFormatter


def test_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    record = logging.makeLogRecord({"name": "slimtune.serve.access", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "POST %s %d", "args": ("/v1/completions", 200),
                                    "adapter": "chat:3", "latency_ms": 12.5})
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /v1/completions 200" and line["logger"] == "slimtune.serve.access"
    assert line["adapter"] == "chat:3" and line["latency_ms"] == 12.5 and line["level"] == "INFO"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    assert "ValueError: boom" in json.loads(JsonFormatter().format(failed))["exc_info"]
