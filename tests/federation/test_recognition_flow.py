"""Recognition of inspection results between real node processes.

Four ``python -m node.cli node serve`` processes (real TLS, SQLite stores, delivery workers).
Each publishes its own province's result with ``cccfed result publish`` as a separate process;
the notes and cosignatures travel over the durable path until every result is recognised by the
three other members on every node. A node that was down catches up with ONE ``cccfed
reconcile``, and a reconciliation killed half way (fail point ``reconcile_after_origin``) leaves
whole origins only: the next one finishes it, nothing lost and nothing stored twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from node.cli import main
from node.demo import example_result
from node.recognition import ENTRIES
from tests.federation.conftest import Federation, MakeFed, wait_until

pytestmark = pytest.mark.slow

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
CODES = [SH, JS, ZJ, AH]
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``cccfed …`` as its own process (what an operator runs next to the serving node)."""
    full = dict(os.environ, **env)
    if not env:
        full.pop("CCCFED_FAILPOINTS", None)
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *argv],
        capture_output=True,
        text=True,
        env=full,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


class Results:
    """Publishing (separate processes) and reading (in this process) results on a federation."""

    def __init__(self, fed: Federation, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.fed = fed
        self.tmp = tmp
        self.capsys = capsys
        self.published: dict[str, list[str]] = {c: [] for c in fed.codes}

    def publish(self, code: str) -> str:
        n = len(self.published[code])
        data = example_result(code, n)
        path = self.tmp / f"result-{code}-{n}.json"
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        res = run_cli("result", "publish", str(path), "--config", str(self.fed.config(code)))
        assert res.returncode == 0, res.stderr
        self.published[code].append(data["record_id"])
        return str(data["record_id"])

    def json(self, code: str, *argv: str) -> Any:
        self.capsys.readouterr()
        rc = main([*argv, "--config", str(self.fed.config(code)), "--json"])
        out, err = self.capsys.readouterr()
        assert rc == 0, err
        return json.loads(out)

    def listed(self, code: str) -> dict[str, dict[str, Any]]:
        return {r["record_id"]: r for r in self.json(code, "result", "list")}

    def sizes(self, code: str) -> dict[str, int]:
        return {r["origin"]: r["size"] for r in self.json(code, "result", "checkpoint")}

    def all_recognized(self, on: list[str]) -> None:
        """Wait until every published result is recognised by every other member on ``on``."""

        def done(code: str) -> Callable[[], bool]:
            def check() -> bool:
                rows = self.listed(code)
                return all(
                    rid in rows
                    and rows[rid]["status"] == "recognized"
                    and rows[rid]["recognized_by"] == [c for c in CODES if c != origin]
                    for origin, ids in self.published.items()
                    for rid in ids
                )

            return check

        for code in on:
            wait_until(done(code), 60, f"{code}: every result recognised by the others")

    def wait_sizes(self, want: dict[str, int], on: list[str]) -> None:
        for code in on:
            wait_until(lambda: self.sizes(code) == want, 30, f"{code} holds {want}")  # noqa: B023

    def entry_counts(self, code: str) -> tuple[dict[str, int], int]:
        """(entries per origin, distinct record ids) straight from ``code``'s store."""
        with self.fed.engine(code).connect() as c:
            per = {
                str(o): int(n)
                for o, n in c.execute(
                    select(ENTRIES.c.origin, func.count()).group_by(ENTRIES.c.origin)
                ).all()
            }
            distinct = c.execute(select(func.count(func.distinct(ENTRIES.c.record_id)))).scalar()
        return per, int(distinct or 0)


def reconcile(fed: Federation, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli("reconcile", "--config", str(fed.config(code)), "--json", **env)


def statuses(res: subprocess.CompletedProcess[str]) -> dict[tuple[str, str], str]:
    """``{(peer, origin): status}`` of a ``cccfed reconcile --json`` run."""
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    return {(peer, line["origin"]): line["status"] for peer, ls in out.items() for line in ls}


def test_results_are_recognized_everywhere_and_outages_are_caught_up(
    federation: MakeFed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = federation(CODES)
    procs = {c: fed.node(c).start() for c in CODES}
    r = Results(fed, tmp_path, capsys)

    # --- every node publishes; every result is recognised by the three others everywhere ----
    for code in CODES:
        r.publish(code)
    r.all_recognized(CODES)
    shown = r.json(ZJ, "result", "show", r.published[SH][0])
    assert shown["inclusion_proof"]["tree_size"] == 1 and shown["status"] == "recognized"
    for code in CODES:
        assert r.json(code, "log", "verify")["ok"] is True

    # --- Anhui is down while Shanghai and Zhejiang publish; one reconcile catches it up -----
    assert procs[AH].terminate() == 0
    r.publish(SH)
    r.publish(SH)
    r.publish(ZJ)
    want = {SH: 3, JS: 1, ZJ: 2, AH: 1}
    r.wait_sizes(want, [SH, JS, ZJ])
    procs[AH].start()
    first = statuses(reconcile(fed, AH))
    assert set(first.values()) <= {"converged", "behind"}, first
    assert r.sizes(AH) == want
    assert set(statuses(reconcile(fed, AH)).values()) == {"converged"}
    r.all_recognized(CODES)

    # --- a reconciliation killed after its first origin: whole origins only, then finished --
    assert procs[AH].terminate() == 0
    before, _ = r.entry_counts(AH)
    r.publish(SH)
    r.publish(ZJ)
    r.publish(ZJ)
    want = {SH: 4, JS: 1, ZJ: 4, AH: 1}
    r.wait_sizes(want, [SH, JS, ZJ])
    killed = reconcile(fed, AH, CCCFED_FAILPOINTS="reconcile_after_origin=1")
    assert killed.returncode == -9, killed.stderr
    half, distinct = r.entry_counts(AH)
    assert half == dict(before, **{SH: 4}), half  # Shanghai's log committed, Zhejiang's not
    assert distinct == sum(half.values())
    procs[AH].start()
    assert set(statuses(reconcile(fed, AH)).values()) <= {"converged", "behind"}
    assert set(statuses(reconcile(fed, AH)).values()) == {"converged"}
    counts, distinct = r.entry_counts(AH)
    assert counts == want and distinct == sum(want.values())
    r.all_recognized(CODES)
    for code in CODES:
        assert r.json(code, "log", "verify")["ok"] is True
    for code in CODES:
        assert procs[code].terminate() == 0
