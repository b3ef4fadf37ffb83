"""The parent's side of link epochs (SPEC R8.3, R8.5, R8.6; HC-7, HC-21).

Each function runs one check of a child's request against the link state in
``syncd.links`` and either lets it through or raises ``MUST_RESYNC`` carrying the epoch
the child must adopt — a new one when the link's cursors can no longer be trusted:

* :func:`on_hello` — the child was re-initialised (new incarnation) or dropped its epoch
  (it found itself rewound); this node was rewound under its children (a child knows a
  later epoch, its pull cursor is past this node's log head, or the change there is not
  the one it received: restore, VM snapshot, failover);
* :func:`on_push` — another epoch; a ``from_pos`` above this node's cursor (it lacks
  positions the child cannot send again); a child behind retention;
* :func:`on_pull` / :func:`pull_retained` — another epoch; a position below what
  retention kept for the child; after this node's own resync (pull side only).

Requests naming epoch 0 (tools, tests) claim no epoch: no epoch is started for them.
"""
from __future__ import annotations

import asyncpg

from syncd.errors import must_resync
from syncd.proto.messages import Hello, PullRequest, Push
from syncd.store import links
from syncd.store.retention import RESYNC_ALWAYS
from syncd.topology import Topology


async def _cursor(conn: asyncpg.Connection, child: str, kind: str) -> int | None:
    return await conn.fetchval("SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = $2", child, kind)


async def hello_reasons(conn: asyncpg.Connection, me: str, topo: Topology, child: str, msg: Hello,
                        st: links.LinkState) -> tuple[list[str], bool]:
    """Why the link's cursors cannot be trusted any more (SPEC R8.3); and whether this
    node is the one that was rewound."""
    reasons: list[str] = []
    rewound = False
    if st.peer_incarnation is not None:
        if msg.incarnation != st.peer_incarnation:
            reasons.append(f"{child} has a new incarnation (re-initialised)")
        elif msg.epoch == 0:
            reasons.append(f"{child} holds no link epoch (restored or rewound)")
    if msg.epoch > st.epoch:
        reasons.append(f"{child} knows epoch {msg.epoch}, this node only {st.epoch} (this node was restored)")
        rewound = True
    node = await conn.fetchrow("SELECT head, log_first FROM syncd.node")
    if msg.pull_cursor > node["head"]:
        reasons.append(f"{child}'s pull cursor {msg.pull_cursor} is beyond this node's log head {node['head']} "
                       "(this node was restored)")
        rewound = True
    elif msg.pull_hash is not None and msg.pull_cursor >= node["log_first"]:
        if await links.hash_of_own_change(conn, msg.pull_cursor, topo.behind(me, child), topo,
                                          not_from=child) != msg.pull_hash:
            reasons.append(f"the change at {child}'s pull cursor {msg.pull_cursor} is not the one it received "
                           "(this node was restored)")
            rewound = True
    return reasons, rewound


async def on_hello(conn: asyncpg.Connection, me: str, topo: Topology, child: str,
                   msg: Hello) -> tuple[links.LinkState, int]:
    """The link state and this node's cursor for the child, or ``MUST_RESYNC`` (SPEC R8.3)."""
    async with conn.transaction():
        st = await links.load(conn, child, for_update=True, default_epoch=links.FIRST_EPOCH)
        reasons, rewound = await hello_reasons(conn, me, topo, child, msg, st)
        if reasons:
            epoch = await links.new_epoch(conn, child, msg.epoch, msg.incarnation, "; ".join(reasons))
            if rewound:  # this node was restored under its children (HC-7)
                await conn.execute("UPDATE syncd.node SET epoch = epoch + 1")
        elif st.peer_incarnation is None:  # first contact: remember who the child is
            await conn.execute("UPDATE syncd.links SET peer_incarnation = $2 WHERE peer = $1", child, msg.incarnation)
        pos = await _cursor(conn, child, "applied") or 0
    if reasons:
        raise must_resync(epoch, f"new epoch {epoch} for {child}: " + "; ".join(reasons))
    if msg.epoch not in (0, st.epoch):
        raise must_resync(st.epoch, f"{child} speaks epoch {msg.epoch}, the link is in epoch {st.epoch}")
    return st, pos


#: what a push is judged by, in one round trip (a push runs this before every apply)
_PUSH_STATE = """
SELECT l.epoch,
       (SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'applied') AS applied,
       (SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'served') AS served,
       (SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'truncated') AS truncated
FROM syncd.links l WHERE l.peer = $1
"""


async def _link_row(conn: asyncpg.Connection, child: str, query: str) -> asyncpg.Record:
    """``query`` over the child's link row, which is created (first epoch) if missing."""
    r = await conn.fetchrow(query, child)
    if r is None:
        await links.load(conn, child, default_epoch=links.FIRST_EPOCH)
        r = await conn.fetchrow(query, child)
    return r


async def on_push(conn: asyncpg.Connection, me: str, child: str, msg: Push) -> None:
    """SPEC R8.5 for a push that names an epoch: another epoch, one claiming positions this
    node does not hold, or one from a child behind retention gets ``MUST_RESYNC``."""
    st = await _link_row(conn, child, _PUSH_STATE)
    if msg.epoch != st["epoch"]:
        raise must_resync(st["epoch"], f"push in epoch {msg.epoch}, the link is in epoch {st['epoch']}")
    cursor = st["applied"] or 0
    served = st["served"]
    why = None
    if msg.from_pos > cursor:
        why = (f"{child} pushes from {msg.from_pos} but {me} holds its log only to {cursor}: "
               "an upward snapshot replaces what is missing")
    elif served is not None and served < (st["truncated"] or 0) < RESYNC_ALWAYS:  # removed before it pulled
        why = f"{child} has not pulled changes that {me}'s retention removed"
    if why is None:
        return
    async with conn.transaction():
        epoch = await links.new_epoch(conn, child, 0, None, why)
        await conn.execute("UPDATE syncd.cursors SET pos = greatest(pos, $2) WHERE peer = $1 AND kind = 'applied'",
                           child, msg.from_pos)
    raise must_resync(epoch, why)


async def pull_retained(conn: asyncpg.Connection, me: str, child: str, msg: PullRequest, epoch: int) -> None:
    """SPEC R8.6: entries the child needs are gone — retention removed them (a new epoch:
    full resync), or this node resynchronised from its parent (a pull-side resync)."""
    truncated = await _cursor(conn, child, "truncated") or 0
    if msg.after >= truncated:
        return
    if truncated >= RESYNC_ALWAYS:
        raise must_resync(epoch, f"{me} resynchronised from its parent")
    why = f"{child}'s cursor {msg.after} is below {me}'s retained log ({truncated} was removed)"
    if msg.epoch:
        async with conn.transaction():
            epoch = await links.new_epoch(conn, child, 0, None, why)
    raise must_resync(epoch, why)


async def on_pull(conn: asyncpg.Connection, me: str, child: str, msg: PullRequest) -> int:
    """The link's epoch if the pull may be served, else ``MUST_RESYNC`` (SPEC R8.6)."""
    epoch = (await _link_row(conn, child, "SELECT epoch FROM syncd.links WHERE peer = $1"))["epoch"]
    if msg.epoch not in (0, epoch):
        raise must_resync(epoch, f"pull in epoch {msg.epoch}, the link is in epoch {epoch}")
    await pull_retained(conn, me, child, msg, epoch)
    return epoch
