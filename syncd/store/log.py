"""The change log: rows of ``syncd.log`` and ``syncd.pending`` <-> :class:`Change`.

Column changes are stored as json ``[plain, other]``, the split of the version-3 wire map
(SPEC §5.1): ``plain`` ``{col: value}`` holds the columns written at round 0, stage 0 that
replaced nothing known, ``other`` ``{col: [value, round, stage, prev]}`` the rest, with
``prev`` a 5-array version or null; both sorted by column name, values canonical (maps
sorted by key), so a push sends them as read.  Entries written before this form hold
``{col: [value, round, stage, prev]}``; they are read as well.  ``homes`` is ``{route:
home}`` (json, not jsonb: written, moved and read back whole — migration 0008; the one
statement that looks inside ``cols`` is the fast-forward check of ``fastpath``).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import asyncpg
import orjson

from syncd.proto.change import Change, ColumnChange, StoredChange, Version
from syncd.proto.codec import canonical
from syncd.proto.fields import EXACT_TYPES as _EXACT_TYPES, HUGE as _HUGE, huge as _huge

LOG_COLUMNS = ("pos", "epoch", "tbl", "id", "org_code", "op", "cl", "ts", "origin", "txn",
               "homes", "cols", "received_from")
#: what :func:`change_from_record` reads of a log row (a select list)
CHANGE_COLUMNS = "pos, tbl, id, org_code, op, cl, ts, origin, txn, homes, cols"


def _no_default(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _make_stdlib_dumps(sort_keys: bool = False) -> Callable[[Any], str]:
    """``json.dumps(o, ensure_ascii=False, sort_keys=sort_keys)``, without building an encoder per call."""
    try:
        from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - CPython always has _json
        c_make_encoder = None
    if c_make_encoder is None or c_encode_basestring is None:  # pragma: no cover
        return lambda o: json.dumps(o, ensure_ascii=False, sort_keys=sort_keys)
    # markers None: no cycle check (the documents are built here and never cyclic)
    enc = c_make_encoder(None, _no_default, c_encode_basestring, None, ": ", ", ", sort_keys, False, True)
    return lambda o: "".join(enc(o, 0))


_stdlib_dumps = _make_stdlib_dumps()
_stdlib_dumps_sorted = _make_stdlib_dumps(sort_keys=True)


def _tuple_as_list(o: Any) -> Any:
    if isinstance(o, tuple):  # Version and ColumnChange are named tuples: arrays, as json.dumps writes them
        return list(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def dumps(o: Any) -> str:
    """JSON text of ``o`` for PostgreSQL (jsonb): orjson, 3-4× faster than ``json`` on a
    change's columns (the log, the apply stage and the versions encode several documents per
    change).  The same JSON values as ``json.dumps``; what orjson refuses (an integer beyond
    64 bits, a non-string key) is written by ``json`` instead."""
    try:
        return orjson.dumps(o, default=_tuple_as_list).decode()
    except TypeError:
        return _stdlib_dumps(o)


def loads(text: str, inexact: Callable[[Any], bool] = _huge) -> Any:
    """The value of JSON ``text``: orjson (about 1.5× faster than ``json`` on a change's
    columns), or ``json`` when ``inexact`` says the text may hold an integer outside 64 bits,
    which orjson would read as a float (``json`` keeps it exact), or a number orjson cannot
    represent at all."""
    try:
        v = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    return json.loads(text) if inexact(v) else v


def dumps_sorted(o: Any) -> str:
    """:func:`dumps` with every map sorted by key: the canonical form of a value (codec)."""
    try:
        return orjson.dumps(o, default=_tuple_as_list, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return _stdlib_dumps_sorted(o)


def split_cols(cols: Mapping[str, ColumnChange | tuple[Any, Any, Any, Any]]
               ) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``(plain, other)``: the values of the columns written at round 0, stage 0 that replaced
    nothing known, and ``[value, round, stage, prev]`` of the rest (the wire's split, SPEC §5.1)."""
    plain: dict[str, Any] = {}
    other: dict[str, list[Any]] = {}
    for k, (v, r, s, p) in cols.items():
        if r == 0 and s == 0 and not p:
            plain[k] = v
        else:
            other[k] = [v, r, s, list(p) if p else None]
    return plain, other


def encode_cols(change: Change) -> str:
    """The log's ``[plain, other]`` of ``change`` (the module's text) as JSON."""
    return dumps_sorted([change.plain, {k: [v, r, s, None if p is None else list(p)]
                                        for k, (v, r, s, p) in change.other.items()}])


def columns_map(change: Change) -> dict[str, list[Any]]:
    """``{col: [value, round, stage, prev]}``: the columns as one map, for documents people
    read (a quarantined or parked change)."""
    return {k: [v, r, s, None if p is None else list(p)] for k, (v, r, s, p) in change.cols.items()}


def _huge_value(doc: Any) -> bool:
    """``_huge`` for the log's columns (either form): only the values can hold what orjson
    reads inexactly (round, stage and prev are syncd's own 64-bit integers), so only they are
    looked at — ``_huge`` over the whole document was a tenth of a caught-up row's Python."""
    if type(doc) is list:
        values: Any = doc[0].values()
        rest: Any = doc[1].values()
        if not rest and _EXACT_TYPES.issuperset(map(type, values)):  # one set operation, no loop
            return False
    else:
        values, rest = (), doc.values()
    for x in values:
        tx = type(x)  # inline: a call per column would cost as much as the walk it replaces
        if (tx is float and not -_HUGE < x < _HUGE) or ((tx is list or tx is dict) and _huge(x)):
            return True
    for v in rest:
        x = v[0]
        tx = type(x)
        if (tx is float and not -_HUGE < x < _HUGE) or ((tx is list or tx is dict) and _huge(x)):
            return True
    return False


def read_cols(raw: str | list[Any] | dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``(plain, other)`` of a log row's columns (text, or its parsed value), in either form."""
    doc = loads(raw, _huge_value) if isinstance(raw, str) else raw
    if type(doc) is list:
        return doc[0], doc[1]
    # the form before [plain, other]: split it as it is written now, sorted, values canonical
    return split_cols({k: (canonical(doc[k][0]), *doc[k][1:]) for k in sorted(doc)})


_HOMES_TEXT: dict[tuple[tuple[str, str], ...], str] = {}


def encode_homes(homes: Mapping[str, str]) -> str:
    """``json.dumps(homes)``, remembered: a batch repeats a handful of homes."""
    key = tuple(homes.items())
    hit = _HOMES_TEXT.get(key)
    if hit is None:
        if len(_HOMES_TEXT) > 4096:
            _HOMES_TEXT.clear()
        hit = _HOMES_TEXT[key] = json.dumps(dict(homes))
    return hit


_tnew = tuple.__new__  # named tuples from lists encode_cols wrote, without their Python-level __new__


def decode_cols(raw: str | list[Any] | dict[str, Any]) -> dict[str, ColumnChange]:
    """The columns of a log row (text, or its parsed value; either form) as the named tuples."""
    plain, other = read_cols(raw)
    cols = {name: _tnew(ColumnChange, (v, 0, 0, None)) for name, v in plain.items()}
    for name, (v, r, s, p) in other.items():
        cols[name] = _tnew(ColumnChange, (v, r, s, _tnew(Version, p) if p else None))
    return cols


_HOMES: dict[str, dict[str, str]] = {}  # a log holds a handful of distinct homes


def decode_homes(raw: str | dict[str, str]) -> dict[str, str]:
    if not isinstance(raw, str):
        return dict(raw)
    hit = _HOMES.get(raw)
    if hit is None:
        if len(_HOMES) > 4096:
            _HOMES.clear()
        hit = _HOMES[raw] = loads(raw)
    return dict(hit)  # a copy: callers may keep or change theirs


def _op(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def change_from_record(r: asyncpg.Record) -> Change:
    return Change(
        table=r["tbl"], id=r["id"], org_code=r["org_code"], op=_op(r["op"]), cl=r["cl"],
        ts=r["ts"], origin=r["origin"], txn=r["txn"], homes=decode_homes(r["homes"]),
        cols=decode_cols(r["cols"]), pos=r.get("pos", 0),
    )


def stored_from_record(r: asyncpg.Record) -> StoredChange:
    """A log row as it goes out over a link: its columns' two maps as read (:class:`StoredChange`)."""
    plain, other = read_cols(r["cols"])
    return StoredChange(r["tbl"], r["id"], r["org_code"], _op(r["op"]), r["cl"], r["ts"], r["origin"], r["txn"],
                        decode_homes(r["homes"]), plain, other, r.get("pos", 0))


def log_record(pos: int, epoch: int, c: Change, received_from: str | None) -> tuple[Any, ...]:
    return (pos, epoch, c.table, c.id, c.org_code, c.op.encode(), c.cl, c.ts, c.origin, c.txn,
            encode_homes(c.homes), encode_cols(c), received_from)


async def append_log(conn: asyncpg.Connection, first_pos: int, epoch: int,
                     items: Sequence[tuple[Change, str | None]]) -> int:
    """Write ``items`` at positions ``first_pos…``; return the last position used."""
    records = [log_record(first_pos + i, epoch, c, rf) for i, (c, rf) in enumerate(items)]
    if records:
        await conn.copy_records_to_table("log", schema_name="syncd", columns=LOG_COLUMNS, records=records)
    return first_pos + len(records) - 1


async def add_pending(conn: asyncpg.Connection, items: Sequence[tuple[Change, str | None]]) -> None:
    """Queue versioned changes for the sequencer, which gives them positions (HC-2)."""
    if not items:
        return
    await conn.copy_records_to_table(
        "pending", schema_name="syncd",
        columns=("tbl", "id", "org_code", "op", "cl", "ts", "origin", "txn", "homes", "cols", "received_from"),
        records=[log_record(0, 0, c, rf)[2:] for c, rf in items])


async def read_log(conn: asyncpg.Connection, after: int, limit: int = 1000) -> list[Change]:
    recs = await conn.fetch("SELECT * FROM syncd.log WHERE pos > $1 ORDER BY pos LIMIT $2", after, limit)
    return [change_from_record(r) for r in recs]


async def head(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT head FROM syncd.node"))
