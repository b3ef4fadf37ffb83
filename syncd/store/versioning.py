"""Versioning: turn captured row images into change records (DESIGN §4).

Captures are taken in serial order — the order the writers held the row locks —
so two updates of one row are versioned in the order they committed (HC-5).
For each capture the changed shipped columns are worked out from the images
(``local`` columns never count, HC-19; an UPDATE that changes nothing ships
nothing), and each change gets ``ts = max(capture time, highest ts seen + 1)``
(hybrid logical clock) and records, per column, the version it replaced.

:func:`version_captures` is pure; :class:`Versioner` does the reads and writes
around it.  Callers hold the sequencer lock (``syncd.store.sequencer``).
"""
from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Iterable, Mapping, NamedTuple, Sequence

import asyncpg
import orjson

from syncd.config import Secret
from syncd.merge import column_change, next_ts
from syncd.proto.change import OP_DELETE, OP_INSERT, OP_UPDATE, Change, ColumnChange, Version
from syncd.schema.declarations import HOME, Schema, Table
from syncd.store.log import dumps, loads
from syncd.store.lookup import oldest_of_queue, rows_by_id, rowvers_by_key


@dataclass
class RowVer:
    """Merge state of one row: causal length, route homes, per-column versions."""

    org_code: str
    cl: int
    homes: dict[str, str]
    v: dict[str, Version] = field(default_factory=dict)
    prevs: dict[str, Version | None] = field(default_factory=dict)  # what each version replaced

    def to_db(self) -> tuple[str, int, str, str]:
        """Stored as ``{col: [cl, round, stage, ts, origin, prev-or-null]}``."""
        v, prevs = self.v, self.prevs
        if v and not any(prevs.values()):
            first = next(iter(v.values()))
            if list(v.values()).count(first) == len(v):  # a new row: one version, nothing replaced
                return self.org_code, self.cl, dumps(self.homes), dumps(dict.fromkeys(v, [*first, None]))
        p = prevs.get  # the named tuples unpacked here: orjson would call back for each
        return (self.org_code, self.cl, dumps(self.homes), dumps(
            {c: [*ver, list(pv) if (pv := p(c)) else None] for c, ver in v.items()}))

    @classmethod
    def from_db(cls, org_code: str, cl: int, homes: str, v: str) -> "RowVer":
        data = orjson.loads(v)  # syncd's own versions: 64-bit integers and node codes, read exactly
        return cls(org_code, cl, orjson.loads(homes),
                   {c: Version.from_list(x[:5]) for c, x in data.items()},
                   {c: Version.from_list(x[5]) if len(x) > 5 and x[5] else None for c, x in data.items()})


class Capture(NamedTuple):
    """One captured row image (``syncd.capture``): a named tuple, made once per captured row."""

    serial: int
    ts_us: int
    xid: int
    tbl: str
    op: str
    row_id: uuid.UUID
    old: dict[str, Any] | list[str] | None  # ops 'u' and 'p': the names of the changed columns
    new: dict[str, Any] | None  # op 'p': the changed columns and the row's context, not the whole row


_tnew = tuple.__new__  # a named tuple from known-good fields, without its Python-level __new__


def id_card_hash(key: Secret | None, id_card_no: Any) -> str | None:
    """Keyed hash of an ID number, tagged with the key id (HC-14); None without key or number."""
    if key is None or id_card_no in (None, ""):
        return None
    # hmac.digest: the one-shot C path (an hmac.new object cost ~5 µs a row in Python)
    digest = hmac.digest(key.secret.encode(), str(id_card_no).strip().upper().encode(), "sha256")
    return f"{key.key_id}:{digest.hex()}"


def _derive(t: Table, image: Mapping[str, Any], key: Secret | None,
            sources: Container[str] | None = None) -> dict[str, Any]:
    """The derived columns of ``image`` (with ``sources``: those derived from one of them)."""
    derived = _cached(t, "derived_cols", lambda: tuple((c.name, c.derived_from) for c in t.shipped if c.derived_from))
    return {name: id_card_hash(key, image.get(src)) for name, src in derived if sources is None or src in sources}


_CACHE: dict[tuple[int, str], Any] = {}


def _cached(t: Table, what: str, make: Callable[[], Any]) -> Any:
    """Per-declaration facts computed once (a Table's own hash walks all its columns)."""
    key = (id(t), what)
    if key not in _CACHE:
        _CACHE[key] = (t, make())  # keep t alive so its id is not reused
    return _CACHE[key][1]


def _plain_columns(t: Table) -> tuple[str, ...]:
    """Shipped columns taken from the row image (not derived by the daemon)."""
    return _cached(t, "plain", lambda: tuple(c.name for c in t.shipped if not c.derived_from))


def _changed_columns(t: Table, new: Mapping[str, Any], old: Mapping[str, Any] | list[str] | None,
                     key: Secret | None) -> dict[str, Any]:
    """Shipped columns and their new values that this capture changes: all of them for
    an insert (``old`` None), those named for an op ``u`` capture (``old`` the list of
    changed columns), those that differ from a full old image (op ``U``)."""
    if old is None:
        plain = _plain_columns(t)
        out = dict(zip(plain, map(new.get, plain)))  # at C speed: every column of a new row
        out.update(_derive(t, new, key))
        return out
    if type(old) is list:
        named = set(old)
        out = {c: new.get(c) for c in _plain_columns(t) if c in named}
    else:
        out = {c: new.get(c) for c in _plain_columns(t) if new.get(c) != old.get(c)}  # type: ignore[union-attr]
    out.update(_derive(t, new, key, out))  # derived again only from a changed source
    return out


def _old(cap: "Capture") -> dict[str, Any] | list[str]:
    """What an update capture says of the old row: the changed columns' names (ops ``u``
    and ``p``) or the full old image (op ``U``)."""
    if cap.op == "u" or cap.op == "p":
        return cap.old if isinstance(cap.old, list) else []
    return cap.old or {}


def _workflow_columns(t: Table) -> frozenset[str]:
    return _cached(t, "workflow", lambda: frozenset(c.name for c in t.columns if c.merge == "workflow"))


def version_captures(
    captures: Sequence[Capture],
    state: dict[tuple[str, uuid.UUID], RowVer],
    schema: Schema,
    me: str,
    hlc: int,
    homes_of: Mapping[tuple[str, uuid.UUID], dict[str, str]],
    id_hash_key: Secret | None = None,
    rows_now: Mapping[tuple[str, uuid.UUID], dict[str, Any]] | None = None,
) -> tuple[list[Change], int]:
    """Version ``captures`` (in serial order) against ``state``, which is updated in place.

    ``homes_of`` gives the route homes of each captured row (looked up by the
    caller); returns the changes and the new highest ts.  Captures of tables
    not in ``schema`` are ignored.  An update captured with its changed columns only
    (op ``p``) of a row that has no live version (:func:`needs_whole_row`) ships the
    row as it is now, from ``rows_now``; a row gone since is left to its delete's capture.
    """
    changes: list[Change] = []
    for cap in sorted(captures, key=lambda c: c.serial):
        if cap.tbl not in schema:
            continue
        t = schema[cap.tbl]
        key = (cap.tbl, cap.row_id)
        rv = state.get(key)
        image = cap.new if cap.new is not None else cap.old or {}
        if cap.op == "D":
            op, cl, values = OP_DELETE, (rv.cl if rv else 1) + 1, {}
        elif rv is None or rv.cl % 2 == 0 or cap.op == "I":
            if cap.op == "p":
                image = (rows_now or {}).get(key)
                if image is None:
                    continue
            op = OP_INSERT
            cl = 1 if rv is None else (rv.cl + 1 if rv.cl % 2 == 0 else rv.cl)
            values = _changed_columns(t, image, None, id_hash_key)
        else:
            op, cl, values = OP_UPDATE, rv.cl, _changed_columns(t, cap.new or {}, _old(cap), id_hash_key)
            if not values:
                continue
        ts = next_ts(cap.ts_us, hlc)
        hlc = ts
        homes = dict(homes_of.get(key) or (rv.homes if rv else {HOME: str(image["org_code"])}))
        if rv is None:
            rv = state[key] = RowVer(str(image["org_code"]), cl, homes)
        if rv.org_code != me:  # a non-home writer ships only the columns it may write (HC-26)
            values = {k: v for k, v in values.items() if any(homes.get(w) == me for w in t.column(k).writers)}
        if cl != rv.cl:  # a new causal length starts every column afresh (merge.decide)
            rv.v, rv.prevs = {}, {}
        workflow = _workflow_columns(t)
        held, prevs = rv.v, rv.prevs
        lww = _tnew(Version, (cl, 0, 0, ts, me))  # one version for every lww column the change writes
        if not held and workflow.isdisjoint(values):  # the common case, a new row: nothing replaced
            cols = {name: _tnew(ColumnChange, (value, 0, 0, None)) for name, value in values.items()}
            rv.v, rv.prevs = dict.fromkeys(values, lww), dict.fromkeys(values)
        else:
            cols = {}
            for name, value in values.items():
                prev = held.get(name)
                if name in workflow:
                    cc = column_change(t, name, value, prev)
                    held[name] = Version(cl, cc.round, cc.stage, ts, me)
                else:
                    cc = _tnew(ColumnChange, (value, 0, 0, prev))
                    held[name] = lww
                cols[name] = cc
                prevs[name] = prev
        rv.cl, rv.homes = cl, homes
        changes.append(Change(cap.tbl, cap.row_id, rv.org_code, op, cl, ts, me, cap.xid, homes, cols))
    return changes, hlc


#: a claimed capture in :class:`Capture`'s field order, its time in exact microseconds
_CLAIMED = ("{c}serial, (extract(epoch FROM {c}stmt_ts) * 1000000)::bigint, {c}xid::text::bigint, {c}tbl, "
            "{c}op::text, {c}row_id, {c}old, {c}new")


#: claim the oldest $1 committed captures
CLAIM_OLDEST = f"DELETE FROM syncd.capture WHERE {oldest_of_queue('syncd.capture')} RETURNING {_CLAIMED.format(c='')}"
#: claim the committed captures of the rows ($1 tables, $2 ids): the IN under ``IS TRUE`` stays a
#: hashed subplan, one pass over the queue.  Written as a join, it was a nested loop reading the
#: keys again for every capture once ANALYZE had found the queue empty (``syncd.store.lookup``):
#: 12.5 s for an apply's 2,000 keys among 20,000 captures waiting
CLAIM_ROWS = ("DELETE FROM syncd.capture c WHERE ((c.tbl, c.row_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))) "
              f"IS TRUE RETURNING {_CLAIMED.format(c='c.')}")


def _capture_from_record(r: asyncpg.Record) -> Capture:
    serial, ts_us, xid, tbl, op, row_id, old, new = r
    if op == "p":  # new: the changed columns; old: the row's context (org_code, route columns)
        changed = loads(new)
        return _tnew(Capture, (serial, ts_us, xid, tbl, op, row_id, list(changed), {**loads(old), **changed}))
    return _tnew(Capture, (serial, ts_us, xid, tbl, op, row_id, None if old is None else loads(old),
                           None if new is None else loads(new)))


def needs_whole_row(captures: Sequence[Capture],
                    state: Mapping[tuple[str, uuid.UUID], RowVer]) -> set[tuple[str, uuid.UUID]]:
    """Rows with an op ``p`` capture that :func:`version_captures` ships as a new row (no live
    version when it comes, in serial order): the capture holds only the changed columns, so
    the caller reads those rows whole."""
    live = {k: rv.cl % 2 == 1 for k, rv in state.items()}
    out = set()
    for cap in sorted(captures, key=lambda c: c.serial):
        key = (cap.tbl, cap.row_id)
        if cap.op == "D":
            live[key] = False
        elif cap.op == "p" and not live.get(key, False):
            out.add(key)
        else:
            live[key] = True
    return out


async def claim_captures(conn: asyncpg.Connection, limit: int,
                         rows: Iterable[tuple[str, uuid.UUID]] | None = None) -> list[Capture]:
    """Delete and return committed captures (the oldest ``limit``, or those of ``rows``), oldest first.

    ``DELETE … RETURNING`` only sees committed rows and is gap-free by itself: a
    capture committed later is simply claimed by a later call (HC-3).
    """
    if rows is None:
        recs = await conn.fetch(CLAIM_OLDEST, limit)
    else:
        tbls, ids = zip(*rows) if rows else ((), ())
        recs = await conn.fetch(CLAIM_ROWS, list(tbls), list(ids))
    return sorted((_capture_from_record(r) for r in recs), key=lambda c: c.serial)


ROWVER_BY_KEY = rowvers_by_key("r.tbl, r.id, r.org_code, r.cl, r.homes, r.v")


async def load_rowver(conn: asyncpg.Connection,
                      keys: Iterable[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], RowVer]:
    keys = list(set(keys))
    if not keys:
        return {}
    recs = await conn.fetch(ROWVER_BY_KEY, [k[0] for k in keys], [k[1] for k in keys])
    return {(r["tbl"], r["id"]): RowVer.from_db(r["org_code"], r["cl"], r["homes"], r["v"]) for r in recs}


async def insert_rowver(conn: asyncpg.Connection, state: Mapping[tuple[str, uuid.UUID], RowVer]) -> None:
    """Write the versions of rows that have none yet (COPY: no upsert, no parameter arrays)."""
    if state:
        await conn.copy_records_to_table("rowver", schema_name="syncd",
                                         columns=("tbl", "id", "org_code", "cl", "homes", "v"),
                                         records=[(k[0], k[1], *rv.to_db()) for k, rv in state.items()])


async def save_rowver(conn: asyncpg.Connection, state: Mapping[tuple[str, uuid.UUID], RowVer]) -> None:
    if not state:
        return
    rows = [(k[0], k[1], *rv.to_db()) for k, rv in state.items()]
    await conn.execute(  # one statement for the whole batch (executemany costs a round trip per row)
        "INSERT INTO syncd.rowver (tbl, id, org_code, cl, homes, v) "
        "SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int[], $5::jsonb[], $6::json[]) "
        "ON CONFLICT (tbl, id) DO UPDATE SET cl = excluded.cl, homes = excluded.homes, v = excluded.v",
        *[list(col) for col in zip(*rows)])


async def lookup_homes(conn: asyncpg.Connection, schema: Schema,
                       captures: Sequence[Capture]) -> dict[tuple[str, uuid.UUID], dict[str, str]]:
    """Route homes of captured live rows: own org_code plus the homes of referenced rows."""
    wanted: dict[str, set[uuid.UUID]] = {}
    for cap in captures:
        if cap.new is None or cap.tbl not in schema:
            continue
        for r in schema[cap.tbl].routes:
            if len(r.path) == 3 and cap.new.get(r.path[0]) is not None:
                wanted.setdefault(r.path[1], set()).add(uuid.UUID(str(cap.new[r.path[0]])))
    found: dict[tuple[str, uuid.UUID], str] = {}
    for target, ids in wanted.items():
        recs = await conn.fetch(rows_by_id(target, "x.id, x.org_code"), list(ids))
        found.update({(target, r["id"]): r["org_code"] for r in recs})
    out: dict[tuple[str, uuid.UUID], dict[str, str]] = {}
    for cap in captures:
        if cap.new is None or cap.tbl not in schema:
            continue
        homes = {HOME: str(cap.new["org_code"])}
        for r in schema[cap.tbl].routes:
            if len(r.path) == 3 and cap.new.get(r.path[0]) is not None:
                home = found.get((r.path[1], uuid.UUID(str(cap.new[r.path[0]]))))
                if home is not None:
                    homes[r.name] = home
        out[(cap.tbl, cap.row_id)] = homes
    return out


async def _rows_now(conn: asyncpg.Connection, schema: Schema,
                    keys: set[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], dict[str, Any]]:
    """The current images of rows (``keys``) of replicated tables that are still there."""
    by_table: dict[str, list[uuid.UUID]] = {}
    for tbl, rid in keys:
        if tbl in schema:
            by_table.setdefault(tbl, []).append(rid)
    out = {}
    for tbl, ids in by_table.items():
        for r in await conn.fetch(rows_by_id(tbl, "x.id, to_json(x)"), ids):
            out[(tbl, r[0])] = loads(r[1])
    return out


@dataclass
class Versioner:
    """Versions captures inside the caller's transaction (which holds the sequencer lock)."""

    schema: Schema
    me: str
    id_hash_key: Secret | None = None

    async def run(self, conn: asyncpg.Connection, captures: Sequence[Capture], hlc: int) -> tuple[list[Change], int]:
        if not captures:
            return [], hlc
        keys = [(c.tbl, c.row_id) for c in captures]
        state = await load_rowver(conn, keys)
        homes = await lookup_homes(conn, self.schema, captures)
        rows_now = await _rows_now(conn, self.schema, needs_whole_row(captures, state))
        held = set(state)
        changes, hlc = version_captures(captures, state, self.schema, self.me, hlc, homes, self.id_hash_key, rows_now)
        touched = {(c.table, c.id) for c in changes}
        await insert_rowver(conn, {k: v for k, v in state.items() if k in touched and k not in held})
        await save_rowver(conn, {k: v for k, v in state.items() if k in touched and k in held})
        return changes, hlc
