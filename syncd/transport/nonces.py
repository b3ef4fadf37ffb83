"""Request nonces seen by a parent: refuse a captured request sent again (HC-24, SPEC R11.3).

A nonce must be remembered at least as long as a request carrying it can pass the
signature's time window: ``window_s`` on either side of the signed time, so prune
only entries older than ``2 × window_s`` (plus clock slack).  :class:`PgNonceStore`
keeps them in ``syncd.nonces``, so a parent restart or a second replica on the same
database cannot be replayed against; :class:`MemoryNonceStore` is for tests and
single-process tools.
"""
from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class NonceStore(Protocol):
    """Contract: :meth:`seen` is atomic — of concurrent calls with one nonce exactly
    one returns ``False``.  It records the nonce when it returns ``False``."""

    async def seen(self, nonce: str, key_id: str) -> bool:
        """``True`` if ``nonce`` was already recorded; otherwise record it and return ``False``."""
        ...


class MemoryNonceStore:
    """Nonces in a dict; entries older than ``retention_s`` are pruned as it grows."""

    def __init__(self, retention_s: float = 660.0) -> None:
        self.retention_s = retention_s
        self._seen: dict[str, tuple[str, float]] = {}
        self._next_prune = 10_000

    async def seen(self, nonce: str, key_id: str) -> bool:
        if nonce in self._seen:
            return True
        self._seen[nonce] = (key_id, time.monotonic())
        if len(self._seen) >= self._next_prune:
            await self.prune(self.retention_s)
            self._next_prune = max(10_000, 2 * len(self._seen))
        return False

    async def prune(self, older_than_s: float) -> int:
        """Forget nonces recorded more than ``older_than_s`` ago; returns how many."""
        limit = time.monotonic() - older_than_s
        old = [n for n, (_, at) in self._seen.items() if at < limit]
        for n in old:
            del self._seen[n]
        return len(old)

    def __len__(self) -> int:
        return len(self._seen)


class PgNonceStore:
    """Nonces in ``syncd.nonces (nonce PRIMARY KEY, key_id, seen_at)`` through an asyncpg
    pool (or anything with ``fetchval``/``execute``).  Durable and shared by every
    process on the database; database errors propagate (the server answers 503)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def seen(self, nonce: str, key_id: str) -> bool:
        inserted = await self.pool.fetchval(
            "INSERT INTO syncd.nonces (nonce, key_id) VALUES ($1, $2) "
            "ON CONFLICT (nonce) DO NOTHING RETURNING nonce", nonce, key_id)
        return inserted is None

    async def prune(self, older_than_s: float) -> int:
        """Delete nonces seen more than ``older_than_s`` seconds ago; returns how many.
        Call it periodically with at least ``2 × window_s``."""
        status = await self.pool.execute(
            "DELETE FROM syncd.nonces WHERE seen_at < now() - make_interval(secs => $1)",
            float(older_than_s))
        return int(status.split()[-1])
