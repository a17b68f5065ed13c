"""``cccfed result …`` and ``cccfed reconcile``: inspection results and their recognition.

``result publish`` appends to this node's own log and queues the new checkpoint to every member
in one transaction; the running node's worker delivers it. ``reconcile`` runs one round trip
per peer and prints, per log, converged / behind by n / ahead by n / forked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from node.cli_requests import _load_file, _node, _out, _read, _run
from node.recognition import STATUSES

Add = Callable[..., argparse.ArgumentParser]


def cmd_publish(args: argparse.Namespace) -> int:
    from federation.inspection import draft_assistance_requests

    data = _load_file(args.file)
    drafts: list[dict[str, Any]] = []

    def job(node: Any, conn: Connection) -> dict[str, Any]:
        parsed = node.recognition.parse_new(data)
        result: dict[str, Any] = node.recognition.publish(conn, parsed)
        drafts[:] = draft_assistance_requests(parsed)
        return result

    out = _run(args, job)
    # A finding of use in another Delta province comes with a ready assistance request
    # (guideline item 16): written next to the result file, sent with `cccfed request new`.
    directory = Path(args.drafts_dir) if args.drafts_dir else Path(args.file).resolve().parent
    written = []
    for n, draft in enumerate(drafts, start=1):
        path = directory / f"{out['record_id']}-assistance-{n}.json"
        path.write_text(json.dumps(draft, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        written.append(str(path))
    out["draft_requests"] = written
    text = f"result {out['record_id']} published as entry {out['index']} of {out['origin']}"
    for draft_path in written:
        text += f"\ndraft assistance request (products used in another province): {draft_path}"
        text += f"\n  send it with: cccfed request new {draft_path}"
    _out(args, out, text)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = _read(
        _node(args),
        lambda node, conn: node.recognition.results(conn, origin=args.origin, status=args.status),
    )
    lines = [
        f"{r['record_id']}  {r['origin']}#{r['index']:<5} {r['status']:<10} "
        f"{r['business_key']}  by {','.join(r['recognized_by']) or '-'}"
        for r in rows
    ]
    _out(args, rows, "\n".join(lines) or "no results")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    r = _read(_node(args), lambda node, conn: node.recognition.show(conn, args.id))
    proof = r["inclusion_proof"]
    text = "\n".join(
        [
            f"record     {r['record_id']} ({r['kind']}, {r['business_key']})",
            f"log        {r['origin']} entry {r['index']}; status {r['status']}",
            f"recognized by {', '.join(r['recognized_by']) or 'nobody yet'} "
            f"(quorum {', '.join(r['quorum'])})",
            f"inclusion  in size {proof['tree_size']}, root {proof['root']}",
            *(f"           {h}" for h in proof["hashes"]),
            "checkpoint",
            r["checkpoint"],
        ]
    )
    _out(args, r, text)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    rows = _read(_node(args), lambda node, conn: node.recognition.checkpoints(conn, args.origin))
    text = "\n".join(
        f"{r['origin']} size {r['size']} root {r['root'][:16]}… cosigned by "
        f"{', '.join(r['cosigned_by']) or '-'}" + (" FROZEN" if r["frozen"] else "")
        for r in rows
    )
    _out(args, rows, text or "no checkpoints")
    return 0


def _describe(line: dict[str, Any]) -> str:
    status = line["status"]
    if status == "behind":
        return f"behind by {line['count']} (pulled)"
    if status == "ahead":
        return f"peer behind by {line['count']}"
    if status == "refused":
        return f"refused ({line.get('reason', '')})"
    return str(status)


def cmd_reconcile(args: argparse.Namespace) -> int:
    node = _node(args)

    async def go() -> dict[str, Any]:
        try:
            out: dict[str, Any] = await node.recognition.reconcile_all(
                [args.peer] if args.peer else None
            )
            return out
        finally:
            await node.peers.close()

    try:
        result = asyncio.run(go())
    finally:
        node.close()
    lines = []
    for peer, res in result.items():
        if isinstance(res, dict):
            lines.append(f"{peer}: unreachable ({res['error']}: {res['message']})")
            continue
        lines.extend(f"{peer}: {r['origin']} {_describe(r)}" for r in res)
    _out(args, result, "\n".join(lines) or "nothing to reconcile")
    return 0 if all(isinstance(r, list) for r in result.values()) else 1


def register(sub: Any, add: Add) -> None:
    rs = sub.add_parser("result", help="inspection results and their recognition").add_subparsers(
        dest="sub", required=True
    )
    sp = add(
        rs, "publish", cmd_publish, "append a result (TOML/JSON) to this node's log", config=True
    )
    sp.add_argument("file")
    sp.add_argument(
        "--drafts-dir", help="where to write draft assistance requests (default: next to FILE)"
    )
    sp = add(rs, "list", cmd_list, "results held, with who recognised each", config=True)
    sp.add_argument("--origin", help="province code of the publishing node")
    sp.add_argument("--status", choices=list(STATUSES))
    sp = add(rs, "show", cmd_show, "one result, its inclusion proof and recognisers", config=True)
    sp.add_argument("id")
    sp = add(rs, "checkpoint", cmd_checkpoint, "latest checkpoint of each log", config=True)
    sp.add_argument("origin", nargs="?")
    sp = add(sub, "reconcile", cmd_reconcile, "one reconciliation round with peers", config=True)
    sp.add_argument("--peer", help="province code (default: every other member)")


__all__ = ["register"]
