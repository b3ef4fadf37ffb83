"""The change record: one origin's write of one row, as it travels between nodes.

A change is immutable once it leaves its origin: relays forward it byte for byte
(apart from ``pos``, the position in the sender's log) and every node merges the
same record the same way.  Values are JSON-like (``None``, bool, int, float, str,
list, dict): what PostgreSQL's ``to_jsonb`` gives for a column and what
``jsonb_populate_record`` takes back.
"""
from __future__ import annotations

import uuid
from typing import Any, Iterable, Mapping, NamedTuple

OP_INSERT = "I"  # insert or re-insert: cl odd, every shipped column present
OP_UPDATE = "U"  # some columns of a live row: cl odd
OP_DELETE = "D"  # tombstone: cl even, no columns
OPS = (OP_INSERT, OP_UPDATE, OP_DELETE)
#: transaction numbers of upward-snapshot changes (:mod:`syncd.store.resync`): one per row,
#: above any real xid, so a batch never separates the changes of one row (SPEC R8.8)
UPWARD_TXN_BASE = 2**53


class Version(NamedTuple):
    """A column version; the field order is the merge order (SPEC R5.1).

    A named tuple (not a dataclass): tuple comparison is exactly the field order,
    and a change carries one per column, so it must be cheap to make.

    ``cl`` is the row's causal length when the column was written (odd = alive),
    ``round``/``stage`` the workflow rank (0/0 for ``lww`` columns), ``ts`` the
    hybrid-logical time in microseconds since the Unix epoch, ``origin`` the id
    of the node that wrote it.  Ties beyond these are broken by value bytes.
    """

    cl: int
    round: int
    stage: int
    ts: int
    origin: str

    def as_list(self) -> list[Any]:
        return list(self)

    @classmethod
    def from_list(cls, v: list[Any] | tuple[Any, ...]) -> "Version":
        cl, rnd, stage, ts, origin = v
        return cls(int(cl), int(rnd), int(stage), int(ts), str(origin))


class ColumnChange(NamedTuple):
    """The new value of one column, its workflow rank and the version it replaced."""

    value: Any
    round: int = 0
    stage: int = 0
    prev: Version | None = None


_tnew = tuple.__new__  # a named tuple from known-good fields, without its Python-level __new__


def join_cols(plain: Mapping[str, Any], other: Mapping[str, ColumnChange]) -> dict[str, ColumnChange]:
    """``{col: ColumnChange}`` of a split: ``plain``'s bare values as round 0, stage 0 cells
    that replaced nothing, then ``other``'s cells."""
    cols = {k: _tnew(ColumnChange, (v, 0, 0, None)) for k, v in plain.items()}
    cols.update(other)
    return cols


class Change:
    """One origin's write of one row, as every node judges and merges it.

    ``cols`` maps each column to its :class:`ColumnChange`.  A change read off the wire
    keeps its columns split the way version 3 sends them (SPEC §5.1): ``plain``
    ``{col: value}`` for the columns written at round 0, stage 0 that replaced nothing
    known — all of a new row's — and ``other`` ``{col: ColumnChange}`` for the rest.  The
    apply's hot path (validate, stage, route) reads the split and never needs a cell per
    column; :attr:`cols` is made from it the first time something asks (a members change's
    15 cells cost its decoding about 8 µs, README Benchmarks).  Either way in, every
    view is the same change: equality compares ``cols``.

    Treat it as immutable: :meth:`replace` and :meth:`only` give changed copies."""

    __slots__ = ("table", "id", "org_code", "op", "cl", "ts", "origin", "txn", "homes", "pos",
                 "_cols", "_plain", "_other")
    #: the fields, in the order the constructor takes them
    FIELDS = ("table", "id", "org_code", "op", "cl", "ts", "origin", "txn", "homes", "cols", "pos")

    table: str
    id: uuid.UUID
    org_code: str
    op: str
    cl: int
    ts: int
    origin: str
    txn: int  # the origin's transaction number: batches are cut only between txns
    homes: Mapping[str, str]  # route name -> home code ({'home': org_code, ...})
    pos: int  # position in the sending node's log

    def __init__(self, table: str, id: uuid.UUID, org_code: str, op: str, cl: int, ts: int, origin: str,
                 txn: int, homes: Mapping[str, str], cols: Mapping[str, ColumnChange] | None = None,
                 pos: int = 0) -> None:
        self.table, self.id, self.org_code, self.op, self.cl, self.ts = table, id, org_code, op, cl, ts
        self.origin, self.txn, self.homes, self.pos = origin, txn, homes, pos
        self._cols = {} if cols is None else cols
        self._plain: dict[str, Any] | None = None
        self._other: dict[str, ColumnChange] | None = None

    @classmethod
    def split(cls, table: str, id: uuid.UUID, org_code: str, op: str, cl: int, ts: int, origin: str,
              txn: int, homes: Mapping[str, str], plain: dict[str, Any], other: dict[str, ColumnChange],
              pos: int = 0) -> "Change":
        """The change whose columns are ``plain`` (bare values: round 0, stage 0, nothing
        replaced) and ``other`` (the rest, none of them plain); no name in both."""
        c = cls.__new__(cls)
        c.table, c.id, c.org_code, c.op, c.cl, c.ts = table, id, org_code, op, cl, ts
        c.origin, c.txn, c.homes, c.pos = origin, txn, homes, pos
        c._cols, c._plain, c._other = None, plain, other
        return c

    @property
    def cols(self) -> Mapping[str, ColumnChange]:
        """``{col: ColumnChange}``: ``plain``'s columns, then ``other``'s."""
        cols = self._cols
        if cols is None:
            cols = self._cols = join_cols(self._plain, self._other)  # type: ignore[arg-type]
        return cols

    @property
    def plain(self) -> dict[str, Any]:
        """``{col: value}`` of the columns written at round 0, stage 0 that replaced nothing known."""
        if self._plain is None:
            self._split()
        return self._plain  # type: ignore[return-value]

    @property
    def other(self) -> dict[str, ColumnChange]:
        """The columns that are not plain: a workflow rank, or the version replaced."""
        if self._other is None:
            self._split()
        return self._other  # type: ignore[return-value]

    def _split(self) -> None:
        plain: dict[str, Any] = {}
        other: dict[str, ColumnChange] = {}
        for k, cc in self._cols.items():  # type: ignore[union-attr]
            if cc[1] or cc[2] or cc[3] is not None:
                other[k] = cc
            else:
                plain[k] = cc[0]
        self._plain, self._other = plain, other

    @property
    def names(self) -> tuple[str, ...]:
        """The columns it carries, in :attr:`cols` order."""
        if self._cols is not None:
            return tuple(self._cols)
        return (*self._plain, *self._other)  # type: ignore[misc]

    def version(self, column: str) -> Version:
        """The version this change gives ``column`` (KeyError if it does not carry it)."""
        if self._cols is not None:
            cell = self._cols[column]
        else:
            cell = self._other.get(column)  # type: ignore[union-attr]
            if cell is None:
                if column not in self._plain:  # type: ignore[operator]
                    raise KeyError(column)
                return _tnew(Version, (self.cl, 0, 0, self.ts, self.origin))  # a plain column
        return Version(self.cl, cell[1], cell[2], self.ts, self.origin)

    @property
    def alive(self) -> bool:
        return self.cl % 2 == 1

    def only(self, keep: Iterable[str]) -> "Change":
        """The same change with only the columns ``keep``."""
        keep = set(keep)
        if self._cols is None:
            return Change.split(self.table, self.id, self.org_code, self.op, self.cl, self.ts, self.origin,
                                self.txn, self.homes, {k: v for k, v in self._plain.items() if k in keep},  # type: ignore[union-attr]
                                {k: v for k, v in self._other.items() if k in keep}, self.pos)  # type: ignore[union-attr]
        return self.replace(cols={k: v for k, v in self._cols.items() if k in keep})

    def replace(self, **fields: Any) -> "Change":
        """A copy with ``fields`` (any of :attr:`FIELDS`) replaced."""
        unknown = set(fields) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"Change has no field {', '.join(sorted(unknown))}")
        if "cols" not in fields and self._cols is None:  # keeps the split: no cells made
            return Change.split(*(fields.get(n, getattr(self, n)) for n in self.FIELDS[:9]),  # type: ignore[arg-type]
                                self._plain, self._other, fields.get("pos", self.pos))  # type: ignore[arg-type]
        return Change(*(fields[n] if n in fields else getattr(self, n) for n in self.FIELDS))

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Change:
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # cols is a dict, as in a dataclass of it

    def __repr__(self) -> str:
        return "Change(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.FIELDS) + ")"


class StoredChange:
    """A change as its log row holds it, on its way out over a link: its columns split as the
    log keeps them and as the version-3 wire map sends them (SPEC §5.1) — ``plain``
    ``{col: value}`` for the columns written at round 0, stage 0 that replaced nothing known,
    ``other`` ``{col: [value, round, stage, prev]}`` (``prev`` a 5-list) for the rest, each
    sorted by column name with canonical values.  A push or pull sends the two maps as they
    were read, without a :class:`ColumnChange` or even a list per column: building those cost
    a sent change ~30 µs (README, Benchmarks).  :attr:`cols` gives the columns as the log's
    ``[value, round, stage, prev]`` lists for the writers of older protocol versions.

    Only the sending side makes these (``store.log.stored_from_record``); everything that
    judges or merges a change takes a :class:`Change`."""

    __slots__ = ("table", "id", "org_code", "op", "cl", "ts", "origin", "txn", "homes", "plain", "other", "pos",
                 "_cols")

    def __init__(self, table: str, id: uuid.UUID, org_code: str, op: str, cl: int, ts: int, origin: str,
                 txn: int, homes: Mapping[str, str], plain: dict[str, Any], other: dict[str, list[Any]],
                 pos: int = 0) -> None:
        self.table, self.id, self.org_code, self.op, self.cl, self.ts = table, id, org_code, op, cl, ts
        self.origin, self.txn, self.homes, self.plain, self.other, self.pos = origin, txn, homes, plain, other, pos
        self._cols: dict[str, list[Any]] | None = None

    @property
    def alive(self) -> bool:
        return self.cl % 2 == 1

    @property
    def names(self) -> tuple[str, ...]:
        """The columns it carries: ``plain``'s, then ``other``'s."""
        return (*self.plain, *self.other)

    @property
    def cols(self) -> dict[str, list[Any]]:
        """``{col: [value, round, stage, prev|None]}``, made once when first asked for."""
        if self._cols is None:
            self._cols = {**{k: [v, 0, 0, None] for k, v in self.plain.items()}, **self.other}
        return self._cols

    def only(self, keep: Iterable[str]) -> "StoredChange":
        """The same change with only the columns ``keep``."""
        keep = set(keep)
        return StoredChange(self.table, self.id, self.org_code, self.op, self.cl, self.ts, self.origin, self.txn,
                            self.homes, {k: v for k, v in self.plain.items() if k in keep},
                            {k: v for k, v in self.other.items() if k in keep}, self.pos)

    def to_change(self) -> Change:
        cols = {k: ColumnChange(v, r, s, Version(*p) if p else None) for k, (v, r, s, p) in self.cols.items()}
        return Change(self.table, self.id, self.org_code, self.op, self.cl, self.ts, self.origin, self.txn,
                      self.homes, cols, self.pos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredChange) and self.to_change() == other.to_change()

    __hash__ = None  # type: ignore[assignment]  # mutable holder, like a dict

    def __repr__(self) -> str:
        return f"StoredChange({self.table!r}, {self.id}, op={self.op!r}, cl={self.cl}, pos={self.pos})"
