"""Quarantined changes for operators: list them, release one (DESIGN §6, HC-11).

A change lands in ``syncd.quarantine`` when it was refused (scope, writers, clock:
``FORBIDDEN_SCOPE``, ``FUTURE_TS`` …) or was poison here (a local constraint:
``POISON``).  It waits for an operator, who fixes the cause (drops the vendor
constraint, waits for the topology, corrects the clock) and releases it.

:func:`release_quarantined` re-applies one quarantined change *as if it arrived
now*: the same authorisation and clock bound as a fresh batch (a forged change stays
refused, whoever releases it), then :func:`syncd.store.apply.merge_rows` under
``syncd.applying = on`` and the sequencer lock, in one transaction.  On success the
row is marked ``released_at``; a foreign-key miss moves the change to ``parked``
(retried by itself) and counts as released.  If it fails again it stays quarantined
with the new code and reason (never PostgreSQL DETAIL text, HC-15).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from syncd.errors import OperatorRequestError

from syncd.merge import clock_check
from syncd.routing import Direction, check_origin
from syncd.store.apply import (ApplyContext, ApplyResult, change_from_json, current_topology, record_conflicts,
                               merge_rows, park)
from syncd.store.conflicts import close_seen
from syncd.store.log import add_pending
from syncd.store.sequencer import lock_applying

#: the one code given to changes that were authorised (and so already queued for relay, HC-12)
#: but failed a local constraint; every other code was refused before relay
POISON = "POISON"


class QuarantineError(OperatorRequestError):
    """A release request that cannot be carried out: ``code``, message and an operator ``hint``."""


@dataclass(frozen=True)
class QuarantinedChange:
    id: int
    peer: str
    code: str
    reason: str
    table: str
    row_id: uuid.UUID
    op: str
    origin: str
    received_at: str
    released_at: str | None

    def as_dict(self) -> dict[str, Any]:
        """Identity and cause only: the change's values are not shown (they may be another node's)."""
        return {"id": self.id, "peer": self.peer, "code": self.code, "reason": self.reason, "table": self.table,
                "row_id": str(self.row_id), "op": self.op, "origin": self.origin,
                "received_at": self.received_at, "released_at": self.released_at}


@dataclass(frozen=True)
class ReleaseResult:
    id: int
    outcome: str  # 'applied' | 'parked' | 'still_quarantined'
    code: str | None = None
    reason: str | None = None


def _row(r: asyncpg.Record) -> QuarantinedChange:
    ch = json.loads(r["change"]) if isinstance(r["change"], str) else dict(r["change"])
    return QuarantinedChange(r["id"], r["peer"], r["code"], r["reason"], r["tbl"], r["row_id"],
                             str(ch.get("op", "?")), str(ch.get("origin", "?")), r["received_at"].isoformat(),
                             r["released_at"].isoformat() if r["released_at"] else None)


async def list_quarantined(conn: asyncpg.Connection, include_released: bool = False) -> list[QuarantinedChange]:
    where = "" if include_released else "WHERE released_at IS NULL"
    return [_row(r) for r in await conn.fetch(f"SELECT * FROM syncd.quarantine {where} ORDER BY id")]


def _direction(ctx: ApplyContext, peer: str) -> Direction:
    try:
        parent = ctx.topo.parent(ctx.me)
    except Exception:  # noqa: BLE001 - an unknown node has no parent we know of
        parent = None
    return "from_parent" if parent is not None and peer == parent else "from_child"


async def release_quarantined(conn: asyncpg.Connection, ctx: ApplyContext, qid: int,
                              now_us: int | None = None) -> ReleaseResult:
    """Re-apply quarantined change ``qid`` (see the module docstring).  Idempotent per id:
    a released change raises ``ALREADY_RELEASED``; an unknown id ``UNKNOWN_QUARANTINE``."""
    now = now_us if now_us is not None else time.time_ns() // 1000
    async with conn.transaction():
        await lock_applying(conn)
        rec = await conn.fetchrow("SELECT * FROM syncd.quarantine WHERE id = $1 FOR UPDATE", qid)
        if rec is None:
            raise QuarantineError("UNKNOWN_QUARANTINE", f"no quarantined change {qid} at {ctx.me}",
                                  "list them with: syncd quarantine")
        if rec["released_at"] is not None:
            raise QuarantineError("ALREADY_RELEASED", f"quarantined change {qid} was released at "
                                  f"{rec['released_at'].isoformat()}", "nothing to do")
        change = change_from_json(rec["change"])
        peer = rec["peer"]
        ctx.topo = await current_topology(conn, ctx.topo, [change])
        refusals = check_origin(change, None, peer, ctx.me, ctx.topo, _direction(ctx, peer))
        if refusals:
            return await _keep(conn, qid, refusals[0].code, refusals[0].reason)
        if clock_check(change.ts, now, ctx.clock_soft_us, ctx.clock_hard_us) == "refuse":
            return await _keep(conn, qid, "FUTURE_TS", f"change ts {change.ts} is still beyond the clock bound "
                                                       f"of {ctx.me}")
        if rec["code"] != POISON:  # refused on arrival, never relayed: relay it now, applied here or not (HC-12)
            await add_pending(conn, [(change, peer)])
        before = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM syncd.quarantine"))
        result = ApplyResult()
        parked = await merge_rows(conn, ctx, peer, [change], result)
        if result.quarantined:  # poison again: merge_rows filed a new row; keep the old one instead
            new = await conn.fetchrow(
                "WITH d AS (DELETE FROM syncd.quarantine WHERE id > $1 RETURNING id, code, reason) "
                "SELECT code, reason FROM d ORDER BY id LIMIT 1", before)
            return await _keep(conn, qid, new["code"], new["reason"])
        await park(conn, peer, parked)
        await record_conflicts(conn, result.conflicts, {str(change.id): change.org_code})
        await close_seen(conn, [change])
        await conn.execute("UPDATE syncd.quarantine SET released_at = now() WHERE id = $1", qid)
    return ReleaseResult(qid, "parked" if parked else "applied")


async def _keep(conn: asyncpg.Connection, qid: int, code: str, reason: str) -> ReleaseResult:
    await conn.execute("UPDATE syncd.quarantine SET code = $2, reason = $3 WHERE id = $1", qid, code, reason)
    return ReleaseResult(qid, "still_quarantined", code, reason)
