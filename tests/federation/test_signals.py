"""Stopping a node process: SIGTERM at any moment after it has read its configuration is a clean
stop (exit 0), also while the node is still starting (found by the soak: it used to die -15).

The test waits until the process catches SIGTERM (``SigCgt`` in /proc) and then signals it at
once or a little later, while it opens its store, migrates and starts serving.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.config import load_config
from tests.federation.conftest import MakeFed

pytestmark = pytest.mark.slow


def port(cfg: Path) -> int:
    return int(load_config(cfg).listen.rpartition(":")[2])


def catches(pid: int, sig: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.3])
def test_sigterm_during_start_up_is_a_clean_stop(federation: MakeFed, delay: float) -> None:
    fed = federation()
    cfg = fed.config("310000")
    log = cfg.parent / "node-signals.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while not catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.005)
    if delay == 0.0:
        # The signal really comes during start-up: the node does not listen yet.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port(cfg)), timeout=0.5).close()
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()
    # It stopped cleanly, and starts and stops again on the same store.
    node = fed.node("310000").start()
    assert node.terminate() == 0
