"""Bytes ↔ messages: the only module of syncd that imports msgpack (SPEC §4).

Theory of operation
-------------------
Every message is one msgpack map with short string keys, fields in a fixed order,
maps inside it (homes, columns, tables, values) sorted by key: the encoding is
canonical, so a decoded message re-encodes to the same bytes.  uuids are 16-byte
``bin``, hashes 32-byte ``bin``, a :class:`Version` a 5-array
``[cl, round, stage, ts, origin]``, a :class:`Change` a map.

:func:`decode` is strict and total: for any ``bytes`` it returns a message or raises
:class:`DecodeError` (a :class:`SyncdError`) — never another exception.  Lengths are
bounded while unpacking (``max_*_len``), unknown and missing fields are errors, and a
declared length over a limit is reported as ``BODY_TOO_LARGE`` / ``VALUE_TOO_LARGE``
even when the body is cut short.  Meaning (unknown tables, duplicate rows, future ts)
is checked later by :mod:`syncd.proto.validate`.

Versions: ``Hello`` has one layout for all versions; ``HelloReply`` carries its own
version in ``v``; every other message is decoded at the version chosen at hello.
Version 1 lacks ``Push.summary`` (``sm``) and ``HelloReply.clock`` (``ck``).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

import msgpack
import orjson

from syncd.errors import CODE_RE, SyncdError
from syncd.proto import fields as f
from syncd.proto.change import OPS, Change, ColumnChange, StoredChange, Version, join_cols
from syncd.proto.fields import DecodeError
from syncd.proto.fields import uuid_from_bytes as _uuid
from syncd.proto.messages import (
    KINDS, PROTOCOL_VERSION, SUPPORTED_VERSIONS, ErrorReply, Hello, HelloReply, IdRange,
    Message, PullReply, PullRequest, Push, PushReply, Quarantined, RangeSum, SnapshotChunk,
    SnapshotRequest, SnapshotRow, StoredRow, TableDecl, VerifyReply, VerifyRequest,
)

# -- limits (SPEC R4.7) -------------------------------------------------------------------
MAX_BODY_BYTES = 16 * 1024 * 1024  #: whole body, after gzip inflation
MAX_VALUE_BYTES = 1024 * 1024  #: one string, and one value's canonical encoding
MAX_CHANGES = 10_000  #: changes per push or pull reply; rows per snapshot chunk
MAX_MAP_LEN = 4096  #: entries in any map
MAX_BIN_LEN = 64  #: any bin (uuids are 16 bytes, hashes 32)
MAX_COLUMNS = 256  #: columns per change, row or table declaration
MAX_TABLES = 256  #: tables declared at hello
MAX_HOMES = 16  #: routes per change
MAX_SUMMARIES = 1024  #: per-node status entries per push
MAX_SUMMARY_KEYS = 64  #: keys per status entry
MAX_RANGES = 4096  #: id ranges per verify
MAX_VERSIONS = 16  #: protocol versions listed at hello
MAX_WAIT_MS = 300_000  #: longest pull long-poll
MAX_TEXT = 4096  #: reasons and hints

_UNPACK_LIMITS = {"str": MAX_VALUE_BYTES, "bin": MAX_BIN_LEN, "array": MAX_CHANGES, "map": MAX_MAP_LEN}
T = TypeVar("T")


@dataclass(frozen=True)
class Field:
    """One map entry of a message: wire ``key``, dataclass ``attr``, reader, writer,
    and the first protocol version that has it."""

    key: str
    attr: str
    read: Callable[[Any, str], Any]
    write: Callable[[Any], Any]
    since: int = 1
    absent: Any = None  # the attribute's value in versions before ``since``
    until: int = 255  # the last protocol version with this form of the field

    def spoken(self, version: int) -> bool:
        return self.since <= version <= self.until


def _same(x: Any) -> Any:
    return x


def _uuid_out(u: uuid.UUID | None) -> bytes | None:
    return None if u is None else u.bytes


_SCALARS = frozenset((str, int, float, bool, type(None)))


def canonical(v: Any) -> Any:
    """A value with every map sorted by key and tuples as lists (canonical form)."""
    if type(v) in _SCALARS:  # most values: no ABC check (isinstance of Mapping is slow)
        return v
    if isinstance(v, dict) or isinstance(v, Mapping):
        return {k: canonical(v[k]) for k in sorted(v)}
    if isinstance(v, (list, tuple)):
        return [canonical(x) for x in v]
    return v


# -- readers for composite fields ----------------------------------------------------------

def _u(v: Any, p: str) -> int:
    return f.integer(v, p)


def _node(v: Any, p: str) -> str:
    return f.string(v, p, 32, f.NODE_RE)


def _hash(v: Any, p: str) -> bytes | None:
    return None if v is None else f.binary(v, p, 32)


def _version(v: Any, p: str) -> Version:
    if type(v) is not list or len(v) != 5:
        raise DecodeError(p, f"expected a 5-array version, got {f.type_name(v)}")
    return Version(
        f.causal_length(v[0], f.sub(p, 0)), f.integer(v[1], f.sub(p, 1)),
        f.integer(v[2], f.sub(p, 2), -1), f.integer(v[3], f.sub(p, 3)), _node(v[4], f.sub(p, 4)),
    )


def _column_change_checked(v: Any, p: str) -> ColumnChange:
    m = f.fields(v, p, ("v", "r", "s", "p"))
    return ColumnChange(
        value=f.value(m["v"], f.sub(p, "value")), round=f.integer(m["r"], f.sub(p, "round")),
        stage=f.integer(m["s"], f.sub(p, "stage"), -1),
        prev=None if m["p"] is None else _version(m["p"], f.sub(p, "prev")),
    )


def _homes(v: Any, p: str) -> dict[str, str]:
    return f.str_map(v, p, _node, MAX_HOMES)


def _change_checked(v: Any, p: str) -> Change:
    m = f.fields(v, p, ("t", "i", "o", "op", "cl", "ts", "or", "tx", "h", "c", "p"))
    op = f.string(m["op"], f.sub(p, "op"), 1)
    if op not in OPS:
        raise DecodeError(f.sub(p, "op"), f"op must be one of {'/'.join(OPS)}")
    return Change(
        table=f.string(m["t"], f.sub(p, "table"), 63, f.IDENT_RE), id=f.uuid_(m["i"], f.sub(p, "id")),
        org_code=_node(m["o"], f.sub(p, "org_code")), op=op,
        cl=f.causal_length(m["cl"], f.sub(p, "cl")), ts=f.integer(m["ts"], f.sub(p, "ts")),
        origin=_node(m["or"], f.sub(p, "origin")), txn=f.integer(m["tx"], f.sub(p, "txn")),
        homes=_homes(m["h"], f.sub(p, "homes")),
        cols=f.str_map(m["c"], f.sub(p, "cols"), _column_change_checked, MAX_COLUMNS, key_code="UNKNOWN_COLUMN"),
        pos=f.integer(m["p"], f.sub(p, "pos")),
    )


def _column_cell_checked(v: Any, p: str) -> ColumnChange:
    """A version-3 ``x`` cell: ``[value, round, stage, prev|nil]``."""
    if type(v) is not list or len(v) != 4:
        raise DecodeError(p, "expected [value, round, stage, prev|nil]")
    return ColumnChange(
        value=f.value(v[0], f.sub(p, "value")), round=f.integer(v[1], f.sub(p, "round")),
        stage=f.integer(v[2], f.sub(p, "stage"), -1),
        prev=None if v[3] is None else _version(v[3], f.sub(p, "prev")),
    )


def _check_split(plain: Mapping[str, Any], other: Mapping[str, Any], p: str) -> None:
    """A version-3 change's or snapshot row's ``c`` and ``x`` name each column once, and
    at most MAX_COLUMNS in all."""
    both = sorted(set(plain) & set(other))
    if both:
        raise DecodeError(f.sub(p, "other_cols." + both[0]), "a column in both c and x")
    if len(plain) + len(other) > MAX_COLUMNS:
        raise DecodeError(f.sub(p, "cols"), f"more than {MAX_COLUMNS} entries", "BODY_TOO_LARGE")


def _change_checked_v3(v: Any, p: str) -> Change:
    m = f.fields(v, p, ("t", "i", "o", "op", "cl", "ts", "or", "tx", "h", "c", "x", "p"))
    plain = f.str_map(m["c"], f.sub(p, "cols"), f.value, MAX_COLUMNS, key_code="UNKNOWN_COLUMN")
    other = f.str_map(m["x"], f.sub(p, "other_cols"), _column_cell_checked, MAX_COLUMNS, key_code="UNKNOWN_COLUMN")
    _check_split(plain, other, p)
    c = _change_checked({**{k: x for k, x in m.items() if k != "x"}, "c": {}}, p)  # never the caller's map
    return c.replace(cols=join_cols(plain, other))



# -- the fast path for changes ----------------------------------------------------------
# A push or pull carries thousands of changes; reading each field through the readers
# above builds a path string per field.  ``_change_fast`` makes the same checks inline and
# gives up (None) at the first doubt, and the checked reader then decodes the change again
# to raise the precise error.  Property test: tests/property/test_codec_props.py.

_CHANGE_KEYS = frozenset(("t", "i", "o", "op", "cl", "ts", "or", "tx", "h", "c", "p"))
_CC_KEYS = frozenset(("v", "r", "s", "p"))
_IDENT = f.IDENT_RE.match
_NODE = f.NODE_RE.match
_I64 = f.INT64_MAX


def _remembering(match: Callable[[str], Any], max_len: int) -> Callable[[Any], bool]:
    """A test for strings ``match`` accepts, remembering those it passed (a batch repeats a
    handful of node codes and names)."""
    good: set[str] = set()

    def test(v: Any) -> bool:
        if type(v) is not str:
            return False
        if v in good:
            return True
        if len(v) <= max_len and match(v) is not None:
            if len(good) < 4096:
                good.add(v)
            return True
        return False
    test.good = good  # type: ignore[attr-defined]
    return test


_is_node = _remembering(_NODE, 32)
_is_ident = _remembering(_IDENT, 63)
_NODES: set[str] = getattr(_is_node, "good")  # codes _is_node passed already
_IDENTS: set[str] = getattr(_is_ident, "good")  # names _is_ident passed already
_tnew = tuple.__new__  # a named tuple from checked fields, without its Python-level __new__


def _is_u64(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _I64


def _version_fields_ok(v: list[Any]) -> bool:
    """The first five items of the list ``v`` are a valid version (R4.5)."""
    cl, rnd, stage, ts, origin = v[0], v[1], v[2], v[3], v[4]
    return (type(cl) is int and type(rnd) is int and type(stage) is int and type(ts) is int
            and 0 <= cl <= _I64 and 0 <= rnd <= _I64 and -1 <= stage <= _I64 and 0 <= ts <= _I64
            and type(origin) is str and (origin in _NODES or _is_node(origin)))


def _fast_version(v: Any) -> Version | None:
    """The version in ``v`` if it is a valid 5-array, else None."""
    if type(v) is list and len(v) == 5 and _version_fields_ok(v):
        return _tnew(Version, v)
    return None


def _fast_value(x: Any) -> tuple[bool, Any]:
    t = type(x)
    if x is None or t is str or t is bool:
        return True, x
    if t is int:
        return f.INT64_MIN <= x <= _I64, x
    if t is float:
        return x == x and x not in (float("inf"), float("-inf")), x
    try:
        return True, f.value(x, "")
    except DecodeError:
        return False, None




def _homes_ok(homes: Any) -> bool:
    """A change's or snapshot row's homes are valid (the fast readers); the answer for a
    homes map already seen is remembered (a batch repeats a handful of them)."""
    if type(homes) is not dict or len(homes) > MAX_HOMES:
        return False
    key = tuple(homes.items())
    try:
        ok = _HOMES_SEEN.get(key)
    except TypeError:  # an unhashable route or code: not a node code
        return False
    if ok is None:
        ok = all(_is_ident(k) and _is_node(code) for k, code in homes.items())
        if len(_HOMES_SEEN) >= 4096:
            _HOMES_SEEN.clear()
        # a key equal to another of other types (1 == True) is never all strings: both invalid
        _HOMES_SEEN[key] = ok
    return ok


_HOMES_SEEN: dict[tuple[tuple[Any, Any], ...], bool] = {}


def _change_head_ok(table: Any, rid: Any, org: Any, op: Any, cl: Any, ts: Any, origin: Any, txn: Any,
                    homes: Any, pos: Any) -> bool:
    """The fields of a change other than its columns are valid (both fast readers)."""
    return (_is_ident(table) and type(rid) is bytes and len(rid) == 16 and _is_node(org) and _is_node(origin)
            and type(op) is str and op in OPS and type(cl) is int and 0 <= cl <= _I64
            and type(ts) is int and 0 <= ts <= _I64 and type(txn) is int and 0 <= txn <= _I64
            and type(pos) is int and 0 <= pos <= _I64 and _homes_ok(homes))


def _fast_cell(value: Any, rnd: Any, stage: Any, prev: Any) -> ColumnChange | None:
    """A column change from its four checked parts, or None (both fast readers)."""
    if not (type(rnd) is int and 0 <= rnd <= _I64 and type(stage) is int and -1 <= stage <= _I64):
        return None
    if prev is not None:
        prev = _fast_version(prev)
        if prev is None:
            return None
    ok, value = _plain(value)
    return _tnew(ColumnChange, (value, rnd, stage, prev)) if ok else None


def _change_fast(v: Any) -> Change | None:
    """The change in ``v`` if every check passes, else None (never raises).

    The checks of :func:`_change_checked`, inlined: a batch runs this for every change."""
    if type(v) is not dict or len(v) != 11:
        return None
    try:
        table, rid, org, op, cl, ts, origin, txn, homes, raw, pos = (
            v["t"], v["i"], v["o"], v["op"], v["cl"], v["ts"], v["or"], v["tx"], v["h"], v["c"], v["p"])
    except KeyError:  # 11 entries but not the 11 keys
        return None
    if not (_change_head_ok(table, rid, org, op, cl, ts, origin, txn, homes, pos)
            and type(raw) is dict and len(raw) <= MAX_COLUMNS):
        return None
    cols: dict[str, ColumnChange] = {}
    idents = _IDENTS
    for k, m in raw.items():
        if type(m) is not dict or len(m) != 4 or (k not in idents and not _is_ident(k)):
            return None
        try:
            cc = _fast_cell(m["v"], m["r"], m["s"], m["p"])
        except KeyError:
            return None
        if cc is None:
            return None
        cols[k] = cc
    return Change(table, _uuid(rid), org, op, cl, ts, origin, txn, dict(homes), cols, pos)


def _fast_or_checked(fast: Callable[[Any], T | None], checked: Callable[[Any, str], T]) -> Callable[[Any, str], T]:
    """A reader trying ``fast`` first; when it gives up, ``checked`` reads again and names the problem."""
    def read(v: Any, p: str) -> T:
        got = fast(v)
        return got if got is not None else checked(v, p)
    return read


_change = _fast_or_checked(_change_fast, _change_checked)


def _changes(v: Any, p: str) -> tuple[Change, ...]:
    return f.array(v, p, _change, MAX_CHANGES)


def _change_fast_v3(v: Any) -> Change | None:
    """The version-3 change in ``v`` if every check passes, else None: ``c`` holds the bare
    values of the columns written at round 0, stage 0 that replaced nothing known, ``x``
    the others as ``[value, round, stage, prev|nil]`` (SPEC §5.1)."""
    if type(v) is not dict or len(v) != 12:
        return None
    try:
        table, rid, org, op, cl, ts, origin, txn, homes, plain, other, pos = (
            v["t"], v["i"], v["o"], v["op"], v["cl"], v["ts"], v["or"], v["tx"], v["h"], v["c"], v["x"], v["p"])
    except KeyError:  # 12 entries but not the 12 keys
        return None
    if not (_change_head_ok(table, rid, org, op, cl, ts, origin, txn, homes, pos)
            and type(plain) is dict and type(other) is dict and len(plain) + len(other) <= MAX_COLUMNS):
        return None
    idents = _IDENTS
    if not idents.issuperset(plain):
        if not all(map(_is_ident, plain)):
            return None
    fixed: dict[str, Any] = {}  # values read into their checked form: written back once all pass
    for k, value in plain.items():  # inline: the bulk of a catch-up's columns, kept as sent
        t = type(value)
        if not (value is None or t is str or t is bool):
            ok, checked = _fast_value(value)
            if not ok:
                return None
            if checked is not value:
                fixed[k] = checked
    cells: dict[str, ColumnChange] = {}
    regular = True
    for k, m in other.items():
        if type(m) is not list or len(m) != 4 or (k not in idents and not _is_ident(k)) or k in plain:
            return None
        cc = _fast_cell(*m)
        if cc is None:
            return None
        cells[k] = cc
        regular = regular and bool(cc[1] or cc[2] or cc[3] is not None)
    if fixed:
        plain.update(fixed)  # the map is this reader's own (msgpack made it), never the caller's
    if regular:
        return Change.split(table, _uuid(rid), org, op, cl, ts, origin, txn, dict(homes), plain, cells, pos)
    # a plain cell sent in x: valid, but the split's invariant is that ``other`` holds none
    return Change(table, _uuid(rid), org, op, cl, ts, origin, txn, dict(homes), join_cols(plain, cells), pos)


_change_v3 = _fast_or_checked(_change_fast_v3, _change_checked_v3)


def _changes_v3(v: Any, p: str) -> tuple[Change, ...]:
    return f.array(v, p, _change_v3, MAX_CHANGES)


def _table_decl(v: Any, p: str) -> TableDecl:
    m = f.fields(v, p, ("v", "c"))
    cols = f.array(m["c"], f.sub(p, "columns"), lambda x, q: f.string(x, q, 63, f.IDENT_RE), MAX_COLUMNS)
    return TableDecl(f.integer(m["v"], f.sub(p, "version"), 1, 2**31 - 1), cols)


def _tables(v: Any, p: str) -> dict[str, TableDecl]:
    return f.str_map(v, p, _table_decl, MAX_TABLES)


def _summary(v: Any, p: str) -> dict[str, Any]:
    m = f.str_map(v, p, lambda x, q: f.value(x, q, 1), MAX_SUMMARY_KEYS)
    if "node" not in m:
        raise DecodeError(f.sub(p, "node"), "missing field")
    _node(m["node"], f.sub(p, "node"))
    return m


_ROW_KEYS = frozenset(("i", "o", "cl", "h", "c"))
_ROW_KEYS_V3 = frozenset(("i", "o", "cl", "h", "v", "c", "x"))


def _row_head_ok(v: dict, homes: Any) -> bool:
    """The id, org_code, cl and homes of a snapshot row map are valid (fast readers)."""
    rid = v["i"]
    return type(rid) is bytes and len(rid) == 16 and _is_node(v["o"]) and _is_u64(v["cl"]) and _homes_ok(homes)


def _plain(value: Any) -> tuple[bool, Any]:
    t = type(value)
    if value is None or t is str or t is bool:
        return True, value
    return _fast_value(value)


def _snapshot_row_fast(v: Any) -> SnapshotRow | None:
    """The version-1/2 snapshot row in ``v`` if every check passes, else None (the checked
    reader then names the problem); the twin of :func:`_change_fast`."""
    if type(v) is not dict or v.keys() != _ROW_KEYS:
        return None
    homes, raw = v["h"], v["c"]
    if not (_row_head_ok(v, homes) and type(raw) is dict and len(raw) <= MAX_COLUMNS):
        return None
    cols: dict[str, tuple[Any, Version]] = {}
    idents = _IDENTS
    for k, cell in raw.items():
        if not (type(cell) is list and len(cell) == 2 and (k in idents or _is_ident(k))):
            return None
        ver = _fast_version(cell[1])
        ok, value = _plain(cell[0])
        if ver is None or not ok:
            return None
        cols[k] = (value, ver)
    return SnapshotRow(_uuid(v["i"]), v["o"], v["cl"], dict(homes), cols)


def _snapshot_row_fast_v3(v: Any) -> SnapshotRow | None:
    """The version-3 snapshot row in ``v`` if every check passes, else None: ``c`` holds the
    values of the cells written at the row's version ``v`` that replaced nothing known, ``x``
    every other cell as ``[value, version, prev|nil]`` (R9.2)."""
    if type(v) is not dict or v.keys() != _ROW_KEYS_V3:
        return None
    homes, plain, other = v["h"], v["c"], v["x"]
    if not (_row_head_ok(v, homes) and type(plain) is dict and type(other) is dict
            and len(plain) + len(other) <= MAX_COLUMNS):
        return None
    idents = _IDENTS
    cols: dict[str, tuple[Any, Version]] = {}
    if plain:
        ver = _fast_version(v["v"])
        if ver is None:
            return None
        for k, value in plain.items():  # inline: most of a snapshot's cells
            if not (k in idents or _is_ident(k)):
                return None
            t = type(value)
            if not (value is None or t is str or t is bool):
                ok, value = _fast_value(value)
                if not ok:
                    return None
            cols[k] = (value, ver)
    elif v["v"] is not None:
        return None
    prevs: dict[str, Version] = {}
    for k, cell in other.items():
        if not (type(cell) is list and len(cell) == 3 and (k in idents or _is_ident(k)) and k not in cols):
            return None
        ver = _fast_version(cell[1])
        ok, value = _plain(cell[0])
        if ver is None or not ok:
            return None
        if cell[2] is not None:
            prev = _fast_version(cell[2])
            if prev is None:
                return None
            prevs[k] = prev
        cols[k] = (value, ver)
    return SnapshotRow(_uuid(v["i"]), v["o"], v["cl"], dict(homes), cols, prevs)


def _snapshot_row_head(m: dict, p: str) -> dict[str, Any]:
    return dict(id=f.uuid_(m["i"], f.sub(p, "id")), org_code=_node(m["o"], f.sub(p, "org_code")),
                cl=f.causal_length(m["cl"], f.sub(p, "cl")), homes=_homes(m["h"], f.sub(p, "homes")))


def _snapshot_row_checked(v: Any, p: str) -> SnapshotRow:
    m = f.fields(v, p, ("i", "o", "cl", "h", "c"))

    def col(x: Any, q: str) -> tuple[Any, Version]:
        if type(x) is not list or len(x) != 2:
            raise DecodeError(q, "expected [value, version]")
        return (f.value(x[0], f.sub(q, "value")), _version(x[1], f.sub(q, "version")))

    return SnapshotRow(**_snapshot_row_head(m, p),
                       cols=f.str_map(m["c"], f.sub(p, "cols"), col, MAX_COLUMNS, key_code="UNKNOWN_COLUMN"))


def _snapshot_row_checked_v3(v: Any, p: str) -> SnapshotRow:
    m = f.fields(v, p, ("i", "o", "cl", "h", "v", "c", "x"))
    head = _snapshot_row_head(m, p)
    plain = f.str_map(m["c"], f.sub(p, "cols"), f.value, MAX_COLUMNS, key_code="UNKNOWN_COLUMN")
    if plain and m["v"] is None:
        raise DecodeError(f.sub(p, "version"), "cells in c need the row's version")
    if not plain and m["v"] is not None:
        raise DecodeError(f.sub(p, "version"), "a row version without cells in c")

    def cell(x: Any, q: str) -> tuple[Any, Version, Version | None]:
        if type(x) is not list or len(x) != 3:
            raise DecodeError(q, "expected [value, version, prev|nil]")
        prev = None if x[2] is None else _version(x[2], f.sub(q, "prev"))
        return (f.value(x[0], f.sub(q, "value")), _version(x[1], f.sub(q, "version")), prev)

    other = f.str_map(m["x"], f.sub(p, "other_cols"), cell, MAX_COLUMNS, key_code="UNKNOWN_COLUMN")
    _check_split(plain, other, p)
    ver = _version(m["v"], f.sub(p, "version")) if plain else None
    cols: dict[str, tuple[Any, Version]] = {k: (val, ver) for k, val in plain.items()}  # type: ignore[misc]
    cols.update({k: (val, cv) for k, (val, cv, _) in other.items()})
    return SnapshotRow(**head, cols=cols, prevs={k: pv for k, (_, _, pv) in other.items() if pv is not None})


_ROW_KEYS_V4 = frozenset(("i", "o", "cl", "h", "c", "v"))
#: column-name tuples already checked (a table's rows repeat a handful of them)
_NAMES_SEEN: set[tuple[str, ...]] = set()


def _names_ok(names: tuple[str, ...]) -> bool:
    if names in _NAMES_SEEN:
        return True
    if not all(type(k) is str and (k in _IDENTS or _is_ident(k)) for k in names):
        return False
    if len(_NAMES_SEEN) >= 4096:
        _NAMES_SEEN.clear()
    _NAMES_SEEN.add(names)
    return True


def _stored_row_fast(v: Any) -> StoredRow | None:
    """The version-4 snapshot row in ``v`` if every check passes, else None: ``c`` holds the
    values as JSON text (or, for a row whose text would pass MAX_VALUE_BYTES, a map), ``v``
    each column's ``[cl, round, stage, ts, origin, prev|nil]`` as JSON text, both for the
    same columns (R9.2).  Checked cell by cell; the texts are kept for the database
    (:class:`StoredRow`): a bootstrap's rows are parsed once and never re-encoded."""
    if type(v) is not dict or v.keys() != _ROW_KEYS_V4:
        return None
    homes, vals_json, vers_json = v["h"], v["c"], v["v"]
    if not (_row_head_ok(v, homes) and type(vers_json) is str):
        return None
    try:
        vers = orjson.loads(vers_json)
        if type(vals_json) is str:
            vals = orjson.loads(vals_json)
        elif type(vals_json) is dict:
            vals, vals_json = vals_json, None
        else:
            return None
    except orjson.JSONDecodeError:
        return None
    if not (type(vals) is dict and type(vers) is dict and len(vers) <= MAX_COLUMNS
            and vals.keys() == vers.keys() and _names_ok(names := tuple(vers))):
        return None
    for x in vals.values():
        t = type(x)
        if x is None or t is str or t is bool:
            continue
        # beyond ±2**63 a float may be an integer orjson could not hold: the checked reader reads
        # the text again exactly (``json``) and names it (R4.6: values are 64-bit integers)
        if f.huge(x) or not _fast_value(x)[0]:
            return None
    prevs = False
    for ver in vers.values():  # [cl, round, stage, ts, origin] and, if a sixth, the replaced version
        if type(ver) is not list or len(ver) not in (5, 6) or not _version_fields_ok(ver):
            return None
        if len(ver) == 6 and ver[5] is not None:
            if _fast_version(ver[5]) is None:
                return None
            prevs = True
    return StoredRow(_uuid(v["i"]), v["o"], v["cl"], dict(homes), vals, None,
                     vals_json=vals_json, vers_json=vers_json, names=names, has_prevs=prevs)


def _json_doc(text: Any, p: str) -> Any:
    """The value of a JSON text field, integers exact; DECODE_ERROR naming ``p`` if it is none."""
    if type(text) is not str:
        raise DecodeError(p, f"expected JSON text, got {f.type_name(text)}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DecodeError(p, f"not JSON text: {exc}") from None


def _stored_row_checked(v: Any, p: str) -> StoredRow:
    m = f.fields(v, p, ("i", "o", "cl", "h", "c", "v"))
    head = _snapshot_row_head(m, p)
    raw = m["c"] if type(m["c"]) is dict else _json_doc(m["c"], f.sub(p, "cols"))
    vals = f.str_map(raw, f.sub(p, "cols"), f.value, MAX_COLUMNS, key_code="UNKNOWN_COLUMN")

    def version(x: Any, q: str) -> list[Any]:
        if type(x) is not list or len(x) not in (5, 6):
            raise DecodeError(q, "expected [cl, round, stage, ts, origin, prev|nil]")
        if len(x) == 6 and x[5] is not None:
            _version(x[5], f.sub(q, "prev"))
        return [*_version(x[:5], q), *x[5:]]

    vers = f.str_map(_json_doc(m["v"], f.sub(p, "versions")), f.sub(p, "versions"), version, MAX_COLUMNS,
                     key_code="UNKNOWN_COLUMN")
    if vals.keys() != vers.keys():
        odd = sorted(vals.keys() ^ vers.keys())[0]
        raise DecodeError(f.sub(p, "versions" if odd in vals else "cols"),
                          f"column {odd!r} needs both a value and a version")
    return StoredRow(**head, vals=vals, vers=vers, vals_json=m["c"] if type(m["c"]) is str else None,
                     vers_json=m["v"])  # texts as they came: the row re-encodes to the same bytes


def _stored_row_out(r: SnapshotRow | StoredRow) -> dict[str, Any]:
    """A snapshot row's version-4 wire map (R9.2); its texts are kept on the row.  A text the
    row has already (as stored at the parent, or as received) goes as it is."""
    s = StoredRow.of(r)
    vals: Any = s.vals_json
    if len(vals) > MAX_VALUE_BYTES // 4 and len(vals.encode()) > MAX_VALUE_BYTES:
        vals = canonical(s.vals)  # too long for one string (R4.7): the values as a map
    return {"i": s.id.bytes, "o": s.org_code, "cl": s.cl, "h": _homes_out(s.homes), "c": vals, "v": s.vers_json}


_snapshot_row = _fast_or_checked(_snapshot_row_fast, _snapshot_row_checked)
_stored_row = _fast_or_checked(_stored_row_fast, _stored_row_checked)
_snapshot_row_v3 = _fast_or_checked(_snapshot_row_fast_v3, _snapshot_row_checked_v3)


def _quarantined(v: Any, p: str) -> Quarantined:
    m = f.fields(v, p, ("p", "c"))
    return Quarantined(f.integer(m["p"], f.sub(p, "pos")), f.string(m["c"], f.sub(p, "code"), 48))


def _id_range(v: Any, p: str) -> IdRange:
    m = f.fields(v, p, ("lo", "hi"))
    return IdRange(f.uuid_(m["lo"], f.sub(p, "lo")), f.optional(f.uuid_)(m["hi"], f.sub(p, "hi")))


def _range_sum(v: Any, p: str) -> RangeSum:
    m = f.fields(v, p, ("lo", "hi", "n", "x"))
    return RangeSum(
        f.uuid_(m["lo"], f.sub(p, "lo")), f.optional(f.uuid_)(m["hi"], f.sub(p, "hi")),
        f.integer(m["n"], f.sub(p, "count")), f.binary(m["x"], f.sub(p, "checksum"), 32),
    )


def _detail(x: Any, q: str) -> Any:
    if type(x) is str:
        return f.string(x, q, 256)
    if x is None or type(x) in (bool, int):
        return f.value(x, q)
    raise DecodeError(q, f"detail values are scalars, got {f.type_name(x)}")


def _details(v: Any, p: str) -> dict[str, Any]:
    return f.str_map(v, p, _detail, 16)


# -- writers for composite fields -------------------------------------------------------

def _version_out(v: Version) -> list[Any]:
    return v.as_list()


def _homes_out(homes: Mapping[str, Any]) -> dict[str, Any]:
    """Homes in canonical form: sorted by route, without ``canonical``'s walk when (as always
    from a valid change or row) every home is a string."""
    return dict(sorted(homes.items())) if all(type(x) is str for x in homes.values()) else canonical(homes)


def change_map(c: Change | StoredChange, with_pos: bool = True) -> dict[str, Any]:
    """The wire map of a change (without ``p`` for :func:`change_hash`); a column is read by
    index, so a :class:`StoredChange` (prevs as lists) maps as its :class:`Change` would."""
    m: dict[str, Any] = {
        "t": c.table, "i": c.id.bytes, "o": c.org_code, "op": c.op, "cl": c.cl, "ts": c.ts,
        "or": c.origin, "tx": c.txn,
        "h": _homes_out(c.homes),
        "c": {k: {"v": cc[0] if type(cc[0]) in _SCALARS else canonical(cc[0]), "r": cc[1], "s": cc[2],
                  "p": list(cc[3]) if cc[3] else None}
              for k, cc in sorted(c.cols.items())},
    }
    if with_pos:
        m["p"] = c.pos
    return m


def change_map_v3(c: Change | StoredChange) -> dict[str, Any]:
    """The version-3 wire map of a change: columns at round 0, stage 0 with no prev as bare
    values in ``c``, the others as ``[value, round, stage, prev|nil]`` in ``x`` (SPEC §5.1).
    A :class:`StoredChange` holds the two maps already, as the log keeps them."""
    if type(c) is StoredChange:
        return {"t": c.table, "i": c.id.bytes, "o": c.org_code, "op": c.op, "cl": c.cl, "ts": c.ts, "or": c.origin,
                "tx": c.txn, "h": _homes_out(c.homes), "c": c.plain, "x": c.other, "p": c.pos}
    plain = {k: val if type(val) in _SCALARS else canonical(val) for k, val in sorted(c.plain.items())}
    other = {k: [val if type(val) in _SCALARS else canonical(val), rnd, stage, prev]
             for k, (val, rnd, stage, prev) in sorted(c.other.items())}
    return {"t": c.table, "i": c.id.bytes, "o": c.org_code, "op": c.op, "cl": c.cl, "ts": c.ts, "or": c.origin,
            "tx": c.txn, "h": _homes_out(c.homes), "c": plain, "x": other, "p": c.pos}


def _row_out(r: SnapshotRow) -> dict[str, Any]:
    """A snapshot row's wire map before version 3, and the map its digest is taken of (R9.2)."""
    return {"i": r.id.bytes, "o": r.org_code, "cl": r.cl, "h": _homes_out(r.homes),
            "c": {k: [val if type(val) in _SCALARS else canonical(val), list(ver)] for k, (val, ver) in sorted(r.cols.items())}}


def _row_out_v3(r: SnapshotRow) -> dict[str, Any]:
    """A snapshot row's wire map from version 3 (R9.2): the row's version ``v`` is the highest
    version of a cell whose write replaced nothing known; such cells go in ``c`` as bare
    values, every other cell in ``x`` as ``[value, version, prev|nil]``."""
    prevs = r.prevs
    items = sorted(r.cols.items())
    top = None
    for k, cell in items:  # the highest version of a cell that replaced nothing known
        ver = cell[1]
        if (top is None or ver > top) and k not in prevs:
            top = ver
    plain: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for k, (val, ver) in items:
        val = val if type(val) in _SCALARS else canonical(val)
        if ver == top and k not in prevs:
            plain[k] = val
        else:
            prev = prevs.get(k)
            other[k] = [val, ver, prev]
    return {"i": r.id.bytes, "o": r.org_code, "cl": r.cl, "h": _homes_out(r.homes),
            "v": top if plain else None, "c": plain, "x": other}


def _tables_out(t: Mapping[str, TableDecl]) -> dict[str, Any]:
    return {k: {"v": d.version, "c": list(d.columns)} for k, d in sorted(t.items())}


_CHANGES = (_changes, lambda cs: [change_map(c) for c in cs])
_CHANGES_V3 = (_changes_v3, lambda cs: [change_map_v3(c) for c in cs])
_UUID = (f.uuid_, _uuid_out)
_OPT_UUID = (f.optional(f.uuid_), _uuid_out)
_INT = (_u, _same)
_OPT_INT = (f.optional(_u), _same)


def _fl(key: str, attr: str, rw: tuple[Callable[[Any, str], Any], Callable[[Any], Any]],
        since: int = 1, absent: Any = None, until: int = 255) -> Field:
    return Field(key, attr, rw[0], rw[1], since, absent, until)


#: The field tables of SPEC §4–§10, in wire order.
FIELDS: Mapping[type, tuple[Field, ...]] = {
    Hello: (
        _fl("vs", "versions", (lambda v, p: f.array(v, p, lambda x, q: f.integer(x, q, 1, 255), MAX_VERSIONS), list)),
        _fl("n", "node", (_node, _same)), _fl("in", "instance", _UUID), _fl("inc", "incarnation", _UUID),
        _fl("e", "epoch", _INT), _fl("ck", "clock", _INT), _fl("cur", "pull_cursor", _INT),
        _fl("ch", "pull_hash", (_hash, _same)), _fl("tb", "tables", (_tables, _tables_out)),
    ),
    HelloReply: (
        _fl("v", "version", (lambda v, p: f.integer(v, p, 1, 255), _same)), _fl("n", "node", (_node, _same)),
        _fl("inc", "incarnation", _UUID), _fl("e", "epoch", _INT), _fl("ck", "clock", _INT, since=2),
        _fl("pc", "push_cursor", _INT), _fl("ph", "push_hash", (_hash, _same)),
        _fl("tb", "tables", (_tables, _tables_out)),
    ),
    Push: (
        _fl("b", "batch_id", _UUID), _fl("e", "epoch", _INT), _fl("f", "from_pos", _INT),
        _fl("to", "to_pos", _INT),
        _fl("ch", "changes", _CHANGES, until=2), _fl("ch", "changes", _CHANGES_V3, since=3),
        _fl("sm", "summary", (lambda v, p: f.array(v, p, _summary, MAX_SUMMARIES),
                              lambda s: [canonical(x) for x in s]), since=2, absent=()),
    ),
    PushReply: (
        _fl("a", "acked_pos", _INT), _fl("ap", "applied", _INT),
        _fl("q", "quarantined", (lambda v, p: f.array(v, p, _quarantined, MAX_CHANGES),
                                 lambda qs: [{"p": q.pos, "c": q.code} for q in qs])),
    ),
    PullRequest: (
        _fl("a", "after", _INT), _fl("e", "epoch", _INT),
        _fl("l", "limit", (lambda v, p: f.integer(v, p, 1, MAX_CHANGES), _same)),
        _fl("w", "wait_ms", (lambda v, p: f.integer(v, p, 0, MAX_WAIT_MS), _same)),
    ),
    PullReply: (
        _fl("ch", "changes", _CHANGES, until=2), _fl("ch", "changes", _CHANGES_V3, since=3),
        _fl("lp", "last_pos", _INT), _fl("hd", "head", _INT),
        _fl("e", "epoch", _INT), _fl("m", "more", (f.boolean, _same)),
    ),
    SnapshotRequest: (
        _fl("t", "table", (lambda v, p: f.string(v, p, 63, f.IDENT_RE), _same)),
        _fl("af", "after_id", _OPT_UUID),
        _fl("l", "limit", (lambda v, p: f.integer(v, p, 1, MAX_CHANGES), _same)),
        _fl("p", "position", _OPT_INT),
    ),
    SnapshotChunk: (
        _fl("t", "table", (lambda v, p: f.string(v, p, 63, f.IDENT_RE), _same)),
        _fl("p", "position", _INT),
        _fl("r", "rows", (lambda v, p: f.array(v, p, _snapshot_row, MAX_CHANGES),
                          lambda rs: [_row_out(r) for r in rs]), until=2),
        _fl("r", "rows", (lambda v, p: f.array(v, p, _snapshot_row_v3, MAX_CHANGES),
                          lambda rs: [_row_out_v3(r) for r in rs]), since=3, until=3),
        _fl("r", "rows", (lambda v, p: f.array(v, p, _stored_row, MAX_CHANGES),
                          lambda rs: [_stored_row_out(r) for r in rs]), since=4),
        _fl("nx", "next_after_id", _OPT_UUID), _fl("d", "done", (f.boolean, _same)),
    ),
    VerifyRequest: (
        _fl("t", "table", (lambda v, p: f.string(v, p, 63, f.IDENT_RE), _same)),
        _fl("p", "position", _OPT_INT),
        _fl("rg", "ranges", (lambda v, p: f.array(v, p, _id_range, MAX_RANGES),
                             lambda rs: [{"lo": r.lo.bytes, "hi": _uuid_out(r.hi)} for r in rs])),
    ),
    VerifyReply: (
        _fl("t", "table", (lambda v, p: f.string(v, p, 63, f.IDENT_RE), _same)),
        _fl("p", "position", _INT),
        _fl("rg", "ranges", (lambda v, p: f.array(v, p, _range_sum, MAX_RANGES),
                             lambda rs: [{"lo": r.lo.bytes, "hi": _uuid_out(r.hi), "n": r.count,
                                          "x": r.checksum} for r in rs])),
    ),
    ErrorReply: (
        _fl("c", "code", (lambda v, p: f.string(v, p, 48, CODE_RE), _same)),
        _fl("r", "reason", (lambda v, p: f.string(v, p, MAX_TEXT), _same)),
        _fl("h", "hint", (f.optional(lambda v, p: f.string(v, p, MAX_TEXT)), _same)),
        _fl("rt", "retryable", (f.boolean, _same)),
        _fl("d", "details", (_details, dict)),
    ),
}


def _check_version(version: int) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise DecodeError("", f"protocol version {version} is not spoken here "
                              f"(speaks {list(SUPPORTED_VERSIONS)})", "UNSUPPORTED_VERSION")


def encode(msg: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """Canonical wire bytes of ``msg`` at ``version``.  ``HelloReply`` is encoded at
    its own ``version`` field; a v1 ``Push`` drops ``summary`` (SPEC R3.5)."""
    cls = type(msg)
    if cls is HelloReply:
        version = msg.version  # type: ignore[union-attr]
    _check_version(version)
    out: dict[str, Any] = {}
    for fd in FIELDS[cls]:
        if fd.spoken(version):
            out[fd.key] = fd.write(getattr(msg, fd.attr))
    return msgpack.packb(out, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """msgpack → Python objects with the limits of R4.7; :class:`DecodeError` on failure."""
    if len(data) > MAX_BODY_BYTES:
        raise DecodeError("", f"body of {len(data)} bytes exceeds {MAX_BODY_BYTES}", "BODY_TOO_LARGE")
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            max_str_len=MAX_VALUE_BYTES, max_bin_len=MAX_BIN_LEN,
            max_array_len=MAX_CHANGES, max_map_len=MAX_MAP_LEN,
        )
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ...
        raise _unpack_error(data, exc) from None


def _unpack_error(data: bytes, exc: Exception) -> DecodeError:
    text = str(exc)
    if "exceeds max_str_len" in text:
        return DecodeError("", text, "VALUE_TOO_LARGE")
    if "exceeds max_" in text:
        return DecodeError("", text, "BODY_TOO_LARGE")
    problem = f.declared_length_problem(data, _UNPACK_LIMITS)
    if problem is not None:
        return DecodeError("", problem[1], problem[0])
    if isinstance(exc, msgpack.ExtraData):
        return DecodeError("", "trailing bytes after the message")
    if isinstance(exc, UnicodeDecodeError):
        return DecodeError("", "a string is not valid UTF-8")
    if isinstance(exc, msgpack.StackError):
        return DecodeError("", "nested too deeply")
    if "incomplete input" in text or not data:
        return DecodeError("", "truncated: the body ends inside a value")
    return DecodeError("", f"not msgpack: {text or type(exc).__name__}")


def decode(kind: str, data: bytes, version: int = PROTOCOL_VERSION) -> Message:
    """The message of ``kind`` (a key of :data:`KINDS`) in ``data``, decoded at
    ``version`` (ignored for ``hello`` and ``hello_reply``, which describe
    themselves).  Raises :class:`DecodeError` and nothing else."""
    if kind not in KINDS:
        raise DecodeError("", f"unknown message kind {kind!r}")
    cls = KINDS[kind]
    if cls is Hello:
        version = PROTOCOL_VERSION
    elif cls is not HelloReply:
        _check_version(version)
    obj = unpack(data)
    if not isinstance(obj, dict):
        raise DecodeError("", f"expected a map, got {f.type_name(obj)}")
    if cls is HelloReply:
        version = f.integer(obj.get("v"), "version", 1, 255)
        _check_version(version)
    specs = [fd for fd in FIELDS[cls] if fd.spoken(version)]
    m = f.fields(obj, "", tuple(fd.key for fd in specs))
    values = {fd.attr: fd.absent for fd in FIELDS[cls] if fd.since > version}
    try:
        values.update({fd.attr: fd.read(m[fd.key], fd.attr) for fd in specs})
        return cls(**values)
    except SyncdError:
        raise
    except Exception as exc:  # a reader bug must still surface as a DecodeError
        raise DecodeError("", f"internal decoder failure: {type(exc).__name__}") from None


# -- canonical bytes for merge, cursors and verify ------------------------------------

def encode_value(v: Any) -> bytes:
    """Canonical bytes of a column value: msgpack with maps sorted by key, the last
    merge tie-break (SPEC R5.3)."""
    return msgpack.packb(canonical(v), use_bin_type=True)


def change_hash(change: Change) -> bytes:
    """SHA-256 of the change's canonical wire map without ``pos`` (SPEC R8.2): the
    same on every node that holds this change, whatever its position there."""
    return hashlib.sha256(msgpack.packb(change_map(change, with_pos=False), use_bin_type=True)).digest()


def row_digest(row: SnapshotRow) -> bytes:
    """SHA-256 of a snapshot row's canonical map without prevs (SPEC R9.2): two nodes
    holding the same cells agree, whatever each knows of what the writes replaced."""
    return hashlib.sha256(msgpack.packb(_row_out(row), use_bin_type=True)).digest()


def range_checksum(digests: list[bytes]) -> bytes:
    """Checksum of an id range: SHA-256 over its rows' digests in id order (SPEC R9.2)."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return h.digest()


def gunzip_capped(data: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    """Inflate a ``Content-Encoding: gzip`` body, refusing more than ``limit`` bytes
    out (``BODY_TOO_LARGE``) without ever holding more (SPEC R11.4)."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise SyncdError("BODY_TOO_LARGE", f"gzip body inflates beyond {limit} bytes")
        if not d.eof or d.unused_data:
            raise SyncdError("MALFORMED_BODY", "gzip stream is truncated or has trailing bytes")
    except zlib.error as exc:
        raise SyncdError("MALFORMED_BODY", f"corrupt gzip body: {exc}") from None
    return out


#: zlib's fastest level: a catch-up body of 2,000 member changes (530 KB of msgpack) deflates
#: in 1.8 µs a change against 5.0 µs at level 6 and comes out 6 % larger (98.5 against 92.8 KB);
#: every hop of a catch-up or snapshot pays it on the sender's CPU, where the time goes
GZIP_LEVEL = 1


def gzip_body(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """gzip a body deterministically (mtime 0), for tests and senders."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def pack_object(obj: Any) -> bytes:
    """Raw msgpack of any Python object, no checks: for building hostile test vectors."""
    return msgpack.packb(obj, use_bin_type=True)
