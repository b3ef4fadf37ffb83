"""verify, the pure part: what two ends of a link compare, and how differences are named (HC-33).

Theory of operation
-------------------
A link P (parent) – C (child) *shares* a row when the row crosses the link: its reach
meets C's subtree and also lies partly outside it (in a tree every path between the
two sides runs over this link, and both ends hold what they relay).  Of a shared row
they share the columns whose own reach, within the row's reach, lies on both sides —
so a column that never leaves the home (an ID number, a mobile) is compared nowhere
but a column that may travel is compared at every link it crosses.  Both ends apply
:func:`link_row` to what they hold, so the comparison never depends on which side
computes it (SPEC R9.4).

Rows are compared by :func:`syncd.proto.codec.row_digest` of that projection, in id
ranges (:func:`initial_ranges`, :func:`split_range`): a range's count and checksum
(SPEC R9.2) are equal at both ends when every row in it is.  A differing range is
split until it is small enough to read row by row; :func:`diff_rows` then names each
differing row and column — by version and whether the values are equal, never by the
values themselves, so a report can be pasted anywhere (HC-15).

Everything here is pure; the SQL lives in :mod:`syncd.store.verify` and the child's
conversation with its parent in :mod:`syncd.verify_run`.
"""
from __future__ import annotations

import bisect
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from syncd.proto.codec import range_checksum, row_digest
from syncd.proto.messages import IdRange, RangeSum, SnapshotRow
from syncd.routing import column_reach, reach
from syncd.schema.declarations import Table
from syncd.topology import Topology, TopologyError

ID_SPACE = 1 << 128
#: causal length given to a row that is in the table but has no version here (written
#: with capture bypassed): it never equals a versioned row's digest
UNVERSIONED_CL = 0


def _uuid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def initial_ranges(buckets: int) -> list[IdRange]:
    """``buckets`` equal, contiguous ranges covering the whole uuid space, in order."""
    step = ID_SPACE // buckets
    out = [IdRange(_uuid(i * step), _uuid((i + 1) * step)) for i in range(buckets - 1)]
    return out + [IdRange(_uuid((buckets - 1) * step), None)]


def split_range(r: IdRange, parts: int) -> list[IdRange]:
    """``r`` cut into at most ``parts`` contiguous sub-ranges (fewer when it is narrower)."""
    lo = r.lo.int
    hi = r.hi.int if r.hi is not None else ID_SPACE
    step = max(1, (hi - lo) // parts)
    cuts = list(range(lo, hi, step))[:parts]
    bounds = cuts[1:] + [hi]
    return [IdRange(_uuid(a), None if b == ID_SPACE else _uuid(b)) for a, b in zip(cuts, bounds)]


def exact_range(row_id: uuid.UUID) -> IdRange:
    """The range holding exactly ``row_id``."""
    n = row_id.int + 1
    return IdRange(row_id, None if n == ID_SPACE else _uuid(n))


def before(r: IdRange) -> uuid.UUID | None:
    """The ``after_id`` that starts a snapshot read at ``r.lo`` (None: from the start)."""
    return None if r.lo.int == 0 else _uuid(r.lo.int - 1)


def contains(r: IdRange, row_id: uuid.UUID) -> bool:
    return r.lo.int <= row_id.int and (r.hi is None or row_id.int < r.hi.int)


def disjoint_sorted(ranges: Sequence[IdRange]) -> bool:
    """True when ``ranges`` are in order and do not overlap (one scan can serve them)."""
    for a, b in zip(ranges, ranges[1:]):
        if a.hi is None or a.hi.int > b.lo.int:
            return False
    return True


def span(ranges: Sequence[IdRange]) -> IdRange:
    """The smallest range holding every range of ``ranges`` (not empty)."""
    lo = min(r.lo.int for r in ranges)
    hi = None if any(r.hi is None for r in ranges) else max(r.hi.int for r in ranges)  # type: ignore[union-attr]
    return IdRange(_uuid(lo), None if hi is None else _uuid(hi))


def link_row(t: Table, row: SnapshotRow, parent: str, child: str, topo: Topology) -> SnapshotRow | None:
    """The part of ``row`` both ends of the link parent–child hold, or None when the row
    does not cross that link (see the module docstring).  A tombstone keeps no columns;
    an unversioned row (cl 0) keeps none either — it differs from any versioned one."""
    try:
        inside = topo.subtree(child)
        reached = reach(t, row.homes, topo)
        if not reached & inside or reached <= inside:
            return None
        cols: dict[str, Any] = {}
        if row.cl % 2 == 1:
            for name, cell in row.cols.items():
                try:
                    rule = t.column(name)
                except KeyError:  # an opaque column of a newer peer (HC-13): not compared
                    continue
                if rule.local:
                    continue
                allowed = column_reach(rule.reach, row.org_code, topo)
                held = reached if allowed is None else reached & allowed
                if held & inside and held - inside:
                    cols[name] = cell
    except TopologyError:  # a committee this node does not know yet: not comparable
        return None
    del parent  # the link is named by its child: everything not below it is the parent's side
    return SnapshotRow(row.id, row.org_code, row.cl, dict(row.homes), cols)


class RangeSummer:
    """Count and checksum (SPEC R9.2) per range, fed one row at a time in any order.

    Ranges may come in any order and overlap; a row counts in every range holding it.
    """

    def __init__(self, ranges: Sequence[IdRange]) -> None:
        self.ranges = list(ranges)
        self._order = sorted(range(len(self.ranges)), key=lambda i: self.ranges[i].lo.int)
        self._los = [self.ranges[i].lo.int for i in self._order]
        self._digests: list[list[tuple[int, bytes]]] = [[] for _ in self.ranges]
        self._disjoint = disjoint_sorted([self.ranges[i] for i in self._order])

    def add(self, row: SnapshotRow) -> None:
        k = bisect.bisect_right(self._los, row.id.int)
        digest = None
        for j in (self._order[k - 1:k] if self._disjoint else self._order[:k]):
            if contains(self.ranges[j], row.id):
                digest = digest or row_digest(row)
                self._digests[j].append((row.id.int, digest))

    def sums(self) -> list[RangeSum]:
        return [RangeSum(r.lo, r.hi, len(d), range_checksum([x for _, x in sorted(d)]))
                for r, d in zip(self.ranges, self._digests)]


def range_sums(ranges: Sequence[IdRange], rows: Iterable[SnapshotRow]) -> list[RangeSum]:
    """:class:`RangeSummer` over ``rows``."""
    summer = RangeSummer(ranges)
    for row in rows:
        summer.add(row)
    return summer.sums()


# -- naming the differences --------------------------------------------------------------

@dataclass(frozen=True)
class ColumnDiff:
    """One column of a row both ends hold, as each end holds it (no values, HC-15)."""

    column: str
    parent: list[Any] | None  # the version [cl, round, stage, ts, origin]; None: no version there
    here: list[Any] | None
    same_value: bool

    @property
    def what(self) -> str:
        if self.parent is None or self.here is None:
            return "only at " + ("this node" if self.parent is None else "the parent")
        if self.parent == self.here:
            return "same version, different value (changed with capture bypassed?)"
        return "different versions" + ("" if self.same_value else " and values")

    def as_dict(self) -> dict[str, Any]:
        return {"column": self.column, "parent_version": self.parent, "here_version": self.here,
                "same_value": self.same_value, "what": self.what}


@dataclass(frozen=True)
class Divergence:
    """A row (or, when it could not be named, a range) that differs between the two ends.

    ``kind``: ``only_at_parent``, ``only_at_child``, ``differs`` (row-level fields or
    columns), ``range`` (the checksums differ but no row could be named here).
    """

    table: str
    kind: str
    row_id: uuid.UUID | None
    detail: str
    columns: tuple[ColumnDiff, ...] = ()
    range: IdRange | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"table": self.table, "kind": self.kind,
                               "row_id": str(self.row_id) if self.row_id else None, "detail": self.detail,
                               "columns": [c.as_dict() for c in self.columns]}
        if self.range is not None:
            out["range"] = {"lo": str(self.range.lo), "hi": str(self.range.hi) if self.range.hi else None}
        return out


def _row_fields(p: SnapshotRow, h: SnapshotRow) -> list[str]:
    out = []
    if p.cl != h.cl:
        def state(cl: int) -> str:
            return "no version" if cl == UNVERSIONED_CL else ("deleted" if cl % 2 == 0 else "alive")
        out.append(f"cl {p.cl} ({state(p.cl)}) at the parent, {h.cl} ({state(h.cl)}) here")
    if p.org_code != h.org_code:
        out.append("org_code differs")
    if dict(p.homes) != dict(h.homes):
        out.append("route homes differ")
    return out


def _empty(row: SnapshotRow) -> bool:
    """A live row whose every column is NULL: what a version without a table row reads as."""
    return row.cl % 2 == 1 and bool(row.cols) and all(v is None for v, _ in row.cols.values())


def diff_row(table: str, p: SnapshotRow | None, h: SnapshotRow | None,
             missing_here: frozenset[uuid.UUID] = frozenset()) -> Divergence | None:
    """How one row differs between the parent (``p``) and here (``h``); None if equal.

    ``missing_here``: ids this node versions as alive but has no table row for
    (deleted with capture bypassed); the parent's side is recognised by all-NULL columns.
    """
    if p is None and h is None:
        return None
    if p is None or h is None:
        row = p if p is not None else h
        assert row is not None
        where = "the parent" if h is None else "this node"
        state = "no version" if row.cl == UNVERSIONED_CL else ("a tombstone" if row.cl % 2 == 0 else "alive")
        return Divergence(table, "only_at_parent" if h is None else "only_at_child", row.id,
                          f"only {where} holds it ({state}, cl {row.cl})")
    if row_digest(p) == row_digest(h):
        return None
    notes = _row_fields(p, h)
    if h.id in missing_here:
        notes.append("this node versions it as alive but its table has no such row")
    elif _empty(h) and not _empty(p):
        notes.append("every column is empty here")
    if _empty(p) and not _empty(h):
        notes.append("every column is empty at the parent (its table probably lacks the row)")
    cols = []
    for name in sorted(set(p.cols) | set(h.cols)):
        pc, hc = p.cols.get(name), h.cols.get(name)
        if pc == hc:
            continue
        cols.append(ColumnDiff(name, pc[1].as_list() if pc else None, hc[1].as_list() if hc else None,
                               pc is not None and hc is not None and pc[0] == hc[0]))
    if cols:
        notes.append(f"{len(cols)} column(s) differ: " + ", ".join(c.column for c in cols))
    return Divergence(table, "differs", p.id, "; ".join(notes) or "rows differ", tuple(cols))


def diff_rows(table: str, parent_rows: Iterable[SnapshotRow], here_rows: Iterable[SnapshotRow],
              missing_here: frozenset[uuid.UUID] = frozenset()) -> list[Divergence]:
    """Every differing row of two sets of link-projected rows, in id order."""
    ps = {r.id: r for r in parent_rows}
    hs = {r.id: r for r in here_rows}
    out = []
    for rid in sorted(set(ps) | set(hs), key=lambda u: u.int):
        d = diff_row(table, ps.get(rid), hs.get(rid), missing_here)
        if d is not None:
            out.append(d)
    return out

