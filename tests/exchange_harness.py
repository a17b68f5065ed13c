"""Expert-exchange helpers on top of ``tests/assistance_harness.py`` (in-process nodes).

Nodes are real :class:`node.runtime.Node` objects on SQLite files; messages travel through the
simulated transport of the assistance harness (the real intake and receipt handling, no
network). Registries are written as CSV and imported the way ``cccfed experts import`` does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from federation import exchange as ex
from federation.experts import parse_registry_csv
from federation.periods import shanghai_date
from node.exchange import ExchangeView
from node.runtime import Node
from tests.assistance_harness import ROOT, read, write

AH_REGISTRY = ROOT / "docs" / "examples" / "experts-anhui.csv"
HOLDER = "913304007429141869"
HEADER = (
    "expert_id,name,bureau,categories,annual_cap,unavailable,conflict_holders,"
    "conflict_bureaus,phone,id_number"
)


def registry_csv(*rows: str) -> bytes:
    """A registry file with the standard header and ``rows``."""
    return ("\n".join([HEADER, *rows]) + "\n").encode("utf-8")


def expert_row(
    expert_id: str,
    *,
    bureau: str = "340100",
    categories: str = "低压电器",
    cap: int = 5,
    unavailable: str = "",
    conflict_holders: str = "",
    conflict_bureaus: str = "",
    phone: str = "",
    id_number: str = "",
) -> str:
    """One CSV row of a registry (an Anhui expert judging low-voltage apparatus by default)."""
    return ",".join(
        [
            expert_id,
            f"专家{expert_id}",
            bureau,
            categories,
            str(cap),
            unavailable,
            conflict_holders,
            conflict_bureaus,
            phone,
            id_number,
        ]
    )


def import_experts(
    node: Node, data: bytes | None = None, *, name: str = "experts.csv", replace: bool = False
) -> dict[str, Any]:
    """Import a CSV registry (default: the Anhui example) into ``node``'s store."""
    if data is None:
        data, name = AH_REGISTRY.read_bytes(), AH_REGISTRY.name
    registry = parse_registry_csv(data, name, province=node.code)
    result: dict[str, Any] = write(
        node, lambda c: node.exchange.import_registry(c, registry, source=name, replace=replace)
    )
    return result


def day(node: Node, offset: int) -> dt.date:
    """The Shanghai date ``offset`` days after ``node``'s today."""
    return shanghai_date(node.clock()) + dt.timedelta(days=offset)


def request_data(
    host: Node, *, offsets: Iterable[int] = (20, 21), **overrides: Any
) -> dict[str, Any]:
    """A request from ``host`` to Anhui for two low-voltage experts on the given days."""
    data: dict[str, Any] = {
        "host_bureau": {"330000": "330100", "310000": "310115", "320000": "320500"}[host.code],
        "provider_province": "340000",
        "dates": [day(host, o).isoformat() for o in offsets],
        "place": "杭州市滨江区江南大道 3888 号",
        "holder_uscc": HOLDER,
        "categories": ["LOW_VOLTAGE_APPARATUS"],
        "experts_wanted": 2,
        "reply_by": day(host, 10).isoformat(),
    }
    data.update(overrides)
    return data


def new_exchange(host: Node, **overrides: Any) -> str:
    """Create and queue a request from ``host``; returns the exchange id."""
    request, host_value = host.exchange.parse_new(request_data(host, **overrides))
    return write(host, lambda c: host.exchange.create(c, request, host_value))


def xview(node: Node, exchange_id: str) -> ExchangeView:
    return read(node, lambda c: node.exchange.view(c, exchange_id))


def propose(node: Node, exchange_id: str) -> ExchangeView:
    return write(node, lambda c: node.exchange.propose(c, exchange_id))


def confirm(node: Node, exchange_id: str) -> ExchangeView:
    return write(node, lambda c: node.exchange.confirm(c, exchange_id))


def decline(
    node: Node, exchange_id: str, reason: ex.DeclineReason = ex.DeclineReason.OTHER
) -> ExchangeView:
    return write(node, lambda c: node.exchange.decline(c, exchange_id, reason, "不便派出"))


def cancel(node: Node, exchange_id: str, text: str = "检查取消") -> ExchangeView:
    return write(node, lambda c: node.exchange.cancel(c, exchange_id, text))


def bookings(node: Node) -> list[tuple[str, str, str, bool]]:
    """(expert, day, exchange, tentative) rows of ``node``'s booking table, sorted."""
    rows = read(node, lambda c: c.exec_driver_sql("SELECT * FROM expert_bookings").all())
    return sorted((r.expert_id, r.day, r.exchange_id, bool(r.tentative)) for r in rows)


def counter_random(label: str) -> Callable[[int], bytes]:
    """A deterministic ``random_bytes`` for replaying draws: SHA-256 of a label and a counter."""
    state = {"n": 0}

    def random_bytes(n: int) -> bytes:
        state["n"] += 1
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{label}/{state['n']}/{len(out)}".encode()).digest()
        return out[:n]

    return random_bytes


__all__ = [
    "AH_REGISTRY",
    "HOLDER",
    "bookings",
    "cancel",
    "confirm",
    "counter_random",
    "day",
    "decline",
    "expert_row",
    "import_experts",
    "new_exchange",
    "propose",
    "registry_csv",
    "request_data",
    "xview",
]
