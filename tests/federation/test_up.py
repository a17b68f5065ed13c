"""`cccfed up`: four real node processes; every ordered pair pings; SIGTERM stops all cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CODES = ["310000", "320000", "330000", "340000"]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_up_all_pairs_ping_and_sigterm_stops_every_node(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    up = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "up", "--dir", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert up.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("local federation running"):
                break
        # the status table follows: one row per node, every one SERVING
        for _ in range(2 + len(CODES)):
            lines.append(up.stdout.readline())
        out = "".join(lines)
        assert "local federation running" in out, out
        for code in CODES:
            assert any(line.startswith(code) and "SERVING" in line for line in lines), out

        pairs = set()
        for code in CODES:
            cfg = root / "nodes" / code / "node.toml"
            res = cli("ping", "--config", str(cfg), "--json")
            assert res.returncode == 0, res.stderr
            for r in json.loads(res.stdout):
                assert r["verified_peer"] == r["to"]
                assert r["rtt_ms"] > 0
                pairs.add((r["from"], r["to"]))
        assert pairs == {(a, b) for a in CODES for b in CODES if a != b}
        assert len(pairs) == 12

        status = cli("status", "--config", str(root / "nodes" / "310000" / "node.toml"), "--json")
        assert status.returncode == 0, status.stderr
        assert {m["node"]: m["health"] for m in json.loads(status.stdout)["members"]} == {
            c: "SERVING" for c in CODES
        }

        up.send_signal(signal.SIGTERM)
        rest, _ = up.communicate(timeout=60)
        assert up.returncode == 0, rest
        assert "stopped: " + ", ".join(f"{c}=0" for c in CODES) in rest
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    # each node logged its own graceful shutdown
    for code in CODES:
        assert "shutting down" in (root / "nodes" / code / "node.log").read_text()


def test_cli_with_an_unreachable_store_says_so_in_one_line(tmp_path: Path) -> None:
    from node import pki

    pki.init_federation(tmp_path / "fed", ["310000", "320000"], base_port=47990)
    cfg = tmp_path / "fed" / "nodes" / "310000" / "node.toml"
    cfg.write_text(
        cfg.read_text().replace(
            'store_url = "sqlite:///store.db"',
            'store_url = "postgresql+psycopg://postgres@127.0.0.1:1/test"',
        )
    )
    for args in (["outbox", "list"], ["request", "list"], ["log", "verify"]):
        res = cli(*args, "--config", str(cfg))
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("cccfed: error: ")
        assert "[STORE]" in res.stderr and "Traceback" not in res.stderr


def test_cli_expected_failures_are_one_line(tmp_path: Path) -> None:
    res = cli("ping", "--config", str(tmp_path / "missing.toml"))
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("cccfed: error: ")
    assert "Traceback" not in res.stderr
    res = cli("pki", "init", "--dir", str(tmp_path / "x"), "--nodes", "110000")
    assert res.returncode == 1 and "110000" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x" / "federation.json").exists()


def test_a_second_process_cannot_take_a_running_nodes_port(tmp_path: Path) -> None:
    from node import pki
    from node.local import free_ports

    [port] = free_ports(1)
    pki.init_federation(tmp_path / "fed", ["310000"], ports={"310000": port})
    cfg = str(tmp_path / "fed" / "nodes" / "310000" / "node.toml")
    first = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "node", "serve", "--config", cfg],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while cli("status", "--config", cfg).returncode != 0:
            assert time.monotonic() < deadline, "first node did not start"
            time.sleep(0.2)
        second = cli("node", "serve", "--config", cfg)
        assert second.returncode == 1
        assert "[LISTEN]" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first one is undisturbed
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
