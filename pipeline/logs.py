"""Log formatting for the CLI: one JSON object per line with `--log-json`.

Library code logs with `logging.getLogger(__name__)` and, where a task is concerned, passes
`extra={"task": task_id}` (or `proc`, `worker`); the JSON formatter copies those fields
into the object, so `jq 'select(.task == "...")'` follows one task through every process.
"""

from __future__ import annotations

import json
import logging
import time

EXTRA_FIELDS = ("task", "proc", "worker", "attempt")  # not "process": LogRecord has it (the pid)


class JsonFormatter(logging.Formatter):
    """`{"t", "level", "logger", "pid", "msg", [task, process, ...], [exc]}` per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "t": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "pid": record.process,
            "msg": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
