"""JSON log lines: one object per line, so log pipelines need no parsing rules.

`logger` names who wrote the line: `ca.gateway...` for the gateway's own messages (start-up,
backends, errors, `ca.gateway.access` for the access log), `uvicorn` for the server's.
uvicorn writes its general messages ("Started server process", "Shutting down") through a
logger named `uvicorn.error` whatever their level; the line says `uvicorn`, so an info
line never reads as an error.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS_LOGGER = "ca.gateway.access"
# Logger names shown under another name: uvicorn's general logger is called "uvicorn.error".
_DISPLAY_NAME = {"uvicorn.error": "uvicorn"}
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}


class JsonFormatter(logging.Formatter):
    """Renders a record as `{"ts", "level", "logger", "message", ...extra fields}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": _DISPLAY_NAME.get(record.name, record.name),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    """Send the gateway's and uvicorn's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
