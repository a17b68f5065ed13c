"""A small TCP relay on loopback whose link can be cut and restored, for fault injection.

:class:`TcpProxy` listens on ``127.0.0.1`` (an ephemeral port unless one is given) and relays
every accepted connection to one target address, byte for byte in both directions, half-closes
included. Its link can be broken at any moment:

* :meth:`TcpProxy.cut` with ``mode="reset"`` (the default) closes every live connection at
  once, with a TCP reset on both sides, and refuses new ones: they are accepted and reset
  immediately, and the target never sees them;
* ``mode="blackhole"`` leaves the connections open but relays nothing any more: bytes in either
  direction are read and dropped, new connections are accepted and held without reaching the
  target; the peers only find out through their own timeouts (a partition that drops packets);
* :meth:`TcpProxy.restore` relays again; connections held or stalled by a black hole are reset,
  since bytes were lost on them.

The proxy runs on an asyncio loop. :class:`ProxyThread` runs that loop in a daemon thread so
that synchronous code (the soak harness) can start proxies and cut or restore them from its own
thread; the methods of :class:`TcpProxy` work from the loop itself and from any other thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Mode = Literal["reset", "blackhole"]
CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    """What a proxy has seen (read them from any thread; they are plain counters)."""

    accepted: int = 0
    relayed: int = 0
    refused: int = 0
    upstream_failed: int = 0
    reset: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_bytes: int = 0
    cuts: int = 0


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset (SO_LINGER 0), not a graceful FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and, once connected, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)
        for t in self.tasks:
            t.cancel()


class TcpProxy:
    """Relay ``127.0.0.1:port`` → ``target``; see the module docstring."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        name: str = "",
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = target
        self.listen = listen
        self.name = name or f"proxy→{target[0]}:{target[1]}"
        self.connect_timeout = connect_timeout
        self.stats = ProxyStats()
        self._mode: Mode | None = None
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0

    # --- state ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        return self._port

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self._port}"

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    @property
    def mode(self) -> Mode | None:
        return self._mode

    @property
    def live_connections(self) -> int:
        return len(self._links)

    # --- lifecycle (on the loop) ----------------------------------------------------------

    async def start(self) -> TcpProxy:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._accept, self.listen[0], self.listen[1], reuse_address=True
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def aclose(self) -> None:
        """Stop listening and reset every connection."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        self._abort_all()

    # --- faults (from the loop or any thread) -------------------------------------------

    def cut(self, mode: Mode = "reset") -> None:
        """Break the link: see the module docstring for the two modes."""
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"unknown cut mode {mode!r}")
        self._call(self._cut, mode)

    def restore(self) -> None:
        """Relay again; connections a black hole held or stalled are reset (bytes were lost)."""
        self._call(self._restore)

    def close(self) -> None:
        """:meth:`aclose` from another thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            raise RuntimeError("use 'await proxy.aclose()' on the proxy's own loop")
        asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(10)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.name} is not started")
        if _running_loop() is loop:
            fn(*args)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn(*args)
                done.set_result(None)
            except BaseException as e:  # handed to the caller's thread
                done.set_exception(e)

        loop.call_soon_threadsafe(run)
        done.result(10)

    def _cut(self, mode: Mode) -> None:
        self.stats.cuts += 1
        self._mode = mode
        if mode == "reset":
            self._abort_all()

    def _restore(self) -> None:
        was = self._mode
        self._mode = None
        if was == "blackhole":
            self._abort_all()

    def _abort_all(self) -> None:
        for link in list(self._links):
            self.stats.reset += 1
            link.abort()
        self._links.clear()

    # --- relaying ----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._mode == "reset":
            self.stats.refused += 1
            _abort(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            if self._mode == "blackhole":
                await self._swallow(reader, link)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), self.connect_timeout
                )
            except (OSError, TimeoutError):
                self.stats.upstream_failed += 1
                link.abort()
                return
            if link.closed:  # cut while we were connecting
                _abort(up_writer)
                return
            link.upstream = up_writer
            self.stats.relayed += 1
            up = asyncio.create_task(self._pump(reader, up_writer, link, "up"))
            down = asyncio.create_task(self._pump(up_reader, writer, link, "down"))
            link.tasks = [up, down]
            await asyncio.gather(up, down, return_exceptions=True)
            if not link.closed:
                link.closed = True
                writer.close()
                up_writer.close()
        finally:
            self._links.discard(link)

    async def _swallow(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """A connection accepted during a black hole: read and drop until reset or EOF."""
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while not link.closed:
                data = await reader.read(CHUNK)
                if not data:
                    break
                self.stats.dropped_bytes += len(data)
        link.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        direction: Literal["up", "down"],
    ) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self._mode is not None:  # a black hole: the bytes are lost
                    self.stats.dropped_bytes += len(data)
                    continue
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
            # EOF from this side: pass the half-close on, keep relaying the other way.
            if not link.closed and self._mode is None and writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            link.abort()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class ProxyThread:
    """An asyncio loop in a daemon thread that hosts proxies for synchronous callers."""

    def __init__(self, name: str = "tcpproxy") -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: list[TcpProxy] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, target: tuple[str, int], *, name: str = "") -> TcpProxy:
        """Start a proxy to ``target`` on an ephemeral loopback port."""
        proxy = self.run(TcpProxy(target, name=name).start())
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        if self.loop.is_closed():
            return
        for p in self.proxies:
            with contextlib.suppress(Exception):
                self.run(p.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Mode", "ProxyStats", "ProxyThread", "TcpProxy"]
