"""Fault-injection soak: four real nodes under SIGKILL restarts and link cuts, then the promises.

``make soak`` runs ``python bench/soak.py`` (``SOAK_ARGS="--seconds 1800 --seed 7"`` for longer or
a given schedule). It is bounded: the run phase lasts ``--seconds`` (180 by default), the settle
phase at most ``--drain-seconds`` more, and then it stops by itself.

**Set-up.** A federation of the four provinces is made in a temporary directory (``--dir`` to
choose and keep it) with :func:`node.pki.init_federation`, exactly as ``cccfed pki init`` does.
The harness starts one TCP proxy on loopback per ordered pair of nodes (12, :mod:`bench.tcpproxy`)
and appends a ``[peers]`` table to each ``node.toml``, so that node A dials node B through the
proxy A→B (TLS still pins B's certificate: the proxy only relays bytes). The nodes run as
``cccfed node serve`` processes, started by :class:`node.local.LocalFederation` as ``cccfed up``
starts them (each logs to ``nodes/CODE/node.log``).

**Workload** (seeded: ``--seed``, printed at the start; about ``--rate`` actions a second).
Actions run against each node's store while its node process runs, exactly as an operator's
``cccfed`` command does: the command opens the store, runs one transaction that changes the
domain and queues the messages it sends, and the running node's delivery worker claims and
sends them (:meth:`node.runtime.Node.run_and_send` without a worker). About half of the
actions that have a command run as that command (``node.cli.main`` in this process, with the
files and flags an operator gives: ``request new FILE``, ``request assign|reply|close …``,
``bulletin send|read``, ``exchange request|propose|confirm …``, ``result publish FILE``); the
others call the entry points those commands call. Mixed: assistance, verification and lead
requests between random pairs, and on the other side acceptance, progress, extension asked and
decided, reply, decline (sometimes for a wrong jurisdiction, whose linked draft is then sent),
withdrawal, closing; bulletins and their read acknowledgements; expert exchanges (request,
proposal, draw, attendance, reschedule, decline, cancel) against a synthetic registry per
province; inspection results published to each node's witnessed log. Every action is chosen
from what the acting node's store shows at that moment; some are made to cross on purpose
(the requester withdraws while the responder accepts or replies, the host cancels while the
provider proposes), and the rules must then keep the later one *void* on both nodes alike. An
action the local rules refuse changes nothing and is counted, with its message.

**Faults**, from a schedule that is a pure function of the seed and the duration: a random node
is killed with SIGKILL at random moments and restarted after a random short pause (possibly
while it is still starting up); about one stop in five is a graceful one instead (SIGTERM to a
node that has been up a while; it must exit 0, in the middle of the load); random links are
cut (connections reset, new ones refused) or black-holed (nothing relayed, connections held)
for random periods, sometimes both directions of a pair at once. Timing on a shared machine is
not reproducible, so two runs with one seed inject the same faults at the same offsets but
interleave them differently with the messages.

**Settle.** Faults stop, every link is restored, every node is restarted (SIGTERM, which must
exit 0, then start), the outboxes must drain within ``--drain-seconds``, ``cccfed reconcile``
runs on every node and the outboxes drain again; then the nodes are stopped and their stores
checked read-only:

1. every message accepted into an outbox is delivered exactly once: ``delivered`` at the
   sender with a receipt that verifies, signed by the recipient and equal to the one the
   recipient committed, one receipt record in the sender's log; exactly one inbox row and one
   received-envelope record at the recipient; nothing queued, retrying or failed; no inbox
   row without its outbox row;
2. both sides of every request (and every expert exchange) show the same state, due date and
   history (the views ``cccfed request show --json`` / ``exchange show --json`` print), and
   every bulletin and read acknowledgement arrived;
3. every node's message log verifies (``cccfed log verify``);
4. every origin's log is the same on every node and every published result is recognised by
   its quorum on every node (``cccfed result checkpoint`` / ``result list``);
5. no equivocation reported, no origin frozen, no result conflict;

and no node process exited unless the harness killed it, every SIGTERM stop exited 0, no node
logged an ERROR or a traceback, and no workload action failed unexpectedly. A summary table
prints each invariant with PASS/FAIL and the counts (messages, retried messages, kills, cuts,
durations); the exit status is 1 if any check fails, and the directory is then kept for the
evidence (``nodes/CODE/node.log``, the stores, ``workload/`` with the files given to the CLI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.protobuf.message import DecodeError
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from bench.tcpproxy import ProxyThread, TcpProxy
from cccfed.v1 import assistance_pb2 as apb
from cccfed.v1 import log_pb2
from federation import divisions, requests
from federation import exchange as ex
from federation.envelope import verify_receipt
from federation.errors import FederationError
from federation.experts import parse_registry_csv
from federation.periods import shanghai_date
from federation.uscc import make_uscc
from node import pki
from node.assistance import BULLETINS, READS, REQUESTS
from node.cli import main as cccfed
from node.cli_requests import _summary as request_summary
from node.config import load_config
from node.demo import RESULT_BUREAU, example_result
from node.exchange import EXCHANGES
from node.exchange import summary as exchange_summary
from node.local import LocalFederation, config_path, free_ports
from node.recognition import CONFLICTS, EQUIVOCATIONS, frozen_origins
from node.runtime import Node
from node.store.ops import INBOX, LOG, OUTBOX

T = TypeVar("T")
CODES = list(pki.DEFAULT_NODES)
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_REQUEST = ROOT / "docs" / "examples" / "assistance-request.toml"
HOLDER = "913304007429141869"
PENDING_STATES = ("queued", "sending", "retry")
FINAL_REQUEST = {"closed", "declined", "withdrawn"}
FINAL_EXCHANGE = {"declined", "cancelled"}
RECEIVED, SENT = log_pb2.LOG_DIRECTION_RECEIVED, log_pb2.LOG_DIRECTION_SENT
ENVELOPE, RECEIPT = log_pb2.LOG_RECORD_TYPE_ENVELOPE, log_pb2.LOG_RECORD_TYPE_RECEIPT

#: Appended to every node.toml: quick retries, so that a link back up is used at once.
DELIVERY_TOML = """
[delivery]
retry_initial_seconds = 0.2
retry_max_seconds = 3.0
lease_seconds = 10.0
poll_seconds = 0.2
"""
CALL_TIMEOUT_SECONDS = 5
#: Where a run keeps what its workload made (for ``--check DIR``).
TRACKED = "workload/tracked.json"


# --- options and the fault schedule ------------------------------------------------------------


@dataclass(frozen=True)
class SoakOptions:
    seconds: float = 180.0
    seed: int = 0
    directory: Path | None = None
    #: Workload actions per second (Poisson arrivals).
    rate: float = 3.0
    #: Seconds between two kills (uniform) and how long a killed node stays down.
    kill_gap: tuple[float, float] = (6.0, 18.0)
    down_for: tuple[float, float] = (0.5, 6.0)
    #: Seconds between two link cuts and how long a link stays cut.
    cut_gap: tuple[float, float] = (1.5, 6.0)
    cut_for: tuple[float, float] = (1.0, 12.0)
    #: Share of the stops that are graceful (SIGTERM, must exit 0) rather than SIGKILL.
    term_share: float = 0.2
    #: Share of cuts that black-hole instead of reset, and of cuts of both directions.
    blackhole_share: float = 0.25
    both_ways_share: float = 0.5
    #: Bound of each drain wait of the settle phase.
    drain_seconds: float = 120.0
    #: Keep the directory even when every invariant holds.
    keep: bool = False
    #: Seconds between progress lines (0: none).
    progress_every: float = 15.0
    #: Only check the stores of this kept soak directory again (``--check DIR``).
    check: Path | None = None


FaultKind = Literal["kill", "term", "restart", "cut", "restore"]
#: A graceful stop (SIGTERM) is planned only for a node up this long. ``node serve`` catches
#: SIGTERM from the moment it has read its configuration (a stop during start-up is then clean,
#: tests/federation/test_signals.py), but not while Python is still importing: the margin keeps
#: the planned stops out of that window.
TERM_AFTER_UP_SECONDS = 8.0


@dataclass(frozen=True)
class Fault:
    at: float
    kind: FaultKind
    node: str = ""
    link: tuple[str, str] = ("", "")
    mode: Literal["reset", "blackhole"] = "reset"


def plan_faults(opts: SoakOptions, codes: list[str] = CODES) -> list[Fault]:
    """The fault schedule of a run: a pure function of the seed and the options."""
    rng = random.Random(f"faults/{opts.seed}")
    graceful = random.Random(f"terms/{opts.seed}")
    faults: list[Fault] = []
    down_until = dict.fromkeys(codes, -TERM_AFTER_UP_SECONDS)
    t = rng.uniform(*opts.kill_gap) / 2
    while t < opts.seconds:
        up = [c for c in codes if down_until[c] <= t]
        if up:
            code = rng.choice(up)
            pause = rng.uniform(*opts.down_for)
            term = (
                graceful.random() < opts.term_share
                and t - down_until[code] >= TERM_AFTER_UP_SECONDS
            )
            faults.append(Fault(t, "term" if term else "kill", node=code))
            faults.append(Fault(t + pause, "restart", node=code))
            down_until[code] = t + pause
        t += rng.uniform(*opts.kill_gap)
    cut_until = {(a, b): 0.0 for a in codes for b in codes if a != b}
    t = rng.uniform(*opts.cut_gap)
    while t < opts.seconds:
        a, b = rng.sample(codes, 2)
        links = [(a, b), (b, a)] if rng.random() < opts.both_ways_share else [(a, b)]
        mode: Literal["reset", "blackhole"] = (
            "blackhole" if rng.random() < opts.blackhole_share else "reset"
        )
        span = rng.uniform(*opts.cut_for)
        for link in links:
            if cut_until[link] <= t:
                faults.append(Fault(t, "cut", link=link, mode=mode))
                faults.append(Fault(t + span, "restore", link=link))
                cut_until[link] = t + span
        t += rng.uniform(*opts.cut_gap)
    order = {"restore": 0, "restart": 1, "cut": 2, "kill": 3, "term": 3}
    return sorted(faults, key=lambda f: (f.at, order[f.kind]))


# --- the result of a run ---------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    problems: list[str] = field(default_factory=list)


@dataclass
class SoakReport:
    seed: int
    directory: Path
    checks: list[Check] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    actions: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    refusal_text: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


# --- the federation with its proxies ---------------------------------------------------------


class Cluster:
    """Four node processes, twelve proxies, and a CLI-like handle on each node's store."""

    def __init__(self, root: Path, codes: list[str] = CODES) -> None:
        self.root = root
        self.codes = codes
        self.proxy_thread: ProxyThread | None = None
        self.proxies: dict[tuple[str, str], TcpProxy] = {}
        self.fed = LocalFederation(root, list(codes))
        self.admin: dict[str, Node] = {}
        #: Unexpected process exits: (code, return code, tail of its log).
        self.crashes: list[tuple[str, int, str]] = []
        #: Exit codes of SIGTERM stops (each must be 0).
        self.graceful: list[tuple[str, int]] = []
        self.kills = 0
        self.terms = 0
        #: Nodes sent SIGTERM during the run, not yet seen to exit.
        self.stopping: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self.cuts: Counter[str] = Counter()

    # set-up

    def create(self) -> None:
        ports = dict(zip(self.codes, free_ports(len(self.codes)), strict=True))
        pki.init_federation(self.root, self.codes, ports=ports)
        self.proxy_thread = proxies = ProxyThread()
        for a in self.codes:
            for b in self.codes:
                if a != b:
                    self.proxies[(a, b)] = proxies.add(("127.0.0.1", ports[b]), name=f"{a}→{b}")
        for a in self.codes:
            cfg = config_path(self.root, a)
            text = cfg.read_text(encoding="utf-8").replace(
                "call_timeout_seconds = 10", f"call_timeout_seconds = {CALL_TIMEOUT_SECONDS}"
            )
            peers = "".join(
                f'"{b}" = "{self.proxies[(a, b)].address}"\n' for b in self.codes if b != a
            )
            cfg.write_text(
                text + DELIVERY_TOML + "\n# every peer through the soak's proxy\n[peers]\n" + peers,
                encoding="utf-8",
            )
        self.open()

    def open(self) -> None:
        """Open each node's store as the CLI does (the federation exists)."""
        for code in self.codes:
            self.admin[code] = Node(load_config(config_path(self.root, code)))

    def start_all(self) -> None:
        for code in self.codes:
            self.fed.start(code)
        self.fed.wait_ready(timeout=60)

    # store access as the CLI has it

    def write(self, code: str, job: Callable[[Connection], T]) -> T:
        """One write transaction on ``code``'s store, as a ``cccfed`` command runs it: the
        messages it queues are left for the running node's delivery worker."""
        node = self.admin[code]
        return asyncio.run(node.run_and_send(job))

    def read(self, code: str, job: Callable[[Connection], T]) -> T:
        with self.admin[code].reader.connect() as conn:
            return job(conn)

    def show(self, code: str, view: Callable[[Node, Connection, str], T], ident: str) -> T:
        """``view(node, conn, ident)`` on ``code``'s store (a ``… show`` command's reading)."""
        with self.admin[code].reader.connect() as conn:
            return view(self.admin[code], conn, ident)

    def cli(self, *argv: str) -> tuple[int, str]:
        """``cccfed ARGV`` in this process; returns (exit code, stdout)."""
        out = io.StringIO()
        err = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cccfed(list(argv))
        return rc, out.getvalue() + err.getvalue()

    # faults

    def alive(self, code: str) -> bool:
        proc = self.fed.procs.get(code)
        return proc is not None and proc.poll() is None

    def kill(self, code: str) -> None:
        if code in self.fed.procs:
            self.fed.stop(code, signal.SIGKILL)
            self.kills += 1

    def terminate(self, code: str) -> None:
        """A graceful stop: SIGTERM, without waiting (its exit code is checked later)."""
        proc = self.fed.procs.pop(code, None)
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            self.stopping[code] = proc
            self.terms += 1

    def _stopped(self, code: str, wait: float) -> None:
        proc = self.stopping[code]
        try:
            rc = proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9  # did not stop within the bound: recorded as a failed graceful stop
        del self.stopping[code]
        self.graceful.append((code, rc))

    def restart(self, code: str) -> None:
        if code in self.stopping:
            self._stopped(code, 30.0)  # the port is free only once it exited
        if code not in self.fed.procs:
            self.fed.start(code)
            self.restarts += 1

    def cut(self, link: tuple[str, str], mode: Literal["reset", "blackhole"]) -> None:
        self.proxies[link].cut(mode)
        self.cuts[mode] += 1

    def restore(self, link: tuple[str, str]) -> None:
        self.proxies[link].restore()

    def restore_all(self) -> None:
        for p in self.proxies.values():
            if p.is_cut:
                p.restore()

    def reap(self) -> None:
        """Notice node processes that exited although nobody killed them; start them again.
        Record the exit codes of graceful stops that completed."""
        for code in list(self.stopping):
            if self.stopping[code].poll() is not None:
                self._stopped(code, 0)
        for code in list(self.fed.procs):
            proc = self.fed.procs[code]
            rc = proc.poll()
            if rc is not None:
                self.fed.procs.pop(code)
                self.crashes.append((code, rc, self.log_tail(code)))
                self.fed.start(code)
                self.restarts += 1

    def log_tail(self, code: str, n: int = 4000) -> str:
        path = self.root / "nodes" / code / "node.log"
        try:
            return path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""

    def restart_all(self) -> None:
        """SIGTERM every running node (each must exit 0), then start all and wait for them.

        A node restarted just before is first waited for until it listens: by then it catches
        SIGTERM (before its handler is installed, the signal's default action would end it with
        exit -15, which is not the graceful stop this checks).
        """
        for code in list(self.stopping):
            self._stopped(code, 30.0)
        running = [c for c in self.codes if self.alive(c)]
        if running:
            with contextlib.suppress(RuntimeError, TimeoutError):  # reap() records a crash
                self.fed.wait_ready(running, timeout=60)
        self.reap()
        for code in self.codes:
            proc = self.fed.procs.get(code)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for code in list(self.fed.procs):
            proc = self.fed.procs[code]
            was_running = proc.returncode is None
            rc = self.fed.stop(code, signal.SIGTERM, signalled=True)
            if was_running:
                self.graceful.append((code, rc))
        for code in self.codes:
            self.fed.start(code)
            self.restarts += 1
        self.fed.wait_ready(timeout=60)

    def stop_all(self) -> None:
        for code, rc in self.fed.stop_all().items():
            self.graceful.append((code, rc))

    def close(self) -> None:
        for proc in self.stopping.values():
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(10)
        for code in list(self.fed.procs):
            with contextlib.suppress(Exception):
                self.fed.stop(code, signal.SIGKILL)
        for node in self.admin.values():
            with contextlib.suppress(Exception):
                node.close()
        if self.proxy_thread is not None:
            self.proxy_thread.close()

    # what the stores hold

    def pending(self) -> dict[str, int]:
        def count(conn: Connection) -> int:
            return int(
                conn.execute(
                    select(func.count()).where(OUTBOX.c.state.in_(PENDING_STATES))
                ).scalar_one()
            )

        return {code: self.read(code, count) for code in self.codes}

    def wait_drained(self, within: float) -> tuple[bool, dict[str, int]]:
        deadline = time.monotonic() + within
        while True:
            self.reap()
            left = self.pending()
            if not any(left.values()) or time.monotonic() > deadline:
                return not any(left.values()), left
            time.sleep(0.5)


# --- the workload ----------------------------------------------------------------------------


def registry_csv(code: str, n: int = 12) -> bytes:
    """A synthetic expert registry for province ``code``: ``n`` experts, roomy annual caps."""
    bureaus = divisions.bureaus_under(code)
    lines = [
        "expert_id,name,bureau,categories,annual_cap,unavailable,conflict_holders,"
        "conflict_bureaus,phone,id_number"
    ]
    for i in range(n):
        bureau = bureaus[i % len(bureaus)].code
        lines.append(
            f"X{code[:2]}-{i:04d},专家{code[:2]}{i:02d},{bureau},低压电器;电线电缆,200,,,,,"
        )
    return ("\n".join(lines) + "\n").encode("utf-8")


@dataclass
class Tracked:
    """What the workload made: the checks look for every one of these on the nodes."""

    requests: set[str] = field(default_factory=set)
    exchanges: set[str] = field(default_factory=set)
    #: bulletin id -> sender
    bulletins: dict[str, str] = field(default_factory=dict)
    #: origin -> record ids in publishing order
    published: dict[str, list[str]] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        data = {
            "requests": sorted(self.requests),
            "exchanges": sorted(self.exchanges),
            "bulletins": self.bulletins,
            "published": self.published,
        }
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Tracked:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            set(data["requests"]), set(data["exchanges"]), data["bulletins"], data["published"]
        )


class CliRefused(FederationError):
    """A ``cccfed`` command of the workload exited 1 (an expected, one-line refusal)."""


class Workload:
    """Chooses and runs one action at a time, from what the acting node's store shows.

    About half of the actions that have a ``cccfed`` command run as that command (in this
    process, through ``node.cli.main``, files and flags as an operator gives them); the others
    call the entry points the command calls. Both write the node's store and leave what they
    send to the running node's delivery worker.
    """

    WEIGHTS: tuple[tuple[str, float], ...] = (
        ("request", 2.5),
        ("advance_request", 6.0),
        ("cross", 0.8),
        ("send_draft", 0.3),
        ("bulletin", 0.5),
        ("bulletin_read", 1.2),
        ("exchange", 1.0),
        ("advance_exchange", 3.0),
        ("publish", 1.0),
    )

    def __init__(self, cluster: Cluster, seed: int, *, cli_share: float = 0.5) -> None:
        self.c = cluster
        self.rng = random.Random(f"workload/{seed}")
        self.codes = cluster.codes
        #: Open conversations the workload drives: id -> (requester/host, responder/provider)
        self.requests: dict[str, tuple[str, str]] = {}
        self.exchanges: dict[str, tuple[str, str]] = {}
        #: What the workload made, which the checks look for on every node.
        self.tracked = Tracked(published={c: [] for c in self.codes})
        self.actions: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        #: The first message of each kind of refusal (what the operator would have read).
        self.refusal_text: dict[str, str] = {}
        self.errors: list[str] = []
        self._n = 0
        self.cli_share = cli_share
        self.files = cluster.root / "workload"
        self.files.mkdir(exist_ok=True)

    def import_registries(self) -> None:
        for code in self.codes:
            name = f"soak-{code}.csv"
            registry = parse_registry_csv(registry_csv(code), name, province=code)
            xn = self.c.admin[code].exchange
            self.c.write(
                code, functools.partial(xn.import_registry, registry=registry, source=name)
            )

    def done(self) -> int:
        """Actions done so far (the CLI tally counts some of them a second time)."""
        return sum(n for k, n in self.actions.items() if not k.startswith("("))

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _use_cli(self) -> bool:
        return self.rng.random() < self.cli_share

    def cli(self, code: str, *argv: str) -> Any:
        """``cccfed ARGV --config <code's node.toml> --json``; its JSON output."""
        rc, out = self.c.cli(*argv, "--config", str(config_path(self.c.root, code)), "--json")
        if rc != 0:
            line = out.strip().splitlines()[-1] if out.strip() else f"exit {rc}"
            reason = line.rsplit("[", 1)[-1].rstrip("]") if line.endswith("]") else f"EXIT{rc}"
            raise CliRefused(line, reason=f"cli:{reason}")
        self.actions["(via cccfed CLI)"] += 1
        return json.loads(out)

    def _file(self, name: str, data: dict[str, Any]) -> str:
        path = self.files / name
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return str(path)

    def step(self) -> None:
        """One action; a conversation with nothing to do at the chosen side is skipped for
        another (up to a few), so that the rate counts actions, not idle looks."""
        names = [n for n, _ in self.WEIGHTS]
        weights = [w for _, w in self.WEIGHTS]
        name = self.rng.choices(names, weights)[0]
        action: Callable[[], str | None] = getattr(self, f"_{name}")
        try:
            done = None
            for _ in range(6 if name.startswith("advance") else 1):
                done = action()
                if done:
                    break
        except FederationError as e:
            self.refused[f"{name}:{e.reason}"] += 1
            self.refusal_text.setdefault(f"{name}:{e.reason}", str(e)[:300])
            return
        except Exception as e:  # a harness or node bug: keep it as evidence, keep going
            self.errors.append(f"{name}: {type(e).__name__}: {e}")
            return
        if done:
            self.actions[done] += 1

    # requests

    def _bureau_of(self, code: str) -> str:
        tm = self.c.admin[code].trust.current
        served = sorted(b for b, n in tm.bureau_to_node.items() if n == code and b != code)
        return self.rng.choice(served)

    def _request(self) -> str:
        a, b = self.rng.sample(self.codes, 2)
        data: dict[str, Any] = tomllib.loads(EXAMPLE_REQUEST.read_text(encoding="utf-8"))
        self._n += 1
        data["kind"] = self.rng.choice(["assistance", "assistance", "verification", "lead"])
        data["requesting_bureau"] = RESULT_BUREAU[a]
        data["target_bureau"] = self._bureau_of(b)
        data["holder"]["uscc"] = make_uscc(f"91{a}{self._n:09d}")
        if self._use_cli():
            out = self.cli(a, "request", "new", self._file(f"request-{self._n}.json", data))
            rid = str(out["request_id"])
        else:
            node = self.c.admin[a]
            request = node.assistance.parse_new(data)
            rid = self.c.write(a, lambda conn: node.assistance.create(conn, request))
        self.requests[rid] = (a, b)
        self.tracked.requests.add(rid)
        return f"request {data['kind']}"

    def _send_draft(self) -> str | None:
        code = self.rng.choice(self.codes)
        drafts = self.c.read(
            code,
            lambda conn: conn.execute(
                select(REQUESTS.c.request_id, REQUESTS.c.responder_node).where(
                    REQUESTS.c.role == "requester", REQUESTS.c.status == "draft"
                )
            ).all(),
        )
        if not drafts:
            return None
        rid, responder = drafts[0]
        node = self.c.admin[code]
        self.c.write(code, lambda conn: node.assistance.send_draft(conn, rid))
        self.requests[rid] = (code, responder)
        self.tracked.requests.add(rid)
        return "request linked draft sent"

    def _advance_request(self) -> str | None:
        if not self.requests:
            return None
        rid = self.rng.choice(sorted(self.requests))
        requester, responder = self.requests[rid]
        side = self.rng.choice(("requester", "responder"))
        code = requester if side == "requester" else responder
        node = self.c.admin[code]
        try:
            v = self.c.read(code, lambda conn: node.assistance.view(conn, rid))
        except FederationError:
            return None  # not arrived yet
        status = v.state.status.value
        if status in FINAL_REQUEST:
            self.requests.pop(rid, None)
            return None
        r = self.rng.random()
        event: requests.Event | None = None
        label = ""
        if side == "responder" and status == "delivered":
            if r < 0.8:
                event = requests.Accepted(
                    assigned_bureau=v.row.target_bureau,
                    assignee=requests.Contact(name="李强", phone="0512-6688 0000"),
                )
            elif r < 0.9:
                other = [c for c in self.codes if c not in (requester, responder)]
                event = requests.Declined(
                    requests.DeclineReason.WRONG_JURISDICTION,
                    "使用地不在本辖区",
                    self._bureau_of(self.rng.choice(other)),
                )
            else:
                event = requests.Declined(requests.DeclineReason.OTHER, "信息不足，无法协查")
        elif side == "responder" and status == "accepted":
            if r < 0.2:
                event = requests.ProgressReported("已联系企业，正在核对出库记录。")
            elif r < 0.35 and not v.state.extension_pending:
                event = requests.ExtensionRequested("需调取海关核销记录", additional_days=5)
            else:
                event = requests.Replied(
                    findings=(
                        requests.Finding("q1", "经现场核查属实。", requests.Conclusion.CONFIRMED),
                        requests.Finding(
                            "q2", "部分已退运。", requests.Conclusion.PARTIALLY_CONFIRMED
                        ),
                    ),
                    follow_ups=(
                        requests.FollowUp(requests.FollowUpAction.RECTIFICATION, "限期整改"),
                    ),
                    summary="已责令整改。",
                )
        elif side == "requester" and v.state.extension_pending:
            event = requests.ExtensionDecided(granted=r < 0.7, reason="" if r < 0.7 else "不同意")
        elif side == "requester" and status == "replied":
            event = requests.Closed("收悉，结案。") if r < 0.9 else None
        elif side == "requester" and status in ("delivered", "accepted") and r < 0.04:
            event = requests.Withdrawn("已另行处理")
        if event is None:
            return None
        label = f"request {event.name}"
        argv = self._request_argv(rid, event) if self._use_cli() else None
        if argv is not None:
            self.cli(code, "request", *argv)
        else:
            chosen = event
            self.c.write(code, lambda conn: node.assistance.act(conn, rid, chosen))
        return label

    @staticmethod
    def _request_argv(rid: str, event: requests.Event) -> list[str] | None:
        """The ``cccfed request …`` arguments that make ``event``, if the CLI has them."""
        if isinstance(event, requests.Accepted):
            return [
                "assign", rid, "--bureau", event.assigned_bureau,
                "--contact-name", event.assignee.name, "--contact-phone", event.assignee.phone,
            ]  # fmt: skip
        if isinstance(event, requests.ProgressReported):
            return ["progress", rid, "--text", event.text]
        if isinstance(event, requests.ExtensionRequested):
            return ["extend", rid, "--days", str(event.additional_days), "--reason", event.reason]
        if isinstance(event, requests.ExtensionDecided):
            return ["extend", rid, "--grant" if event.granted else "--refuse", "--reason", "审核"]
        if isinstance(event, requests.Replied):
            return [
                "reply", rid, "--finding", "q1=confirmed:经现场核查属实。",
                "--finding", "q2=partially_confirmed:部分已退运。",
                "--follow-up", "rectification", "--summary", event.summary,
            ]  # fmt: skip
        if isinstance(event, requests.Closed):
            return ["close", rid, "--note", event.note]
        if isinstance(event, requests.Withdrawn):
            return ["withdraw", rid, "--reason", event.reason]
        if isinstance(event, requests.Declined):
            argv = ["decline", rid, "--code", event.reason_code.value, "--reason", event.reason]
            return argv + (["--suggest", event.suggested_bureau] if event.suggested_bureau else [])
        return None

    def _cross(self) -> str | None:
        """Both parties act at once on one conversation, so their messages cross on the wire:
        the requester withdraws while the responder accepts or replies, or the host cancels
        while the provider proposes. Each is allowed by what its own node knows; the rules keep
        the later one as void on both nodes alike."""
        if self.rng.random() < 0.5 and self.exchanges:
            xid = self.rng.choice(sorted(self.exchanges))
            host, provider = self.exchanges[xid]
            hx, px = self.c.admin[host].exchange, self.c.admin[provider].exchange
            try:
                hv = self.c.read(host, lambda conn: hx.view(conn, xid))
                pv = self.c.read(provider, lambda conn: px.view(conn, xid))
            except FederationError:
                return None
            if hv.state.status.value != "requested" or pv.state.status.value != "requested":
                return None
            self.c.write(provider, lambda conn: px.propose(conn, xid))
            self.c.write(host, lambda conn: hx.cancel(conn, xid, "取消"))
            return "crossed: exchange proposed × cancelled"
        if not self.requests:
            return None
        rid = self.rng.choice(sorted(self.requests))
        requester, responder = self.requests[rid]
        qa, ra = self.c.admin[requester].assistance, self.c.admin[responder].assistance
        try:
            qv = self.c.read(requester, lambda conn: qa.view(conn, rid))
            rv = self.c.read(responder, lambda conn: ra.view(conn, rid))
        except FederationError:
            return None
        status = rv.state.status.value
        if qv.state.status.value != status or status not in ("delivered", "accepted"):
            return None
        event: requests.Event
        if status == "delivered":
            event = requests.Accepted(
                assigned_bureau=rv.row.target_bureau,
                assignee=requests.Contact(name="李强", phone="0512-6688 0000"),
            )
        else:
            event = requests.Replied(
                findings=(
                    requests.Finding("q1", "属实。", requests.Conclusion.CONFIRMED),
                    requests.Finding("q2", "属实。", requests.Conclusion.CONFIRMED),
                ),
                follow_ups=(requests.FollowUp(requests.FollowUpAction.NONE, ""),),
                summary="已核查。",
            )
        self.c.write(responder, lambda conn: ra.act(conn, rid, event))
        self.c.write(requester, lambda conn: qa.act(conn, rid, requests.Withdrawn("已另行处理")))
        return f"crossed: request {event.name} × withdrawn"

    # bulletins

    def _bulletin(self) -> str:
        code = self.rng.choice(self.codes)
        node = self.c.admin[code]
        bulletin = requests.parse_bulletin(
            {"title": f"协查工作通报 第{self._n}期", "body": "本期协查情况见附表。"},
            bulletin_id=self._uuid(),
        )
        self._n += 1
        if self._use_cli():
            out = self.cli(code, "bulletin", "send", "--title", bulletin.title, "--body", "见附表")
            self.tracked.bulletins[str(out["bulletin_id"])] = code
        else:
            self.c.write(code, lambda conn: node.assistance.send_bulletin(conn, bulletin))
            self.tracked.bulletins[bulletin.bulletin_id] = code
        return "bulletin sent"

    def _bulletin_read(self) -> str | None:
        code = self.rng.choice(self.codes)
        unread = self.c.read(
            code,
            lambda conn: (
                conn.execute(
                    select(BULLETINS.c.bulletin_id)
                    .where(BULLETINS.c.sender_node != code, BULLETINS.c.read_at.is_(None))
                    .order_by(BULLETINS.c.bulletin_id)
                )
                .scalars()
                .all()
            ),
        )
        if not unread:
            return None
        bid = self.rng.choice(list(unread))
        node = self.c.admin[code]
        if self._use_cli():
            self.cli(code, "bulletin", "read", bid)
        else:
            self.c.write(code, lambda conn: node.assistance.mark_read(conn, bid))
        return "bulletin read"

    # expert exchanges

    def _exchange(self) -> str:
        host, provider = self.rng.sample(self.codes, 2)
        node = self.c.admin[host]
        today = shanghai_date(node.clock())
        day = today + timedelta(days=self.rng.randint(20, 330))
        data = {
            "host_bureau": RESULT_BUREAU[host],
            "provider_province": provider,
            "dates": [day.isoformat()],
            "place": "现场检查地点",
            "holder_uscc": HOLDER,
            "categories": ["低压电器"],
            "experts_wanted": self.rng.randint(1, 3),
            "reply_by": (today + timedelta(days=10)).isoformat(),
        }
        self._n += 1
        if self._use_cli():
            out = self.cli(
                host, "exchange", "request", self._file(f"exchange-{self._n}.json", data)
            )
            xid = str(out["exchange_id"])
        else:
            request, host_value = node.exchange.parse_new(data)
            xid = self.c.write(host, lambda conn: node.exchange.create(conn, request, host_value))
        self.exchanges[xid] = (host, provider)
        self.tracked.exchanges.add(xid)
        return "exchange requested"

    def _advance_exchange(self) -> str | None:
        if not self.exchanges:
            return None
        xid = self.rng.choice(sorted(self.exchanges))
        host, provider = self.exchanges[xid]
        side = self.rng.choice(("host", "provider"))
        code = host if side == "host" else provider
        node = self.c.admin[code]
        try:
            v = self.c.read(code, lambda conn: node.exchange.view(conn, xid))
        except FederationError:
            return None
        status = v.state.status.value
        if status in FINAL_EXCHANGE:
            self.exchanges.pop(xid, None)
            return None
        r = self.rng.random()
        xn = node.exchange
        # (label, the `cccfed exchange …` arguments, the same through the entry points)
        act: tuple[str, list[str], Callable[[Connection], Any]] | None = None
        if r < 0.03 and not (side == "provider" and status == "requested"):
            act = (
                "exchange cancelled",
                ["cancel", xid, "--text", "日程调整"],
                lambda conn: xn.cancel(conn, xid, "日程调整"),
            )
        elif side == "provider" and v.state.pending_dates:
            if r < 0.8:
                act = (
                    "exchange rescheduled",
                    ["reschedule", xid],
                    lambda conn: xn.answer_reschedule(conn, xid),
                )
            else:
                act = (
                    "exchange reschedule refused",
                    ["reschedule", xid, "--refuse", "专家另有安排"],
                    lambda conn: xn.answer_reschedule(conn, xid, refuse="专家另有安排"),
                )
        elif side == "provider" and status == "requested":
            if r < 0.9:
                act = ("exchange proposed", ["propose", xid], lambda conn: xn.propose(conn, xid))
            else:
                act = (
                    "exchange declined",
                    ["decline", xid, "--reason", "other", "--text", "暂无安排"],
                    lambda conn: xn.decline(conn, xid, ex.DeclineReason.OTHER, "暂无安排"),
                )
        elif side == "host" and status == "proposed":
            if r < 0.85:
                act = (
                    "exchange confirmed (draw)",
                    ["confirm", xid],
                    lambda conn: xn.confirm(conn, xid),
                )
            else:
                act = (
                    "exchange proposal declined",
                    ["decline", xid, "--reason", "other", "--text", "另有安排"],
                    lambda conn: xn.decline(conn, xid, ex.DeclineReason.OTHER, "另有安排"),
                )
        elif side == "provider" and status == "confirmed" and r < 0.8:
            act = (
                "exchange attendance confirmed",
                ["confirm", xid],
                lambda conn: xn.confirm(conn, xid),
            )
        elif (
            side == "host"
            and status in ("confirmed", "attendance_confirmed")
            and not v.state.pending_dates
            and r < 0.1
        ):
            day = v.state.dates[0] + timedelta(days=self.rng.randint(1, 20))
            act = (
                "exchange reschedule asked",
                ["reschedule", xid, "--date", day.isoformat()],
                lambda conn: xn.request_reschedule(conn, xid, [day]),
            )
        if act is None:
            return None
        label, argv, job = act
        try:
            if self._use_cli():
                self.cli(code, "exchange", *argv)
            else:
                self.c.write(code, job)
        except FederationError as e:
            if not e.reason.endswith("NO_ELIGIBLE_EXPERTS"):
                raise
            # Nobody fits (booked, cap): the provider declines, as the refusal tells it to.
            self.refused["advance_exchange:NO_ELIGIBLE_EXPERTS"] += 1
            reason = ex.DeclineReason.NO_ELIGIBLE_EXPERTS
            self.c.write(code, lambda conn: xn.decline(conn, xid, reason, "无合适专家"))
            label = "exchange declined (no eligible experts)"
        return label

    # inspection results

    def _publish(self) -> str:
        code = self.rng.choice(self.codes)
        node = self.c.admin[code]
        n = len(self.tracked.published[code])
        data = example_result(code, n % 31)
        data["record_id"] = self._uuid()
        data["holder"]["uscc"] = make_uscc(f"92{code}{n:09d}")
        if self._use_cli():
            path = self._file(f"result-{code}-{n}.json", data)
            out = self.cli(code, "result", "publish", path, "--drafts-dir", str(self.files))
            self.tracked.published[code].append(str(out["record_id"]))
        else:
            result = node.recognition.parse_new(data)
            self.c.write(code, lambda conn: node.recognition.publish(conn, result))
            self.tracked.published[code].append(result.record_id)
        return "result published"


# --- the checks ------------------------------------------------------------------------------


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=lambda o: o.isoformat(), sort_keys=True))


def request_show(node: Node, conn: Connection, rid: str) -> dict[str, Any]:
    """What ``cccfed request show --json`` prints for ``rid`` on ``node``."""
    v = node.assistance.view(conn, rid)
    data = request_summary(v)
    data["history"] = [h.to_dict() for h in v.state.history]
    data["void_events"] = [r.kind for r in v.void]
    req = apb.Request.FromString(bytes(v.row.request))
    data["questions"] = [{"id": q.id, "text": q.text} for q in req.questions]
    data["certificate_nos"] = list(req.certificate_nos)
    data["place_of_use"] = req.place_of_use
    out: dict[str, Any] = _jsonable(data)
    return out


def exchange_show(node: Node, conn: Connection, xid: str) -> dict[str, Any]:
    """What ``cccfed exchange show --json`` prints for ``xid`` (without the provider's audit)."""
    v = node.exchange.view(conn, xid)
    d = exchange_summary(v)
    d["draw"] = v.state.draw.to_dict() if v.state.draw else None
    out: dict[str, Any] = _jsonable(d)
    return out


def _diff(a: dict[str, Any], b: dict[str, Any], skip: set[str]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def _limit(problems: list[str], n: int = 20) -> list[str]:
    return problems if len(problems) <= n else [*problems[:n], f"… and {len(problems) - n} more"]


def check_delivery(c: Cluster) -> tuple[Check, dict[str, Any]]:
    """Invariant 1: every outbox row delivered exactly once, with a verified receipt."""
    outbox: dict[str, list[Any]] = {}
    inbox: dict[str, dict[str, Any]] = {}
    logs: dict[str, Counter[tuple[str, int, int]]] = {}
    for code in c.codes:

        def load(conn: Connection) -> tuple[list[Any], dict[str, Any], Counter[Any]]:
            rows = list(conn.execute(select(OUTBOX).order_by(OUTBOX.c.id)).all())
            ins = {r.message_id: r for r in conn.execute(select(INBOX)).all()}
            counts: Counter[tuple[str, int, int]] = Counter()
            for seq, raw in conn.execute(select(LOG.c.seq, LOG.c.record)):
                try:
                    rec = log_pb2.LogRecord.FromString(bytes(raw))
                except DecodeError:
                    counts[(f"undecodable record {seq}", -1, -1)] += 1
                    continue
                counts[(rec.message_id, rec.direction, rec.type)] += 1
            return rows, ins, counts

        outbox[code], inbox[code], logs[code] = c.read(code, load)
    problems: list[str] = []
    kinds: Counter[str] = Counter()
    states: Counter[str] = Counter()
    now = datetime.now(UTC)
    retried = most = 0
    sent_ids: dict[str, set[str]] = {code: set() for code in c.codes}
    for sender in c.codes:
        trust = c.admin[sender].trust.current
        for r in outbox[sender]:
            mid, to = r.message_id, r.recipient_node
            kinds[r.kind.removeprefix("cccfed.v1.")] += 1
            states[r.state] += 1
            if r.attempts > 1:
                retried += 1
            most = max(most, int(r.attempts))
            sent_ids[to].add(mid)
            where = f"{sender}→{to} {mid} ({r.kind.removeprefix('cccfed.v1.')})"
            if r.state != "delivered":
                problems.append(
                    f"{where}: {r.state} after {r.attempts} attempt(s) "
                    f"{r.fail_reason or ''} {(r.last_error or '')[:120]}"
                )
                continue
            try:
                vr = verify_receipt(
                    bytes(r.receipt), bytes(r.envelope), trust, expected_receiver=to, at=now
                )
                if vr.received_at != r.received_at:
                    problems.append(f"{where}: received_at differs from the receipt's")
            except FederationError as e:
                problems.append(f"{where}: receipt does not verify: {e.diagnostics()}")
            if logs[sender][(mid, SENT, ENVELOPE)] != 1:
                problems.append(f"{where}: {logs[sender][(mid, SENT, ENVELOPE)]} sent records")
            if logs[sender][(mid, RECEIVED, RECEIPT)] != 1:
                problems.append(
                    f"{where}: {logs[sender][(mid, RECEIVED, RECEIPT)]} receipt records at sender"
                )
            got = inbox[to].get(mid)
            if got is None:
                problems.append(f"{where}: delivered but not in {to}'s inbox (LOST)")
                continue
            if got.sender_node != sender:
                problems.append(f"{where}: {to}'s inbox has it from {got.sender_node}")
            if bytes(got.receipt) != bytes(r.receipt):
                problems.append(f"{where}: the sender's receipt is not the one {to} committed")
            if logs[to][(mid, RECEIVED, ENVELOPE)] != 1:
                problems.append(
                    f"{where}: {logs[to][(mid, RECEIVED, ENVELOPE)]} received records at {to} "
                    "(DUPLICATED)"
                )
            if logs[to][(mid, SENT, RECEIPT)] != 1:
                problems.append(f"{where}: {logs[to][(mid, SENT, RECEIPT)]} receipts sent by {to}")
    for code in c.codes:
        problems += [f"{code} message log: {k[0]}" for k in logs[code] if k[1] == -1]
        for mid, row in inbox[code].items():
            if mid not in sent_ids[code]:
                problems.append(f"{code} inbox {mid} from {row.sender_node}: no outbox row")
    total = sum(len(rows) for rows in outbox.values())
    detail = (
        f"{total} messages, {states.get('delivered', 0)} delivered once with a verified receipt"
        + ("" if not problems else f"; {len(problems)} problem(s)")
    )
    counts: dict[str, Any] = {
        "messages": total,
        "messages sent more than once (attempts > 1)": retried,
        "most attempts of one message": most,
        **{f"kind {k}": n for k, n in sorted(kinds.items())},
    }
    return Check("1 delivered exactly once", not problems, detail, _limit(problems)), counts


def _alike(
    c: Cluster,
    noun: str,
    plural: str,
    holders: dict[str, dict[str, str]],
    started: set[str],
    roles: tuple[str, str],
    show: Any,
) -> Check:
    """Invariant 2 for one kind of two-party conversation: every one the workload started is
    held by both parties, and both views are the same apart from the role."""
    problems = []
    voids = 0
    statuses: Counter[str] = Counter()
    for cid in sorted(started - set(holders)):
        problems.append(f"{noun} {cid}: started by the workload but held by no node")
    for cid, sides in sorted(holders.items()):
        if set(sides) != set(roles):
            problems.append(f"{noun} {cid}: only on {sides}")
            continue
        a = c.show(sides[roles[0]], show, cid)
        b = c.show(sides[roles[1]], show, cid)
        statuses[a["status"]] += 1
        voids += bool(a["void_events"])
        diff = _diff(a, b, {"role"})
        if diff:
            problems.append(
                f"{noun} {cid} {sides[roles[0]]}→{sides[roles[1]]}: differs in "
                + ", ".join(f"{k} ({a.get(k)!r:.60} vs {b.get(k)!r:.60})" for k in diff)
            )
    detail = (
        f"{len(holders)} {plural} alike on both sides ("
        + ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))
        + f"); {voids} with crossed (void) events"
    )
    return Check(f"2 {plural} alike on both sides", not problems, detail, _limit(problems))


def check_conversations(c: Cluster, t: Tracked) -> list[Check]:
    """Invariant 2: both sides of every request and exchange alike; bulletins everywhere."""
    checks = []
    # requests
    holders: dict[str, dict[str, str]] = {}
    for code in c.codes:
        for rid, role, status in c.read(
            code,
            lambda conn: conn.execute(
                select(REQUESTS.c.request_id, REQUESTS.c.role, REQUESTS.c.status)
            ).all(),
        ):
            if status != "draft":
                holders.setdefault(rid, {})[role] = code
    checks.append(
        _alike(
            c, "request", "requests", holders, t.requests, ("requester", "responder"), request_show
        )
    )

    # expert exchanges
    xholders: dict[str, dict[str, str]] = {}
    for code in c.codes:
        for xid, role in c.read(
            code, lambda conn: conn.execute(select(EXCHANGES.c.exchange_id, EXCHANGES.c.role)).all()
        ):
            xholders.setdefault(xid, {})[role] = code
    checks.append(
        _alike(
            c, "exchange", "exchanges", xholders, t.exchanges, ("host", "provider"), exchange_show
        )
    )

    # bulletins and read acknowledgements
    problems = []
    held: dict[str, dict[str, Any]] = {}
    reads: dict[str, set[tuple[str, str]]] = {}
    for code in c.codes:
        held[code] = {
            r.bulletin_id: r
            for r in c.read(code, lambda conn: conn.execute(select(BULLETINS)).all())
        }
        reads[code] = {
            (r.bulletin_id, r.node)
            for r in c.read(code, lambda conn: conn.execute(select(READS)).all())
        }
    acks = 0
    for bid, sender in sorted(t.bulletins.items()):
        for code in c.codes:
            row = held[code].get(bid)
            if row is None:
                problems.append(f"bulletin {bid} of {sender}: missing on {code}")
            elif code != sender and row.read_at is not None:
                acks += 1
                if (bid, code) not in reads[sender]:
                    problems.append(f"bulletin {bid}: {code} read it, {sender} has no ack")
    detail = f"{len(t.bulletins)} bulletins on every member, {acks} read acknowledgements"
    checks.append(Check("2 bulletins and acks arrived", not problems, detail, _limit(problems)))
    return checks


def check_logs(c: Cluster) -> Check:
    """Invariant 3: ``cccfed log verify`` on every node."""
    problems = []
    records = 0
    for code in c.codes:
        rc, out = c.cli("log", "verify", "--config", str(config_path(c.root, code)), "--json")
        if rc != 0:
            problems.append(f"{code}: {out.strip()[:300]}")
            continue
        data = json.loads(out)
        records += int(data["records"])
    detail = f"{len(c.codes) - len(problems)}/{len(c.codes)} logs verify ({records} records)"
    return Check("3 message logs verify", not problems, detail, problems)


def check_recognition(c: Cluster, t: Tracked) -> Check:
    """Invariant 4: every origin log converged everywhere; every result recognised."""
    problems = []
    heads: dict[str, list[tuple[str, int, str]]] = {}
    for code in c.codes:
        node = c.admin[code]
        cps = c.read(code, node.recognition.checkpoints)
        heads[code] = [(cp["origin"], int(cp["size"]), cp["root"]) for cp in cps]
    want = {o: len(ids) for o, ids in t.published.items() if ids}
    for code, head in heads.items():
        sizes = {o: s for o, s, _ in head}
        if sizes != want:
            problems.append(f"{code} holds logs of sizes {sizes}, published {want}")
    if len({json.dumps(h) for h in heads.values()}) != 1:
        problems.append("the nodes hold different heads: " + json.dumps(heads))
    recognized = 0
    for code in c.codes:
        node = c.admin[code]
        rows = {r["record_id"]: r for r in c.read(code, node.recognition.results)}
        for origin, ids in t.published.items():
            for rid in ids:
                r = rows.get(rid)
                if r is None:
                    problems.append(f"{code}: result {rid} of {origin} missing")
                elif r["status"] != "recognized" or r["recognized_by"] != r["quorum"]:
                    problems.append(
                        f"{code}: result {rid} of {origin} {r['status']}, recognised by "
                        f"{r['recognized_by']} of {r['quorum']}"
                    )
                else:
                    recognized += 1
    total = sum(len(ids) for ids in t.published.values())
    detail = (
        f"{len(want)} origin logs identical on {len(c.codes)} nodes; "
        f"{recognized}/{total * len(c.codes)} (result, node) recognised by the quorum"
    )
    return Check("4 logs converged, results recognised", not problems, detail, _limit(problems))


def check_equivocation(c: Cluster) -> Check:
    """Invariant 5: no equivocation evidence, no frozen origin, no result conflict."""
    problems = []
    for code in c.codes:

        def look(conn: Connection) -> tuple[list[Any], frozenset[str], int]:
            ev = list(conn.execute(select(EQUIVOCATIONS)).all())
            conflicts = int(conn.execute(select(func.count()).select_from(CONFLICTS)).scalar_one())
            return ev, frozen_origins(conn), conflicts

        ev, frozen, conflicts = c.read(code, look)
        problems += [f"{code}: equivocation of {e.origin} reported by {e.source}" for e in ev]
        problems += [f"{code}: origin {o} frozen" for o in sorted(frozen)]
        if conflicts:
            problems.append(f"{code}: {conflicts} result conflict(s) flagged")
    detail = "none reported on any node" if not problems else f"{len(problems)} finding(s)"
    return Check("5 no equivocation", not problems, detail, problems)


def check_processes(c: Cluster) -> Check:
    problems = [
        f"{code} exited by itself with {rc}; log tail: …{tail[-600:]}"
        for code, rc, tail in c.crashes
    ]
    problems += [f"{code}: SIGTERM stop exited {rc}" for code, rc in c.graceful if rc != 0]
    detail = (
        f"no unexpected exit; {len(c.graceful)} graceful stops exited 0"
        if not problems
        else f"{len(problems)} problem(s)"
    )
    return Check("nodes: no crash, clean stops", not problems, detail, problems)


def check_node_logs(c: Cluster) -> Check:
    """No ERROR line and no traceback in any node's log (a node that logs one hit a bug or
    refused something an honest peer sent)."""
    problems = []
    for code in c.codes:
        path = c.root / "nodes" / code / "node.log"
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for n, line in enumerate(lines, start=1):
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                problems.append(f"{code} node.log:{n}: {line[:300]}")
    detail = "no ERROR, no traceback" if not problems else f"{len(problems)} line(s)"
    return Check("node logs: no ERROR", not problems, detail, _limit(problems))


# --- the run ---------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, flush=True)


def run_faults_and_workload(c: Cluster, w: Workload, opts: SoakOptions) -> None:
    """The run phase: the workload at ``opts.rate`` while the fault schedule plays."""
    faults = plan_faults(opts, c.codes)
    arrivals = random.Random(f"arrivals/{opts.seed}")
    start = time.monotonic()
    next_action = arrivals.expovariate(opts.rate)
    next_progress = opts.progress_every
    i = 0
    while True:
        now = time.monotonic() - start
        c.reap()
        # Every fault scheduled before the end is played, even if an action ran late.
        while i < len(faults) and faults[i].at <= now and faults[i].at < opts.seconds:
            f = faults[i]
            i += 1
            if f.kind == "kill":
                c.kill(f.node)
            elif f.kind == "term":
                c.terminate(f.node)
            elif f.kind == "restart":
                c.restart(f.node)
            elif f.kind == "cut":
                c.cut(f.link, f.mode)
            else:
                c.restore(f.link)
        if now >= opts.seconds:
            break
        if now >= next_action:
            w.step()
            next_action += arrivals.expovariate(opts.rate)
        if opts.progress_every and now >= next_progress:
            next_progress += opts.progress_every
            down = [code for code in c.codes if not c.alive(code)]
            cut = sum(1 for p in c.proxies.values() if p.is_cut)
            say(
                f"  t={now:5.0f}s  actions {w.done():4d}  kills {c.kills + c.terms:3d}  "
                f"cuts {sum(c.cuts.values()):3d}  down {','.join(down) or '-'}  links cut {cut}  "
                f"outbox pending {sum(c.pending().values())}"
            )
        upcoming = [next_action, opts.seconds]
        if i < len(faults):
            upcoming.append(faults[i].at)
        pause = min(upcoming) - (time.monotonic() - start)
        if pause > 0:
            time.sleep(min(pause, 0.1))


def settle(c: Cluster, opts: SoakOptions, report: SoakReport) -> None:
    """Faults off, links back, every node restarted; drain, reconcile, drain; stop."""
    t = time.monotonic()

    def lap(name: str) -> None:
        nonlocal t
        report.durations[f"settle: {name}"] = time.monotonic() - t
        t = time.monotonic()

    c.restore_all()
    c.reap()
    c.restart_all()
    lap("restart all")
    drained, left = c.wait_drained(opts.drain_seconds)
    report.counts["drained before reconcile"] = "yes" if drained else f"NO, left {left}"
    lap("drain")
    pulled = 0
    reconcile_problems = []
    for code in c.codes:
        rc, out = c.cli("reconcile", "--config", str(config_path(c.root, code)), "--json")
        try:
            data = json.loads(out[: out.rindex("}") + 1]) if "{" in out else {}
        except ValueError:
            data = {}
        if rc != 0:
            reconcile_problems.append(f"{code}: exit {rc}: {out.strip()[:200]}")
        for lines in data.values():
            if isinstance(lines, list):
                pulled += sum(1 for line in lines if line.get("status") == "behind")
    report.counts["reconcile: origins pulled"] = pulled
    if reconcile_problems:
        report.counts["reconcile problems"] = "; ".join(reconcile_problems)
    lap("reconcile")
    drained, left = c.wait_drained(opts.drain_seconds)
    report.counts["drained after reconcile"] = "yes" if drained else f"NO, left {left}"
    lap("drain again")
    c.stop_all()
    lap("stop all")


def check_stores(c: Cluster, t: Tracked) -> tuple[list[Check], dict[str, Any]]:
    """The invariants on the stores of stopped nodes (read-only) and their logs."""
    delivery, counts = check_delivery(c)
    checks = [delivery, *check_conversations(c, t), check_logs(c)]
    checks += [check_recognition(c, t), check_equivocation(c), check_node_logs(c)]
    counts["requests"] = len(t.requests)
    counts["exchanges"] = len(t.exchanges)
    counts["bulletins"] = len(t.bulletins)
    counts["results published"] = sum(len(v) for v in t.published.values())
    return checks, counts


def run_soak(opts: SoakOptions) -> SoakReport:
    """One whole soak (set-up, run, settle, checks); prints as it goes and returns the report."""
    root = opts.directory or Path(tempfile.mkdtemp(prefix="cccfed-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    report = SoakReport(seed=opts.seed, directory=root)
    say(
        f"cccfed soak: seed {opts.seed}, {opts.seconds:.0f} s of faults and workload "
        f"(~{opts.rate:g} actions/s), federation in {root}"
    )
    t0 = time.monotonic()
    c = Cluster(root)
    try:
        c.create()
        w = Workload(c, opts.seed)
        w.import_registries()
        c.start_all()
        say("  4 nodes up; 12 proxies: " + ", ".join(
            f"{a}→{b} :{p.port}" for (a, b), p in list(c.proxies.items())[:3]
        ) + ", …")  # fmt: skip
        report.durations["setup"] = time.monotonic() - t0
        t1 = time.monotonic()
        run_faults_and_workload(c, w, opts)
        report.durations["run"] = time.monotonic() - t1
        w.tracked.save(root / TRACKED)
        t2 = time.monotonic()
        settle(c, opts, report)
        report.durations["settle"] = time.monotonic() - t2
        t3 = time.monotonic()
        checks, counts = check_stores(c, w.tracked)
        report.checks += checks
        report.checks.append(check_processes(c))
        if w.errors:
            report.checks.append(
                Check(
                    "workload: no unexpected error",
                    False,
                    f"{len(w.errors)} unexpected error(s) in actions",
                    _limit(w.errors),
                )
            )
        report.durations["checks"] = time.monotonic() - t3
        report.counts = {**counts, **report.counts}
        report.counts["kills (SIGKILL)"] = c.kills
        report.counts["graceful stops during the run (SIGTERM)"] = c.terms
        report.counts["restarts"] = c.restarts
        report.counts["link cuts (reset)"] = c.cuts["reset"]
        report.counts["link cuts (blackhole)"] = c.cuts["blackhole"]
        report.counts["proxy connections reset"] = sum(p.stats.reset for p in c.proxies.values())
        report.counts["proxy connections refused"] = sum(
            p.stats.refused for p in c.proxies.values()
        )
        report.actions = w.actions
        report.refused = w.refused
        report.refusal_text = w.refusal_text
    finally:
        c.close()
    report.durations["total"] = time.monotonic() - t0
    print_report(report)
    if report.ok and opts.directory is None and not opts.keep:
        shutil.rmtree(root, ignore_errors=True)
    elif not report.ok:
        say(f"evidence kept in {root} (nodes/*/node.log, nodes/*/store.db, {TRACKED})")
    return report


def recheck(root: Path) -> SoakReport:
    """The store checks again on a kept soak directory (its nodes must be stopped)."""
    report = SoakReport(seed=-1, directory=root)
    c = Cluster(root)
    try:
        c.open()
        report.checks, report.counts = check_stores(c, Tracked.load(root / TRACKED))
    finally:
        c.close()
    print_report(report)
    return report


def print_report(r: SoakReport) -> None:
    from node import output

    say("\n== invariants")
    output.table(
        ["invariant", "result", "detail"],
        [(c.name, "PASS" if c.ok else "FAIL", c.detail) for c in r.checks],
    )
    for c in r.checks:
        for p in c.problems:
            say(f"  {c.name}: {p}")
    say("\n== counts")
    output.table(["what", "count"], sorted(r.counts.items(), key=lambda kv: kv[0]))
    say("\n== workload actions (done; refused by the local rules)")
    rows: list[tuple[str, Any]] = sorted(r.actions.items())
    rows += [(f"refused {k}", n) for k, n in sorted(r.refused.items())]
    output.table(["action", "count"], rows)
    for k, text in sorted(r.refusal_text.items()):
        say(f"  e.g. {k}: {text}")
    say("\n== durations (s)")
    output.table(["phase", "seconds"], [(k, f"{v:.1f}") for k, v in r.durations.items()])
    verdict = "PASSED" if r.ok else "FAILED"
    say(f"\nseed {r.seed}: soak {verdict}" if r.seed >= 0 else f"\nchecks {verdict}")


def parse_args(argv: list[str] | None = None) -> SoakOptions:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=180.0, help="run phase length (default 180)")
    p.add_argument("--seed", type=int, help="fault schedule and workload seed (default: random)")
    p.add_argument(
        "--dir", type=Path, help="new federation directory, kept afterwards (default: a temp dir)"
    )
    p.add_argument("--rate", type=float, default=3.0, help="workload actions per second")
    p.add_argument("--drain-seconds", type=float, default=120.0, help="bound of each drain wait")
    p.add_argument("--keep", action="store_true", help="keep the temp dir even if all passes")
    p.add_argument(
        "--check",
        type=Path,
        metavar="DIR",
        help="only run the store checks again on a kept soak directory (nodes stopped)",
    )
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.rate <= 0 or a.drain_seconds <= 0:
        p.error("--seconds, --rate and --drain-seconds must be positive")
    if a.dir is not None and (a.dir / "federation.json").exists():
        p.error(f"{a.dir} already holds a federation; give a new --dir")
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "big")
    return SoakOptions(
        seconds=a.seconds,
        seed=seed,
        directory=a.dir,
        rate=a.rate,
        drain_seconds=a.drain_seconds,
        keep=a.keep,
        check=a.check,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    report = recheck(opts.check) if opts.check is not None else run_soak(opts)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
