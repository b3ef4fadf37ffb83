"""An asyncio TCP fault proxy for tests (after asyncpg's ``TCPFuzzingProxy``).

Listens on 127.0.0.1:<free port> and forwards every connection to ``target``.
Faults, all of them instant and reversible:

* :meth:`TcpProxy.cut` closes every open connection (RST) and refuses new ones
  until :meth:`restore` — a link or a database gone away;
* :meth:`latency` delays every forwarded chunk by ``seconds``;
* :meth:`drop_after` lets ``nbytes`` more bytes through (either direction, summed
  over connections) and then kills the connection carrying them mid-stream;
* :attr:`tamper` (a ``bytes -> bytes`` callable) rewrites what the target sends back
  — a forging man-in-the-middle.

Counts bytes per direction (``up`` = client → target, ``down`` = target → client) so a
test can compare what crossed a link with the expected volume (HC-35).  Usable
between nodes (point a child's parent URL at :attr:`url`) and in front of
PostgreSQL (``postgresql://postgres@127.0.0.1:<proxy.port>/db``).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Callable

_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.accepted = 0
        self.refused = 0
        self.tamper: Callable[[bytes], bytes] | None = None
        self._cut = False
        self._delay = 0.0
        self._budget: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._kill_all()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # -- faults ------------------------------------------------------------------------

    def cut(self) -> None:
        """Close every connection now and refuse new ones until :meth:`restore`."""
        self._cut = True
        self._kill_all()

    def restore(self) -> None:
        self._cut = False
        self._budget = None
        self._delay = 0.0

    def latency(self, seconds: float) -> None:
        self._delay = max(0.0, seconds)

    def drop_after(self, nbytes: int) -> None:
        """Forward ``nbytes`` more bytes, then reset the connection that carries the next."""
        self._budget = nbytes

    @property
    def is_cut(self) -> bool:
        return self._cut

    # -- plumbing ------------------------------------------------------------------------

    def _kill_all(self) -> None:
        for a, b in list(self._pairs):
            _abort(a)
            _abort(b)
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            _abort(writer)
            await _close(writer)
            return
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, asyncio.TimeoutError):
            _abort(writer)
            await _close(writer)
            return
        self.accepted += 1
        pair = (writer, up_w)
        self._pairs.add(pair)
        t1 = asyncio.ensure_future(self._pipe(reader, up_w, pair, "up"))
        t2 = asyncio.ensure_future(self._pipe(up_r, writer, pair, "down"))
        for t in (t1, t2):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        try:
            await asyncio.gather(t1, t2, return_exceptions=True)
        finally:
            self._pairs.discard(pair)
            for w in pair:
                await _close(w)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter], direction: str) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    break
                if self._cut or pair not in self._pairs:
                    break
                if self._delay:
                    await asyncio.sleep(self._delay)
                if self._budget is not None:
                    if self._budget <= 0:
                        break
                    if len(data) > self._budget:
                        data = data[: self._budget]
                    self._budget -= len(data)
                if direction == "down" and self.tamper is not None:
                    data = self.tamper(data)
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                dst.write(data)
                await dst.drain()
                if self._budget is not None and self._budget <= 0:
                    break  # the budget is spent: this connection dies mid-stream
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._budget is not None and self._budget <= 0 or self._cut:
                _abort(pair[0])
                _abort(pair[1])
                self._pairs.discard(pair)
            else:
                with contextlib.suppress(Exception):
                    if dst.can_write_eof():
                        dst.write_eof()


async def _close(w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        w.close()
        await asyncio.wait_for(w.wait_closed(), 1)


def _abort(w: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a dead peer or a firewall would."""
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(Exception):
        w.transport.abort()
