"""Logging: plain text, or one JSON object per line with NIM_JSONL_LOGGING (for log collectors).

vLLM configures its own handler unless told not to; in JSON mode it is told not to, so its records
propagate to the root handler here and every line has the same shape.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from nim_runtime.config import RuntimeConfig


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: RuntimeConfig) -> None:
    handler = logging.StreamHandler()
    if config.jsonl_logging:
        handler.setFormatter(JsonLineFormatter())
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", config.log_level)
