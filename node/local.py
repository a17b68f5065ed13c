"""A local federation on one machine: the four provincial nodes as separate processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from node import pki
from node.config import load_config

DELTA = list(pki.DEFAULT_NODES)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ensure_federation(root: Path, nodes: list[str] | None = None) -> Path:
    """Create a development federation in ``root`` unless one is there already."""
    if not (root / "federation.json").exists():
        codes = nodes or DELTA
        ports = dict(zip(codes, free_ports(len(codes)), strict=True))
        pki.init_federation(root, codes, ports=ports)
    return root


def config_path(root: Path, code: str) -> Path:
    return root / "nodes" / code / "node.toml"


@dataclass
class LocalFederation:
    root: Path
    codes: list[str] = field(default_factory=lambda: list(DELTA))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, code: str) -> None:
        cfg = config_path(self.root, code)
        log = open(self.root / "nodes" / code / "node.log", "ab")  # noqa: SIM115 - owned by child
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.procs[code] = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "serve", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def start_all(self) -> None:
        for code in self.codes:
            self.start(code)

    def wait_ready(self, codes: list[str] | None = None, timeout: float = 30.0) -> None:
        """Wait until each node's port accepts connections (TLS health is checked by callers)."""
        deadline = time.monotonic() + timeout
        for code in codes or self.codes:
            listen = load_config(config_path(self.root, code)).listen
            host, _, port = listen.rpartition(":")
            while True:
                proc = self.procs.get(code)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"node {code} exited with {proc.returncode}; see its node.log"
                    )
                try:
                    with socket.create_connection((host, int(port)), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"node {code} did not start within {timeout}s") from None
                    time.sleep(0.1)

    def stop(
        self,
        code: str,
        sig: int = signal.SIGTERM,
        timeout: float = 20.0,
        *,
        signalled: bool = False,
    ) -> int:
        proc = self.procs.pop(code)
        if proc.poll() is None and not signalled:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9

    def stop_all(self, sig: int = signal.SIGTERM) -> dict[str, int]:
        for code in list(self.procs):
            p = self.procs[code]
            if p.poll() is None:
                p.send_signal(sig)
        # One signal each: a second SIGTERM during shutdown would kill the process uncleanly.
        return {code: self.stop(code, sig, signalled=True) for code in list(self.procs)}


async def wait_serving(node: object, codes: list[str], within: float = 30.0) -> dict[str, str]:
    from node.runtime import Node

    assert isinstance(node, Node)
    deadline = time.monotonic() + within
    status: dict[str, str] = {}
    for code in codes:
        while True:
            try:
                status[code], _ = await node.peers.health(code)
                if status[code] == "SERVING":
                    break
            except Exception as e:  # noqa: BLE001 - keep polling until the deadline
                status[code] = type(e).__name__
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    return status
