"""The JSON log formatter and ``configure_logging`` (``[node] log_format``)."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from node.config import NodeConfig
from node.logs import JsonFormatter, configure_logging, message_context, rfc3339

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _cfg(log_format: str, code: str = "310000") -> NodeConfig:
    p = Path("/nonexistent")
    return NodeConfig(
        path=p / "node.toml",
        code=code,
        listen="127.0.0.1:0",
        store_url="sqlite:///x.db",
        ca_cert=p,
        tls_cert=p,
        tls_key=p,
        sign_cert=p,
        sign_key=p,
        manifest=p,
        log_format=log_format,
    )


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines of node 310000 to a string buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter("310000"))
    logger = logging.getLogger(f"cccfed.test.{id(buf)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, buf
    logger.removeHandler(handler)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    text = buf.getvalue()
    assert text.endswith("\n")
    out = []
    for line in text.split("\n")[:-1]:
        obj = json.loads(line)
        assert isinstance(obj, dict)
        out.append(obj)
    return out


def test_one_object_a_line_with_the_fixed_fields(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buf = capture
    before = datetime.now(UTC)
    logger.info("node %s serving on port %d", "310000", 50051)
    logger.warning("second")
    first, second = lines(buf)
    assert first == {
        "ts": first["ts"],
        "level": "INFO",
        "logger": logger.name,
        "node": "310000",
        "msg": "node 310000 serving on port 50051",
    }
    assert RFC3339_UTC.fullmatch(first["ts"])
    ts = datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert ts.tzinfo is not None and ts.utcoffset() == UTC.utcoffset(None)
    assert abs((ts - before).total_seconds()) < 5
    assert second["level"] == "WARNING" and second["msg"] == "second"


def test_rfc3339_is_utc_whatever_the_local_zone() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"


def test_chinese_text_stays_readable_utf8(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = capture
    logger.warning(
        "reminder: request for %s due %s",
        "上海某某精密设备有限公司",
        "2026-04-01",
        extra={"bureau": "苏州市市场监督管理局"},
    )
    raw = buf.getvalue()
    assert "上海某某精密设备有限公司" in raw and "苏州市市场监督管理局" in raw
    assert "\\u" not in raw  # not escaped
    raw.encode("utf-8")  # and encodable as UTF-8
    (rec,) = lines(buf)
    assert rec["msg"] == "reminder: request for 上海某某精密设备有限公司 due 2026-04-01"
    assert rec["bureau"] == "苏州市市场监督管理局"


def test_extra_fields_are_fields(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = capture
    when = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
    logger.info(
        "refused envelope from %s",
        "320000",
        extra={
            "message_id": "4f1c3a9e-0000-4000-8000-000000000001",
            "peer": "320000",
            "reason": "BAD_SIGNATURE",
            "attempt": 3,
            "transient": False,
            "digest": b"\x01\xff",
            "at": when,
            "codes": ("310000", "320000"),
            "amount": Decimal("1.50"),  # not a JSON type: written as str()
            "node": "spoofed",  # would overwrite a fixed field
        },
    )
    (rec,) = lines(buf)
    assert rec["message_id"] == "4f1c3a9e-0000-4000-8000-000000000001"
    assert rec["peer"] == "320000" and rec["reason"] == "BAD_SIGNATURE"
    assert rec["attempt"] == 3 and rec["transient"] is False
    assert rec["digest"] == "01ff"
    assert rec["at"] == "2026-03-10T08:00:00+00:00"
    assert rec["codes"] == ["310000", "320000"]
    assert rec["amount"] == "1.50"
    assert rec["node"] == "310000" and rec["extra_node"] == "spoofed"


def test_message_context_adds_the_message_id(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = capture
    with message_context("m-outer"):
        logger.info("inside")
        logger.info("own id wins", extra={"message_id": "m-own"})
        with message_context("m-inner"):
            logger.info("nested")
        logger.info("inside again")
        other = threading.Thread(target=logger.info, args=("other thread",))
        other.start()
        other.join()
    logger.info("outside")
    recs = lines(buf)
    assert [(r["msg"], r.get("message_id")) for r in recs] == [
        ("inside", "m-outer"),
        ("own id wins", "m-own"),
        ("nested", "m-inner"),
        ("inside again", "m-outer"),
        ("other thread", None),  # a context belongs to its thread
        ("outside", None),
    ]


def test_exceptions_are_one_string_field(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = capture
    try:
        raise ValueError("证书无效\nsecond line")
    except ValueError:
        logger.exception("store writer: job failed")
    logger.info("with a stack", stack_info=True)
    assert buf.getvalue().count("\n") == 2  # still one line per record
    exc, stack = lines(buf)
    assert exc["level"] == "ERROR" and exc["msg"] == "store writer: job failed"
    assert isinstance(exc["exc"], str)
    assert exc["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: 证书无效\nsecond line" in exc["exc"]
    assert "test_exceptions_are_one_string_field" in stack["stack"]


def test_unicode_line_separators_cannot_split_a_line(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buf = capture
    logger.info("a\u2028b\u2029c\x85d\re\nf")
    raw = buf.getvalue()
    assert len(raw.splitlines()) == 1  # str.splitlines breaks on all of these
    (rec,) = lines(buf)
    assert rec["msg"] == "a\u2028b\u2029c\x85d\re\nf"


def test_configure_logging_json_and_text() -> None:
    root = logging.getLogger()
    level = root.level
    kept = list(root.handlers)
    try:
        buf = io.StringIO()
        handler = configure_logging(_cfg("json", code="320000"), stream=buf)
        assert handler in root.handlers
        logging.getLogger("node.runtime").info("json line %s", "江苏")
        (rec,) = lines(buf)
        assert rec["node"] == "320000" and rec["logger"] == "node.runtime"
        assert rec["msg"] == "json line 江苏"

        # A second call replaces its own handler (no duplicate lines), and keeps the others.
        text_buf = io.StringIO()
        configure_logging(_cfg("text"), stream=text_buf)
        assert handler not in root.handlers
        assert all(h in root.handlers for h in kept)
        logging.getLogger("node.server").warning("text line")
        assert buf.getvalue().count("\n") == 1
        out = text_buf.getvalue()
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING node.server: text line\n", out
        ), out
    finally:
        for h in list(root.handlers):
            if getattr(h, "cccfed_handler", False):
                root.removeHandler(h)
        root.setLevel(level)
