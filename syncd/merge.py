"""Per-column merge of one row, conflict detection, workflow rank and the hybrid clock.

Theory of operation
-------------------
A row's state is its causal length ``cl`` (odd = alive, even = tombstone) and,
per column, the winning ``(value, Version)``.  Versions are totally ordered by
``(cl, round, stage, ts, origin)`` and then by the value's canonical bytes
(:func:`canonical_value_bytes`), so two different writes never tie (HC-18).

Applying a change (:func:`decide`) is a join in a semilattice:

* the row's ``cl`` becomes ``max(local.cl, change.cl)``;
* when ``cl`` rises, every column written at a lower ``cl`` is dropped: a delete
  (even ``cl``) beats concurrent edits, a re-insert (higher odd ``cl``) beats the
  delete and everything written before it;
* a change whose ``cl`` is below the row's loses entirely;
* at equal ``cl`` each column keeps the higher of the local and incoming
  ``(version, value)``; an identical pair is a duplicate and a no-op.

So the final state is a function of the *set* of changes applied — ``cl`` is the
maximum, each column the maximum among writes at that ``cl`` — whatever the
order, grouping or repetition (commutative, associative, idempotent; the
property tests check it).  Invariant: every column of a state carries
``version.cl == state.cl``, and a tombstone carries no columns.

A conflict (HC-17) is recorded only when a local and an incoming version at the
same ``cl`` differ in value and neither saw the other: each one's ``prev`` (the
version it replaced at its origin) is below the other.  Replays, snapshots and
duplicates therefore record none, and the id (:func:`conflict_id`) is the same
at every node that meets the pair.

Workflow columns rank ``(round, stage)`` (:func:`local_rank`, HC-8); ``lww``
columns rank ``(0, 0)``.  Timestamps come from a hybrid logical clock
(:func:`next_ts`) and incoming ones are checked against bounds
(:func:`clock_check`, HC-23).  Nothing here does I/O.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from syncd.proto.change import Change, ColumnChange, Version
from syncd.schema.declarations import SCHEMA, Table, Workflow

Cell = tuple[Any, Version]  # (value, version)
ClockVerdict = Literal["ok", "warn", "refuse"]


def canonical_value_bytes(value: Any) -> bytes:
    """The value's canonical bytes, the last merge tie-breaker (SPEC R5.1).

    ``json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=False)``
    encoded as UTF-8: JSON-like values (None, bool, int, float, str, list, dict)
    with sorted object keys, no whitespace and non-ASCII text kept literal.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _key(cell: tuple[Version, Any]) -> tuple[Version, bytes]:
    return cell[0], canonical_value_bytes(cell[1])


def compare(a: tuple[Version, Any], b: tuple[Version, Any]) -> int:
    """-1, 0 or 1 under the total order ``(cl, round, stage, ts, origin, value bytes)``.

    ``a`` and ``b`` are ``(version, value)`` pairs; 0 means the same write.
    """
    ka, kb = _key(a), _key(b)
    return (ka > kb) - (ka < kb)


@dataclass(frozen=True)
class RowState:
    """One row at one node: causal length, winning cells, and the ``prev`` of each.

    ``cols`` maps a column to ``(value, version)``; ``prevs`` to the version that
    cell replaced at its origin (None or absent: unknown, counts as lowest).
    """

    cl: int
    cols: Mapping[str, Cell] = field(default_factory=dict)
    prevs: Mapping[str, Version | None] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.cl % 2 == 1

    def values(self) -> dict[str, Any]:
        return {c: v for c, (v, _) in self.cols.items()}


@dataclass(frozen=True)
class Conflict:
    """Two truly concurrent writes of one column; the same id wherever they meet."""

    id: str
    table: str
    row_id: str
    column: str
    winner: tuple[Version, Any]  # (version, value)
    loser: tuple[Version, Any]


@dataclass(frozen=True)
class Decision:
    """What applying one change does to one row.

    ``writes``: incoming cells that win, to store (with their ``prevs``);
    ``lost``: incoming columns that lost (or the whole change, when its ``cl`` is
    below the row's); ``cleared``: local columns dropped because ``cl`` rose;
    ``duplicate``: every incoming cell was already held (nothing to do);
    ``created``: there was no local row; ``deleted``/``resurrected``: the row went
    from alive to tombstone or back.  ``state`` is the resulting row.
    """

    cl: int
    writes: Mapping[str, Cell]
    prevs: Mapping[str, Version | None]
    lost: tuple[str, ...]
    cleared: tuple[str, ...]
    conflicts: tuple[Conflict, ...]
    state: RowState
    created: bool = False
    deleted: bool = False
    resurrected: bool = False
    duplicate: bool = False

    @property
    def tombstone(self) -> bool:
        return self.cl % 2 == 0

    @property
    def changed(self) -> bool:
        """False when the local row is left exactly as it was."""
        return bool(self.writes or self.cleared or self.created or self.deleted or self.resurrected)


def conflict_id(table: str, row_id: object, column: str, v1: Version, v2: Version) -> str:
    """Deterministic id of a conflict: independent of argument order.

    sha256 over ``json.dumps([table, str(row_id), column, [lower, higher]])`` with
    the versions as lists (:meth:`Version.as_list`) sorted by the merge order,
    canonical JSON as in :func:`canonical_value_bytes`; the first 32 hex digits.
    """
    pair = [v.as_list() for v in sorted((v1, v2))]
    blob = canonical_value_bytes([table, str(row_id), column, pair])
    return hashlib.sha256(blob).hexdigest()[:32]


def _below(prev: Version | None, other: Version) -> bool:
    return prev is None or prev < other


def is_concurrent(
    a: Version, a_prev: Version | None, b: Version, b_prev: Version | None
) -> bool:
    """Neither write saw the other: each one's prev is below the other (None lowest)."""
    return _below(a_prev, b) and _below(b_prev, a)


def _table(table: Table | str) -> Table:
    return table if isinstance(table, Table) else SCHEMA[table]


def _empty_decision(local: RowState, change: Change) -> Decision:
    return Decision(
        cl=local.cl, writes={}, prevs={}, lost=tuple(change.cols), cleared=(),
        conflicts=(), state=local, duplicate=False,
    )


def decide(local: RowState | None, incoming: Change, table: Table | str | None = None) -> Decision:
    """Merge one incoming change into one row; pure, total, deterministic.

    ``local`` is the row's current state (None: never seen).  Returns the new
    ``cl``, the cells to write, the incoming columns that lost, the local columns
    cleared by a rising ``cl``, the conflicts to record and the resulting state.
    Applying any set of changes in any order gives the same final state.  An
    update for a row never seen creates a partial row; a caller that prefers to
    park it (HC-11) checks ``created`` and ``incoming.op``.  ``table`` is only used
    for its name (defaults to ``incoming.table``).
    """
    name = _table(table).name if table is not None else incoming.table
    created = local is None
    base = local if local is not None else RowState(cl=0)
    if incoming.cl < base.cl:
        return _empty_decision(base, incoming)
    rising = incoming.cl > base.cl
    kept = {} if rising else dict(base.cols)
    kept_prevs = {} if rising else dict(base.prevs)
    cleared = tuple(base.cols) if rising else ()
    writes: dict[str, Cell] = {}
    prevs: dict[str, Version | None] = {}
    lost: list[str] = []
    conflicts: list[Conflict] = []
    dup = not rising
    alive = incoming.cl % 2 == 1
    for col, cc in (incoming.cols.items() if alive else ()):
        new: Cell = (cc.value, incoming.version(col))
        old = kept.get(col)
        if old is not None:
            order = compare((new[1], new[0]), (old[1], old[0]))
            if order == 0:
                continue
            conflict = _conflict(name, incoming.id, col, cc.prev, new, old, kept_prevs.get(col))
            if conflict is not None:
                conflicts.append(conflict)
            if order < 0:
                lost.append(col)
                dup = False
                continue
        dup = False
        writes[col] = new
        prevs[col] = cc.prev
    kept.update(writes)
    kept_prevs.update(prevs)
    state = RowState(incoming.cl if rising else base.cl, kept, kept_prevs)
    return Decision(
        cl=state.cl, writes=writes, prevs=prevs, lost=tuple(lost), cleared=cleared,
        conflicts=tuple(conflicts), state=state, created=created,
        deleted=rising and base.cl % 2 == 1 and not alive,
        resurrected=rising and base.cl > 0 and base.cl % 2 == 0 and alive,
        duplicate=dup and not created and not (rising or writes),
    )


def _conflict(
    table: str, row_id: object, col: str, in_prev: Version | None,
    new: Cell, old: Cell, old_prev: Version | None,
) -> Conflict | None:
    """A conflict record when ``new`` and ``old`` are truly concurrent, else None."""
    if canonical_value_bytes(new[0]) == canonical_value_bytes(old[0]):
        return None
    if not is_concurrent(new[1], in_prev, old[1], old_prev):
        return None
    win, lose = (new, old) if compare((new[1], new[0]), (old[1], old[0])) > 0 else (old, new)
    return Conflict(
        id=conflict_id(table, row_id, col, new[1], old[1]),
        table=table, row_id=str(row_id), column=col,
        winner=(win[1], win[0]), loser=(lose[1], lose[0]),
    )


def merge_states(a: RowState | None, b: RowState | None) -> RowState | None:
    """The join of two row states (snapshot rows, test oracles).

    Equal to applying every change behind ``b`` to ``a`` with :func:`decide`;
    commutative, associative, idempotent.  ``prevs`` follow the winning cells.
    """
    if a is None or b is None:
        return a if b is None else b
    if a.cl != b.cl:
        return a if a.cl > b.cl else b
    cols, prevs = dict(a.cols), dict(a.prevs)
    for col, cell in b.cols.items():
        old = cols.get(col)
        if old is None or compare((cell[1], cell[0]), (old[1], old[0])) > 0:
            cols[col] = cell
            prevs[col] = b.prevs.get(col)
    return RowState(a.cl, cols, prevs)


def state_conflicts(table: str, row_id: object, local: RowState | None, incoming: RowState) -> list[Conflict]:
    """The conflicts :func:`decide` records when the writes behind ``incoming`` (a snapshot
    row) meet ``local``: the same ``cl``, a column both hold with different values written
    by two writes neither of which saw the other (HC-17: the same ids wherever they meet).
    Only incoming cells that carry the version they replaced are judged: a snapshot from a
    version-2 parent carries none, and a replayed old version must never count as one."""
    if local is None or local.cl != incoming.cl:
        return []
    out = []
    for col, new in incoming.cols.items():
        old, in_prev = local.cols.get(col), incoming.prevs.get(col)
        if old is None or in_prev is None or old[1] == new[1]:
            continue
        conflict = _conflict(table, row_id, col, in_prev, new, old, local.prevs.get(col))
        if conflict is not None:
            out.append(conflict)
    return out


# -- workflow rank (HC-8) -------------------------------------------------------------


def local_rank(
    workflow: Workflow | None, current: tuple[int, int] | None, new_value: Any
) -> tuple[int, int]:
    """The ``(round, stage)`` a write of ``new_value`` gets at the node that makes it.

    ``stage`` is the value's index in the workflow (-1 if not a stage).  The round
    starts at 1; it goes up by one when the value starts a round (重新办理, 退回,
    改办) or its stage is not above the current stage — a backward move made at
    the home must still win everywhere.  Without a workflow (``lww``): ``(0, 0)``.
    """
    if workflow is None:
        return (0, 0)
    stage = workflow.stage(new_value)
    if current is None:
        return (1, stage)
    rnd, cur_stage = current
    if str(new_value) in workflow.round_starters or stage <= cur_stage:
        return (rnd + 1, stage)
    return (rnd, stage)


def column_change(
    table: Table | str, column: str, value: Any, prev: Version | None
) -> ColumnChange:
    """A captured column write: value, the rank it gets here, and the version it replaced."""
    col = _table(table).column(column)
    current = (prev.round, prev.stage) if prev is not None and col.merge == "workflow" else None
    rnd, stage = local_rank(col.workflow if col.merge == "workflow" else None, current, value)
    return ColumnChange(value=value, round=rnd, stage=stage, prev=prev)


# -- hybrid logical clock (HC-5, HC-23) ----------------------------------------------


def next_ts(capture_ts: int, highest_seen: int) -> int:
    """The ts of a new version: ``max(capture_ts, highest_seen + 1)`` (microseconds).

    ``highest_seen`` is the highest ts this node has stamped or accepted; a write
    made while the daemon was down keeps its capture time unless that is already
    behind what was seen (HC-5).
    """
    return max(capture_ts, highest_seen + 1)


def clock_check(incoming_ts: int, now: int, soft_us: int, hard_us: int) -> ClockVerdict:
    """Judge an incoming ts against the local clock (HC-23).

    ``'refuse'`` when it is more than ``hard_us`` ahead of ``now`` (quarantine the
    change; do not let it raise ``highest_seen``), ``'warn'`` when more than
    ``soft_us`` ahead (show the offset in status), else ``'ok'``.  A ts behind
    ``now`` is always ``'ok'``: an old write is ordinary.
    """
    if soft_us < 0 or hard_us < soft_us:
        raise ValueError("clock bounds need 0 <= soft_us <= hard_us")
    ahead = incoming_ts - now
    if ahead > hard_us:
        return "refuse"
    if ahead > soft_us:
        return "warn"
    return "ok"
