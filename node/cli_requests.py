"""``cccfed request|bulletin|obligations``: requests with the 15-day reply obligation.

Each command opens the node's store from its configuration and runs one transaction; messages it
sends are queued in that transaction and delivered by the running node's worker.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import mimetypes
import os
import stat
import tomllib
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import and_, select, tuple_
from sqlalchemy.engine import Connection

from cccfed.v1 import assistance_pb2 as pb
from federation import requests
from federation.errors import ValidationError
from node import output

Add = Callable[..., argparse.ArgumentParser]
#: Rows per page of ``request list`` and ``obligations``.
PAGE = 50


def _node(args: argparse.Namespace) -> Any:
    from node.cli import _node as make

    return make(args)


def _run(args: argparse.Namespace, job: Callable[[Any, Connection], Any]) -> Any:
    """Run one write transaction on the node's store; queued messages go to its worker."""
    node = _node(args)

    async def go() -> Any:
        try:
            return await node.run_and_send(lambda conn: job(node, conn))
        finally:
            await node.peers.close()

    try:
        return asyncio.run(go())
    finally:
        node.close()


def _read(node: Any, fn: Callable[[Any, Connection], Any]) -> Any:
    try:
        with node.reader.connect() as conn:
            return fn(node, conn)
    finally:
        node.close()


#: Largest request, reply, result, bulletin or draw-record file read (they are text; attachments
#: are separate files, read with their own limit).
MAX_INPUT_FILE_BYTES = 8 * 1024 * 1024


def read_input_file(
    path: str | os.PathLike[str], *, limit: int, too_large: str = "FILE_TOO_LARGE"
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or a :class:`ValidationError`.

    Opened without blocking and checked on the open descriptor, so a FIFO, a device such as
    ``/dev/zero``, a socket or a directory is refused (``NOT_A_FILE``) instead of hanging or
    filling memory, and a file larger than ``limit`` is refused (``too_large``) before it is read.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ValidationError(f"{name}: cannot read: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValidationError(
                f"{name}: is not a regular file (a directory, device, pipe or socket)",
                reason="NOT_A_FILE",
            )
        if st.st_size > limit:
            raise ValidationError(
                f"{name}: has {st.st_size} bytes; at most {limit} are allowed", reason=too_large
            )
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise ValidationError(f"{name}: cannot read: {e.strerror}") from e
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew while being read
        raise ValidationError(f"{name}: has more than {limit} bytes", reason=too_large)
    return data


def _load_file(path: str) -> dict[str, Any]:
    p = Path(path)
    raw = read_input_file(p, limit=MAX_INPUT_FILE_BYTES)
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValidationError(
            f"{path}: not valid {p.suffix.lstrip('.').upper() or 'JSON'}: {e}"
        ) from e
    except RecursionError as e:  # arrays or tables nested thousands deep
        raise ValidationError(
            f"{path}: not valid {p.suffix.lstrip('.').upper() or 'JSON'}: nested too deeply"
        ) from e
    if not isinstance(data, dict):
        raise ValidationError(f"{path}: must hold a table/object at the top")
    return data


def _file_reader(base: Path, *, limit: int, named: Iterable[str] = ()) -> Callable[[str], bytes]:
    """Reads the attachments a request or reply file names, relative to that file's directory.

    A path in a file must stay inside the file's directory (``ATTACHMENT_PATH``): no absolute
    paths, no ``..`` and no symbolic link leading out, so that a file received from elsewhere
    cannot make the node send its own keys or other local files to another province. Paths the
    operator gave on the command line (``named``) are read as given. Only regular files of at
    most ``limit`` bytes are read (``NOT_A_FILE``, ``ATTACHMENT_TOO_LARGE``).
    """
    root = base.resolve()
    given = set(named)

    def read(name: str) -> bytes:
        p = Path(name)
        if name not in given:
            if p.is_absolute():
                raise ValidationError(
                    f"attachment {name}: a path in a file must be relative to the file's "
                    "directory (attach other files with --attach)",
                    reason="ATTACHMENT_PATH",
                )
            p = (root / p).resolve()
            if not p.is_relative_to(root):
                raise ValidationError(
                    f"attachment {name}: leads to {p}, outside {root} (attach files outside "
                    "the request file's directory with --attach)",
                    reason="ATTACHMENT_PATH",
                )
        return read_input_file(p, limit=limit, too_large="ATTACHMENT_TOO_LARGE")

    return read


def _attachment(path: str) -> dict[str, Any]:
    return {
        "name": Path(path).name,
        "media_type": mimetypes.guess_type(path)[0] or "application/octet-stream",
        "path": path,
    }


def _pb_attachment(path: str, content: bytes) -> pb.Attachment:
    return pb.Attachment(
        name=Path(path).name,
        media_type=mimetypes.guess_type(path)[0] or "application/octet-stream",
        sha256=hashlib.sha256(content).digest(),
        size=len(content),
        content=content,
    )


# --- request ---------------------------------------------------------------------------------


def cmd_new(args: argparse.Namespace) -> int:
    if args.file:
        data = _load_file(args.file)
        base = Path(args.file).resolve().parent
    else:
        data, base = {}, Path.cwd()
    flags: dict[str, Any] = {
        "kind": args.kind,
        "target_bureau": args.target,
        "requesting_bureau": args.requesting_bureau,
        "use_type": args.use_type,
        "place_of_use": args.place,
        "requested_reply_by": args.reply_by,
        "background": args.background,
    }
    for key, value in flags.items():
        if value is not None:
            data[key] = value
    if args.holder_name or args.holder_uscc:
        data["holder"] = {"name": args.holder_name or "", "uscc": args.holder_uscc or ""}
    if args.contact_name or args.contact_phone:
        data["requester_contact"] = {
            "name": args.contact_name or "",
            "phone": args.contact_phone or "",
        }
    if args.certificate:
        data["certificate_nos"] = list(args.certificate)
    if args.product:
        products = []
        for spec in args.product:
            parts = spec.split("|")
            if len(parts) not in (3, 4):
                raise ValidationError(f"--product {spec!r}: use NAME|MODEL|QUANTITY[|HS_CODE]")
            try:
                qty = int(parts[2])
            except ValueError:
                raise ValidationError(f"--product {spec!r}: quantity must be a number") from None
            products.append(
                {
                    "name": parts[0],
                    "model": parts[1],
                    "quantity": qty,
                    "hs_code": parts[3] if len(parts) == 4 else "",
                }
            )
        data["products"] = products
    if args.question:
        data["questions"] = list(args.question)
    if args.attach:
        data["attachments"] = [*data.get("attachments", []), *(_attachment(a) for a in args.attach)]

    def job(node: Any, conn: Connection) -> dict[str, Any]:
        reader = _file_reader(
            base, limit=node.assistance.max_attachment_bytes, named=args.attach or ()
        )
        request = node.assistance.parse_new(data, read_file=reader)
        node.assistance.create(conn, request, send=not args.draft)
        v = node.assistance.view(conn, request.request_id)
        return _summary(v)

    result = _run(args, job)
    _out(
        args,
        result,
        f"request {result['request_id']} {result['status']} → {result['target_bureau']} "
        f"({result['responder_node']})",
    )
    return 0


def _summary(v: Any) -> dict[str, Any]:
    st = v.state
    r = v.row
    return {
        "request_id": r.request_id,
        "role": r.role,
        "kind": r.kind,
        "status": st.status.value,
        "requesting_bureau": r.requesting_bureau,
        "target_bureau": r.target_bureau,
        "responder_node": r.responder_node,
        "requester_node": r.requester_node,
        "assigned_bureau": st.assigned_bureau,
        "holder": {"name": r.holder_name, "uscc": r.holder_uscc},
        "received_at": st.received_at,
        "due": st.due.to_dict() if st.due else None,
        "extension_pending": st.extension_pending,
        "linked_request_id": r.linked_request_id,
    }


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        output.emit_json(data)
    else:
        print(text)


def cmd_send(args: argparse.Namespace) -> int:
    def job(node: Any, conn: Connection) -> dict[str, Any]:
        node.assistance.send_draft(conn, args.id)
        return _summary(node.assistance.view(conn, args.id))

    result = _run(args, job)
    _out(args, result, f"request {args.id} sent")
    return 0


def _page_limit(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ValidationError(f"--limit {args.limit}: must be at least 1")
    return int(args.limit)


def _page(items: list[dict[str, Any]], limit: int) -> str:
    """Cut ``items`` (one row more than a page was read) to a page; the hint for the next."""
    more = len(items) > limit
    del items[limit:]
    return f"more: the next page with --after {items[-1]['request_id']}" if more else ""


def _after_due(conn: Connection, request_id: str | None) -> Any:
    """The ``(due_ends_at, request_id)`` cursor of ``--after ID`` for the obligation lists."""
    from node.assistance import REQUESTS

    if request_id is None:
        return None
    rid = _find(conn, request_id)
    at = conn.execute(
        select(REQUESTS.c.due_ends_at).where(REQUESTS.c.request_id == rid)
    ).scalar_one()
    if at is None:
        raise ValidationError(f"--after {request_id}: that request has no due date")
    return (at, rid)


def cmd_list(args: argparse.Namespace) -> int:
    from node.assistance import REQUESTS, obligation_of

    node = _node(args)
    now = node.clock()
    limit = _page_limit(args)

    def read(node: Any, conn: Connection) -> list[dict[str, Any]]:
        if args.owed or args.awaiting or args.overdue:
            # Obligations, most urgent first, one page through the (status, role, due) index.
            direction = None if args.owed == args.awaiting else "owed" if args.owed else "awaiting"
            obs = node.assistance.obligations(
                conn,
                now,
                direction=direction,
                overdue=args.overdue,
                limit=limit + 1,
                after=_after_due(conn, args.after),
            )
            keys = [o["request_id"] for o in obs]
            by_id = {
                r.request_id: r
                for r in conn.execute(select(REQUESTS).where(REQUESTS.c.request_id.in_(keys)))
            }
            rows = [by_id[k] for k in keys]
        else:
            q = select(REQUESTS).order_by(REQUESTS.c.created_at, REQUESTS.c.request_id)
            if args.after is not None:
                rid = _find(conn, args.after)
                at = conn.execute(
                    select(REQUESTS.c.created_at).where(REQUESTS.c.request_id == rid)
                ).scalar_one()
                q = q.where(tuple_(REQUESTS.c.created_at, REQUESTS.c.request_id) > (at, rid))
            rows = list(conn.execute(q.limit(limit + 1)).all())
        out = []
        for r in rows:
            ob = obligation_of(r, now)
            out.append(
                {
                    "request_id": r.request_id,
                    "role": r.role,
                    "kind": r.kind,
                    "status": r.status,
                    "counterpart": r.responder_node if r.role == "requester" else r.requester_node,
                    "bureau": r.assigned_bureau or r.target_bureau,
                    "holder": r.holder_name,
                    "due_date": r.due_date,
                    "provisional": bool(r.due_provisional),
                    "days_left": ob["days_left"] if ob else None,
                    "overdue": ob["overdue"] if ob else False,
                }
            )
        return out

    items = _read(node, read)
    hint = _page(items, limit)
    if args.json:
        output.emit_json(items)
        return 0
    output.table(
        ["request", "role", "kind", "status", "with", "bureau", "holder", "due", "days left"],
        [
            (
                i["request_id"][:8],
                "发起 requester" if i["role"] == "requester" else "协查 responder",
                i["kind"],
                i["status"],
                i["counterpart"],
                i["bureau"],
                i["holder"][:20],
                (i["due_date"] or "-") + (" (provisional)" if i["provisional"] else ""),
                ("OVERDUE " if i["overdue"] else "")
                + (str(i["days_left"]) if i["days_left"] is not None else ""),
            )
            for i in items
        ],
    )
    if hint:
        print(hint)
    return 0


_UUID_LOW = "00000000-0000-0000-0000-000000000000"
_UUID_HIGH = "ffffffff-ffff-ffff-ffff-ffffffffffff"


def _uuid_range(prefix: str) -> tuple[str, str] | None:
    """The first and last canonical UUIDs starting with ``prefix``, or None if none can.

    Request ids are canonical UUIDs; strings of that one shape sort alike in every collation,
    so ``BETWEEN`` these bounds is exactly the ids with the prefix, read from the primary-key
    index on SQLite and PostgreSQL alike (a ``LIKE 'prefix%'`` is a full scan on both).
    """
    if len(prefix) > len(_UUID_LOW):
        return None
    for c, t in zip(prefix, _UUID_LOW, strict=False):
        if (t == "-") != (c == "-") or (c != "-" and c not in "0123456789abcdef"):
            return None
    return prefix + _UUID_LOW[len(prefix) :], prefix + _UUID_HIGH[len(prefix) :]


def _find(conn: Connection, prefix: str) -> str:
    """The one request id equal to, or else starting with, ``prefix``."""
    from node.assistance import REQUESTS

    col = REQUESTS.c.request_id
    if conn.execute(select(col).where(col == prefix)).first() is not None:
        return prefix  # a whole id: one primary-key lookup
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    match = col.like(escaped + "%", escape="\\")
    bounds = _uuid_range(prefix)
    if bounds is not None:
        match = and_(col.between(*bounds), match)
    ids = conn.execute(select(col).where(match).limit(2)).scalars().all()
    if len(ids) != 1:
        raise ValidationError(
            f"request {prefix!r}: "
            + ("no such request" if not ids else "ambiguous; give more of the id"),
            reason="NOT_FOUND",
        )
    return str(ids[0])


def cmd_show(args: argparse.Namespace) -> int:
    node = _node(args)

    def read(node: Any, conn: Connection) -> dict[str, Any]:
        rid = _find(conn, args.id)
        v = node.assistance.view(conn, rid)
        data = _summary(v)
        data["history"] = [h.to_dict() for h in v.state.history]
        data["void_events"] = [r.kind for r in v.void]
        req = pb.Request.FromString(bytes(v.row.request))
        data["questions"] = [{"id": q.id, "text": q.text} for q in req.questions]
        data["certificate_nos"] = list(req.certificate_nos)
        data["place_of_use"] = req.place_of_use
        return data

    d = _read(node, read)
    if args.json:
        output.emit_json(d)
        return 0
    due = d["due"]
    print(
        f"request {d['request_id']}  [{d['kind']}]  status: {d['status']}  (this node: {d['role']})"
    )
    print(
        f"  from {d['requesting_bureau']} ({d['requester_node']}) to {d['target_bureau']} "
        f"({d['responder_node']}), assigned: {d['assigned_bureau'] or '-'}"
    )
    print(f"  holder: {d['holder']['name']}  统一社会信用代码 {d['holder']['uscc']}")
    print(
        f"  certificates: {', '.join(d['certificate_nos']) or '-'};  "
        f"place of use: {d['place_of_use']}"
    )
    if due:
        prov = (
            "  PROVISIONAL (no official calendar for that year yet)" if due["provisional"] else ""
        )
        print(
            f"  received {d['received_at']}; reply due {due['due_date']} "
            f"(ends {due['ends_at']} UTC){prov}"
        )
    for q in d["questions"]:
        print(f"  question {q['id']}: {q['text']}")
    output.table(
        ["at (UTC)", "event", "by", "status", "due"],
        [
            (h["at"][:19], h["event"], h["actor"], h["status"], h["due_date"] or "-")
            for h in d["history"]
        ],
    )
    if d["void_events"]:
        print(f"  void (crossed on the wire): {', '.join(d['void_events'])}")
    return 0


def _act(
    args: argparse.Namespace, make_event: Callable[[Any, Connection, str], requests.Event]
) -> int:
    def job(node: Any, conn: Connection) -> dict[str, Any]:
        rid = _find(conn, args.id)
        v = node.assistance.act(conn, rid, make_event(node, conn, rid))
        return _summary(v)

    result = _run(args, job)
    due = result["due"]["due_date"] if result["due"] else "-"
    _out(args, result, f"request {result['request_id']}: {result['status']} (due {due})")
    return 0


def _contact(args: argparse.Namespace) -> requests.Contact:
    return requests.Contact(name=args.contact_name or "", phone=args.contact_phone or "", email="")


def cmd_accept(args: argparse.Namespace) -> int:
    def ev(node: Any, conn: Connection, rid: str) -> requests.Event:
        row = node.assistance.view(conn, rid).row
        return requests.Accepted(
            assigned_bureau=args.bureau or row.target_bureau, assignee=_contact(args)
        )

    return _act(args, ev)


def cmd_decline(args: argparse.Namespace) -> int:
    code = requests.DeclineReason(args.code)
    return _act(args, lambda *_: requests.Declined(code, args.reason, args.suggest or None))


def cmd_withdraw(args: argparse.Namespace) -> int:
    return _act(args, lambda *_: requests.Withdrawn(args.reason or ""))


def cmd_progress(args: argparse.Namespace) -> int:
    def ev(node: Any, conn: Connection, rid: str) -> requests.Event:
        msg = pb.ProgressReport(request_id=rid, text=args.text)
        limit = node.assistance.max_attachment_bytes
        for a in args.attach or []:
            content = read_input_file(a, limit=limit, too_large="ATTACHMENT_TOO_LARGE")
            msg.attachments.append(_pb_attachment(a, content))
        return _event(msg)

    return _act(args, ev)


def _event(msg: Message) -> requests.Event:
    _, event = requests.event_from_message(msg)
    return event


def cmd_extend(args: argparse.Namespace) -> int:
    def ev(node: Any, conn: Connection, rid: str) -> requests.Event:
        if args.grant or args.refuse:
            return _event(
                pb.ExtensionDecided(
                    request_id=rid,
                    granted=bool(args.grant),
                    new_due_date=args.until or "",
                    reason=args.reason or "",
                )
            )
        msg = pb.ExtensionRequested(request_id=rid, reason=args.reason or "")
        if args.days:
            msg.additional_days = args.days
        elif args.until:
            msg.new_due_date = args.until
        else:
            raise ValidationError("give --days N or --until YYYY-MM-DD (or --grant/--refuse)")
        return _event(msg)

    return _act(args, ev)


_CONCLUSIONS = {c.value: c for c in requests.Conclusion}


def _tables(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """``data[key]`` as a list of tables (absent: empty), or a ValidationError naming it."""
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ValidationError(f"{key}: must be a list of tables")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(f"{key}[{i}]: must be a table")
    return items


def cmd_reply(args: argparse.Namespace) -> int:
    def ev(node: Any, conn: Connection, rid: str) -> requests.Event:
        if args.file:
            data = _load_file(args.file)
            base = Path(args.file).resolve().parent
        else:
            data, base = {}, Path.cwd()
        msg = pb.Reply(request_id=rid, summary=str(data.get("summary", args.summary or "")))
        findings: list[Any] = _tables(data, "findings")
        for spec in args.finding or []:
            qid, _, rest = spec.partition("=")
            conclusion, _, text = rest.partition(":")
            findings.append({"question_id": qid, "conclusion": conclusion, "finding": text})
        for i, f in enumerate(findings):
            name = str(f.get("conclusion", "")).lower()
            if name not in _CONCLUSIONS:
                raise ValidationError(
                    f"findings[{i}].conclusion: {name!r} is not one of {', '.join(_CONCLUSIONS)}"
                )
            msg.findings.append(
                pb.Finding(
                    question_id=str(f.get("question_id", "")),
                    finding=str(f.get("finding", "")),
                    conclusion=pb.Conclusion.Value(f"CONCLUSION_{name.upper()}"),
                )
            )
        follow = _tables(data, "follow_ups") + [{"action": a} for a in args.follow_up or []]
        for i, f in enumerate(follow):
            action = str(f.get("action", "")).lower()
            if action not in {a.value for a in requests.FollowUpAction}:
                raise ValidationError(
                    f"follow_ups[{i}].action: {action!r} is not a follow-up action"
                )
            msg.follow_ups.append(
                pb.FollowUp(
                    action=pb.FollowUpAction.Value(f"FOLLOW_UP_ACTION_{action.upper()}"),
                    note=str(f.get("note", "")),
                )
            )
        reader = _file_reader(
            base, limit=node.assistance.max_attachment_bytes, named=args.attach or ()
        )
        paths = [str(e.get("path", "")) for e in _tables(data, "evidence")]
        for path in [*paths, *(args.attach or [])]:
            msg.evidence.append(_pb_attachment(path, reader(path)))
        return _event(msg)

    return _act(args, ev)


def cmd_close(args: argparse.Namespace) -> int:
    return _act(args, lambda *_: requests.Closed(args.note or ""))


# --- bulletins and obligations -----------------------------------------------------------------


def cmd_bulletin_send(args: argparse.Namespace) -> int:
    data: dict[str, Any] = _load_file(args.file) if args.file else {}
    if args.title:
        data["title"] = args.title
    if args.body:
        data["body"] = args.body
    bulletin = requests.parse_bulletin(data, bulletin_id=str(uuid.uuid4()))

    def job(node: Any, conn: Connection) -> dict[str, Any]:
        members = node.assistance.send_bulletin(conn, bulletin)
        return {"bulletin_id": bulletin.bulletin_id, "to": members}

    result = _run(args, job)
    _out(args, result, f"bulletin {result['bulletin_id']} sent to {', '.join(result['to'])}")
    return 0


def cmd_bulletin_read(args: argparse.Namespace) -> int:
    _run(args, lambda node, conn: node.assistance.mark_read(conn, args.id))
    _out(args, {"bulletin_id": args.id, "read": True}, f"bulletin {args.id} acknowledged")
    return 0


def cmd_bulletin_list(args: argparse.Namespace) -> int:
    from node.assistance import BULLETINS, READS

    node = _node(args)
    members = sorted(node.trust.current.members)
    code = node.code

    def read(node: Any, conn: Connection) -> list[dict[str, Any]]:
        out = []
        for b in conn.execute(select(BULLETINS).order_by(BULLETINS.c.sent_at)).all():
            reads = {
                r.node: r.read_at
                for r in conn.execute(select(READS).where(READS.c.bulletin_id == b.bulletin_id))
            }
            mine = b.sender_node == code
            out.append(
                {
                    "bulletin_id": b.bulletin_id,
                    "from": b.sender_node,
                    "title": b.title,
                    "sent_at": b.sent_at,
                    "read_by": sorted(reads) if mine else None,
                    "unread_by": sorted(set(members) - set(reads) - {code}) if mine else None,
                    "read_at": None if mine else b.read_at,
                }
            )
        return out

    items = _read(node, read)
    if args.json:
        output.emit_json(items)
        return 0
    output.table(
        ["bulletin", "from", "title", "sent (UTC)", "read"],
        [
            (
                i["bulletin_id"][:8],
                i["from"],
                i["title"][:30],
                i["sent_at"],
                (
                    f"read by {','.join(i['read_by']) or 'none'}; "
                    f"waiting {','.join(i['unread_by']) or 'none'}"
                )
                if i["read_by"] is not None
                else ("read " + str(i["read_at"])[:19] if i["read_at"] else "unread"),
            )
            for i in items
        ],
    )
    return 0


def cmd_obligations(args: argparse.Namespace) -> int:
    if args.sweep:
        produced = _run(args, lambda n, conn: n.assistance.sweep(conn, n.clock()))
        _out(args, produced, f"{len(produced)} reminder(s) produced")
        return 0
    node = _node(args)
    now = node.clock()

    limit = _page_limit(args)

    def read(node: Any, conn: Connection) -> Any:
        if args.report or args.csv:
            return node.assistance.escalation(conn, now)
        return node.assistance.obligations(
            conn, now, limit=limit + 1, after=_after_due(conn, args.after)
        )

    data = _read(node, read)
    hint = "" if args.report or args.csv else _page(data, limit)
    if args.csv:
        from node.assistance import Assistance

        Path(args.csv).write_text(Assistance.escalation_csv(data), encoding="utf-8")
        _out(
            args,
            {"csv": args.csv, "rows": len(data)},
            f"wrote {args.csv} ({len(data)} province group(s))",
        )
        return 0
    if args.json:
        output.emit_json(data)
        return 0
    if args.report:
        output.table(
            ["direction", "province", "overdue", "oldest due", "per bureau"],
            [
                (
                    g["direction"],
                    g["province"],
                    g["overdue"],
                    g["oldest_due_date"],
                    ", ".join(f"{b}:{n}" for b, n in sorted(g["bureaus"].items())),
                )
                for g in data
            ],
        )
        return 0
    output.table(
        ["request", "owed/awaiting", "with", "bureau", "status", "due", "days left"],
        [
            (
                o["request_id"][:8],
                "我方应答 owed" if o["direction"] == "owed" else "等待对方 awaiting",
                o["counterpart"],
                o["bureau"],
                o["status"],
                o["due_date"] + (" (provisional)" if o["provisional"] else ""),
                ("OVERDUE " if o["overdue"] else "") + str(o["days_left"]),
            )
            for o in data
        ],
    )
    if hint:
        print(hint)
    return 0


# --- parser ----------------------------------------------------------------------------------


def register(sub: Any, add: Add) -> None:
    rq = sub.add_parser(
        "request", help="assistance, verification and lead requests"
    ).add_subparsers(dest="sub", required=True)
    sp = add(
        rq,
        "new",
        cmd_new,
        "create and send a request (from a TOML/JSON file and/or flags)",
        config=True,
    )
    sp.add_argument("file", nargs="?", help="request file (.toml or .json)")
    sp.add_argument("--kind", choices=[k.value for k in requests.RequestKind])
    sp.add_argument("--target", help="target bureau code, e.g. 320500")
    sp.add_argument("--requesting-bureau")
    sp.add_argument("--holder-name")
    sp.add_argument("--holder-uscc")
    sp.add_argument("--certificate", action="append")
    sp.add_argument("--product", action="append", help="NAME|MODEL|QUANTITY[|HS_CODE]")
    sp.add_argument("--use-type", choices=[u.value for u in requests.UseType])
    sp.add_argument("--place")
    sp.add_argument("--question", action="append")
    sp.add_argument("--contact-name")
    sp.add_argument("--contact-phone")
    sp.add_argument("--reply-by", help="an earlier reply-by date, YYYY-MM-DD")
    sp.add_argument("--background")
    sp.add_argument("--attach", action="append", help="attachment file (repeatable)")
    sp.add_argument("--draft", action="store_true", help="keep as a draft; send later")
    sp = add(rq, "send", cmd_send, "send a draft", config=True)
    sp.add_argument("id")
    sp = add(rq, "list", cmd_list, "list requests", config=True)
    sp.add_argument("--owed", action="store_true", help="replies this node owes")
    sp.add_argument("--awaiting", action="store_true", help="replies this node is owed")
    sp.add_argument("--overdue", action="store_true")
    _paging(sp, "obligations most urgent first; without a filter, all in creation order")
    sp = add(rq, "show", cmd_show, "one request with its history", config=True)
    sp.add_argument("id", help="request id (a unique prefix is enough)")
    for name, fn, help_ in (
        ("accept", cmd_accept, "accept and assign to a bureau of this province"),
        ("assign", cmd_accept, "accept and assign to a city/district bureau (--bureau)"),
    ):
        sp = add(rq, name, fn, help_, config=True)
        sp.add_argument("id")
        sp.add_argument("--bureau", required=name == "assign")
        sp.add_argument("--contact-name")
        sp.add_argument("--contact-phone")
    sp = add(rq, "decline", cmd_decline, "decline with a reason", config=True)
    sp.add_argument("id")
    sp.add_argument("--code", default="other", choices=[d.value for d in requests.DeclineReason])
    sp.add_argument("--reason", required=True)
    sp.add_argument("--suggest", help="with wrong_jurisdiction: the right bureau")
    sp = add(rq, "withdraw", cmd_withdraw, "withdraw a request this node sent", config=True)
    sp.add_argument("id")
    sp.add_argument("--reason")
    sp = add(rq, "progress", cmd_progress, "send an interim progress report", config=True)
    sp.add_argument("id")
    sp.add_argument("--text", required=True)
    sp.add_argument("--attach", action="append")
    sp = add(
        rq, "extend", cmd_extend, "ask for more time, or grant/refuse a pending ask", config=True
    )
    sp.add_argument("id")
    sp.add_argument("--days", type=int)
    sp.add_argument("--until", help="YYYY-MM-DD")
    sp.add_argument("--reason")
    sp.add_argument("--grant", action="store_true")
    sp.add_argument("--refuse", action="store_true")
    sp = add(
        rq, "reply", cmd_reply, "reply: findings per question, evidence, follow-up", config=True
    )
    sp.add_argument("id")
    sp.add_argument("file", nargs="?", help="reply file (.toml or .json)")
    sp.add_argument("--finding", action="append", help="QUESTION_ID=CONCLUSION:TEXT")
    sp.add_argument(
        "--follow-up", action="append", choices=[a.value for a in requests.FollowUpAction]
    )
    sp.add_argument("--summary")
    sp.add_argument("--attach", action="append")
    sp = add(rq, "close", cmd_close, "close a replied request", config=True)
    sp.add_argument("id")
    sp.add_argument("--note")

    bl = sub.add_parser("bulletin", help="circulars to every member (item 18)").add_subparsers(
        dest="sub", required=True
    )
    sp = add(bl, "send", cmd_bulletin_send, "send a bulletin to every member", config=True)
    sp.add_argument("file", nargs="?")
    sp.add_argument("--title")
    sp.add_argument("--body")
    add(
        bl,
        "list",
        cmd_bulletin_list,
        "bulletins sent and received, with read acknowledgements",
        config=True,
    )
    sp = add(bl, "read", cmd_bulletin_read, "acknowledge a received bulletin", config=True)
    sp.add_argument("id")

    sp = add(
        sub,
        "obligations",
        cmd_obligations,
        "what this node owes and is owed, with days left",
        config=True,
    )
    sp.add_argument("--sweep", action="store_true", help="produce due reminders (idempotent)")
    sp.add_argument("--report", action="store_true", help="overdue escalation report per province")
    sp.add_argument("--csv", help="write the escalation report as CSV")
    _paging(sp, "most urgent first")


def _paging(sp: argparse.ArgumentParser, order: str) -> None:
    sp.add_argument(
        "--limit", type=int, default=PAGE, help=f"rows per page (default {PAGE}); {order}"
    )
    sp.add_argument("--after", metavar="ID", help="the next page: rows after this request id")


__all__ = ["register"]
