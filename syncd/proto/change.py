"""The change record: one origin's write of one row, as it travels between nodes.

A change is immutable once it leaves its origin: relays forward it byte for byte
(apart from ``pos``, the position in the sender's log) and every node merges the
same record the same way.  Values are JSON-like (``None``, bool, int, float, str,
list, dict): what PostgreSQL's ``to_jsonb`` gives for a column and what
``jsonb_populate_record`` takes back.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Change:
    table: str
    id: uuid.UUID
    org_code: str
    op: str
    cl: int
    ts: int
    origin: str
    txn: int  # the origin's transaction number: batches are cut only between txns
    homes: Mapping[str, str]  # route name -> home code ({'home': org_code, ...})
    cols: Mapping[str, ColumnChange] = field(default_factory=dict)
    pos: int = 0  # position in the sending node's log

    def version(self, column: str) -> Version:
        c = self.cols[column]
        return Version(self.cl, c[1], c[2], self.ts, self.origin)

    @property
    def alive(self) -> bool:
        return self.cl % 2 == 1


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
