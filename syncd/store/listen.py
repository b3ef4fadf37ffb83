"""A LISTEN that survives its connection: PostgreSQL restarts, dropped sockets (DESIGN §9).

A LISTEN lives on one connection; when that connection is lost, notifications stop
silently.  asyncpg (0.30+) detaches a pooled connection's proxy as soon as the
server side goes away, after which *every* call on the proxy — even
``is_closed()`` — raises ``InterfaceError``.  :class:`Listener` hides that: it holds
one pooled connection for the channel, checks it with :func:`alive`, and
re-acquires and re-LISTENs when it is gone.

Contract: call :meth:`Listener.ensure` on every turn of the owning loop (it never
raises except for cancellation and returns whether the LISTEN was (re)established,
so the caller can catch up on what was notified while nobody listened), and
:meth:`Listener.close` once in the loop's ``finally``.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import asyncpg
import structlog

log = structlog.get_logger("syncd.listen")


def alive(conn: Any) -> bool:
    """True if ``conn`` (a connection or pool proxy) is usable; never raises."""
    if conn is None:
        return False
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # a pooled proxy detached after its connection was lost
        return False


async def release_quietly(pool: asyncpg.Pool, conn: Any) -> None:
    """Give a possibly broken pooled connection back; returns None (to reset the caller's
    reference).  A connection already detached by the pool is left alone."""
    if conn is None:
        return None
    try:
        await pool.release(conn)
    except Exception:  # noqa: BLE001 - a dead connection is simply dropped
        try:
            conn.terminate()
        except Exception:  # noqa: BLE001 - already detached
            pass
    return None


class Listener:
    """One channel's LISTEN on a pooled connection, re-established when lost."""

    def __init__(self, pool: asyncpg.Pool, channel: str, callback: Callable[..., Any]) -> None:
        self.pool, self.channel, self.callback = pool, channel, callback
        self.conn: Any = None
        self.established = 0  # how many times the LISTEN was (re)made (status, tests)

    async def ensure(self) -> bool:
        """(Re)LISTEN if the connection is gone; True if it was (re)established just now.

        A failure (database still down) leaves it unestablished for the next call.
        """
        if alive(self.conn):
            return False
        self.conn = await release_quietly(self.pool, self.conn)
        try:
            conn = await self.pool.acquire()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - database down: the owner's loop tries again
            return False
        try:
            await conn.add_listener(self.channel, self.callback)
        except asyncio.CancelledError:
            await release_quietly(self.pool, conn)
            raise
        except Exception:  # noqa: BLE001
            await release_quietly(self.pool, conn)
            return False
        self.conn = conn
        self.established += 1
        if self.established > 1:
            log.info("listen_reestablished", channel=self.channel, times=self.established - 1)
        return True

    async def close(self) -> None:
        """UNLISTEN (if the connection still lives) and give the connection back; never raises."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if alive(conn):
            try:
                await conn.remove_listener(self.channel, self.callback)
            except Exception:  # noqa: BLE001 - lost meanwhile; the release drops it
                pass
        await release_quietly(self.pool, conn)
