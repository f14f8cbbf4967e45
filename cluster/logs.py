"""How the daemons (coordinator and agent) write their logs: text, or one JSON object a line.

`--log-format json` is for log shippers (journald's JSON output, Loki,
Elasticsearch): every line is one object with time (UTC, ISO 8601), level,
logger, message and the daemon's name, plus `exception` (a traceback, in the
same line) when there is one. The standard library's json is enough for
that; a formatter package would add a dependency for these few lines.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, never spanning lines; `daemon` is the coordinator's or agent's name."""

    def __init__(self, daemon: str | None = None):
        super().__init__()
        self.daemon = daemon

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if self.daemon:
            doc["name"] = self.daemon
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure(level: int | str, fmt: str = "text", daemon: str | None = None) -> None:
    """Set up the root logger once for a daemon process (replacing earlier handlers)."""
    if fmt not in FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(daemon) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def add_log_format(parser: argparse.ArgumentParser) -> None:
    """--log-format for a daemon's command line (`baton coordinator`, `baton agent`)."""
    parser.add_argument("--log-format", choices=FORMATS, default=os.environ.get("BATON_LOG_FORMAT") or "text",
                        help="text, or json: one JSON object a line (time, level, logger, message, name) "
                             "(default: $BATON_LOG_FORMAT, else text)")
