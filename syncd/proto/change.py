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
from typing import Any, Mapping, NamedTuple

OP_INSERT = "I"  # insert or re-insert: cl odd, every shipped column present
OP_UPDATE = "U"  # some columns of a live row: cl odd
OP_DELETE = "D"  # tombstone: cl even, no columns
OPS = (OP_INSERT, OP_UPDATE, OP_DELETE)


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
