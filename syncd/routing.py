"""Who receives a change, with which columns, and who may have written it.

Theory of operation
-------------------
A row *reaches* the union, over its table's routes, of the flow-closure from that
route's home (``Change.homes[route]``): ``up`` = home and its ancestors, ``down``
= home and its subtree, ``tree`` = both, ``local`` = the home only (HC-1).

In a tree every node reaches every other through exactly one neighbour, so a
node decides per link: a change goes over a link when some node *behind* the link
is in the row's reach (:func:`next_hops`), never back to where it came from
(HC-12).  Over that link go only the columns whose own reach (``all``, ``home``,
``up:N``) contains a node behind the link that the row reaches
(:func:`columns_for`, :func:`project`); ``local`` columns never travel.

On arrival :func:`check_origin` judges each change by itself and returns named
refusals, so the caller quarantines that change and applies the rest of the
batch (DESIGN §6).  Everything here is pure; topology lookups raise
:class:`~syncd.topology.TopologyError` for unknown codes except in
:func:`check_origin`, which turns them into refusals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, TypeVar

from syncd.proto.change import OP_DELETE, OP_INSERT, OPS, Change, StoredChange
from syncd.schema.declarations import HOME, SCHEMA, Column, Table
from syncd.topology import Topology, TopologyError

Direction = Literal["from_child", "from_parent"]

# Refusal codes (quarantine reasons); SPEC's error table names the same strings.
C = TypeVar("C", Change, StoredChange)

FORBIDDEN_SCOPE = "FORBIDDEN_SCOPE"  # origin not where the link says it can be
NOT_A_NEIGHBOUR = "NOT_A_NEIGHBOUR"  # sender is not the parent/child the direction names
HOME_MISMATCH = "HOME_MISMATCH"  # homes['home'] differs from org_code
UNKNOWN_NODE = "UNKNOWN_NODE"  # origin, sender or a route home is not a committee
UNKNOWN_TABLE = "UNKNOWN_TABLE"
FORBIDDEN_WRITER = "FORBIDDEN_WRITER"  # origin may not write this column (HC-26)
FORBIDDEN_DELETE = "FORBIDDEN_DELETE"  # only the home deletes a row
FORBIDDEN_PERSONAL = "FORBIDDEN_PERSONAL"  # reach-limited column not from its home (HC-16)
OUT_OF_REACH = "OUT_OF_REACH"  # a column arrived at a node outside its reach (leak)
LOCAL_COLUMN = "LOCAL_COLUMN"  # an app-maintained column was shipped (HC-19)
BAD_CAUSAL_LENGTH = "BAD_CAUSAL_LENGTH"  # cl < 1, or op and cl parity disagree
BAD_OP = "BAD_OP"


@dataclass(frozen=True)
class Refusal:
    """Why one change is refused: ``code`` (above), the column if any, and a
    reason safe to show anywhere (it never carries column values, HC-15)."""

    code: str
    reason: str
    column: str | None = None


def _table(table: Table | str) -> Table:
    return table if isinstance(table, Table) else SCHEMA[table]


def flow_closure(flow: str, home: str, topo: Topology) -> frozenset[str]:
    """The nodes a row with ``home`` reaches along ``flow``."""
    home = topo.resolve(home)
    if flow == "local":
        return frozenset({home})
    if flow == "up":
        return frozenset((home, *topo.ancestors(home)))
    if flow == "down":
        return topo.subtree(home)
    if flow == "tree":
        return topo.subtree(home) | frozenset(topo.ancestors(home))
    raise ValueError(f"unknown flow {flow!r}")


def reach(table: Table | str, homes: Mapping[str, str], topo: Topology) -> frozenset[str]:
    """Nodes the row reaches: the union over routes of the flow from that route's home.

    A route whose home is missing from ``homes`` (a NULL reference) adds nothing.
    Raises ``TopologyError`` for a home that is not a committee.
    """
    out: set[str] = set()
    for route in _table(table).routes:
        home = homes.get(route.name)
        if home is not None:
            out |= flow_closure(route.flow, home, topo)
    return frozenset(out)


def next_hops(
    table: Table | str,
    homes: Mapping[str, str],
    me: str,
    topo: Topology,
    received_from: str | None = None,
) -> list[str]:
    """Neighbours of ``me`` that must receive the change, parent first.

    A child C gets it when the reach meets subtree(C); the parent when the reach is
    not inside subtree(me).  ``received_from`` never gets it back (no echo, HC-12).
    """
    nodes = reach(table, homes, topo)
    me = topo.resolve(me)
    came = topo.resolve(received_from) if received_from is not None else None
    hops: list[str] = []
    parent = topo.parent(me)
    if parent is not None and parent != came and not nodes <= topo.subtree(me):
        hops.append(parent)
    hops += [c for c in topo.children(me) if c != came and nodes & topo.subtree(c)]
    return hops


def column_reach(reach_rule: str, org_code: str, topo: Topology) -> frozenset[str] | None:
    """Nodes a column may be held at: None for ``all`` (wherever the row goes),
    ``{home}`` for ``home``, the home and its N nearest ancestors for ``up:N``."""
    if reach_rule == "all":
        return None
    home = topo.resolve(org_code)
    if reach_rule == HOME:
        return frozenset({home})
    if reach_rule.startswith("up:"):
        return frozenset((home, *topo.ancestors(home)[: int(reach_rule[3:])]))
    raise ValueError(f"unknown column reach {reach_rule!r}")


def _column(table: Table, name: str) -> Column | None:
    try:
        return table.column(name)
    except KeyError:
        return None


def reach_rule(table: Table, name: str) -> str:
    """A column's reach rule; a column not declared here (a newer peer's additive column,
    kept opaque, HC-13) travels like an ``all`` column."""
    col = _column(table, name)
    return col.reach if col is not None else "all"


def columns_for(
    table: Table | str,
    change_or_cols: Change | Iterable[str],
    org_code: str,
    behind: Iterable[str],
    topo: Topology,
    row_reach: frozenset[str] | None = None,
) -> tuple[str, ...]:
    """Columns (of those given) that may cross a link with ``behind`` on its far side.

    A column crosses when some node behind the link that the row reaches is within
    the column's reach.  ``row_reach`` defaults to the reach of the change's homes;
    given bare column names and no ``row_reach``, every node behind counts as
    reached.  ``local`` columns never cross.  Columns not declared (a newer peer's
    additive column, HC-13) travel like ``all`` columns.  Order is preserved.
    """
    t = _table(table)
    if isinstance(change_or_cols, Change):
        names: Iterable[str] = change_or_cols.names
        if row_reach is None:
            row_reach = reach(t, change_or_cols.homes, topo)
    else:
        names = change_or_cols
    targets = frozenset(behind) if row_reach is None else frozenset(behind) & row_reach
    out: list[str] = []
    for name in names:
        col = _column(t, name)
        if col is not None and col.local:
            continue
        allowed = column_reach(col.reach if col else "all", org_code, topo)
        if targets and (allowed is None or allowed & targets):
            out.append(name)
    return tuple(out)


def project(change: C, behind: Iterable[str], topo: Topology) -> C | None:
    """The change (a :class:`Change` or a :class:`StoredChange`, returned as the same kind) as
    it may cross a link, or None when nothing of it may.

    None when the row reaches nothing behind the link, or when an update has no
    column left after dropping those outside their reach.  Inserts and deletes
    cross even without columns: they carry the row's causal length.
    """
    behind = behind if isinstance(behind, frozenset) else frozenset(behind)
    names = change.names
    # depends on the table, homes, org_code, op and column names only: memoised per tree
    key = ("project", change.table, tuple(change.homes.items()), change.org_code, change.op, names, behind)
    keep = topo.memo.get(key, _MISSING)
    if keep is _MISSING:
        if len(topo.memo) > 100_000:
            topo.memo.clear()
        keep = topo.memo[key] = _project_columns(change, names, behind, topo)
    if keep is None:
        return None
    if len(keep) == len(names):
        return change
    return change.only(keep)  # type: ignore[return-value]


_MISSING = object()


def _project_columns(change: Change | StoredChange, names: tuple[str, ...], behind: frozenset[str],
                     topo: Topology) -> tuple[str, ...] | None:
    """The columns of ``change`` (``names``) that may cross, or None when nothing of it may."""
    t = _table(change.table)
    row_reach = reach(t, change.homes, topo)
    if not row_reach & behind:
        return None
    keep = columns_for(t, names, change.org_code, behind, topo, row_reach)
    if not keep and change.op not in (OP_INSERT, OP_DELETE) and names:
        return None
    return keep


def may_write(
    table: Table | str, column: str, homes: Mapping[str, str], origin: str, topo: Topology
) -> bool:
    """True when ``origin`` is the home of one of the column's writer routes.

    Undeclared columns are written by the home only (the default writer set).
    """
    t = _table(table)
    col = _column(t, column)
    writers = col.writers if col is not None else (HOME,)
    origin = topo.resolve(origin)
    return any(
        homes.get(w) is not None and topo.resolve(homes[w]) == origin for w in writers
    )


def writable_columns(
    table: Table | str, homes: Mapping[str, str], origin: str, topo: Topology
) -> tuple[str, ...]:
    """Shipped columns ``origin`` may write in this row: what a capture at a non-home
    puts in a change (the organiser of an activity writes attendance status, not
    the member's leave reason)."""
    t = _table(table)
    return tuple(c.name for c in t.shipped if may_write(t, c.name, homes, origin, topo))


def _check_link(change: Change, sender: str, me: str, topo: Topology, direction: Direction) -> list[Refusal]:
    origin = topo.resolve(change.origin)
    if direction == "from_child":
        if topo.parent(sender) != me:
            return [Refusal(NOT_A_NEIGHBOUR, f"{sender} is not a child of {me}")]
        if not topo.in_subtree(origin, sender):
            return [Refusal(FORBIDDEN_SCOPE, f"origin {origin} is outside child {sender}'s subtree")]
    elif direction == "from_parent":
        if topo.parent(me) != sender:
            return [Refusal(NOT_A_NEIGHBOUR, f"{sender} is not the parent of {me}")]
        if topo.in_subtree(origin, me):
            return [Refusal(FORBIDDEN_SCOPE, f"origin {origin} is inside {me}'s own subtree")]
    else:
        raise ValueError(f"unknown direction {direction!r}")
    return []


def _check_shape(change: Change, t: Table, topo: Topology) -> list[Refusal]:
    out: list[Refusal] = []
    if change.op not in OPS:
        out.append(Refusal(BAD_OP, f"unknown op {change.op!r}"))
    elif change.cl < 1 or (change.op == OP_DELETE) != (change.cl % 2 == 0):
        out.append(Refusal(BAD_CAUSAL_LENGTH, f"op {change.op} with causal length {change.cl}"))
    home = change.homes.get(HOME)
    if home is None or topo.resolve(home) != topo.resolve(change.org_code):
        out.append(Refusal(HOME_MISMATCH, f"homes['home']={home} but org_code={change.org_code}"))
    if change.op == OP_DELETE and topo.resolve(change.origin) != topo.resolve(change.org_code):
        out.append(Refusal(FORBIDDEN_DELETE, f"{change.origin} deleted a row of {change.org_code}"))
    return out


def _check_columns(change: Change, t: Table, me: str, topo: Topology) -> list[Refusal]:
    out: list[Refusal] = []
    origin = topo.resolve(change.origin)
    home = topo.resolve(change.org_code)
    for name in change.names:
        col = _column(t, name)
        if col is not None and col.local:
            out.append(Refusal(LOCAL_COLUMN, f"{t.name}.{name} is local and never shipped", name))
            continue
        if col is not None and col.personal:
            if origin != home:
                out.append(Refusal(FORBIDDEN_PERSONAL,
                                   f"{t.name}.{name} is written by its home only, not {origin}", name))
                continue
            allowed = column_reach(col.reach, home, topo)
            if allowed is not None and me not in allowed:
                out.append(Refusal(OUT_OF_REACH, f"{t.name}.{name} may not be held at {me}", name))
                continue
        if not may_write(t, name, change.homes, origin, topo):
            out.append(Refusal(FORBIDDEN_WRITER, f"{origin} may not write {t.name}.{name}", name))
    return out


def check_origin(
    change: Change,
    table: Table | str | None,
    sender: str,
    me: str,
    topo: Topology,
    direction: Direction,
) -> list[Refusal]:
    """Refusals for one received change; empty means it may be applied and relayed.

    From a child the origin must lie in the child's subtree; from the parent it
    must lie outside ``me``'s subtree.  ``homes['home']`` must be ``org_code``; a
    delete comes from the home; each column must be writable by the origin, and a
    reach-limited column only from its home and only to a node within its reach.
    Unknown codes become ``UNKNOWN_NODE`` refusals; ``table=None`` looks the
    change's table up in ``SCHEMA`` (``UNKNOWN_TABLE`` if absent).

    The answer depends only on the change's table, origin, org_code, homes, op,
    cl's parity and column names — never on values — so it is memoised per tree.
    """
    tname = table.name if isinstance(table, Table) else (table or change.table)
    key = ("check_origin", tname, id(table) if isinstance(table, Table) else None, change.origin,
           change.org_code, tuple(change.homes.items()), change.op, change.cl >= 1, change.cl % 2,
           change.names, sender, me, direction)
    hit = topo.memo.get(key)
    if hit is None or hit[0] is not table:  # type: ignore[index]
        if len(topo.memo) > 100_000:
            topo.memo.clear()
        hit = topo.memo[key] = (table, tuple(_check_origin(change, table, sender, me, topo, direction)))
    return list(hit[1])  # type: ignore[index]


def _check_origin(change: Change, table: Table | str | None, sender: str, me: str, topo: Topology,
                  direction: Direction) -> list[Refusal]:
    """:func:`check_origin` without the memo."""
    try:
        t = _table(table if table is not None else change.table)
    except KeyError:
        return [Refusal(UNKNOWN_TABLE, f"table {change.table!r} is not replicated")]
    try:
        sender, me = topo.resolve(sender), topo.resolve(me)
        for code in (change.origin, change.org_code, *change.homes.values()):
            topo.resolve(code)
    except TopologyError as exc:
        return [Refusal(UNKNOWN_NODE, str(exc))]
    link = _check_link(change, sender, me, topo, direction)
    if link:
        return link
    return _check_shape(change, t, topo) + _check_columns(change, t, me, topo)


def purge_columns(
    table: Table | str,
    homes: Mapping[str, str],
    topo: Topology,
    narrowed: Mapping[str, tuple[str, str]],
) -> dict[str, frozenset[str]]:
    """Which nodes must clear which columns when column reaches narrow (HC-16).

    ``narrowed`` maps a column to ``(old_reach, new_reach)``.  A node held the
    column if the row reaches it and it was within the old reach; it must clear
    the column when it is outside the new reach.  Returns ``{node: columns}``
    (nodes with nothing to clear are absent).  The home's purge change carries
    this set; it is pure data and travels like a delete of those columns.
    """
    row = reach(table, homes, topo)
    org = homes[HOME]
    out: dict[str, set[str]] = {}
    for col, (old, new) in narrowed.items():
        before = column_reach(old, org, topo)
        after = column_reach(new, org, topo)
        held = row if before is None else row & before
        kept = held if after is None else held & after
        for node in held - kept:
            out.setdefault(node, set()).add(col)
    return {node: frozenset(cols) for node, cols in out.items()}
