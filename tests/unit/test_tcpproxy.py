"""The soak's loopback TCP proxy: it relays bytes, a cut breaks the link, a restore mends it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest

from bench.tcpproxy import ProxyThread, TcpProxy


class Echo:
    """A TCP server that echoes what it reads and counts the connections it accepted."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()  # the client half-closed: answer with ours
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@asynccontextmanager
async def echo_and_proxy() -> AsyncIterator[tuple[Echo, TcpProxy]]:
    echo = Echo()
    echo.server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    proxy = await TcpProxy(("127.0.0.1", echo.port)).start()
    try:
        yield echo, proxy
    finally:
        await proxy.aclose()
        echo.server.close()
        await echo.server.wait_closed()


async def connect(proxy: TcpProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def round_trip(proxy: TcpProxy, payload: bytes) -> bytes:
    reader, writer = await connect(proxy)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    return data


async def broken(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    """True when the connection ends (EOF or reset) within ``within`` s, without data."""
    try:
        data = await asyncio.wait_for(reader.read(1), within)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return data == b""


async def until(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def test_relays_bytes_both_ways_including_a_half_close() -> None:
    async def test() -> None:
        async with echo_and_proxy() as (echo, proxy):
            payload = os.urandom(3 * 1024 * 1024 + 17)
            assert await round_trip(proxy, payload) == payload
            assert await round_trip(proxy, b"") == b""
            # Several connections at once, each its own relay.
            payloads = [os.urandom(100_000 + i) for i in range(8)]
            got = await asyncio.gather(*(round_trip(proxy, p) for p in payloads))
            assert got == payloads
            assert echo.accepted == 10
            assert proxy.stats.relayed == 10
            assert (
                proxy.stats.bytes_up
                == proxy.stats.bytes_down
                == len(payload) + sum(map(len, payloads))
            )
            await until(lambda: proxy.live_connections == 0)

    run(test)


def test_cut_closes_live_connections_and_refuses_new_ones_until_restored() -> None:
    async def test() -> None:
        async with echo_and_proxy() as (echo, proxy):
            reader, writer = await connect(proxy)
            writer.write(b"before")
            assert await reader.readexactly(6) == b"before"
            assert proxy.live_connections == 1

            proxy.cut()
            assert (proxy.is_cut, proxy.mode) == (True, "reset")
            assert await broken(reader), "the live connection survived the cut"
            writer.close()
            assert proxy.live_connections == 0

            # New connections are accepted by the proxy and reset at once; none reaches the
            # target, and nothing comes back.
            for _ in range(3):
                r2, w2 = await connect(proxy)
                assert await broken(r2), "a new connection was let through during a cut"
                w2.close()
            assert echo.accepted == 1
            assert proxy.stats.refused == 3

            proxy.restore()
            assert not proxy.is_cut
            assert await round_trip(proxy, b"after") == b"after"
            assert echo.accepted == 2

    run(test)


def test_blackhole_relays_nothing_and_restore_resets_what_it_held() -> None:
    async def test() -> None:
        async with echo_and_proxy() as (echo, proxy):
            reader, writer = await connect(proxy)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"

            proxy.cut("blackhole")
            writer.write(b"lost")
            await writer.drain()
            assert not await broken(reader, 0.3)  # nothing comes back, and no reset
            late_reader, late_writer = await connect(proxy)  # accepted, held, not relayed
            late_writer.write(b"also lost")
            await late_writer.drain()
            await until(lambda: proxy.stats.dropped_bytes >= len(b"lostalso lost"))
            assert echo.accepted == 1

            proxy.restore()
            assert await broken(reader), "a stalled connection must be reset on restore"
            assert await broken(late_reader), "a held connection must be reset on restore"
            writer.close()
            late_writer.close()
            assert await round_trip(proxy, b"again") == b"again"
            assert echo.accepted == 2

    run(test)


def test_target_down_resets_the_client_and_counts_it() -> None:
    async def test() -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        proxy = await TcpProxy(("127.0.0.1", port)).start()
        try:
            reader, writer = await connect(proxy)
            assert await broken(reader)
            writer.close()
            assert proxy.stats.upstream_failed == 1
        finally:
            await proxy.aclose()

    run(test)


def test_proxy_thread_serves_synchronous_callers() -> None:
    """The soak drives proxies from its own thread: cut and restore must work from there."""

    async def serve_echo(echo: Echo) -> None:
        echo.server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)

    def sync_round_trip(port: int, payload: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
            return b"".join(chunks)

    with ProxyThread() as pt:
        echo = Echo()
        pt.run(serve_echo(echo))
        proxy = pt.add(("127.0.0.1", echo.port), name="310000→320000")
        assert sync_round_trip(proxy.port, b"hello") == b"hello"

        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        live.sendall(b"x")
        assert live.recv(1) == b"x"
        proxy.cut()
        with suppress(ConnectionResetError):
            assert live.recv(1) == b"", "the live connection survived the cut"
        live.close()
        with pytest.raises(OSError):
            sync_round_trip(proxy.port, b"refused" * 10_000)
        proxy.restore()
        assert sync_round_trip(proxy.port, b"back") == b"back"
        assert echo.accepted == 3
        assert echo.server is not None
        echo.server.close()
