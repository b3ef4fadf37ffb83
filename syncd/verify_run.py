"""verify, the child's side: compare what this node and its parent share, table by table (HC-33).

Parents have no route to their children, so verify always runs at the child, over the
child's own link (signed like every request).  Per table:

1. *screen*: ask the parent for the count and checksum of each of ``buckets`` id ranges
   (``VerifyRequest``, SPEC R9.3) and compute the same here (:mod:`syncd.store.verify`);
2. *narrow*: split every differing range into ``split`` parts and ask again, until a
   differing range holds at most ``fetch_max`` rows at either end;
3. *name*: read the parent's rows of each such range as it may send them to this node
   (``SnapshotRequest`` with ``p`` set, SPEC R9.5) and compare them row by row and
   column by column with this node's (:func:`syncd.verify.diff_rows`).

Both ends keep changing while this runs, so a difference seen once may be a change
still in flight.  Before reporting, verify waits (up to ``wait_s``) until this node has
pulled up to the parent's position of the screen and pushed everything it had logged,
then checks the named rows and ranges again; only what still differs is reported
(``rechecks`` rounds).  The report states the positions compared and whether the
links had caught up (``settled``).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import asyncpg

from syncd.config import Secret
from syncd.errors import SyncdError
from syncd.proto.codec import MAX_RANGES
from syncd.proto.messages import IdRange, RangeSum, SnapshotRequest, SnapshotRow, VerifyRequest
from syncd.schema.declarations import SCHEMA, Schema
from syncd.store import audit
from syncd.store.verify import Side, read_snapshot, scan, sums
from syncd.topology import Topology
from syncd.transport.base import ParentLink
from syncd.verify import (Divergence, before, contains, diff_rows, exact_range, initial_ranges, link_row,
                          split_range)

SNAPSHOT_TRIES = 6


@dataclass(frozen=True)
class VerifyOptions:
    tables: tuple[str, ...] = ()  # empty: every replicated table
    buckets: int = 64
    split: int = 16
    fetch_max: int = 256  # a differing range this small is read row by row
    max_rows: int = 100  # rows named per table; beyond, differing ranges are reported as ranges
    wait_s: float = 30.0  # how long to wait for the links to catch up before a recheck
    rechecks: int = 2
    snapshot_limit: int = 1000


@dataclass
class TableResult:
    table: str
    rows_here: int = 0
    rows_parent: int = 0
    parent_position: int = 0
    divergences: list[Divergence] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "rows_here": self.rows_here, "rows_parent": self.rows_parent,
                "parent_position": self.parent_position, "differences": [d.as_dict() for d in self.divergences]}


@dataclass
class Positions:
    pull_cursor: int
    push_cursor: int
    log_head: int

    def as_dict(self) -> dict[str, int]:
        return {"pull_cursor": self.pull_cursor, "push_cursor": self.push_cursor, "log_head": self.log_head}


@dataclass
class VerifyReport:
    node: str
    parent: str
    tables: list[TableResult]
    parent_position: int  # the parent's outbox head for this node at the last comparison
    positions: Positions  # this node's cursors at the end
    settled: bool  # the last comparison ran after this node caught up with what the screen saw
    rechecked: int  # recheck rounds run

    @property
    def differences(self) -> list[Divergence]:
        return [d for t in self.tables for d in t.divergences]

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "parent": self.parent, "agree": not self.differences,
                "settled": self.settled, "parent_position": self.parent_position,
                "positions": self.positions.as_dict(), "rechecked": self.rechecked,
                "differences": len(self.differences), "tables": [t.as_dict() for t in self.tables],
                "note": NOTE}


NOTE = ("Compared: the rows and columns this link carries (both ends hold them). Personal columns that "
        "never leave their home, and rows that never cross this link, are not compared.")


def _chunks(ranges: Sequence[IdRange], size: int = MAX_RANGES) -> list[list[IdRange]]:
    return [list(ranges[i:i + size]) for i in range(0, len(ranges), size)]


def _narrow_enough(r: IdRange, p: RangeSum, h: RangeSum, fetch_max: int) -> bool:
    width = (r.hi.int if r.hi is not None else 1 << 128) - r.lo.int
    return max(p.count, h.count) <= fetch_max or width <= 1


class Verifier:
    """One verify run at a child (see the module docstring)."""

    def __init__(self, conn: asyncpg.Connection, link: ParentLink, me: str, parent: str, topo: Topology,
                 schema: Schema = SCHEMA, options: VerifyOptions = VerifyOptions(),
                 id_hash_key: Secret | None = None) -> None:
        self.conn, self.link, self.me, self.parent, self.topo = conn, link, me, parent, topo
        self.schema, self.opt = schema, options
        self.side = Side(parent, me, me, id_hash_key)
        self.parent_position = 0

    async def positions(self) -> Positions:
        r = await self.conn.fetchrow(
            "SELECT coalesce((SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'pull'), 0) AS pull, "
            "coalesce((SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'push'), 0) AS push, "
            "(SELECT head FROM syncd.node) AS head", self.parent)
        return Positions(int(r["pull"]), int(r["push"]), int(r["head"]))

    async def _compare(self, table: str, ranges: list[IdRange]) -> list[tuple[IdRange, RangeSum, RangeSum]]:
        """(range, parent's sum, ours) for every range of ``ranges``."""
        out = []
        for chunk in _chunks(ranges):
            pull = (await self.positions()).pull_cursor
            reply = await self.link.verify(VerifyRequest(table, pull, tuple(chunk)))
            if reply.table != table or len(reply.ranges) != len(chunk):
                raise SyncdError("DECODE_ERROR", f"the parent's verify reply does not answer the {len(chunk)} "
                                 f"ranges of {table} asked")
            self.parent_position = max(self.parent_position, reply.position)
            async with read_snapshot(self.conn):
                here = await sums(self.conn, self.schema, self.topo, self.side, table, chunk)
            out += list(zip(chunk, reply.ranges, here))
        return out

    async def _narrow(self, table: str, ranges: list[IdRange], result: TableResult | None = None) -> list[
            tuple[IdRange, RangeSum, RangeSum]]:
        """Differing ranges small enough to read row by row (with both ends' sums)."""
        small: list[tuple[IdRange, RangeSum, RangeSum]] = []
        todo = ranges
        first = True
        while todo:
            compared = await self._compare(table, todo)
            if first and result is not None:
                result.rows_parent = sum(p.count for _, p, _ in compared)
                result.rows_here = sum(h.count for _, _, h in compared)
            first = False
            todo = []
            for r, p, h in compared:
                if (p.count, p.checksum) == (h.count, h.checksum):
                    continue
                if _narrow_enough(r, p, h, self.opt.fetch_max):
                    small.append((r, p, h))
                else:
                    todo += split_range(r, self.opt.split)
        return small

    async def _parent_rows(self, table: str, r: IdRange) -> list[SnapshotRow]:
        """The parent's rows of ``r`` as it may send them here (SPEC R9.5)."""
        out: list[SnapshotRow] = []
        after = before(r)
        while True:
            chunk = await self._snapshot(SnapshotRequest(table, after, self.opt.snapshot_limit, self.parent_position))
            await audit.record_rows(self.conn, self.parent, "received",
                                    audit.snapshot_batch(table, after, chunk.next_after_id), table, chunk.rows)
            out += [x for x in chunk.rows if contains(r, x.id)]
            nxt = chunk.next_after_id
            if nxt is None or (r.hi is not None and nxt.int >= r.hi.int - 1):
                break
            after = nxt
        t = self.schema[table]
        return [p for p in (link_row(t, x, self.parent, self.me, self.topo) for x in out) if p is not None]

    async def _snapshot(self, req: SnapshotRequest) -> Any:
        for attempt in range(SNAPSHOT_TRIES):
            try:
                return await self.link.snapshot(req)
            except SyncdError as e:
                if e.code != "SNAPSHOT_BUSY" or attempt == SNAPSHOT_TRIES - 1:
                    raise
                await asyncio.sleep(min(2 ** attempt, 5))
        raise AssertionError("unreachable")

    async def _name(self, table: str, small: list[tuple[IdRange, RangeSum, RangeSum]]) -> list[Divergence]:
        out: list[Divergence] = []
        for r, p, h in small:
            if sum(1 for d in out if d.row_id is not None) >= self.opt.max_rows:
                out.append(Divergence(table, "range", None, f"{p.count} row(s) at the parent, {h.count} here; "
                                      "not named (more differences than --max-rows)", range=r))
                continue
            theirs = await self._parent_rows(table, r)
            async with read_snapshot(self.conn):
                ours = await scan(self.conn, self.schema, self.topo, self.side, table, r)
            named = diff_rows(table, theirs, ours.rows, frozenset(ours.missing))
            if not named:
                named = [Divergence(table, "range", None, f"checksums differ ({p.count} row(s) at the parent, "
                                    f"{h.count} here) but the rows read agree: rows the parent holds without a "
                                    "version, or a change in flight", range=r)]
            out += named
        return out

    async def _check(self, table: str, ranges: list[IdRange], result: TableResult | None = None) -> list[Divergence]:
        return await self._name(table, await self._narrow(table, ranges, result))

    async def settle(self, pull_target: int, push_target: int) -> bool:
        """Wait until this node pulled to ``pull_target`` and pushed to ``push_target``."""
        deadline = time.monotonic() + self.opt.wait_s
        while True:
            pos = await self.positions()
            if pos.pull_cursor >= pull_target and pos.push_cursor >= push_target:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)

    async def run(self) -> VerifyReport:
        tables = self.opt.tables or tuple(t.name for t in self.schema.tables)
        for name in tables:
            if name not in self.schema:
                raise SyncdError("UNKNOWN_TABLE", f"table {name!r} is not replicated")
        start = await self.positions()
        results = []
        for name in tables:
            res = TableResult(name)
            res.divergences = await self._check(name, initial_ranges(self.opt.buckets), res)
            res.parent_position = self.parent_position
            results.append(res)
        settled = start.pull_cursor >= self.parent_position and start.push_cursor >= start.log_head
        rounds = 0
        while any(r.divergences for r in results) and rounds < self.opt.rechecks:
            # everything logged here by now, and everything the parent had for us, must have crossed
            settled = await self.settle(self.parent_position, (await self.positions()).log_head)
            rounds += 1
            for res in results:
                if res.divergences:
                    again = [d.range or exact_range(d.row_id) for d in res.divergences]  # type: ignore[arg-type]
                    res.divergences = await self._check(res.table, again)
        return VerifyReport(self.me, self.parent, results, self.parent_position, await self.positions(),
                            settled, rounds)
