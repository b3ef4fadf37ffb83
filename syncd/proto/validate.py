"""What a decoded push must mean before anything of it is applied (SPEC §5, HC-34).

Theory of operation
-------------------
The codec guarantees types and sizes; this module checks meaning against the
schema and the sender's hello, without I/O:

* :func:`check_tables` compares the table declarations exchanged at hello and
  returns, per table, the columns a peer's changes may carry (ours plus the peer's
  additive extras, kept opaque — HC-13), or refuses with ``SCHEMA_INCOMPATIBLE``.
* :func:`push_problems` lists every problem of a push, each with the position of
  the change and its error code; :func:`validate_push` raises the first one.  A push
  with any problem is refused as a whole (SPEC R5.6): nothing of it is applied, its
  changes may be quarantined for operators by the caller.

Scope and writer rules (who may write which row and column) are
:mod:`syncd.routing`'s job; clock skew of the *peer* is checked at hello.
Reasons name tables, ids and columns, never values (HC-15).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

from syncd.errors import SyncdError
from syncd.proto.change import OP_DELETE, Change
from syncd.proto.codec import MAX_VALUE_BYTES, encode_value
from syncd.proto.messages import Push, TableDecl, tables_from_schema


@dataclass(frozen=True)
class Problem:
    """One reason to refuse a push; ``pos`` is ``None`` for the batch itself."""

    pos: int | None
    code: str
    reason: str

    def error(self) -> SyncdError:
        details = {} if self.pos is None else {"pos": self.pos}
        return SyncdError(self.code, self.reason, details=details)


def check_tables(ours: Mapping[str, TableDecl], theirs: Mapping[str, TableDecl]) -> dict[str, frozenset[str]]:
    """Columns a peer's changes may carry, per table both declare (SPEC R3.4).

    A table whose merge-rule ``version`` differs is ``SCHEMA_INCOMPATIBLE``:
    removing or renaming a replicated column or changing its merge rule bumps the
    version, adding a column does not.  Tables only one side declares are not
    exchanged (changes of them are ``UNKNOWN_TABLE``).
    """
    allowed: dict[str, frozenset[str]] = {}
    bad = []
    for name in sorted(set(ours) & set(theirs)):
        if ours[name].version != theirs[name].version:
            bad.append(f"{name} v{theirs[name].version} (here v{ours[name].version})")
            continue
        allowed[name] = frozenset(ours[name].columns) | frozenset(theirs[name].columns)
    if bad:
        raise SyncdError("SCHEMA_INCOMPATIBLE", "incompatible merge-rule versions: " + ", ".join(bad))
    return allowed


def _change_shape(c: Change) -> Iterator[tuple[str, str]]:
    """(code, reason) for problems of a change on its own."""
    cl = c.cl
    if cl < 0:
        yield "NEGATIVE_CL", f"{c.table} {c.id}: negative causal length {cl}"
        return
    if cl == 0:
        yield "INVALID_CHANGE", f"{c.table} {c.id}: causal length 0 (rows start at 1)"
    elif (c.op == OP_DELETE) == c.alive:
        yield "INVALID_CHANGE", f"{c.table} {c.id}: op {c.op} with cl {cl} (deletes have even cl, writes odd)"
    if c.op == OP_DELETE and c.names:
        yield "INVALID_CHANGE", f"{c.table} {c.id}: a delete carries no columns"
    if c.homes.get("home") != c.org_code:
        yield "INVALID_CHANGE", f"{c.table} {c.id}: homes.home must be the row's org_code"
    # the common case: one pass over the values without sorting (a column that names the version
    # it replaced is checked below, as is a long value); the problems, if any, in column order
    other = c.other
    bad = any(cc[3] is not None for cc in other.values())
    values = c.plain.values() if not other else [*c.plain.values(), *(cc[0] for cc in other.values())]
    for v in () if bad else values:
        t = type(v)
        if t is str:
            if len(v) > _SHORT:
                bad = True
                break
        elif not (v is None or t is bool or t is int or t is float):
            bad = True
            break
    if not bad:
        return
    for name, cc in sorted(c.cols.items()):
        if cc.prev is not None and not cc.prev < c.version(name):
            yield "INVALID_CHANGE", f"{c.table} {c.id}.{name}: prev version is not below the new version"
        if _may_be_large(cc.value) and len(encode_value(cc.value)) > MAX_VALUE_BYTES:
            yield "VALUE_TOO_LARGE", f"{c.table} {c.id}.{name}: value exceeds {MAX_VALUE_BYTES} bytes"


#: the longest string whose canonical encoding is certainly within MAX_VALUE_BYTES (4 UTF-8
#: bytes a character at most, and a header)
_SHORT = (MAX_VALUE_BYTES - 5) // 4


def _may_be_large(v: object) -> bool:
    """False when ``v``'s canonical encoding is certainly within MAX_VALUE_BYTES (a scalar,
    or a string short enough even at 4 UTF-8 bytes per character)."""
    if type(v) is str:
        return len(v) > _SHORT
    return v is not None and type(v) not in (bool, int, float)


def push_problems(
    push: Push,
    allowed_columns: Mapping[str, frozenset[str]],
    now_us: int,
    max_future_us: int,
) -> list[Problem]:
    """Every problem of ``push``, in batch order (SPEC R5.4–R5.6).

    ``allowed_columns`` is the result of :func:`check_tables` (or
    :func:`schema_columns` for a peer that declared nothing beyond our schema).
    """
    out: list[Problem] = []
    if push.from_pos > push.to_pos:
        out.append(Problem(None, "INVALID_CHANGE", f"from_pos {push.from_pos} > to_pos {push.to_pos}"))
    seen: set[tuple[object, ...]] = set()
    last = push.from_pos
    for c in push.changes:
        if not last < c.pos <= push.to_pos:
            out.append(Problem(c.pos, "INVALID_CHANGE",
                               f"position {c.pos} not increasing within ({push.from_pos}, {push.to_pos}]"))
        last = max(last, c.pos)
        key = (c.table, c.id, c.cl, c.ts, c.origin)  # one change = one version of one row
        if key in seen:
            out.append(Problem(c.pos, "DUPLICATE_ROW", f"the same change of {c.table} {c.id} appears twice in batch"))
        seen.add(key)
        cols = allowed_columns.get(c.table)
        if cols is None:
            out.append(Problem(c.pos, "UNKNOWN_TABLE", f"table {c.table!r} is not replicated here"))
            continue
        for name in () if cols.issuperset(c.plain) and cols.issuperset(c.other) else sorted(set(c.names) - cols):
            out.append(Problem(c.pos, "UNKNOWN_COLUMN", f"{c.table}.{name} is not a declared column"))
        if c.ts > now_us + max_future_us:
            out.append(Problem(c.pos, "FUTURE_TS", f"{c.table} {c.id}: ts is {(c.ts - now_us) // 1_000_000} s "
                                                   f"ahead of this node's clock (bound {max_future_us // 1_000_000} s)"))
        out.extend(Problem(c.pos, code, reason) for code, reason in _change_shape(c))
    return out


def schema_columns(schema: object) -> dict[str, frozenset[str]]:
    """Allowed columns per table from our own schema alone (shipped columns only)."""
    return {n: frozenset(d.columns) for n, d in tables_from_schema(schema).items()}


def validate_push(
    push: Push,
    schema: object,
    now_us: int,
    max_future_us: int,
    allowed_columns: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """Raise the first problem of ``push`` as a :class:`SyncdError` (``UNKNOWN_TABLE``,
    ``UNKNOWN_COLUMN``, ``FUTURE_TS``, ``NEGATIVE_CL``, ``DUPLICATE_ROW``,
    ``VALUE_TOO_LARGE`` or ``INVALID_CHANGE``, with ``details.pos``); return ``None``
    when it may be applied.  ``allowed_columns`` defaults to ``schema``'s shipped
    columns; pass :func:`check_tables`' result to accept a newer peer's columns."""
    allowed = schema_columns(schema) if allowed_columns is None else allowed_columns
    problems = push_problems(push, allowed, now_us, max_future_us)
    if problems:
        raise problems[0].error()
