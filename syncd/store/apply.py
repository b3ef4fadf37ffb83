"""Apply a peer's batch of changes in one transaction (DESIGN §4).

Steps, all in one transaction with ``syncd.applying = on`` (the capture triggers
stand aside):

1. take the sequencer lock, then lock the link's cursor row ``FOR UPDATE`` (one
   statement); a batch at or below the cursor was already applied (a retry, or the
   same push to a second daemon) and is acknowledged without doing anything (HC-28);
2. authorise each change (``routing.check_origin``, clock bound) — refused ones are
   quarantined, the rest go on (DESIGN §6);
3. lock the target rows ``FOR UPDATE`` and version any committed local captures
   of them first, so a local write is never overwritten by a change it beats
   (HC-4);
4. merge with :func:`syncd.merge.decide` against the rows' versions and values,
   record truly concurrent conflicts, write the rows in foreign-key order (each
   row under a savepoint: a foreign-key miss is parked and retried by itself,
   any other constraint failure is poison and quarantined, HC-11);
5. log every authorised change for relay with ``received_from`` — whether or
   not it applied here (HC-12) — and advance the cursor.

Positions are assigned by the sequencer (HC-2): when its relay queue is empty, in this
transaction (``ApplyContext.sequencer``, :meth:`~syncd.store.sequencer.Sequencer.log_now`,
under the lock taken in step 1), else it moves them from the queue after this commits.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import asyncpg

from syncd.config import Secret
from syncd.errors import SyncdError
from syncd.faults import fault_point
from syncd.merge import Conflict, RowState, clock_check, decide
from syncd.proto.change import Change
from syncd.routing import Direction, check_origin, column_reach, reach_rule
from syncd.schema.declarations import Schema, Table
from syncd.store.conflicts import close_seen
from syncd.store import opaque
from syncd.store.fastpath import Staged, apply_fast, log_staged, relay_staged, stage_batch
from syncd.store.log import add_pending, columns_map, dumps, loads
from syncd.store.lookup import rows_by_id, rowvers_by_key
from syncd.store.sequencer import APPLY_LOCK_TIMEOUT_MS, LOCK_APPLYING, Sequencer, TickResult
from syncd.store.versioning import RowVer, Versioner, claim_captures, load_rowver, save_rowver
from syncd.topology import Topology, TopologyError

Key = tuple[str, uuid.UUID]


@dataclass
class ApplyResult:
    applied: int = 0
    duplicate: bool = False
    quarantined: list[tuple[int, str]] = field(default_factory=list)
    parked: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    cursor: int = 0
    duplicates: set[int] = field(default_factory=set)  # id() of changes this node already held
    #: changes were queued in ``syncd.pending`` for the sequencer to log (the caller wakes it);
    #: False when the apply logged what it relays itself (``Sequencer.log_now``) or relays nothing
    queued: bool = False


@dataclass
class ApplyContext:
    schema: Schema
    me: str
    topo: Topology
    id_hash_key: Secret | None = None
    clock_soft_us: int = 5_000_000
    clock_hard_us: int = 300_000_000
    #: awaited after the target rows are locked and before local captures are versioned
    #: (a seam for the HC-4 test; None in production)
    after_lock: Callable[[], Awaitable[None]] | None = None
    #: merge new rows and fast-forward updates set-based in SQL (syncd.store.fastpath);
    #: False sends every change through decide() (the differential test's reference)
    fast_path: bool = True
    #: the node's sequencer: a batch's relayed changes are logged in its own transaction when
    #: the relay queue is empty (None: always queued in ``syncd.pending`` for a tick)
    sequencer: Sequencer | None = None


def change_to_json(c: Change) -> str:
    return json.dumps({"table": c.table, "id": str(c.id), "org_code": c.org_code, "op": c.op, "cl": c.cl,
                       "ts": c.ts, "origin": c.origin, "txn": c.txn, "homes": dict(c.homes),
                       "cols": columns_map(c), "pos": c.pos}, ensure_ascii=False)


def change_from_json(raw: str | dict[str, Any]) -> Change:
    from syncd.store.log import decode_cols

    d = json.loads(raw) if isinstance(raw, str) else raw
    return Change(d["table"], uuid.UUID(d["id"]), d["org_code"], d["op"], d["cl"], d["ts"], d["origin"],
                  d["txn"], d["homes"], decode_cols(d["cols"]), d.get("pos", 0))


#: The sequencer lock with ``syncd.applying = on`` (:data:`~syncd.store.sequencer.LOCK_APPLYING`),
#: then the link's cursor row locked: one round trip.  The lock is taken in an uncorrelated
#: sub-select, which PostgreSQL runs once before it reads the row (as the sequencer's
#: ``_LOCK_NODE``), so an apply takes the two in the order the bootstrap's end and a resync do.
_LOCKED_CURSOR = (f"SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = $2 "
                  f"AND (SELECT true FROM ({LOCK_APPLYING}) AS l) FOR UPDATE")


async def _cursor(conn: asyncpg.Connection, peer: str, kind: str) -> int:
    """The link's cursor, locked for the transaction (created at 0 on a link's first batch),
    after the sequencer lock (:data:`_LOCKED_CURSOR`)."""
    pos = await conn.fetchval(_LOCKED_CURSOR, peer, kind)
    if pos is None:
        await conn.execute("INSERT INTO syncd.cursors (peer, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING", peer, kind)
        pos = await conn.fetchval(_LOCKED_CURSOR, peer, kind)
    return int(pos)


async def quarantine(conn: asyncpg.Connection, peer: str, c: Change, code: str, reason: str) -> None:
    await conn.execute(
        "INSERT INTO syncd.quarantine (peer, code, reason, tbl, row_id, change) VALUES ($1, $2, $3, $4, $5, $6)",
        peer, code, reason, c.table, c.id, change_to_json(c))


def held_here(ctx: ApplyContext, c: Change) -> Change:
    """``c`` without the columns this node may not hold (HC-15, HC-16): a refused change is
    kept in quarantine for operators, and one that was refused for carrying a personal column
    outside its reach (``OUT_OF_REACH``), or a forged one, must not leave that value here."""
    t = ctx.schema[c.table] if c.table in ctx.schema else None
    if t is None:
        return c
    keep = {}
    for name, cc in c.cols.items():
        try:
            allowed = column_reach(reach_rule(t, name), c.org_code, ctx.topo)
        except (TopologyError, ValueError):
            allowed = frozenset()
        if allowed is None or ctx.me in allowed:
            keep[name] = cc
    return c if len(keep) == len(c.cols) else c.replace(cols=keep)


def _knows(topo: Topology, changes: Sequence[Change]) -> bool:
    codes: set[str] = set()
    for c in changes:  # a batch names a handful of codes, thousands of times
        codes.add(c.origin)
        codes.add(c.org_code)
        codes.update(c.homes.values())
    try:
        for code in codes:
            topo.resolve(code)
    except TopologyError:
        return False
    return True


def _by_table(targets: Sequence[Key]) -> dict[str, list[uuid.UUID]]:
    out: dict[str, list[uuid.UUID]] = {}
    for name, i in targets:
        out.setdefault(name, []).append(i)
    return out


async def current_topology(conn: asyncpg.Connection, topo: Topology, changes: Sequence[Change]) -> Topology:
    """``topo`` if it knows every code of ``changes``; else rebuilt from the committees
    table as this transaction sees it, plus the committees rows the batch carries."""
    if _knows(topo, changes):
        return topo
    rows = {c.code: {"code": c.code, "name": c.name, "level": c.level, "parent_code": c.parent_code,
                     "aliases": list(c.aliases)} for c in topo.rows()}
    for r in await conn.fetch("SELECT code, name, level, parent_code, aliases FROM committees"):
        rows[r["code"]] = dict(r)
    try:
        merged = Topology.from_rows(list(rows.values()))
    except TopologyError:
        merged = topo
    return with_committees(merged, changes)


def with_committees(topo: Topology, changes: Sequence[Change]) -> Topology:
    """``topo`` extended by the committees rows a batch carries.

    A new county learns the tree from the province's committees rows, which reach it
    in its first pulls; those rows (and whatever else the batch holds) are judged
    against the tree they describe.  An inconsistent result keeps ``topo``.
    """
    rows = {c.code: {"code": c.code, "name": c.name, "level": c.level, "parent_code": c.parent_code,
                     "aliases": list(c.aliases)} for c in topo.rows()}
    extra = [c for c in changes if c.table == "committees" and c.alive]
    if not extra:
        return topo
    for ch in extra:
        vals = {k: v[0] for k, v in ch.cols.items()}  # a ColumnChange or a stored list
        code = vals.get("code")
        if code is None:
            continue
        row = rows.setdefault(str(code), {"code": str(code), "name": str(code), "level": "county",
                                          "parent_code": None, "aliases": []})
        row.update({k: vals[k] for k in ("name", "level", "parent_code", "aliases") if k in vals})
    try:
        return Topology.from_rows(list(rows.values()))
    except TopologyError:
        return topo


def _authorise(ctx: ApplyContext, peer: str, direction: Direction, changes: Sequence[Change],
               now_us: int) -> tuple[list[Change], list[tuple[Change, str, str]]]:
    ok, refused = [], []
    for c in changes:
        refusals = check_origin(c, None, peer, ctx.me, ctx.topo, direction)
        if refusals:
            refused.append((c, refusals[0].code, refusals[0].reason))
        elif clock_check(c.ts, now_us, ctx.clock_soft_us, ctx.clock_hard_us) == "refuse":
            refused.append((c, "FUTURE_TS", f"change ts {c.ts} is beyond the clock bound of {ctx.me}"))
        else:
            ok.append(c)
    return ok, refused


async def _load_values(conn: asyncpg.Connection, t: Table, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """Values of the rows present here: the table's, plus those held opaque (HC-13)."""
    recs = await conn.fetch(rows_by_id(t.name, "x.id, to_jsonb(x) AS j", lock=True), ids)
    out = {r["id"]: loads(r["j"]) for r in recs}
    for i, vals in (await opaque.load(conn, t.name, list(out))).items():
        out[i].update(vals)
    return out


def _state(rv: RowVer | None, values: dict | None) -> RowState | None:
    if rv is None:
        return None
    vals = values or {}
    return RowState(rv.cl, {c: (vals.get(c), v) for c, v in rv.v.items()}, dict(rv.prevs))


@dataclass
class _Row:
    table: Table
    id: uuid.UUID
    existed: bool
    state: RowState | None
    first: Change
    changes: list[Change] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    created: bool = False


async def _write_row(conn: asyncpg.Connection, row: _Row) -> None:
    t, st = row.table, row.state
    assert st is not None
    name = f'public."{t.name}"'
    if not st.alive:
        if row.existed:
            await conn.execute(f"DELETE FROM {name} WHERE id = $1", row.id)
        return
    generated = bool(t.natural_key)
    values = st.values()
    if not row.existed:
        cols = [c for c in values if c in t.shipped_set]
        names = ["org_code", *cols, *([] if generated else ["id"])]
        params = [row.first.org_code, *(values[c] for c in cols), *([] if generated else [str(row.id)])]
        sel = ", ".join(f"x.{_q(c)}" for c in names)
        await conn.execute(
            f"INSERT INTO {name} ({', '.join(map(_q, names))}) "
            f"SELECT {sel} FROM jsonb_populate_record(NULL::{name}, $1::jsonb) x",
            dumps(dict(zip(names, params))))
        return
    cols = sorted(c for c in row.dirty if c in t.shipped_set)
    if not cols:
        return
    sets = ", ".join(f"{_q(c)} = x.{_q(c)}" for c in cols)
    await conn.execute(
        f"UPDATE {name} t SET {sets} FROM jsonb_populate_record(NULL::{name}, $1::jsonb) x WHERE t.id = $2",
        dumps({c: values.get(c) for c in cols}), row.id)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Failed(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


async def _write_guarded(conn: asyncpg.Connection, row: _Row) -> None:
    """Write one row under a savepoint; classify a failure without DETAIL text (HC-15)."""
    try:
        async with conn.transaction():
            await _write_row(conn, row)
    except asyncpg.ForeignKeyViolationError as e:
        raise _Failed("FK_MISSING", f"foreign key {e.constraint_name} target not here yet") from e
    except asyncpg.IntegrityConstraintViolationError as e:
        raise _Failed("POISON", f"{type(e).__name__} on constraint {e.constraint_name}") from e
    except asyncpg.DataError as e:
        raise _Failed("POISON", f"{type(e).__name__}: value rejected by {row.table.name}") from e


async def lock_and_load(conn: asyncpg.Connection, ctx: ApplyContext, targets: list[Key],
                        locked: bool = False) -> tuple[dict[Key, dict], dict[Key, RowVer]]:
    """Lock the target rows, version their committed local captures first (HC-4), and
    return their values and versions.  ``locked``: the caller did the locking and
    versioning already (:func:`lock_targets`); only the loading is left."""
    values: dict[Key, dict] = {}
    by_table = _by_table(targets)
    for t in ctx.schema.tables:
        ids = by_table.get(t.name)
        if ids:
            values.update({(t.name, i): v for i, v in (await _load_values(conn, t, ids)).items()})
    if not locked:
        await _version_local(conn, ctx, targets)
    return values, await load_rowver(conn, targets)


async def _version_local(conn: asyncpg.Connection, ctx: ApplyContext, targets: list[Key]) -> None:
    """HC-4: committed local writes to the (locked) targets are versioned before the merge."""
    if ctx.after_lock is not None:
        await ctx.after_lock()
    caps = await claim_captures(conn, 1_000_000, targets)
    if caps:
        hlc = await conn.fetchval("SELECT hlc FROM syncd.node")
        local, hlc = await Versioner(ctx.schema, ctx.me, ctx.id_hash_key).run(conn, caps, hlc)
        await conn.execute("UPDATE syncd.node SET hlc = greatest(hlc, $1)", hlc)
        await add_pending(conn, [(c, None) for c in local])


_CL_BY_KEY = rowvers_by_key("r.tbl, r.id, r.cl")


async def lock_targets(conn: asyncpg.Connection, ctx: ApplyContext,
                       targets: list[Key]) -> tuple[set[Key], dict[Key, int]]:
    """Lock the target rows and version their local captures (HC-4); return the targets
    present in their tables and the causal length of those with versions here."""
    existing: set[Key] = set()
    by_table = _by_table(targets)
    for t in ctx.schema.tables:
        ids = by_table.get(t.name)
        if ids:
            recs = await conn.fetch(rows_by_id(t.name, "x.id", lock=True), ids)
            existing.update((t.name, r["id"]) for r in recs)
    await _version_local(conn, ctx, targets)
    recs = await conn.fetch(_CL_BY_KEY, [k[0] for k in targets], [k[1] for k in targets])
    return existing, {(r["tbl"], r["id"]): r["cl"] for r in recs}


async def lock_span(conn: asyncpg.Connection, ctx: ApplyContext, table: str,
                    ids: Sequence[uuid.UUID]) -> tuple[set[Key], dict[Key, int]]:
    """:func:`lock_targets` for the rows of one table whose ids lie in one span (a snapshot
    chunk's, in id order): two index range scans instead of an index probe per id in each of
    the table and ``syncd.rowver``; a row of the span the targets do not name (a copy the
    parent no longer sends, HC-21) is locked too.  For a new node's bootstrap both scans find
    nothing, where the probes cost ~3.5 µs of PostgreSQL and ~4 µs of Python a row."""
    lo, hi = min(ids), max(ids)
    wanted = set(ids)
    recs = await conn.fetch(f'SELECT x.id FROM public."{table}" x WHERE x.id BETWEEN $1 AND $2 '
                            "ORDER BY x.id FOR UPDATE", lo, hi)
    existing = {(table, r["id"]) for r in recs if r["id"] in wanted}
    await _version_local(conn, ctx, [(table, i) for i in ids])
    recs = await conn.fetch("SELECT r.id, r.cl FROM syncd.rowver r WHERE r.tbl = $1 AND r.id BETWEEN $2 AND $3",
                            table, lo, hi)
    return existing, {(table, r["id"]): r["cl"] for r in recs if r["id"] in wanted}


async def merge_rows(conn: asyncpg.Connection, ctx: ApplyContext, peer: str,
                     changes: Sequence[Change], result: ApplyResult, staged: Staged | None = None) -> list[Change]:
    """Lock, version local captures, decide and write; return the changes parked.

    New rows and fast-forward updates are merged set-based in SQL
    (:mod:`syncd.store.fastpath`, from ``staged`` when the caller staged the changes);
    the rest row by row with :func:`decide`."""
    targets: list[Key] = list(dict.fromkeys((c.table, c.id) for c in changes))
    locked = ctx.fast_path
    if locked:
        existing, held = await lock_targets(conn, ctx, targets)
        changes = await apply_fast(conn, ctx, changes, existing, held, result, staged)
        if not changes:
            return []
        targets = list(dict.fromkeys((c.table, c.id) for c in changes))
    values, rowver = await lock_and_load(conn, ctx, targets, locked)
    rows: dict[Key, _Row] = {}
    for c in changes:
        key = (c.table, c.id)
        row = rows.get(key)
        if row is None:
            row = rows[key] = _Row(ctx.schema[c.table], c.id, key in values,
                                   _state(rowver.get(key), values.get(key)), c)
        d = decide(row.state, c, row.table)
        if d.duplicate:
            result.duplicates.add(id(c))
        row.state = d.state
        row.dirty |= set(d.writes) | set(d.cleared)
        row.changes.append(c)
        result.conflicts.extend(d.conflicts)
    return await write_rows(conn, ctx.schema, peer, list(rows.values()), rowver, result)


async def write_rows(conn: asyncpg.Connection, schema: Schema, peer: str, rows: list["_Row"],
                     rowver: dict[Key, RowVer], result: ApplyResult) -> list[Change]:
    """Write merged rows set-based in foreign-key order and save their versions.

    Rows whose write fails are not versioned: a foreign-key miss parks their changes
    (returned), any other failure quarantines them (HC-11)."""
    parked: list[Change] = []
    saved: dict[Key, RowVer] = {}
    held: dict[Key, dict | None] = {}  # opaque values to keep (HC-13)
    for group in _groups(schema, rows):
        failed = await _write_group(conn, group)
        for row in group:
            f = failed.get(row.id)
            if f is not None:
                if f.code == "FK_MISSING":
                    parked.extend(row.changes)
                else:
                    for c in row.changes:
                        await quarantine(conn, peer, c, f.code, f.reason)
                        result.quarantined.append((c.pos, f.code))
                continue
            key = (row.table.name, row.id)
            saved[key] = _rowver_of(row, rowver)
            result.applied += max(1, len(row.changes))
            kept = _opaque_values(row)
            if kept or (key in rowver and opaque.has_opaque(row.table, rowver[key].v)):
                held[key] = kept
    await save_rowver(conn, saved)
    await opaque.save(conn, held)
    return parked


def _opaque_values(row: _Row) -> dict[str, Any]:
    """The merged values of columns this node cannot store yet (a newer peer's, HC-13)."""
    st = row.state
    assert st is not None
    shipped = row.table.shipped_set
    return {c: v for c, (v, _) in st.cols.items() if c not in shipped} if st.alive else {}


def _rowver_of(row: _Row, rowver: dict[Key, RowVer]) -> RowVer:
    st = row.state
    assert st is not None
    key = (row.table.name, row.id)
    homes = dict(row.changes[-1].homes) if st.alive else (rowver[key].homes if key in rowver
                                                           else dict(row.first.homes))
    return RowVer(row.first.org_code, st.cl, homes, {c: v for c, (_, v) in st.cols.items()},
                  {c: st.prevs.get(c) for c in st.cols})


def _action(row: _Row) -> str:
    st = row.state
    assert st is not None
    if not st.alive:
        return "delete" if row.existed else "none"
    if not row.existed:
        return "insert"
    return "update" if row.dirty & row.table.shipped_set else "none"


def _groups(schema: Schema, rows: Any) -> list[list[_Row]]:
    """Rows to write, grouped by table and action: inserts and updates in foreign-key
    order, then deletes in reverse order (HC-11)."""
    by: dict[tuple[str, str, tuple[str, ...]], list[_Row]] = {}
    for row in rows:
        act = _action(row)
        cols = tuple(sorted(row.dirty & row.table.shipped_set)) if act == "update" else ()
        by.setdefault((row.table.name, act, cols), []).append(row)
    order = {t.name: i for i, t in enumerate(schema.tables)}

    def rank(k: tuple[str, str, tuple[str, ...]]) -> tuple[int, int]:
        return (0, order[k[0]]) if k[1] in ("insert", "update", "none") else (1, -order[k[0]])
    return [by[k] for k in sorted(by, key=rank)]


async def _write_group(conn: asyncpg.Connection, group: list[_Row]) -> dict[uuid.UUID, "_Failed"]:
    """Write a group set-based under one savepoint; if it fails, row by row to find the culprits."""
    act = _action(group[0])
    if act == "none":
        return {}
    try:
        async with conn.transaction():
            await _write_set(conn, group, act)
        return {}
    except asyncpg.LockNotAvailableError:
        raise  # a row held by another transaction: the batch waits its turn (HC-3), no row is to blame
    except asyncpg.PostgresError:
        pass
    failed: dict[uuid.UUID, _Failed] = {}
    for row in group:
        try:
            await _write_guarded(conn, row)
        except _Failed as f:
            failed[row.id] = f
    return failed


async def _write_set(conn: asyncpg.Connection, group: list[_Row], act: str) -> None:
    t = group[0].table
    name = f'public."{t.name}"'
    if act == "delete":
        await conn.execute(f"DELETE FROM {name} WHERE id = ANY($1::uuid[])", [r.id for r in group])
        return
    docs = []
    for row in group:
        assert row.state is not None
        values = {c: v for c, v in row.state.values().items() if c in t.shipped_set}
        docs.append({**values, "id": str(row.id), "org_code": row.first.org_code})
    payload = dumps(docs)
    if act == "insert":
        cols = sorted({c for d in docs for c in d if c in t.shipped_set})
        names = ["org_code", *cols, *([] if t.natural_key else ["id"])]
        await conn.execute(
            f"INSERT INTO {name} ({', '.join(map(_q, names))}) SELECT {', '.join('x.' + _q(c) for c in names)} "
            f"FROM jsonb_populate_recordset(NULL::{name}, $1::jsonb) x", payload)
        return
    cols = sorted(group[0].dirty & t.shipped_set)
    sets = ", ".join(f"{_q(c)} = x.{_q(c)}" for c in cols)
    await conn.execute(
        f"UPDATE {name} t SET {sets} FROM jsonb_populate_recordset(NULL::{name}, $1::jsonb) x WHERE t.id = x.id",
        payload)


async def record_conflicts(conn: asyncpg.Connection, conflicts: Sequence[Conflict], org_codes: dict[str, str]) -> None:
    """Keep conflicts met here; one row per deterministic id however often they are met."""
    for cf in conflicts:
        await conn.execute(
            "INSERT INTO syncd.conflicts (id, tbl, row_id, org_code, col, winner, loser) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            cf.id, cf.table, uuid.UUID(cf.row_id), org_codes.get(cf.row_id, ""), cf.column,
            json.dumps([cf.winner[1], cf.winner[0].as_list()], ensure_ascii=False),
            json.dumps([cf.loser[1], cf.loser[0].as_list()], ensure_ascii=False))


async def park(conn: asyncpg.Connection, peer: str, changes: Sequence[Change], reason: str = "FK_MISSING") -> None:
    """Keep changes that cannot apply yet (a missing FK target, an unknown committee) for a retry."""
    for c in changes:
        await conn.execute(
            "INSERT INTO syncd.parked (peer, tbl, row_id, change, reason) VALUES ($1, $2, $3, $4, $5)",
            peer, c.table, c.id, change_to_json(c), reason)


async def retry_parked(conn: asyncpg.Connection, ctx: ApplyContext) -> int:
    """Re-apply parked changes whose targets may have arrived (caller's transaction)."""
    recs = await conn.fetch("DELETE FROM syncd.parked RETURNING id, peer, change, reason")
    if not recs:
        return 0
    result = ApplyResult()
    by_peer: dict[str, list[Change]] = {}
    unknown: dict[str, list[Change]] = {}
    for r in sorted(recs, key=lambda r: r["id"]):
        target = unknown if r["reason"] == "UNKNOWN_NODE" else by_peer
        target.setdefault(r["peer"], []).append(change_from_json(r["change"]))
    # a change parked for a committee not known yet was not relayed when it came (it was not
    # authorised then); now that it is, it goes on to the children entitled to it (HC-12)
    relay: list[tuple[Change, str]] = []
    for peer, changes in unknown.items():  # authorised again, now that the tree may be known
        ctx.topo = await current_topology(conn, ctx.topo, changes)
        ok, refused = _authorise(ctx, peer, "from_parent", changes, time.time_ns() // 1000)
        await park(conn, peer, [c for c, code, _ in refused if code == "UNKNOWN_NODE"], "UNKNOWN_NODE")
        for c, code, reason in refused:
            if code != "UNKNOWN_NODE":
                await quarantine(conn, peer, held_here(ctx, c), code, reason)
        by_peer.setdefault(peer, []).extend(ok)
        relay += [(c, peer) for c in ok]
    for peer, changes in by_peer.items():
        again = await merge_rows(conn, ctx, peer, changes, result)
        await park(conn, peer, again)
        await record_conflicts(conn, result.conflicts, {str(c.id): c.org_code for c in changes})
    # a version held here already was relayed when it first came (HC-35)
    await add_pending(conn, [(c, peer) for c, peer in relay if id(c) not in result.duplicates])
    return result.applied


async def apply_batch(conn: asyncpg.Connection, ctx: ApplyContext, peer: str, kind: str,
                      direction: Direction, changes: Sequence[Change], to_pos: int,
                      now_us: int, also: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
                      ) -> ApplyResult:
    """Apply one batch from ``peer`` and advance its ``kind`` cursor to ``to_pos`` (idempotent).

    ``also`` runs in the same transaction when the batch was new (not for a duplicate): the
    link's audit row and hash commit with the batch, one commit instead of three."""
    try:
        return await _apply_batch(conn, ctx, peer, kind, direction, changes, to_pos, now_us, also)
    except asyncpg.LockNotAvailableError as e:  # rolled back whole: nothing of the batch applied
        raise row_locked(ctx.me) from e


def row_locked(me: str) -> SyncdError:
    """The refusal of a batch whose apply waited too long for a row another transaction holds
    (HC-3, :data:`~syncd.store.sequencer.APPLY_LOCK_TIMEOUT_MS`): retryable, and named."""
    return SyncdError(
        "UNAVAILABLE", f"a row the batch changes is locked at {me} by another transaction (held over "
        f"{APPLY_LOCK_TIMEOUT_MS} ms); nothing of the batch was applied, it is sent again later",
        f"Usually clears by itself. If it lasts, look at {me}'s pg_stat_activity for a session 'idle in "
        "transaction' or a long import holding rows, and end it.")


async def _apply_batch(conn: asyncpg.Connection, ctx: ApplyContext, peer: str, kind: str,
                       direction: Direction, changes: Sequence[Change], to_pos: int, now_us: int,
                       also: Callable[[asyncpg.Connection], Awaitable[None]] | None) -> ApplyResult:
    result = ApplyResult()
    logged: TickResult | None = None
    async with conn.transaction():
        cursor = await _cursor(conn, peer, kind)
        if to_pos <= cursor:
            result.duplicate, result.cursor = True, cursor
            return result
        fresh = [c for c in changes if c.pos > cursor]
        fk_parked = 0
        ctx.topo = await current_topology(conn, ctx.topo, fresh)
        ok, refused = _authorise(ctx, peer, direction, fresh, now_us)
        for c, code, reason in refused:
            if code == "UNKNOWN_NODE" and direction == "from_parent":
                # the tree (committees) has not reached this node yet: wait for it, not an operator
                await park(conn, peer, [c], "UNKNOWN_NODE")
                result.parked += 1
                continue
            await quarantine(conn, peer, held_here(ctx, c), code, reason)
            result.quarantined.append((c.pos, code))
        if ok:
            # staged once: the fast path merges from the stage and the relay queue is filled from it
            staged = await stage_batch(conn, ok, peer)
            parked = await merge_rows(conn, ctx, peer, ok, result, staged)
            fault_point("after_copy")
            await park(conn, peer, parked)
            fk_parked = len(parked)
            result.parked += fk_parked
            await record_conflicts(conn, result.conflicts, {str(c.id): c.org_code for c in ok})
            await close_seen(conn, ok)
            # relay what is new here (HC-12: whether or not it applied); a version this node
            # already held was relayed when it first came, so it is not logged twice (HC-35)
            logged = await _relay(conn, ctx, staged, [c for c in ok if id(c) not in result.duplicates], peer,
                                  result)
        fault_point("before_cursor_commit")
        held = await conn.fetchval(  # with the changes parked now (and before): one round trip
            "UPDATE syncd.cursors SET pos = $3, updated_at = now() WHERE peer = $1 AND kind = $2 "
            "RETURNING (SELECT count(*) FROM syncd.parked)", peer, kind, to_pos)
        if ok and held > fk_parked:  # something parked before may apply now
            result.applied += await retry_parked(conn, ctx)
        result.cursor = to_pos
        if also is not None:
            await also(conn)
    if logged is not None and ctx.sequencer is not None and ctx.sequencer.on_logged is not None:
        ctx.sequencer.on_logged(logged)  # committed: wake the push loop and the children's long polls
    return result


async def _relay(conn: asyncpg.Connection, ctx: ApplyContext, staged: Staged, changes: list[Change],
                 peer: str, result: ApplyResult) -> TickResult | None:
    """Log ``changes`` for relay: straight into the log when the sequencer's queue is empty
    (what it logged, for :attr:`Sequencer.on_logged` after commit), else queued behind it
    (``result.queued``: the caller wakes the sequencer)."""
    if not changes:
        return None
    if ctx.sequencer is not None:
        logged = await ctx.sequencer.log_now(conn, [(c, peer) for c in changes],
                                             lambda conn, outbox, ts: log_staged(conn, staged, changes, outbox, ts))
        if logged is not None:
            return logged
    await relay_staged(conn, staged, changes)
    result.queued = True
    return None
