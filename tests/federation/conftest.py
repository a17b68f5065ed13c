"""Multi-process federation harness: real node processes, real TLS, real stores."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from node import pki
from node.config import load_config
from node.local import free_ports
from node.store.db import make_engine
from node.store.ops import INBOX, OUTBOX

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FAST_DELIVERY = """
[delivery]
retry_initial_seconds = 0.1
retry_max_seconds = 1.0
lease_seconds = 5.0
poll_seconds = 0.1
"""


def wait_until(pred: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Cli:
    """``cccfed …`` in this process, with its output captured."""

    def __init__(self, capsys: pytest.CaptureFixture[str], fed: Federation) -> None:
        self.capsys = capsys
        self.fed = fed

    def run(self, code: str | None, *argv: str) -> tuple[int, str, str]:
        from node.cli import main

        self.capsys.readouterr()
        config = ["--config", str(self.fed.config(code))] if code else []
        rc = main([*argv, *config])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def json(self, code: str | None, *argv: str) -> Any:
        rc, out, err = self.run(code, *argv, "--json")
        assert rc == 0, err
        return json.loads(out)

    def wait_for(
        self, code: str, noun: str, key: str, pred: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Poll ``<noun> show KEY`` on ``code`` until ``pred`` holds of its latest answer (the
        record may not be there yet: ``show`` then fails with NOT_FOUND)."""
        seen: dict[str, Any] = {}

        def check() -> bool:
            rc, out, _ = self.run(code, noun, "show", key, "--json")
            if rc != 0:
                return False
            seen.clear()
            seen.update(json.loads(out))
            return pred(seen)

        wait_until(check, 30, f"{code}: {what}")
        return seen


@dataclass
class NodeProc:
    code: str
    config: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.config.parent / f"node-{self.config.stem}.log"

    def start(self, **env: str) -> NodeProc:
        full = dict(os.environ, PYTHONUNBUFFERED="1", **self.env, **env)
        if not env and "CCCFED_FAILPOINTS" not in self.env:
            full.pop("CCCFED_FAILPOINTS", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full,
        )
        log.close()
        if "CCCFED_FAILPOINTS" in env:
            return self  # it may die before it listens; the test waits for that
        cfg = load_config(self.config)
        host, _, port = cfg.listen.rpartition(":")
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node {self.code} exited: {self.log_path.read_text()[-2000:]}"
                )
            try:
                with socket.create_connection((host, int(port)), timeout=0.3):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {self.code} did not listen") from None
                time.sleep(0.05)

    def kill(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Federation:
    root: Path
    codes: list[str]
    procs: list[NodeProc] = field(default_factory=list)
    engines: dict[str, Engine] = field(default_factory=dict)

    def config(self, code: str) -> Path:
        return self.root / "nodes" / code / "node.toml"

    def node(self, code: str, config: Path | None = None, **env: str) -> NodeProc:
        p = NodeProc(code, config or self.config(code), dict(env))
        self.procs.append(p)
        return p

    def engine(self, code: str, config: Path | None = None) -> Engine:
        path = config or self.config(code)
        key = str(path)
        if key not in self.engines:
            self.engines[key] = make_engine(load_config(path).store_url)
        return self.engines[key]

    def inbox_ids(self, code: str) -> list[str]:
        with self.engine(code).connect() as c:
            return [r[0] for r in c.execute(select(INBOX.c.message_id))]

    def outbox_states(self, code: str, config: Path | None = None) -> dict[str, int]:
        with self.engine(code, config).connect() as c:
            rows = c.execute(select(OUTBOX.c.state, func.count()).group_by(OUTBOX.c.state)).all()
            return {str(s): int(n) for s, n in rows}

    def outbox_rows(self, code: str, config: Path | None = None) -> list[Any]:
        with self.engine(code, config).connect() as c:
            return list(c.execute(select(OUTBOX).order_by(OUTBOX.c.id)).all())

    def close(self) -> None:
        for p in self.procs:
            if p.alive():
                p.kill()
        for e in self.engines.values():
            e.dispose()


def make_federation(root: Path, codes: list[str], *, extra_toml: str = FAST_DELIVERY) -> Federation:
    ports = dict(zip(codes, free_ports(len(codes)), strict=True))
    pki.init_federation(root, codes, ports=ports)
    for code in codes:
        cfg = root / "nodes" / code / "node.toml"
        cfg.write_text(cfg.read_text() + extra_toml)
    return Federation(root, codes)


MakeFed = Callable[..., Federation]


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[MakeFed]:
    made: list[Federation] = []

    def make(codes: list[str] | None = None, **kw: Any) -> Federation:
        fed = make_federation(tmp_path / f"fed{len(made)}", codes or ["310000", "320000"], **kw)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A private PostgreSQL schema; returns a store URL whose search_path is that schema."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()
