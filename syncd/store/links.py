"""Per-link state kept at both ends of a link: epoch, the other end's incarnation, cursor hashes.

``syncd.links`` has one row per link (the parent's row at a child, one row per child at
a parent).  The parent owns the link **epoch** (SPEC §8): it starts a new one when the
link's cursors can no longer be trusted — the child was re-initialised or rewound, the
parent was rewound, the child fell behind retention, a push claims positions the parent
does not hold.  The child adopts whatever epoch the parent names.

Each end also keeps the position and :func:`~syncd.proto.codec.change_hash` of the last
change it *received* over the link; hello sends it (``pull_hash`` / ``push_hash``) so the
other end can check that the change at that position in its own log is still the same
one (HC-7: a restore reuses positions for different changes).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Sequence

import asyncpg
import structlog

from syncd.proto import codec
from syncd.proto.change import Change
from syncd.routing import project
from syncd.store import audit
from syncd.store.log import change_from_record
from syncd.topology import Topology

log = structlog.get_logger("syncd.links")

#: the first epoch of a link at its parent
FIRST_EPOCH = 1


@dataclass(frozen=True)
class LinkState:
    peer: str
    epoch: int = 0
    peer_incarnation: uuid.UUID | None = None
    hash_pos: int = 0
    hash: bytes | None = None
    acked_max: int = 0
    upward: bool = False

    def hash_at(self, pos: int) -> bytes | None:
        """The stored hash if it is the hash of the change at ``pos`` (else unknown: None)."""
        return self.hash if pos and self.hash_pos == pos else None


async def load(conn: asyncpg.Connection, peer: str, *, for_update: bool = False,
               default_epoch: int = 0) -> LinkState:
    """The link's row, created (with ``default_epoch``) if missing."""
    await conn.execute("INSERT INTO syncd.links (peer, epoch) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                       peer, default_epoch)
    r = await conn.fetchrow("SELECT * FROM syncd.links WHERE peer = $1" + (" FOR UPDATE" if for_update else ""),
                            peer)
    return LinkState(r["peer"], r["epoch"], r["peer_incarnation"], r["hash_pos"],
                     bytes(r["hash"]) if r["hash"] is not None else None, r["acked_max"], r["upward"])


#: store a child's push cursor towards its parent (``$1`` parent, ``$2`` position)
SAVE_PUSH_CURSOR = ("INSERT INTO syncd.cursors (peer, kind, pos) VALUES ($1, 'push', $2) "
                    "ON CONFLICT (peer, kind) DO UPDATE SET pos = excluded.pos, updated_at = now()")

_SAVE_HASH = "UPDATE syncd.links SET hash_pos = $2, hash = $3, updated_at = now() WHERE peer = $1 AND hash_pos <= $2"


async def save_hash(conn: asyncpg.Connection, peer: str, change: Change) -> None:
    """Remember the last change received over the link (its position in the sender's log)."""
    await conn.execute(_SAVE_HASH, peer, change.pos, codec.change_hash(change))


async def received(conn: asyncpg.Connection, peer: str, batch_id: str, changes: Sequence[Change],
                   last_pos: int) -> None:
    """A batch received from ``peer`` (pushed or pulled), in its apply's transaction: its audit
    row, and the hash of its last change when that is the batch's end, for the next hello
    (HC-7) — one statement."""
    if changes and changes[-1].pos == last_pos:
        await audit.record_then(conn, peer, "received", batch_id, changes,
                                _SAVE_HASH, peer, last_pos, codec.change_hash(changes[-1]))
    else:
        await audit.record(conn, peer, "received", batch_id, changes)


async def new_epoch(conn: asyncpg.Connection, child: str, at_least: int, incarnation: uuid.UUID | None,
                    reason: str) -> int:
    """Start a new epoch for ``child`` (caller's transaction): above both ``at_least`` and
    the current one; forget the push hash and the child's served position (it resyncs)."""
    cur = await load(conn, child, for_update=True, default_epoch=FIRST_EPOCH)
    epoch = max(cur.epoch, at_least) + 1
    await conn.execute(
        "UPDATE syncd.links SET epoch = $2, peer_incarnation = coalesce($3, peer_incarnation), hash_pos = 0, "
        "hash = NULL, updated_at = now() WHERE peer = $1", child, epoch, incarnation)
    await conn.execute("DELETE FROM syncd.cursors WHERE peer = $1 AND kind = 'served'", child)
    log.warning("new_epoch", child=child, epoch=epoch, reason=reason)
    return epoch


async def hash_of_own_change(conn: asyncpg.Connection, pos: int, behind: frozenset[str], topo: Topology,
                             not_from: str | None = None) -> bytes | None:
    """The hash of this node's log entry at ``pos`` as sent over a link to the nodes ``behind``
    (projected); None when there is no entry there, it came from ``not_from`` (it would not
    have been sent back), or nothing of it goes over the link."""
    rec = await conn.fetchrow("SELECT * FROM syncd.log WHERE pos = $1", pos)
    if rec is None or (not_from is not None and rec["received_from"] == not_from):
        return None
    try:
        c = project(change_from_record(rec), behind, topo)
    except Exception:  # noqa: BLE001 - an unknown committee: it could not have been sent either
        return None
    return codec.change_hash(c) if c is not None else None
