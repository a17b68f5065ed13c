"""``cccfed experts|exchange``: the expert registry and expert exchanges (items 9 and 17).

Each command opens the node's store from its configuration and runs one transaction; messages it
sends are queued in that transaction and delivered by the running node's worker. The host's
secret draw value never appears in any output before the host has revealed it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from federation import divisions
from federation import draw as draws
from federation import exchange as ex
from federation.ccc_catalogue import CATEGORIES
from federation.draw import DrawRecord
from federation.errors import ValidationError
from federation.experts import MAX_REGISTRY_BYTES, parse_registry_csv, parse_registry_json
from federation.periods import shanghai_date
from node import output
from node.cli_requests import _load_file, _node, _out, _read, _run, read_input_file

Add = Callable[..., argparse.ArgumentParser]


def _mask(id_number: str) -> str:
    """An ID number as people may see it on screen: first 4 and last 2 characters only."""
    if not id_number:
        return ""
    return id_number[:4] + "*" * (len(id_number) - 6) + id_number[-2:]


def _category_names(codes: list[str]) -> str:
    return ", ".join(CATEGORIES[c].name_zh if c in CATEGORIES else c for c in codes)


# --- experts ------------------------------------------------------------------------------------


def cmd_experts_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    # A regular file within the registry limit, never a FIFO or device (which would hang).
    data = read_input_file(path, limit=MAX_REGISTRY_BYTES, too_large="REGISTRY_TOO_LARGE")

    def job(node: Any, conn: Connection) -> dict[str, Any]:
        parse = parse_registry_json if path.suffix.lower() == ".json" else parse_registry_csv
        registry = parse(data, path.name, province=node.code)
        return dict(
            node.exchange.import_registry(conn, registry, source=path.name, replace=args.replace)
        )

    result = _run(args, job)
    _out(
        args,
        result,
        f"{result['source']}: {len(result['added'])} added, {len(result['updated'])} updated"
        + (
            f", {len(result['retired'])} retired ({', '.join(result['retired'])})"
            if args.replace
            else ""
        )
        + f" (registry of {result['province']})",
    )
    return 0


def _expert_dict(row: Any, booked: int | None = None) -> dict[str, Any]:
    return {
        "expert_id": row.expert_id,
        "name": row.name,
        "bureau": row.bureau,
        "categories": json.loads(row.categories),
        "annual_cap": row.annual_cap,
        "exchanges_this_year": booked,
        "unavailable": json.loads(row.unavailable),
        "conflict_holders": json.loads(row.conflict_holders),
        "conflict_bureaus": json.loads(row.conflict_bureaus),
        "active": bool(row.active),
        "source": row.source,
        "imported_at": row.imported_at,
    }


def cmd_experts_list(args: argparse.Namespace) -> int:
    from node.exchange import EXPERTS

    node = _node(args)
    year = shanghai_date(node.clock()).year

    def read(node: Any, conn: Connection) -> list[dict[str, Any]]:
        counts = node.exchange.booking_context(conn, year).year_counts
        q = select(EXPERTS).order_by(EXPERTS.c.expert_id)
        if not args.all:
            q = q.where(EXPERTS.c.active.is_(True))
        return [_expert_dict(r, counts.get(r.expert_id, 0)) for r in conn.execute(q).all()]

    items = _read(node, read)
    if args.json:
        output.emit_json(items)
        return 0
    output.table(
        ["expert", "name", "bureau", "categories", f"{year} used/cap", "unavailable", "active"],
        [
            (
                i["expert_id"],
                i["name"],
                f"{i['bureau']} {divisions.bureau(i['bureau']).bureau_zh}",
                _category_names(i["categories"]),
                f"{i['exchanges_this_year']}/{i['annual_cap']}",
                ", ".join(i["unavailable"]) or "-",
                "yes" if i["active"] else "no",
            )
            for i in items
        ],
    )
    return 0


def cmd_experts_show(args: argparse.Namespace) -> int:
    from node.exchange import BOOKINGS

    node = _node(args)
    year = shanghai_date(node.clock()).year

    def read(node: Any, conn: Connection) -> dict[str, Any]:
        row = node.exchange.expert_row(conn, args.id)
        counts = node.exchange.booking_context(conn, year).year_counts
        d = _expert_dict(row, counts.get(row.expert_id, 0))
        # Private data is shown to the local operator only, and the ID number masked even so.
        d["phone"] = row.phone
        d["id_number"] = _mask(row.id_number)
        d["bookings"] = [
            {"day": b.day, "exchange_id": b.exchange_id, "tentative": bool(b.tentative)}
            for b in conn.execute(
                select(BOOKINGS)
                .where(BOOKINGS.c.expert_id == row.expert_id)
                .order_by(BOOKINGS.c.day)
            )
        ]
        return d

    d = _read(node, read)
    if args.json:
        output.emit_json(d)
        return 0
    print(f"expert {d['expert_id']}  {d['name']}  ({'active' if d['active'] else 'inactive'})")
    print(f"  bureau: {d['bureau']} {divisions.bureau(d['bureau']).bureau_zh}")
    print(f"  categories: {_category_names(d['categories'])}")
    print(f"  annual cap: {d['annual_cap']} ({d['exchanges_this_year']} used in {year})")
    print(f"  unavailable: {', '.join(d['unavailable']) or '-'}")
    print(f"  conflicts: holders {', '.join(d['conflict_holders']) or '-'}; "
          f"bureaus {', '.join(d['conflict_bureaus']) or '-'}")  # fmt: skip
    print(f"  phone: {d['phone'] or '-'}   ID number: {d['id_number'] or '-'}   (private)")
    print(f"  from {d['source']}, imported {d['imported_at']:%Y-%m-%d %H:%M} UTC")
    if d["bookings"]:
        output.table(
            ["day", "exchange", "booking"],
            [
                (b["day"], b["exchange_id"][:8], "held (proposal)" if b["tentative"] else "booked")
                for b in d["bookings"]
            ],
        )
    return 0


# --- exchange -----------------------------------------------------------------------------------


def _summary_text(d: dict[str, Any]) -> str:
    drawn = ", ".join(f"{e['name']} ({e['expert_id']})" for e in d["drawn"])
    text = f"exchange {d['exchange_id']}: {d['status']}"
    if d["candidates"] is not None and not d["drawn"]:
        text += f" ({len(d['candidates'])} candidate(s), {d['k']} to draw)"
    if drawn:
        text += f"; drawn: {drawn}"
    return text


def cmd_request(args: argparse.Namespace) -> int:
    data: dict[str, Any] = _load_file(args.file) if args.file else {}
    flags: dict[str, Any] = {
        "host_bureau": args.host_bureau,
        "provider_province": args.provider,
        "place": args.place,
        "holder_uscc": args.holder_uscc,
        "experts_wanted": args.experts,
        "reply_by": args.reply_by,
    }
    for key, value in flags.items():
        if value is not None:
            data[key] = value
    if args.date:
        data["dates"] = list(args.date)
    if args.category:
        data["categories"] = list(args.category)

    def job(node: Any, conn: Connection) -> dict[str, Any]:
        from node.exchange import summary

        request, host_value = node.exchange.parse_new(data)
        node.exchange.create(conn, request, host_value)
        return summary(node.exchange.view(conn, request.request_id))

    d = _run(args, job)
    _out(
        args,
        d,
        f"exchange {d['exchange_id']} requested from {d['provider_node']}: "
        f"{d['experts_wanted']} expert(s) for {', '.join(d['dates'])}",
    )
    return 0


def _act(args: argparse.Namespace, action: Callable[[Any, Connection, str], Any]) -> int:
    def job(node: Any, conn: Connection) -> dict[str, Any]:
        from node.exchange import summary

        xid = node.exchange.find(conn, args.id)
        return summary(action(node, conn, xid))

    d = _run(args, job)
    _out(args, d, _summary_text(d))
    return 0


def cmd_propose(args: argparse.Namespace) -> int:
    return _act(args, lambda node, conn, xid: node.exchange.propose(conn, xid))


def cmd_confirm(args: argparse.Namespace) -> int:
    return _act(args, lambda node, conn, xid: node.exchange.confirm(conn, xid))


def cmd_decline(args: argparse.Namespace) -> int:
    reason = ex.DeclineReason(args.reason)
    return _act(
        args, lambda node, conn, xid: node.exchange.decline(conn, xid, reason, args.text or "")
    )


def cmd_cancel(args: argparse.Namespace) -> int:
    return _act(args, lambda node, conn, xid: node.exchange.cancel(conn, xid, args.text or ""))


def cmd_reschedule(args: argparse.Namespace) -> int:
    def action(node: Any, conn: Connection, xid: str) -> Any:
        if args.date:
            if args.refuse is not None:
                raise ValidationError("--date (host) and --refuse (provider) do not go together")
            dates = []
            for text in args.date:
                try:
                    dates.append(dt.date.fromisoformat(text))
                except ValueError:
                    raise ValidationError(f"--date {text!r} is not a date YYYY-MM-DD") from None
            return node.exchange.request_reschedule(conn, xid, dates)
        return node.exchange.answer_reschedule(conn, xid, refuse=args.refuse)

    return _act(args, action)


def cmd_list(args: argparse.Namespace) -> int:
    from node.exchange import EXCHANGES

    node = _node(args)

    def read(node: Any, conn: Connection) -> list[dict[str, Any]]:
        q = select(EXCHANGES).order_by(EXCHANGES.c.first_date, EXCHANGES.c.exchange_id)
        if args.role:
            q = q.where(EXCHANGES.c.role == args.role)
        if args.status:
            q = q.where(EXCHANGES.c.status == args.status)
        return [
            {
                "exchange_id": r.exchange_id,
                "role": r.role,
                "status": r.status,
                "host_bureau": r.host_bureau,
                "host_node": r.host_node,
                "provider_node": r.provider_node,
                "dates": json.loads(r.dates),
                "assigned": json.loads(r.assigned),
                "updated_at": r.updated_at,
            }
            for r in conn.execute(q).all()
        ]

    items = _read(node, read)
    if args.json:
        output.emit_json(items)
        return 0
    output.table(
        ["exchange", "role", "status", "host", "provider", "dates", "experts"],
        [
            (
                i["exchange_id"][:8],
                "邀请 host" if i["role"] == "host" else "派出 provider",
                i["status"],
                i["host_bureau"],
                i["provider_node"],
                ", ".join(i["dates"]),
                ", ".join(i["assigned"]) or "-",
            )
            for i in items
        ],
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    node = _node(args)

    def read(node: Any, conn: Connection) -> dict[str, Any]:
        from node.exchange import summary

        v = node.exchange.view(conn, node.exchange.find(conn, args.id))
        d = summary(v)
        d["draw"] = v.state.draw.to_dict() if v.state.draw else None
        if v.role == "provider" and v.row.audit:
            d["audit"] = json.loads(v.row.audit)  # names conflicts: this node's eyes only
        return d

    d = _read(node, read)
    if args.json:
        output.emit_json(d)
        return 0
    print(f"exchange {d['exchange_id']}  status: {d['status']}  (this node: {d['role']})")
    print(
        f"  host {d['host_bureau']} ({d['host_node']}) asks {d['provider_node']} for "
        f"{d['experts_wanted']} expert(s); reply by {d['reply_by']}"
    )
    print(f"  dates: {', '.join(d['dates'])}" + (
        f"  (reschedule to {', '.join(d['pending_dates'])} pending)" if d["pending_dates"] else ""
    ))  # fmt: skip
    print(f"  place: {d['place']};  categories: {_category_names(d['categories'])}")
    if d["candidates"] is not None:
        print(f"  candidates ({d['k']} to draw): " + ", ".join(
            f"{c['name']} ({c['expert_id']})" for c in d["candidates"]
        ))  # fmt: skip
    if d["draw"]:
        print(f"  drawn: {', '.join(d['draw']['result'])}  (verify: cccfed exchange verify-draw "
              f"{d['exchange_id'][:8]})")  # fmt: skip
    if d["decline_reason"]:
        print(f"  declined: {d['decline_reason']}")
    if d.get("audit"):
        for expert_id, reasons in d["audit"]["excluded"].items():
            print(f"  not proposed: {expert_id} ({', '.join(reasons)})")
    output.table(
        ["at (UTC)", "event", "by", "status"],
        [(h["at"][:19], h["event"], h["actor"], h["status"]) for h in d["history"]],
    )
    if d["void_events"]:
        print(f"  void (crossed on the wire): {', '.join(d['void_events'])}")
    return 0


def _load_record(path: str) -> DrawRecord:
    data = _load_file(path)
    return DrawRecord.from_dict(data.get("draw", data))


def cmd_verify_draw(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.record is None):
        raise ValidationError("give an exchange id, or --record FILE (a saved draw record)")
    if args.record is not None:
        record = _load_record(args.record)
    else:
        node = _node(args)
        record = _read(
            node,
            lambda node, conn: node.exchange.draw_record(conn, node.exchange.find(conn, args.id)),
        )
    # Recompute from the record alone; a mismatch raises VerificationError (exit 1).
    draws.check_draw(record)
    recomputed = draws.draw(record.seed, record.tiers, record.k)
    if args.out:
        Path(args.out).write_text(
            json.dumps(record.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    d = {
        "ok": True,
        "record": record.to_dict(),
        "seed": record.seed.hex(),
        "recomputed": recomputed,
    }
    if args.json:
        output.emit_json(d)
        return 0
    print(f"draw of exchange {record.request_id}: OK")
    print(f"  host commitment   {record.host_commitment.hex()}")
    print(f"  host value        {record.host_value.hex()}  (opens the commitment)")
    print(f"  provider value    {record.provider_value.hex()}")
    print(f"  seed              {record.seed.hex()}")
    for n, tier in enumerate(record.tiers, start=1):
        print(f"  tier {n}: {', '.join(tier)}")
    print(f"  k = {record.k}; recomputed {', '.join(recomputed)} = recorded result")
    if args.out:
        print(f"  record written to {args.out}")
    return 0


def cmd_calendar(args: argparse.Namespace) -> int:
    if (args.expert is None) == (args.bureau is None):
        raise ValidationError("give --expert ID or --bureau CODE")
    node = _node(args)
    data, count, name = _read(
        node,
        lambda node, conn: node.exchange.calendar(conn, expert=args.expert, bureau=args.bureau),
    )
    out = args.out or (
        f"expert-{args.expert}.ics" if args.expert is not None else f"bureau-{args.bureau}.ics"
    )
    Path(out).write_bytes(data)
    _out(
        args,
        {"file": out, "assignments": count, "calendar": name},
        f"wrote {out}: {count} assignment(s) ({name})",
    )
    return 0


# --- parser -------------------------------------------------------------------------------------


def register(sub: Any, add: Add) -> None:
    xp = sub.add_parser("experts", help="this province's expert registry").add_subparsers(
        dest="sub", required=True
    )
    sp = add(
        xp,
        "import",
        cmd_experts_import,
        "import a registry file (CSV or JSON); phone and ID numbers stay on this node",
        config=True,
    )
    sp.add_argument("file", help="registry file (.csv or .json)")
    sp.add_argument(
        "--replace",
        action="store_true",
        help="experts the file no longer lists become inactive (never proposed again)",
    )
    sp = add(xp, "list", cmd_experts_list, "list the registry", config=True)
    sp.add_argument("--all", action="store_true", help="include inactive experts")
    sp = add(xp, "show", cmd_experts_show, "one expert, with bookings", config=True)
    sp.add_argument("id")

    xc = sub.add_parser("exchange", help="expert exchanges between provinces").add_subparsers(
        dest="sub", required=True
    )
    sp = add(
        xc,
        "request",
        cmd_request,
        "ask another province for experts (from a TOML/JSON file and/or flags)",
        config=True,
    )
    sp.add_argument("file", nargs="?", help="request file (.toml or .json)")
    sp.add_argument("--host-bureau", help="bureau running the inspection (default: this node)")
    sp.add_argument("--provider", help="province asked for experts, e.g. 340000")
    sp.add_argument("--date", action="append", help="inspection date YYYY-MM-DD (repeatable)")
    sp.add_argument("--place")
    sp.add_argument("--holder-uscc", help="the inspected holder (for conflict checks)")
    sp.add_argument(
        "--category", action="append", help="catalogue category code or name (repeatable)"
    )
    sp.add_argument("--experts", type=int, help="number of experts wanted")
    sp.add_argument("--reply-by", help="YYYY-MM-DD")
    sp = add(
        xc,
        "propose",
        cmd_propose,
        "provider: match eligible experts and send the candidates with this node's draw value",
        config=True,
    )
    sp.add_argument("id", help="exchange id (a unique prefix is enough)")
    sp = add(
        xc,
        "confirm",
        cmd_confirm,
        "host: reveal the draw value and confirm the drawn experts; "
        "provider: confirm they will attend",
        config=True,
    )
    sp.add_argument("id")
    sp = add(xc, "decline", cmd_decline, "decline a request (provider) or a proposal (host)",
             config=True)  # fmt: skip
    sp.add_argument("id")
    sp.add_argument("--reason", default="other", choices=[r.value for r in ex.DeclineReason])
    sp.add_argument("--text", help="explanation (required with --reason other)")
    sp = add(xc, "cancel", cmd_cancel, "call an exchange off; the dates are freed", config=True)
    sp.add_argument("id")
    sp.add_argument("--text")
    sp = add(
        xc,
        "reschedule",
        cmd_reschedule,
        "host: ask for new dates (--date); provider: move after re-checking, or --refuse",
        config=True,
    )
    sp.add_argument("id")
    sp.add_argument("--date", action="append", help="new date YYYY-MM-DD (host; repeatable)")
    sp.add_argument("--refuse", metavar="TEXT", help="provider: refuse the new dates, saying why")
    sp = add(xc, "list", cmd_list, "exchanges this node hosts or provides for", config=True)
    sp.add_argument("--role", choices=["host", "provider"])
    sp.add_argument("--status", choices=[s.value for s in ex.ExchangeStatus])
    sp = add(xc, "show", cmd_show, "one exchange with its history", config=True)
    sp.add_argument("id")
    sp = add(
        xc,
        "verify-draw",
        cmd_verify_draw,
        "recompute an exchange's draw from its record (from the store, or --record FILE)",
        config=True,
    )
    sp.add_argument("id", nargs="?")
    sp.add_argument("--record", help="a saved draw record (JSON), checked without any store")
    sp.add_argument("--out", help="also save the draw record as JSON")
    sp = add(
        xc,
        "calendar",
        cmd_calendar,
        "write an iCalendar (.ics) file of an expert's or a bureau's assignments",
        config=True,
    )
    sp.add_argument("--expert")
    sp.add_argument("--bureau")
    sp.add_argument("--out", help="file to write (default: expert-ID.ics / bureau-CODE.ics)")


__all__ = ["register"]
