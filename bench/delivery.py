"""Delivery benchmark: signed, durably stored, receipted messages vs a bare mTLS echo.

Run with ``make bench`` (or ``python bench/delivery.py``). In one run on one machine it measures:

1. **baseline**: a bare ``grpc.aio`` unary echo over mutual TLS (server in its own process,
   the same certificates and payload size), c concurrent calls in a closed loop;
2. **cccfed**: two real node processes. The sender process runs a full node (server, delivery
   worker) and a closed loop of c concurrent producers; each producer commits a signed message
   to its outbox (``synchronous=FULL``) and waits until the delivery worker holds the receiver's
   verified receipt. The receiver is a plain ``cccfed node serve`` that verifies the envelope,
   commits it (``synchronous=FULL``) and only then signs and returns the receipt. The sender
   then commits the receipt too; the latency to that commit is reported beside the others
   (``receipt_stored_*``). A crash before it loses nothing: the resend gets the same receipt.

3. **cccfed, one call per message**: the same as 2 with ``[delivery] batch = false``, so that
   the effect of ``DeliverBatch`` is measured in the same run.

Phases 1 and 2 alternate for ``--rounds`` rounds (default 3), because the speed of a shared VM
drifts within minutes: each round's ratio compares two phases run back to back, and the run
reports every round's ratio and their median. Phase 3 runs once, last.

It prints throughput, p50/p99 latency and CPU time per message of each, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median, quantiles
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from node import pki
from node.local import free_ports

ECHO = "/bench.Echo/Call"


def _ident(b: bytes) -> bytes:
    return b


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(latencies: list[float], seconds: float) -> dict[str, Any]:
    q = quantiles(latencies, n=100)
    return {
        "messages": len(latencies),
        "seconds": round(seconds, 3),
        "per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


# --- roles run in child processes -------------------------------------------------------------


async def echo_server(node_dir: Path, port: int) -> None:
    async def call(req: bytes, _ctx: Any) -> bytes:
        return req

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Echo",
                {"Call": grpc.unary_unary_rpc_method_handler(call, _ident, _ident)},
            )
        ]
    )
    creds = grpc.ssl_server_credentials(
        [((node_dir / "tls.key").read_bytes(), (node_dir / "tls.crt").read_bytes())],
        root_certificates=(node_dir.parents[1] / "ca" / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def echo_client(
    node_dir: Path, port: int, c: int, seconds: float, size: int
) -> dict[str, float]:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(node_dir.parents[1] / "ca" / "ca.crt").read_bytes(),
        private_key=(node_dir / "tls.key").read_bytes(),
        certificate_chain=(node_dir / "tls.crt").read_bytes(),
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        call = ch.unary_unary(ECHO, request_serializer=_ident, response_deserializer=_ident)
        payload = os.urandom(size)
        await call(payload, timeout=10)
        lat: list[float] = []
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await call(payload, timeout=10)
                lat.append(time.perf_counter() - t)

        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(loop() for _ in range(c)))
        result = summarize(lat, time.perf_counter() - t0)
        result["client_cpu_ms_per_msg"] = round(
            (time.process_time() - cpu0) * 1000 / max(1, len(lat)), 3
        )
        return result


async def sender(config: Path, target: str, c: int, seconds: float) -> dict[str, Any]:
    """Closed loop of ``c`` producers on a full node; see the module docstring."""
    from cccfed.v1 import federation_pb2
    from node.config import load_config
    from node.runtime import Node

    node = Node(load_config(config))
    await node.start()
    loop = asyncio.get_running_loop()
    started: dict[str, float] = {}
    receipted: dict[str, asyncio.Future[None]] = {}
    stored_lat: list[float] = []

    def on_receipt(mid: str) -> None:
        fut = receipted.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_stored(mid: str) -> None:
        t = started.pop(mid, None)
        if t is not None:
            stored_lat.append(time.perf_counter() - t)

    node.receipt_callbacks.append(on_receipt)
    node.delivered_callbacks.append(on_stored)
    lat: list[float] = []

    async def one() -> None:
        t = time.perf_counter()
        fut: asyncio.Future[None] = loop.create_future()

        def register(s: Any) -> tuple[str, int]:
            mid, row = node.enqueue_in(
                s, target, "federation", federation_pb2.Ping(note="bench"), claim=True
            )
            receipted[mid] = fut  # before commit: the delivery cannot precede registration
            started[mid] = t
            return mid, row

        await node.run_and_send(register)
        await fut
        lat.append(time.perf_counter() - t)

    try:
        for _ in range(c):  # warm up channels and caches
            await one()
        lat.clear()
        stop = time.perf_counter() + seconds

        async def producer() -> None:
            while time.perf_counter() < stop:
                await one()

        await asyncio.sleep(0.5)
        stored_lat.clear()
        t0, cpu0 = time.perf_counter(), time.process_time()
        commits, jobs = node.writer.commits, node.writer.jobs
        calls = node.worker.calls
        await asyncio.gather(*(producer() for _ in range(c)))
        elapsed = time.perf_counter() - t0
        result: dict[str, Any] = summarize(lat, elapsed)
        stored = summarize(stored_lat, elapsed)
        result["receipt_stored_p50_ms"] = stored["p50_ms"]
        result["receipt_stored_p99_ms"] = stored["p99_ms"]
        result["client_cpu_ms_per_msg"] = round(
            (time.process_time() - cpu0) * 1000 / max(1, len(lat)), 3
        )
        result["sender_calls"] = node.worker.calls - calls
        result["sender_commits"] = node.writer.commits - commits
        result["sender_jobs"] = node.writer.jobs - jobs
        return result
    finally:
        await node.stop(grace=1)


# --- orchestration ----------------------------------------------------------------------------


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", "-c", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--role", choices=["echo-server", "echo-client", "sender"])
    ap.add_argument("--dir")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument(
        "--rounds", type=int, default=3, help="echo/cccfed pairs, alternating (median ratio)"
    )
    args = ap.parse_args()
    if args.role == "echo-server":
        asyncio.run(echo_server(Path(args.dir), args.port))
        return
    if args.role == "echo-client":
        print(
            json.dumps(
                asyncio.run(
                    echo_client(
                        Path(args.dir), args.port, args.concurrency, args.seconds, args.size
                    )
                )
            )
        )
        return
    if args.role == "sender":
        print(
            json.dumps(
                asyncio.run(sender(Path(args.dir), "320000", args.concurrency, args.seconds))
            )
        )
        return

    root = Path(tempfile.mkdtemp(prefix="cccfed-bench-"))
    codes = ["310000", "320000"]
    ports = free_ports(3)
    pki.init_federation(root, codes, ports=dict(zip(codes, ports[:2], strict=True)))
    for code in codes:
        cfg = root / "nodes" / code / "node.toml"
        cfg.write_text(
            cfg.read_text()
            + f"\n[delivery]\nconcurrency = {args.concurrency}\npoll_seconds = 0.5\n"
        )
    print(
        f"delivery benchmark: c={args.concurrency}, {args.seconds:.0f}s per phase, "
        f"{os.cpu_count()} cores, in {root}"
    )

    # 1. baseline: bare grpc.aio mTLS unary echo, server and client in separate processes
    def echo_phase() -> dict[str, Any]:
        srv = child(
            "--role",
            "echo-server",
            "--dir",
            str(root / "nodes" / "320000"),
            "--port",
            str(ports[2]),
        )
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        cl = child(
            "--role",
            "echo-client",
            "--dir",
            str(root / "nodes" / "310000"),
            "--port",
            str(ports[2]),
            "-c",
            str(args.concurrency),
            "--seconds",
            str(args.seconds),
            "--size",
            str(args.size),
        )
        srv_cpu0 = cpu_seconds(srv.pid)
        out, _err = cl.communicate()
        srv_cpu = cpu_seconds(srv.pid) - srv_cpu0
        srv.terminate()
        srv.wait()
        base: dict[str, Any] = json.loads(out)
        base["server_cpu_ms_per_msg"] = round(srv_cpu * 1000 / max(1, base["messages"]), 3)
        return base

    # 2. cccfed: receiver node process + sender node process driving a closed loop;
    # 3. the same with one call per message ([delivery] batch = false), for comparison.
    def cccfed_phase(sender_config: Path) -> dict[str, Any]:
        recv = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.cli",
                "node",
                "serve",
                "--config",
                str(root / "nodes" / "320000" / "node.toml"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        snd = child(
            "--role",
            "sender",
            "--dir",
            str(sender_config),
            "-c",
            str(args.concurrency),
            "--seconds",
            str(args.seconds),
        )
        recv_cpu0 = cpu_seconds(recv.pid)
        out, err = snd.communicate()
        recv_cpu = cpu_seconds(recv.pid) - recv_cpu0
        recv.terminate()
        recv.wait()
        if snd.returncode != 0:
            print(err, file=sys.stderr)
            raise SystemExit(1)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        # Includes the sender's warm-up (c messages): a slight overestimate.
        result["server_cpu_ms_per_msg"] = round(recv_cpu * 1000 / max(1, result["messages"]), 3)
        return result

    sender_config = root / "nodes" / "310000" / "node.toml"
    unary_config = sender_config.with_name("node-unary.toml")
    unary_config.write_text(
        sender_config.read_text().replace(
            "poll_seconds = 0.5\n", "poll_seconds = 0.5\nbatch = false\n"
        )
    )
    # The VM's speed drifts by tens of percent within minutes, so the echo and cccfed phases
    # alternate, round after round, and each round's ratio compares neighbours in time.
    rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for _ in range(args.rounds):
        base = echo_phase()
        rounds.append((base, cccfed_phase(sender_config)))
    unary = cccfed_phase(unary_config)

    head = ("msgs/s", "p50 ms", "p99 ms", "n", "cpu ms/msg client+server")
    print(f"{'':32}" + "".join(f"{h:>10}" for h in head[:4]) + f"  {head[4]}")
    rows: list[tuple[str, dict[str, Any]]] = []
    for i, (base, fed) in enumerate(rounds, 1):
        rows.append((f"{i}. bare grpc.aio mTLS echo", base))
        rows.append((f"{i}. cccfed signed+stored+receipt", fed))
    rows.append(("cccfed, one call per message", unary))
    for label, r in rows:
        cols = (r["per_second"], r["p50_ms"], r["p99_ms"], r["messages"])
        cpu = f"{r['client_cpu_ms_per_msg']:.3f} + {r['server_cpu_ms_per_msg']:.3f}"
        print(f"{label:32}" + "".join(f"{c:>10}" for c in cols) + f"  {cpu}")
    ratios = [fed["per_second"] / base["per_second"] for base, fed in rounds]
    ratio = median(ratios)
    print(
        "throughput ratio cccfed / echo per round: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; median {ratio:.2f}  (goal >= 0.5)"
    )
    last_base, last_fed = rounds[-1]
    print(
        f"  (one call per message: {unary['per_second'] / last_base['per_second']:.2f} of the "
        f"last echo; DeliverBatch calls made {last_fed['sender_calls']}, "
        f"unary calls {unary['sender_calls']})"
    )
    print(
        json.dumps(
            {
                "rounds": [{"baseline": b, "cccfed": f} for b, f in rounds],
                "cccfed_one_call_per_message": unary,
                "ratios": [round(r, 3) for r in ratios],
                "ratio": round(ratio, 3),
                "ratio_one_call_per_message": round(
                    unary["per_second"] / last_base["per_second"], 3
                ),
                "concurrency": args.concurrency,
            }
        )
    )


if __name__ == "__main__":
    main()
