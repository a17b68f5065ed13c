"""Log lines of ``cccfed node serve``: text for people, or one JSON object a line for machines.

``[node] log_format = "json"`` gives lines like::

    {"ts": "2025-03-01T08:00:00.123Z", "level": "INFO", "logger": "node.server", "node": "310000",
     "msg": "refused envelope from 320000: … [BAD_SIGNATURE]", "message_id": "…", "peer": "320000"}

* ``ts`` is RFC 3339 in UTC with milliseconds; ``level``, ``logger`` and ``msg`` (the formatted
  message) are always there, ``node`` when the formatter knows the node's code.
* Every ``extra={...}`` field of the call is a field of the object (``message_id``, ``peer``,
  ``reason``, ``check``…); values that are not JSON types are written as their ``str()``. An
  extra that would overwrite one of the fields above is written as ``extra_<name>``.
* A log call made while handling a message (see :func:`message_context`) carries that
  message's ``message_id`` even when the call does not pass it.
* An exception is the string field ``exc`` (the formatted traceback), a stack ``stack``.
* Text stays readable: Chinese is written as UTF-8, not ``\\uXXXX``. Line and paragraph
  separators (U+2028, U+2029, U+0085) are escaped too, so that no tool splits one object.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.config import NodeConfig

#: The message being handled in this thread or task ("" outside any), for log lines.
CURRENT_MESSAGE_ID: contextvars.ContextVar[str] = contextvars.ContextVar(
    "cccfed_message_id", default=""
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

#: Fields the formatter writes itself.
_OWN_FIELDS = ("ts", "level", "logger", "node", "msg", "exc", "stack")

#: Characters that some line-splitting tools take as line ends and json.dumps leaves as is.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


@contextlib.contextmanager
def message_context(message_id: str) -> Iterator[None]:
    """Log lines inside the block carry ``message_id`` (unless they pass their own)."""
    token = CURRENT_MESSAGE_ID.set(message_id)
    try:
        yield
    finally:
        CURRENT_MESSAGE_ID.reset(token)


def rfc3339(created: float) -> str:
    """A ``time.time()`` value as RFC 3339 UTC with milliseconds: ``2025-03-01T08:00:00.123Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module documentation)."""

    def __init__(self, node_code: str = "") -> None:
        super().__init__()
        self.node_code = node_code

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        if self.node_code:
            out["node"] = self.node_code
        out["msg"] = record.getMessage()
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            out[f"extra_{key}" if key in _OWN_FIELDS else key] = _jsonable(value)
        if "message_id" not in out:
            current = CURRENT_MESSAGE_ID.get()
            if current:
                out["message_id"] = current
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(out, ensure_ascii=False)
        for char, escaped in _LINE_BREAKS.items():
            line = line.replace(char, escaped)  # only ever inside JSON strings
        return line


def make_handler(cfg: NodeConfig, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) in the configured ``[node] log_format``."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if cfg.log_format == "json":
        handler.setFormatter(JsonFormatter(cfg.code))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(
    cfg: NodeConfig, *, level: int = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Send the root logger's records to one handler in the configured format.

    A handler installed by an earlier call is replaced (others, e.g. a test's capture, stay);
    returns the new handler.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "cccfed_handler", False):
            root.removeHandler(old)
            old.close()
    handler = make_handler(cfg, stream)
    handler.cccfed_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler


__all__ = [
    "CURRENT_MESSAGE_ID",
    "JsonFormatter",
    "configure_logging",
    "make_handler",
    "message_context",
    "rfc3339",
]
