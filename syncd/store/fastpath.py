"""The set-based fast path of apply: merge in SQL what needs no per-row judgement (DESIGN §5).

A catch-up is mostly two kinds of change, and for both :func:`syncd.merge.decide` has
nothing to weigh:

* **new rows** — the row is neither in the table nor in ``syncd.rowver``, the batch holds
  one live insert for it: every column is written with the change's version;
* **fast-forward updates** — the row has versions at the same causal length, the batch
  holds one update for it, and for every column the change carries, the version it
  replaced (``prev``) is exactly the version held here: the change saw everything this
  node has, so it wins every column and nothing is concurrent (no conflict).

Those changes are staged with COPY into a temporary table and merged with one
statement per table and kind, in foreign-key order, under a savepoint: the table
rows and their versions (``syncd.rowver``, the same ``[cl, round, stage, ts, origin,
prev]`` arrays :class:`~syncd.store.versioning.RowVer` writes) in the same
statement group.  Whether an update really is a fast-forward is decided against the
versions read and locked in this transaction (one statement reads them, Python compares
the prevs and merges the maps, one statement writes them); the rows it is not, and any group
whose write fails (a foreign-key miss, a poison row), go back to the Python path
(:func:`syncd.store.apply.merge_rows`), which decides row by row and parks or
quarantines.  ``tests/integration/test_fastpath.py`` checks, on random histories,
that both paths leave identical rows and versions.
"""
from __future__ import annotations

import uuid
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, Sequence

import asyncpg
import orjson

from syncd.proto.change import OP_INSERT, OP_UPDATE, Change
from syncd.proto.messages import SnapshotRow, StoredRow
from syncd.schema.declarations import Table
from syncd.store.log import dumps, dumps_sorted, encode_cols, encode_homes

if TYPE_CHECKING:
    from syncd.store.apply import ApplyContext, ApplyResult

Key = tuple[str, uuid.UUID]

#: One applied batch, staged once: the fast path merges from it and the relay queue
#: (``syncd.pending``) is filled from it in SQL, so a change's columns are encoded once.
#: ``cols`` (relayed as is), ``vals`` (read once into a row) and ``vers`` (kept as is in
#: ``syncd.rowver.v``) are json, validated text; ``homes`` is jsonb, as ``syncd.rowver`` keeps it.
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS syncd_batch (
    ord integer NOT NULL, tbl text NOT NULL, id uuid NOT NULL, org_code text NOT NULL, op "char" NOT NULL,
    cl integer NOT NULL, ts bigint NOT NULL, origin text NOT NULL, txn bigint NOT NULL, homes jsonb NOT NULL,
    cols json NOT NULL, received_from text, vals json NOT NULL, vers json NOT NULL
) ON COMMIT DELETE ROWS
"""
_STAGE_COLUMNS = ("ord", "tbl", "id", "org_code", "op", "cl", "ts", "origin", "txn", "homes", "cols",
                  "received_from", "vals", "vers")
#: ``id(change)`` -> its ``ord`` in ``syncd_batch``
Staged = dict[int, int]
#: How the statements below pick the staged rows whose ``ord`` is in $1: a hash semi-join.
#: ``ord = ANY($1::int[])`` on the unindexed stage is a linear search of the array for every
#: row once PostgreSQL plans the prepared statement generically (from its sixth run): 15 ms
#: against 1 ms for a 2,000-row batch, ~7 µs a row for each such statement.
_PICKED = "ord IN (SELECT unnest($1::int[]))"

_RELAY = ("INSERT INTO syncd.pending (tbl, id, org_code, op, cl, ts, origin, txn, homes, cols, received_from) "
          "SELECT tbl, id, org_code, op, cl, ts, origin, txn, homes::json, cols, received_from FROM syncd_batch "
          f"WHERE {_PICKED} ORDER BY ord")


#: Database sessions whose stage was made by :func:`prepare_session`, outside a transaction, so
#: it stays for the session (weakly held: a session ends with its connection).
_PREPARED: "weakref.WeakSet[asyncpg.Connection]" = weakref.WeakSet()


def _session(conn: asyncpg.Connection) -> asyncpg.Connection:
    """The connection a pool's proxy stands for (one per database session), else ``conn``."""
    return getattr(conn, "_con", None) or conn


async def prepare_session(conn: asyncpg.Connection) -> None:
    """Make the stage once for a new session (a daemon's pool connections, as each opens)."""
    await conn.execute(_STAGE)
    _PREPARED.add(_session(conn))


async def stage_batch(conn: asyncpg.Connection, changes: Sequence[Change], received_from: str | None) -> Staged:
    """Stage ``changes`` (replacing what was staged before in this transaction) with one COPY.

    In a session :func:`prepare_session` readied, the stage is only emptied, by a statement
    prepared once (no plan to make); else it is made if missing and emptied in one simple-query
    round trip — planned afresh each time: with single-row batches that had cost a node's
    PostgreSQL ~0.2 ms a batch, an eighth of its statement time."""
    if _session(conn) in _PREPARED:
        await conn.fetchval("DELETE FROM syncd_batch")
    else:
        await conn.execute(_STAGE + "; DELETE FROM syncd_batch")
    await conn.copy_records_to_table("syncd_batch", columns=_STAGE_COLUMNS, records=[
        _stage_record(i, c, received_from) for i, c in enumerate(changes, 1)])
    return {id(c): i for i, c in enumerate(changes, 1)}


def _stage_record(ord_: int, c: Change, received_from: str | None) -> tuple[Any, ...]:
    """A change as a row of ``syncd_batch``: the log's fields (:func:`syncd.store.log.log_record`),
    then its column values ``{col: value}`` and the versions it gives its row
    ``{col: [cl, round, stage, ts, origin, prev]}`` (as ``syncd.rowver`` stores them).

    Built here rather than in SQL (per row, ``jsonb_each`` + ``jsonb_object_agg`` cost
    PostgreSQL ~60 µs for a members row), and with as few Python objects as the documents
    allow: a change of new values only (a catch-up's inserts) is its ``plain`` map as read off
    the wire, its log columns ``[plain, {}]`` are written around the values' own text, and
    every column's version is one shared list (``dict.fromkeys``)."""
    plain, other = c.plain, c.other
    vers = _versions(c)
    if other:
        vals_text = dumps_sorted({**plain, **{k: cc[0] for k, cc in other.items()}})
        cols_text = encode_cols(c)
    else:
        vals_text = dumps_sorted(plain)
        cols_text = "[" + vals_text + ",{}]"
    return (ord_, c.table, c.id, c.org_code, c.op.encode(), c.cl, c.ts, c.origin, c.txn, encode_homes(c.homes),
            cols_text, received_from, vals_text, dumps(vers))


def _versions(c: Change) -> dict[str, list[Any]]:
    """The versions ``c`` gives the columns it carries, ``{col: [cl, round, stage, ts, origin,
    prev]}`` as ``syncd.rowver`` keeps them; its plain columns share one list."""
    cl, ts, origin = c.cl, c.ts, c.origin
    vers = dict.fromkeys(c.plain, [cl, 0, 0, ts, origin, None])
    for k, (_value, rnd, stage, prev) in c.other.items():
        vers[k] = [cl, rnd, stage, ts, origin, list(prev) if prev else None]
    return vers


def _forwarded(c: Change, held_text: str) -> str | None:
    """The row's versions after ``c`` (JSON text) if ``c`` fast-forwards ``held_text``, the
    versions held at its causal length; None if it does not (the row-by-row path decides).

    A fast-forward replaced exactly what is held: a column of ``plain`` replaced nothing, so
    none may be held; a held column of ``other`` must name the held version as its prev."""
    held = orjson.loads(held_text)  # syncd's own versions: 64-bit integers and node codes
    if not held.keys().isdisjoint(c.plain):
        return None
    for k, cc in c.other.items():
        h = held.get(k)
        if h is not None and (cc.prev is None or h[:5] != list(cc.prev)):
            return None
    held.update(_versions(c))
    return dumps(held)


async def relay_staged(conn: asyncpg.Connection, staged: Staged, changes: Sequence[Change]) -> None:
    """Queue staged ``changes`` for the sequencer, in the order given (as ``log.add_pending``)."""
    if changes:
        await conn.execute(_RELAY, [staged[id(c)] for c in changes])


#: Staged changes into the log after the head, in the order of $1, when the relay queue is
#: empty (``Sequencer.log_now``), in one statement: the head and clock move (the node row is
#: the one the sequencer's ticks lock), the log rows are written at the old head + 1 …, the
#: outbox rows ($2 peers at $3 offsets) after it, and ``NOTIFY syncd_log, '<head>'`` is sent at
#: commit (as ``sequencer._MOVE_HEAD``).  No row: changes wait in the queue, nothing was done.
_LOG_STAGED = """
WITH node AS (
    UPDATE syncd.node SET head = head + cardinality($1::int[]), hlc = greatest(hlc, $4)
    WHERE (SELECT min(serial) FROM syncd.pending) IS NULL
    RETURNING epoch, head - cardinality($1::int[]) AS before, head
), logged AS (
    INSERT INTO syncd.log (pos, epoch, tbl, id, org_code, op, cl, ts, origin, txn, homes, cols, received_from)
    SELECT node.before + k.n, node.epoch, s.tbl, s.id, s.org_code, s.op, s.cl, s.ts, s.origin, s.txn,
           s.homes::json, s.cols, s.received_from
    FROM node CROSS JOIN unnest($1::int[]) WITH ORDINALITY AS k(ord, n) JOIN syncd_batch s ON s.ord = k.ord
), queued AS (
    INSERT INTO syncd.outbox (peer, pos)
    SELECT o.peer, node.before + o.n FROM node CROSS JOIN unnest($2::text[], $3::bigint[]) AS o(peer, n)
)
SELECT node.head FROM node, LATERAL (SELECT pg_notify('syncd_log', node.head::text)) AS notified
"""


async def log_staged(conn: asyncpg.Connection, staged: Staged, changes: Sequence[Change],
                     outbox: Sequence[tuple[str, int]], ts: int) -> int | None:
    """Log staged ``changes`` after the head if the relay queue is empty, with their outbox
    entries ``(peer, n)`` (``n``: 1 for the first change); the new head, or None (nothing
    done).  The caller holds the sequencer lock."""
    return await conn.fetchval(_LOG_STAGED, [staged[id(c)] for c in changes], [p for p, _ in outbox],
                               [n for _, n in outbox], ts)


#: the staged change's (or snapshot row's) values as a record of the target table (its id and
#: org_code are the stage's own columns: :func:`_select`)
_VALUES = "json_populate_record(NULL::{table}, s.vals)"

_NEW_VERSIONS = ("INSERT INTO syncd.rowver (tbl, id, org_code, cl, homes, v) SELECT s.tbl, s.id, s.org_code, s.cl, "
                 f"s.homes, s.vers FROM syncd_batch s WHERE s.{_PICKED}")

#: fast-forward candidates' versions (same cl), locked: ``(ord, v)``.  Whether each is a
#: fast-forward, and the versions it leaves, are worked out in Python (:func:`_forwarded`,
#: 10–14 µs a members row): one statement doing both in SQL cost PostgreSQL ~110 µs a row,
#: over half of an update's apply there (the held versions and the change's columns were
#: parsed as JSON several times a row); reading and writing the versions costs it ~38 µs.
_HELD_VERSIONS = f"""
SELECT s.ord, r.v FROM syncd_batch s JOIN syncd.rowver r ON r.tbl = s.tbl AND r.id = s.id AND r.cl = s.cl
WHERE s.{_PICKED} FOR UPDATE OF r
"""
#: the versions of fast-forwarded rows: $1 their ords, $2 the rows' whole new version maps
_SET_VERSIONS = """
UPDATE syncd.rowver rv SET v = k.v::json, homes = s.homes
FROM unnest($1::int[], $2::text[]) AS k(ord, v) JOIN syncd_batch s ON s.ord = k.ord
WHERE rv.tbl = s.tbl AND rv.id = s.id
"""


def _insert_columns(t: Table, carried: Iterable[str]) -> list[str]:
    """The columns an insert of staged rows names: org_code, the shipped columns carried,
    and id unless the table derives it from a natural key."""
    names = sorted({n for n in carried if n in t.shipped_set} - {"id", "org_code"})
    return ["org_code", *names, *([] if t.natural_key else ["id"])]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select(names: Iterable[str]) -> str:
    """The select list giving ``names`` from a stage row ``s`` and its values ``x``."""
    return ", ".join(f"s.{n}" if n in ("id", "org_code") else f"x.{_q(n)}" for n in names)


def _classify(changes: Sequence[Change], existing: set[Key], held: dict[Key, int],
              ctx: "ApplyContext") -> tuple[dict[Key, Change], dict[Key, Change]]:
    """Candidates: new rows and possible fast-forwards (one change per row in the batch)."""
    count: dict[Key, int] = {}
    for c in changes:
        key = (c.table, c.id)
        count[key] = count.get(key, 0) + 1
    new: dict[Key, Change] = {}
    ff: dict[Key, Change] = {}
    shipped = {t.name: t.shipped_set for t in ctx.schema.tables}
    for c in changes:
        key = (c.table, c.id)
        cols = shipped.get(c.table)
        # a column this node cannot store yet is kept opaque by the row-by-row path (HC-13)
        if (count[key] != 1 or cols is None or c.cl % 2 == 0
                or not (cols.issuperset(c.plain) and cols.issuperset(c.other))):
            continue
        if c.op == OP_INSERT and key not in existing and key not in held:
            new[key] = c
        elif (c.op == OP_UPDATE and key in existing and held.get(key) == c.cl and c.names
              and all(cc.prev is None or cc.prev < c.version(n) for n, cc in c.other.items())):
            ff[key] = c
    return new, ff


async def _insert_new(conn: asyncpg.Connection, t: Table, group: list[Change], staged: Staged) -> bool:
    """Insert new rows of ``t`` and their versions; False (nothing written) if it fails."""
    table = f'public."{t.name}"'
    cols = _insert_columns(t, set().union(*[c.names for c in group]))
    ords = [staged[id(c)] for c in group]
    try:
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO {table} ({', '.join(map(_q, cols))}) SELECT {_select(cols)} "
                f"FROM syncd_batch s, {_VALUES.format(table=table)} AS x WHERE s.{_PICKED}", ords)
            await conn.execute(_NEW_VERSIONS, ords)
    except asyncpg.LockNotAvailableError:
        raise  # not the rows' fault: the whole batch waits its turn (HC-3)
    except asyncpg.PostgresError:
        return False
    return True


async def _forward(conn: asyncpg.Connection, t: Table, group: list[Change], staged: Staged) -> set[uuid.UUID]:
    """Fast-forward the rows of ``t`` whose versions, read and locked here, ``group`` replaced
    exactly (:func:`_forwarded`); their ids (none if a write fails)."""
    table = f'public."{t.name}"'
    by_ord = {staged[id(c)]: c for c in group}
    try:
        async with conn.transaction():
            ords: list[int] = []
            maps: list[str] = []
            done: set[uuid.UUID] = set()
            for o, held in await conn.fetch(_HELD_VERSIONS, list(by_ord)):
                if (v := _forwarded(by_ord[o], held)) is not None:
                    ords.append(o)
                    maps.append(v)
                    done.add(by_ord[o].id)
            if ords:
                await conn.execute(_SET_VERSIONS, ords, maps)
            by_cols: dict[tuple[str, ...], list[int]] = {}
            for c in group:
                if c.id in done:
                    by_cols.setdefault(tuple(sorted(n for n in c.names if n in t.shipped_set)), []).append(staged[id(c)])
            for names, picked in by_cols.items():
                if not names:
                    continue
                sets = ", ".join(f"{_q(n)} = x.{_q(n)}" for n in names)
                await conn.execute(
                    f"UPDATE {table} t SET {sets} FROM syncd_batch s, {_VALUES.format(table=table)} AS x "
                    f"WHERE s.{_PICKED} AND t.id = s.id", picked)
    except asyncpg.LockNotAvailableError:
        raise  # not the rows' fault: the whole batch waits its turn (HC-3)
    except asyncpg.PostgresError:
        return set()
    return done


async def apply_fast(conn: asyncpg.Connection, ctx: "ApplyContext", changes: Sequence[Change],
                     existing: set[Key], held: dict[Key, int], result: "ApplyResult",
                     staged: Staged | None = None) -> list[Change]:
    """Merge the changes that need no judgement in SQL; return the others, in batch order.

    ``existing``: target rows present in their tables (locked by the caller);
    ``held``: causal length of the targets that have versions here; ``staged``: where
    :func:`stage_batch` put ``changes`` (None: they are staged here)."""
    new, ff = _classify(changes, existing, held, ctx)
    if not new and not ff:
        return list(changes)
    if staged is None or any(id(c) not in staged for c in (*new.values(), *ff.values())):
        staged = await stage_batch(conn, [*new.values(), *ff.values()], None)
    by_table: dict[str, tuple[list[Change], list[Change]]] = {}
    for c in new.values():
        by_table.setdefault(c.table, ([], []))[0].append(c)
    for c in ff.values():
        by_table.setdefault(c.table, ([], []))[1].append(c)
    done: set[Key] = set()
    for t in ctx.schema.tables:  # foreign-key order
        if t.name not in by_table:
            continue
        fresh, forward = by_table[t.name]
        if fresh and await _insert_new(conn, t, fresh, staged):
            done.update((t.name, c.id) for c in fresh)
        if forward:
            done.update((t.name, i) for i in await _forward(conn, t, forward, staged))
    result.applied += len(done)
    return [c for c in changes if (c.table, c.id) not in done]


# -- snapshot rows ------------------------------------------------------------------------
# A bootstrap is almost all rows this node has never held: they are inserted set-based with
# their per-column versions as the snapshot carries them (merge_states of nothing and a row
# is the row).  Tombstones and rows held here go through merge_states row by row.

_SNAP_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS syncd_snap_stage (
    id uuid NOT NULL, org_code text NOT NULL, cl integer NOT NULL, homes jsonb NOT NULL, vals json NOT NULL,
    vers json NOT NULL
) ON COMMIT DELETE ROWS
"""
_SNAP_VERSIONS = ("INSERT INTO syncd.rowver (tbl, id, org_code, cl, homes, v) "
                  "SELECT $1, s.id, s.org_code, s.cl, s.homes, s.vers FROM syncd_snap_stage s")


#: Column types whose text input reads back the value ``to_jsonb`` gave for them, written as
#: Python holds it (json and jsonb: as JSON text).  Not here — arrays (``to_jsonb`` gives a
#: JSON array, not ``{…}``), numeric (orjson reads it as a float: digits would be lost),
#: composites and the rest — make :func:`insert_snapshot_rows` take the JSON stage instead.
_COPY_TEXT_TYPES = frozenset(("text", "varchar", "bpchar", "name", "uuid", "bool", "int2", "int4", "int8",
                              "float4", "float8", "date", "time", "timetz", "timestamp", "timestamptz"))
_COPY_JSON_TYPES = frozenset(("json", "jsonb"))
_COLUMN_TYPES = ("SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                 "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped")
_ROWVER_COLUMNS = ("tbl", "id", "org_code", "cl", "homes", "v")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(v: Any, as_json: bool) -> str:
    """A value as a field of PostgreSQL's COPY text format (``\\N``: NULL)."""
    if v is None:
        return "\\N"
    t = type(v)
    if as_json:
        v = dumps(v)
    elif t is bool:
        return "t" if v else "f"
    elif t is int or t is float:
        return repr(v)
    elif t is not str:
        v = dumps(v)
    if "\\" in v or "\t" in v or "\n" in v or "\r" in v:
        v = v.translate(_COPY_ESCAPES)
    return v  # type: ignore[no-any-return]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as COPY's source: asyncpg reads a file-like source in its thread pool (threads
    and their stacks for one in-memory buffer), an async iterable in the event loop."""
    yield data


async def _copy_snapshot_rows(conn: asyncpg.Connection, t: Table, rows: Sequence[StoredRow],
                              cols: list[str]) -> bool | None:
    """Write new rows straight into their table with one COPY (text format) and their versions
    into ``syncd.rowver`` with another, under a savepoint: no JSON stage, no ``json_populate_record``
    (a third of the city's PostgreSQL time in a bootstrap).  None: a column's type has no text
    form here (nothing done); False: the write failed (nothing written)."""
    types = dict(await conn.fetch(_COLUMN_TYPES, f'public."{t.name}"'))  # per chunk: a release may change them
    as_json: list[bool] = []
    for n in cols:
        typ = types.get(n)
        if typ not in _COPY_TEXT_TYPES and typ not in _COPY_JSON_TYPES:
            return None
        as_json.append(typ in _COPY_JSON_TYPES)
    # org_code first and id last (unless derived) come from the row; the values between
    values = list(zip(cols[1:-1] if cols[-1] == "id" else cols[1:], as_json[1:]))
    lines = []
    for r in rows:
        vals = r.vals
        fields = [r.org_code]
        for n, js in values:
            v = vals.get(n)
            # most values are plain text, written as they are (the test is C: no call per value)
            fields.append(v if type(v) is str and not js and v.isprintable() and "\\" not in v
                          else _copy_text(v, js))
        if cols[-1] == "id":
            fields.append(str(r.id))
        lines.append("\t".join(fields))
    data = ("\n".join(lines) + "\n").encode()
    try:
        async with conn.transaction():
            await conn.copy_to_table(t.name, schema_name="public", source=_once(data), columns=cols, format="text")
            await conn.copy_records_to_table("rowver", schema_name="syncd", columns=_ROWVER_COLUMNS, records=[
                (t.name, r.id, r.org_code, r.cl, encode_homes(r.homes), r.vers_json) for r in rows])
    except asyncpg.LockNotAvailableError:
        raise  # not the rows' fault: the whole batch waits its turn (HC-3)
    except asyncpg.PostgresError:
        return False
    return True


async def insert_snapshot_rows(conn: asyncpg.Connection, t: Table, rows: Sequence[SnapshotRow | StoredRow]) -> bool:
    """Insert live snapshot rows this node holds nothing of, with their versions; False
    (nothing written) when the write fails and the rows must take the row-by-row path.
    Straight COPY where every column's type allows it (:func:`_copy_snapshot_rows`), else
    through a JSON stage (one COPY of the rows' texts, then ``json_populate_record``).  Rows
    of protocol versions before 4 are put in stored form first (:meth:`StoredRow.of`)."""
    rows = [StoredRow.of(r) for r in rows]
    cols = _insert_columns(t, set().union(*[r.names for r in rows]))
    done = await _copy_snapshot_rows(conn, t, rows, cols)
    if done is not None:
        return done
    await conn.execute(_SNAP_STAGE)
    await conn.execute("TRUNCATE syncd_snap_stage")
    await conn.copy_records_to_table("syncd_snap_stage", columns=("id", "org_code", "cl", "homes", "vals", "vers"),
                                     records=[(r.id, r.org_code, r.cl, encode_homes(r.homes), r.vals_json, r.vers_json)
                                              for r in rows])
    table = f'public."{t.name}"'
    try:
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO {table} ({', '.join(map(_q, cols))}) SELECT {_select(cols)} "
                f"FROM syncd_snap_stage s, {_VALUES.format(table=table)} AS x")
            await conn.execute(_SNAP_VERSIONS, t.name)
    except asyncpg.LockNotAvailableError:
        raise  # not the rows' fault: the whole batch waits its turn (HC-3)
    except asyncpg.PostgresError:
        return False
    return True
