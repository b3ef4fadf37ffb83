"""A province → cities → counties tree of in-memory replicas converges (HC-1, HC-12, HC-16, HC-17, HC-26).

Each replica keeps dict tables of ``merge.RowState``, a log of changes (its own
writes and everything it received, with ``received_from``) and one cursor per
incoming link.  Syncing a link scans the sender's log after the cursor, sends what
``routing.next_hops`` and ``routing.project`` allow, checks it with
``routing.check_origin`` and merges it with ``merge.decide``.  Random writes and
random partial syncs, then one pass up and one pass down; then every node must
hold exactly what an independent oracle says its scope allows.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from syncd import merge, routing
from syncd.merge import RowState
from syncd.proto.change import Change, Version
from syncd.schema.declarations import HOME, SCHEMA
from syncd.topology import Topology

Key = tuple[str, uuid.UUID]
KEY_COLUMNS = {"activity_id", "member_id", "report_id", "level"}
VALUES = ("出席", "请假", "缺席")
STAGES = ("立案", "交办", "办理中", "已答复", "已评价", "重新办理", "办结")


@dataclass(frozen=True)
class Row:
    table: str
    id: uuid.UUID
    homes: dict[str, str]
    keys: dict[str, Any]  # natural-key column values, fixed at insert


@dataclass
class Entry:
    pos: int
    change: Change
    received_from: str | None


@dataclass
class Replica:
    me: str
    rows: dict[Key, RowState] = field(default_factory=dict)
    log: list[Entry] = field(default_factory=list)
    cursors: dict[str, int] = field(default_factory=dict)  # sender -> last sender position scanned
    highest_ts: int = 0
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    conflicts: dict[str, merge.Conflict] = field(default_factory=dict)

    def append(self, change: Change, received_from: str | None) -> None:
        self.log.append(Entry(len(self.log) + 1, change, received_from))


class Tree:
    def __init__(self, topo: Topology, rows: list[Row], skews: dict[str, int]) -> None:
        self.topo, self.universe, self.skews = topo, rows, skews
        self.nodes = {n: Replica(n) for n in topo}
        self.links = [(c, p) for c in topo for p in topo.neighbours(c)]  # (src, dst)
        for src, dst in self.links:
            self.nodes[dst].cursors[src] = 0
        self.written: list[Change] = []
        self.tick, self.txn = 0, 0

    # -- local writes -------------------------------------------------------------

    def write(self, pick: int, writer: int, action: int, col_pick: int, value: int) -> None:
        """One application write, as its capture would record it, by one of the nodes
        allowed to write the picked row (its home, or an attendance row's organiser)."""
        row = self.universe[pick % len(self.universe)]
        writers = sorted({n for n in row.homes.values()
                          if routing.writable_columns(row.table, row.homes, n, self.topo)})
        node = writers[writer % len(writers)]
        rep = self.nodes[node]
        local = rep.rows.get((row.table, row.id))
        writable = routing.writable_columns(row.table, row.homes, node, self.topo)
        is_home = node == row.homes[HOME]
        if local is None:
            self._emit(rep, row, "I", 1, writable, value, local)
        elif local.alive and action % 3 == 2 and is_home:
            self._emit(rep, row, "D", local.cl + 1, (), value, local)
        elif local.alive:
            editable = [c for c in writable if c not in KEY_COLUMNS] or list(writable)
            self._emit(rep, row, "U", local.cl, [editable[col_pick % len(editable)]], value, local)
        elif is_home:
            self._emit(rep, row, "I", local.cl + 1, writable, value, local)

    def _value(self, row: Row, col: str, node: str, value: int) -> Any:
        if col in row.keys:
            return row.keys[col]
        if row.table == "proposals" and col == "status":
            return STAGES[value % len(STAGES)]
        return VALUES[value % len(VALUES)] if col == "status" else f"{col}-{value % 3}"

    def _emit(self, rep: Replica, row: Row, op: str, cl: int, cols: Any, value: int,
              local: RowState | None) -> None:
        self.tick += 1
        self.txn += 1
        ts = merge.next_ts(self.tick * 1000 + self.skews[rep.me], rep.highest_ts)
        rep.highest_ts = ts
        same_cl = local is not None and local.cl == cl
        ccs = {}
        for i, col in enumerate(cols):
            prev = local.cols[col][1] if same_cl and local is not None and col in local.cols else None
            ccs[col] = merge.column_change(row.table, col, self._value(row, col, rep.me, value + i), prev)
        change = Change(row.table, row.id, row.homes[HOME], op, cl, ts, rep.me, self.txn, row.homes, ccs)
        rep.rows[(row.table, row.id)] = merge.decide(local, change).state
        rep.append(change, None)
        self.written.append(change)

    # -- links -------------------------------------------------------------------

    def sync(self, src: str, dst: str, limit: int | None = None) -> int:
        """dst takes up to ``limit`` entries of src's log after its cursor; returns changes moved."""
        s, d = self.nodes[src], self.nodes[dst]
        behind = self.topo.behind(src, dst)
        direction = "from_child" if self.topo.parent(src) == dst else "from_parent"
        start = d.cursors[src]
        entries = s.log[start:] if limit is None else s.log[start:start + limit]
        moved = 0
        for e in entries:
            c = e.change
            if dst in routing.next_hops(c.table, c.homes, src, self.topo, e.received_from):
                out = routing.project(c, behind, self.topo)
                if out is not None:
                    self._receive(d, out, src, direction)
                    moved += 1
            d.cursors[src] = e.pos
        # the stored cursor is the last position handed over, never recomputed and lost
        assert d.cursors[src] == (entries[-1].pos if entries else start)
        return moved

    def _receive(self, d: Replica, c: Change, sender: str, direction: Any) -> None:
        assert routing.check_origin(c, None, sender, d.me, self.topo, direction) == []
        ident = (c.origin, c.table, c.id, c.cl, c.ts)
        assert ident not in d.seen, f"{d.me} got {ident} twice"  # duplicates show (HC-35)
        d.seen.add(ident)
        assert merge.clock_check(c.ts, self.tick * 1000 + 10_000, 5_000, 50_000) == "ok"
        d.highest_ts = max(d.highest_ts, c.ts)
        decision = merge.decide(d.rows.get((c.table, c.id)), c)
        d.rows[(c.table, c.id)] = decision.state
        for conflict in decision.conflicts:
            assert d.conflicts.setdefault(conflict.id, conflict) == conflict
        d.append(c, sender)  # logged for relay whatever the apply did (HC-12)

    def full_sync(self) -> int:
        """One pass up (deepest first), one pass down (root first)."""
        moved = 0
        order = sorted(self.topo, key=self.topo.depth)
        for node in reversed(order):
            parent = self.topo.parent(node)
            if parent is not None:
                moved += self.sync(node, parent)
        for node in order:
            for child in self.topo.children(node):
                moved += self.sync(node, child)
        return moved


# -- the oracle -------------------------------------------------------------------


def arrives(c: Change, node: str, topo: Topology) -> Change | None:
    """The change as ``node`` should hold it, or None when it never gets there."""
    if node not in routing.reach(c.table, c.homes, topo):
        return None
    # written out here rather than through routing.project: personal columns stay home
    keep = {n: cc for n, cc in c.cols.items()
            if node == c.org_code or not SCHEMA[c.table].column(n).personal}
    if not keep and c.op == "U":
        return None
    return c.replace(cols=keep)


def expected(changes: list[Change]) -> RowState | None:
    """cl is the maximum; each column the highest (version, value bytes) at that cl."""
    if not changes:
        return None
    top = max(c.cl for c in changes)
    best: dict[str, tuple[Version, bytes, Any, Version | None]] = {}
    for c in changes:
        for name, cc in (c.cols.items() if c.cl == top else ()):
            cand = (c.version(name), merge.canonical_value_bytes(cc.value), cc.value, cc.prev)
            if name not in best or cand[:2] > best[name][:2]:
                best[name] = cand
    return RowState(top, {n: (b[2], b[0]) for n, b in best.items()}, {n: b[3] for n, b in best.items()})


def check_converged(tree: Tree) -> None:
    topo = tree.topo
    for node, rep in tree.nodes.items():
        want: dict[Key, RowState] = {}
        by_row: dict[Key, list[Change]] = {}
        for c in tree.written:
            got = arrives(c, node, topo)
            if got is not None:
                by_row.setdefault((c.table, c.id), []).append(got)
        for key, cs in by_row.items():
            state = expected(cs)
            if state is not None:
                want[key] = state
        assert rep.rows == want, node
    # every copy of a column is identical; personal columns only at the row's home
    for row in tree.universe:
        copies: dict[str, set[tuple[Any, Version]]] = {}
        for node, rep in tree.nodes.items():
            state = rep.rows.get((row.table, row.id))
            if state is None:
                continue
            assert node in routing.reach(row.table, row.homes, topo)
            for col, (value, version) in state.cols.items():
                copies.setdefault(col, set()).add((merge.canonical_value_bytes(value), version))
                if SCHEMA[row.table].column(col).personal:
                    assert node == row.homes[HOME], (row.table, col, node)
        assert all(len(v) == 1 for v in copies.values()), copies


# -- the property -----------------------------------------------------------------


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    rows_t: list[tuple[str, str, str, str | None, list[str]]] = [("430000", "湖南省", "province", None, [])]
    for c in range(draw(st.integers(2, 3))):
        city = f"43{c + 1:02d}00"
        rows_t.append((city, f"市{c}", "city", "430000", []))
        for k in range(draw(st.integers(1, 3))):
            rows_t.append((f"43{c + 1:02d}{k + 1:02d}", f"县{c}{k}", "county", city, []))
    topo = Topology.from_rows(rows_t)
    nodes = sorted(topo.nodes)
    node = st.sampled_from(nodes)
    universe = [Row("members", uuid.uuid5(uuid.NAMESPACE_OID, "m"), {HOME: draw(node)}, {})]
    activities = [Row("activities", uuid.uuid5(uuid.NAMESPACE_OID, f"a{i}"), {HOME: draw(node)}, {})
                  for i in range(2)]
    universe += activities
    pairs = draw(st.lists(st.tuples(st.integers(0, 1), node), min_size=1, max_size=3, unique=True))
    for a, member in pairs:
        act = activities[a]
        keys = {"activity_id": str(act.id), "member_id": f"m{member}"}
        universe.append(Row("attendance", uuid.uuid5(uuid.NAMESPACE_OID, f"{a}/{member}"),
                            {HOME: member, "organiser": act.homes[HOME]}, keys))
    universe.append(Row("proposals", uuid.uuid5(uuid.NAMESPACE_OID, "p"), {HOME: draw(node)}, {}))
    county = draw(st.sampled_from([n for n in nodes if topo.depth(n) == 2]))
    report = Row("opinion_reports", uuid.uuid5(uuid.NAMESPACE_OID, "r"), {HOME: county}, {})
    adopter = draw(st.sampled_from(topo.ancestors(county)))
    universe += [report, Row("opinion_adoptions", uuid.uuid5(uuid.NAMESPACE_OID, "ad"),
                             {HOME: adopter, "report": county},
                             {"report_id": str(report.id), "level": topo.level(adopter)})]
    skews = {n: draw(st.integers(-900, 900)) for n in nodes}
    return Tree(topo, universe, skews)


OPS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 99), st.integers(0, 99), st.integers(0, 7), st.integers(0, 8)),
    min_size=5, max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(trees(), OPS)
def test_tree_converges_through_routing_scopes(tree: Tree, ops: list[tuple[int, ...]]) -> None:
    for kind, a, b, c, v in ops:
        if kind == 3:  # a partial sync of one link
            src, dst = tree.links[a % len(tree.links)]
            tree.sync(src, dst, limit=b % 4 + 1)
        else:
            tree.write(a, b, kind, c, v)
    tree.full_sync()
    check_converged(tree)
    assert tree.full_sync() == 0  # a second full sync moves nothing
    for src, dst in tree.links:
        assert tree.nodes[dst].cursors[src] == len(tree.nodes[src].log)
    # a conflict has the same winner and loser at every node that recorded it
    seen: dict[str, merge.Conflict] = {}
    for rep in tree.nodes.values():
        for cid, conflict in rep.conflicts.items():
            assert seen.setdefault(cid, conflict) == conflict
    ops_seen = {(c.op, c.cl > 1) for c in tree.written}
    event(f"delete: {('D', True) in ops_seen}, re-insert: {('I', True) in ops_seen}")
    event(f"conflicts: {bool(seen)}")
    event(f"multi-writer: {any(c.origin != c.org_code for c in tree.written)}")


def test_hc26_concurrent_status_by_organiser_and_member_committee_converges() -> None:
    topo = Topology.from_rows([
        ("430000", "湖南省", "province", None, []), ("430100", "长沙市", "city", "430000", []),
        ("430102", "芙蓉区", "county", "430100", []), ("430103", "天心区", "county", "430100", []),
    ])
    act = Row("activities", uuid.uuid4(), {HOME: "430000"}, {})
    att = Row("attendance", uuid.uuid4(), {HOME: "430102", "organiser": "430000"},
              {"activity_id": str(act.id), "member_id": "m"})
    tree = Tree(topo, [att], {n: 0 for n in topo})
    home, organiser = 1, 0  # writer index among the sorted writer codes
    tree.write(0, home, 0, 0, 0)  # the member's committee records the row
    tree.full_sync()
    tree.write(0, home, 1, 0, 1)  # both now edit status without syncing
    tree.write(0, organiser, 1, 0, 2)
    tree.full_sync()
    check_converged(tree)
    statuses = {rep.rows[("attendance", att.id)].cols["status"][0] for n, rep in tree.nodes.items()
                if ("attendance", att.id) in rep.rows}
    assert len(statuses) == 1
    assert ("attendance", att.id) not in tree.nodes["430103"].rows
    conflicts = {cid for rep in tree.nodes.values() for cid in rep.conflicts}
    assert len(conflicts) == 1  # the same id at the home and the organiser
    assert set(tree.nodes["430102"].conflicts) == set(tree.nodes["430000"].conflicts) == conflicts
    assert "leave_reason" in tree.nodes["430102"].rows[("attendance", att.id)].cols
    assert "leave_reason" not in tree.nodes["430000"].rows[("attendance", att.id)].cols
