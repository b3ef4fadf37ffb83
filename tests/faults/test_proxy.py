"""The fault proxy itself: forward, cut, restore, latency, drop mid-stream, byte counts."""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import pytest

from tests.faults.proxy import TcpProxy

pytestmark = pytest.mark.timeout(30)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    p = await TcpProxy("127.0.0.1", server.sockets[0].getsockname()[1]).start()
    yield p
    await p.close()
    server.close()
    await server.wait_closed()


async def _roundtrip(p: TcpProxy, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def test_forwards_and_counts(proxy: TcpProxy) -> None:
    assert await _roundtrip(proxy, b"x" * 1000) == b"x" * 1000
    assert proxy.bytes_up == 1000 and proxy.bytes_down == 1000


async def test_cut_refuses_and_restore_heals(proxy: TcpProxy) -> None:
    proxy.cut()
    with pytest.raises((OSError, asyncio.IncompleteReadError)):
        await _roundtrip(proxy, b"hello")
    assert proxy.refused >= 1
    proxy.restore()
    assert await _roundtrip(proxy, b"hello") == b"hello"


async def test_cut_kills_open_connections(proxy: TcpProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"
    proxy.cut()
    with pytest.raises((OSError, asyncio.IncompleteReadError)):
        writer.write(b"b")
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(1), 2)
    writer.close()


async def test_latency(proxy: TcpProxy) -> None:
    proxy.latency(0.2)
    t0 = time.monotonic()
    await _roundtrip(proxy, b"slow")
    assert time.monotonic() - t0 >= 0.35  # once up, once down


async def test_drop_after_cuts_mid_stream(proxy: TcpProxy) -> None:
    proxy.drop_after(100)
    with pytest.raises((OSError, asyncio.IncompleteReadError)):
        await _roundtrip(proxy, b"y" * 1000)
    assert proxy.bytes_up + proxy.bytes_down == 100
