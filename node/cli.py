"""``cccfed``: the administration command line of a federation node.

One entry point, subcommands, ``--json`` on everything that reports. Expected failures (any
:class:`FederationError`, unreadable files) print one line ``cccfed: error: …`` and exit 1;
usage errors exit 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from federation.errors import FederationError, ValidationError
from node import output, pki
from node.config import load_config

DEFAULT_CONFIG = "node.toml"


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("CCCFED_CONFIG") or DEFAULT_CONFIG)


def _node(args: argparse.Namespace) -> Any:
    from node.runtime import Node

    return Node(load_config(_config_path(args)))


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"{text!r} is not an ISO 8601 date or instant "
            "(e.g. 2026-11-28 or 2026-11-28T09:00+08:00)"
        ) from None
    if value.tzinfo is None:
        from zoneinfo import ZoneInfo

        value = value.replace(tzinfo=ZoneInfo("Asia/Shanghai"))  # people mean Beijing time
    return value.astimezone(UTC)


# --- pki ------------------------------------------------------------------------------------


def cmd_pki_init(args: argparse.Namespace) -> int:
    nodes = [c.strip() for c in args.nodes.split(",") if c.strip()]
    m = pki.init_federation(Path(args.dir), nodes, host=args.host, base_port=args.base_port)
    rows = [(mem.code, mem.name_zh, mem.name, mem.endpoint, len(mem.bureaus)) for mem in m.members]
    if args.json:
        output.emit_json(
            {
                "dir": args.dir,
                "manifest_serial": m.serial,
                "members": [
                    {"code": r[0], "name_zh": r[1], "name": r[2], "endpoint": r[3], "bureaus": r[4]}
                    for r in rows
                ],
            }
        )
    else:
        print(f"federation created in {args.dir} (manifest serial {m.serial})")
        output.table(["node", "名称", "name", "endpoint", "bureaus"], rows)
    return 0


def cmd_pki_revoke(args: argparse.Namespace) -> int:
    serial = pki.revoke(Path(args.dir), args.serial, reason=args.reason)
    _say(
        args,
        {"revoked": args.serial, "manifest_serial": serial},
        f"certificate {args.serial} revoked; manifest serial {serial} signed",
    )
    return 0


def cmd_pki_renew(args: argparse.Namespace) -> int:
    cert_serial, serial = pki.renew(Path(args.dir), args.node)
    _say(
        args,
        {"node": args.node, "tls_serial": cert_serial, "manifest_serial": serial},
        f"node {args.node}: new TLS certificate {cert_serial}; manifest serial {serial} signed",
    )
    return 0


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        output.emit_json(data)
    else:
        print(text)


# --- node -------------------------------------------------------------------------------------


def cmd_node_serve(args: argparse.Namespace) -> int:
    from node.logs import configure_logging
    from node.runtime import serve

    early: list[int] = []  # a stop asked for before the event loop runs: honoured once started
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    cfg = load_config(_config_path(args))
    configure_logging(cfg)
    asyncio.run(serve(cfg, early_stop=lambda: bool(early)))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from node.local import LocalFederation, config_path, ensure_federation, wait_serving
    from node.runtime import Node

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cccfed-"))
    ensure_federation(root)
    fed = LocalFederation(root)
    stop = {"flag": False}

    def on_signal(_sig: int, _frm: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    fed.start_all()
    try:
        fed.wait_ready()
        node = Node(load_config(config_path(root, fed.codes[0])))

        async def check() -> dict[str, str]:
            try:
                return await wait_serving(node, fed.codes)
            finally:
                await node.peers.close()

        status = asyncio.run(check())
        node.close()
        rows = []
        for code in fed.codes:
            cfg = load_config(config_path(root, code))
            rows.append((code, status.get(code, "?"), cfg.listen, str(cfg.path)))
        print(f"local federation running in {root}  (Ctrl-C to stop)")
        output.table(["node", "health", "listen", "config"], rows)
        sys.stdout.flush()
        while not stop["flag"]:
            time.sleep(0.2)
            for code, proc in fed.procs.items():
                if proc.poll() is not None:
                    print(f"node {code} exited with {proc.returncode}", file=sys.stderr)
                    stop["flag"] = True
    finally:
        codes = fed.stop_all()
        print("stopped: " + ", ".join(f"{c}={rc}" for c, rc in codes.items()))
    return 0 if all(rc == 0 for rc in codes.values()) else 1


# --- ping / status --------------------------------------------------------------------------


def cmd_ping(args: argparse.Namespace) -> int:
    node = _node(args)

    async def run() -> list[dict[str, Any]]:
        results = []
        try:
            targets = args.nodes or [c for c in node.trust.current.members if c != node.code]
            for target in targets:
                for _ in range(args.count):
                    mid, res = await node.ping(target)
                    body = res.receipt.body
                    results.append(
                        {
                            "from": node.code,
                            "to": target,
                            "verified_peer": body.receiver_node,
                            "peer_key": body.signing_key_id[:16],
                            "message_id": mid,
                            "received_at": res.receipt.received_at,
                            "rtt_ms": round(res.rtt_seconds * 1000, 2),
                        }
                    )
        finally:
            await node.peers.close()
        return results

    try:
        results = asyncio.run(run())
    finally:
        node.close()
    if args.json:
        output.emit_json(results)
        return 0
    output.table(
        ["from", "to", "verified peer", "peer key", "received at (UTC)", "rtt ms"],
        [
            (r["from"], r["to"], r["verified_peer"], r["peer_key"], r["received_at"], r["rtt_ms"])
            for r in results
        ],
    )
    if len(results) > 1:
        rtts = sorted(r["rtt_ms"] for r in results)
        print(
            f"{len(rtts)} signed round trips: min {rtts[0]} ms, "
            f"median {rtts[len(rtts) // 2]} ms, max {rtts[-1]} ms"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    node = _node(args)

    async def run() -> list[dict[str, Any]]:
        rows = []
        try:
            for code, member in sorted(node.trust.current.members.items()):
                try:
                    state, rtt = await node.peers.health(code)
                    rows.append(
                        {
                            "node": code,
                            "name_zh": member.name_zh,
                            "endpoint": member.endpoint,
                            "health": state,
                            "rtt_ms": round(rtt * 1000, 2),
                            "error": "",
                        }
                    )
                except FederationError as e:
                    rows.append(
                        {
                            "node": code,
                            "name_zh": member.name_zh,
                            "endpoint": member.endpoint,
                            "health": "UNREACHABLE",
                            "rtt_ms": None,
                            "error": e.reason,
                        }
                    )
        finally:
            await node.peers.close()
        return rows

    try:
        rows = asyncio.run(run())
    finally:
        node.close()
    tm = node.trust.current
    if args.json:
        output.emit_json(
            {"manifest_serial": tm.serial, "manifest_expires_at": tm.expires_at, "members": rows}
        )
    else:
        print(f"manifest serial {tm.serial}, expires {tm.expires_at:%Y-%m-%d %H:%M} UTC")
        output.table(
            ["node", "名称", "endpoint", "health", "rtt ms", "error"],
            [
                (r["node"], r["name_zh"], r["endpoint"], r["health"], r["rtt_ms"], r["error"])
                for r in rows
            ],
        )
    return 0 if all(r["health"] == "SERVING" for r in rows) else 1


# --- outbox -----------------------------------------------------------------------------------


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from node.store.db import make_engine, reader
    from node.store.ops import OUTBOX, STATES

    if args.state and args.state not in STATES:
        raise ValidationError(f"--state must be one of {', '.join(STATES)}")
    cfg = load_config(_config_path(args))
    engine = reader(make_engine(cfg.store_url))
    q = select(OUTBOX).order_by(OUTBOX.c.id)
    if args.state:
        q = q.where(OUTBOX.c.state == args.state)
    with engine.connect() as conn:
        rows = conn.execute(q.limit(args.limit)).all()
        counts: dict[str, int] = dict(
            conn.execute(select(OUTBOX.c.state, func.count()).group_by(OUTBOX.c.state)).all()
        )
    engine.dispose()
    items = [
        {
            "id": r.id,
            "message_id": r.message_id,
            "to": r.recipient_node,
            "kind": r.kind,
            "state": r.state,
            "attempts": r.attempts,
            "created_at": r.created_at,
            "next_attempt_at": r.next_attempt_at if r.state in ("queued", "retry") else None,
            "received_at": r.received_at,
            "fail_reason": r.fail_reason,
            "last_error": r.last_error,
        }
        for r in rows
    ]
    if args.json:
        output.emit_json({"counts": counts, "messages": items})
    else:
        output.table(
            [
                "id",
                "to",
                "kind",
                "state",
                "tries",
                "next attempt",
                "received at",
                "reason / last error",
            ],
            [
                (
                    i["id"],
                    i["to"],
                    i["kind"].removeprefix("cccfed.v1."),
                    i["state"],
                    i["attempts"],
                    i["next_attempt_at"],
                    i["received_at"],
                    (i["fail_reason"] or i["last_error"] or "")[:60],
                )
                for i in items
            ],
        )
        print("  ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "outbox is empty")
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from node.store.db import make_engine, transaction
    from node.store.ops import outbox_manual_retry

    cfg = load_config(_config_path(args))
    engine = make_engine(cfg.store_url)
    try:
        with transaction(engine) as s:
            outbox_manual_retry(s, row_id=args.id, now=datetime.now(UTC))
    finally:
        engine.dispose()
    _say(args, {"id": args.id, "state": "queued"}, f"outbox message {args.id} queued again")
    return 0


# --- log --------------------------------------------------------------------------------------


def cmd_log_verify(args: argparse.Namespace) -> int:
    from node.logbundle import verify_store
    from node.store.db import make_engine, reader
    from node.trust import load_ca

    cfg = load_config(_config_path(args))
    engine = reader(make_engine(cfg.store_url))
    try:
        result = verify_store(engine, load_ca(cfg.ca_cert), cfg.code)
    finally:
        engine.dispose()
    _say(
        args,
        {"ok": True, **result.as_dict()},
        f"message log OK: {result.records} records ({result.envelopes} envelopes, "
        f"{result.receipts} receipts), head {result.last_seq} {result.last_hash[:16]}…",
    )
    return 0


def cmd_log_export(args: argparse.Namespace) -> int:
    from federation.crypto import Signer
    from node.logbundle import export_bundle
    from node.store.db import make_engine, reader

    cfg = load_config(_config_path(args))
    engine = reader(make_engine(cfg.store_url))
    signer = Signer.from_pem(cfg.sign_key.read_bytes(), cfg.sign_cert.read_bytes())
    try:
        index = export_bundle(
            engine,
            cfg.ca_cert.read_bytes(),
            signer,
            cfg.code,
            Path(args.out),
            since=_instant(args.since) if args.since else None,
            until=_instant(args.until) if args.until else None,
        )
    finally:
        engine.dispose()
    _say(
        args,
        index,
        f"wrote {args.out}: {index['records']} records "
        f"(seq {index['first_seq']}–{index['last_seq']}), {len(index['manifests'])} manifests",
    )
    return 0


def cmd_log_verify_bundle(args: argparse.Namespace) -> int:
    from node.logbundle import verify_bundle
    from node.trust import load_ca

    expected = load_ca(Path(args.ca)) if args.ca else None
    index, result = verify_bundle(Path(args.bundle), expected_ca=expected)
    if not args.json:
        print(
            f"federation CA sha256 {index['ca_sha256']}" + (" (matches --ca)" if expected else "")
        )
    _say(
        args,
        {"ok": True, "node": index["node"], "ca_sha256": index["ca_sha256"], **result.as_dict()},
        f"bundle OK: node {index['node']}, {result.records} records ({result.envelopes} envelopes, "
        f"{result.receipts} receipts), seq {index['first_seq']}–{index['last_seq']}",
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from node.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None)


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cccfed", description="Yangtze River Delta CCC-exemption federation node"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(
        parent: Any,
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help_: str,
        *,
        config: bool = False,
        json: bool = True,
    ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        if config:
            sp.add_argument(
                "--config", help="node configuration (default: $CCCFED_CONFIG or ./node.toml)"
            )
        if json:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    pki_p = sub.add_parser("pki", help="federation certificates and manifest").add_subparsers(
        dest="sub", required=True
    )
    sp = add(
        pki_p,
        "init",
        cmd_pki_init,
        "create a federation: CA, node keys and certificates, signed manifest",
    )
    sp.add_argument("--dir", required=True)
    sp.add_argument("--nodes", default=",".join(pki.DEFAULT_NODES))
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--base-port", type=int, default=50051)
    sp = add(pki_p, "revoke", cmd_pki_revoke, "revoke a certificate and sign a new manifest")
    sp.add_argument("--dir", required=True)
    sp.add_argument("--serial", required=True, help="certificate serial (hex)")
    sp.add_argument("--reason", default="")
    sp = add(pki_p, "renew", cmd_pki_renew, "issue a new TLS certificate for a node")
    sp.add_argument("--dir", required=True)
    sp.add_argument("--node", required=True)

    node_p = sub.add_parser("node", help="run a node").add_subparsers(dest="sub", required=True)
    add(node_p, "serve", cmd_node_serve, "run a node until SIGTERM/SIGINT", config=True, json=False)

    sp = add(sub, "up", cmd_up, "run the four local provincial nodes until Ctrl-C", json=False)
    sp.add_argument(
        "--dir", help="federation directory (created if empty; default: a new temp dir)"
    )

    sp = add(
        sub,
        "ping",
        cmd_ping,
        "signed round trip to peers; prints the verified peer and RTT",
        config=True,
    )
    sp.add_argument("nodes", nargs="*", help="province codes (default: every other member)")
    sp.add_argument("--count", type=int, default=1)
    add(sub, "status", cmd_status, "health of every member", config=True)

    ob = sub.add_parser("outbox", help="messages waiting to be delivered").add_subparsers(
        dest="sub", required=True
    )
    sp = add(ob, "list", cmd_outbox_list, "list outbox messages", config=True)
    sp.add_argument("--state", help="queued | sending | retry | delivered | failed")
    sp.add_argument("--limit", type=int, default=200)
    sp = add(
        ob,
        "retry",
        cmd_outbox_retry,
        "queue a failed message again after fixing the cause",
        config=True,
    )
    sp.add_argument("id", type=int)

    lg = sub.add_parser("log", help="the hash-chained message log").add_subparsers(
        dest="sub", required=True
    )
    add(lg, "verify", cmd_log_verify, "re-check the chain and every signature", config=True)
    sp = add(lg, "export", cmd_log_export, "write a self-contained, verifiable bundle", config=True)
    sp.add_argument("--since")
    sp.add_argument("--until")
    sp.add_argument("out")
    sp = add(
        lg, "verify-bundle", cmd_log_verify_bundle, "check a bundle offline (no node, no database)"
    )
    sp.add_argument("bundle")
    sp.add_argument("--ca", help="the federation CA certificate to require (PEM)")

    sp = add(sub, "demo", cmd_demo, "run the four-province demo", json=False)
    sp.add_argument("--dir")

    from node import cli_calendar, cli_exchange, cli_requests, cli_results, cli_store

    cli_calendar.register(sub, add)
    cli_requests.register(sub, add)
    cli_exchange.register(sub, add)
    cli_results.register(sub, add)
    cli_store.register(sub, add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except FederationError as e:
        print(f"cccfed: error: {e.diagnostics()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cccfed: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except SQLAlchemyError as e:
        # The store is unreachable or refused the operation (e.g. PostgreSQL down).
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        print(f"cccfed: error: store: {type(e).__name__}: {detail} [STORE]", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
