"""history: every change of one row this node knows, and which version won (HC-33).

What a node knows of a row is its own log (``syncd.log``: changes written here and
changes received, with ``received_from``), what is on its way into the log
(``syncd.capture``: written here, not versioned yet; ``syncd.pending``: versioned,
waiting for a position), what it refused or is holding back (``syncd.quarantine``,
``syncd.parked``), the conflicts recorded here, and the row's current merge state
(``syncd.rowver``: one version per column).  A column change *won* when its version
is the column's current version.

What a node cannot know is said with the answer (:data:`UNKNOWABLE`): a change that
never reached this node — still at a node that has not pushed it, or outside this
node's scope (a personal column that stays at its home, a row that never travels
here) — is not in its log, and neither is anything older than the log's retention.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import asyncpg

from syncd.proto.change import Version
from syncd.store.apply import change_from_json
from syncd.store.log import change_from_record

UNKNOWABLE = ("Only what this node knows is shown: changes that never left the node that wrote them "
              "(not pushed yet, or outside this node's scope, such as personal columns kept at their home) "
              "cannot be shown here, nor changes older than the log's retention. Run history at the row's "
              "home, or at the node where the change was made, to see those.")


def us_to_iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if ts else None


@dataclass
class ColumnEntry:
    column: str
    value: Any
    version: list[Any]
    prev: list[Any] | None
    won: bool

    def as_dict(self) -> dict[str, Any]:
        return {"column": self.column, "value": self.value, "version": self.version, "prev": self.prev,
                "won": self.won}


@dataclass
class Entry:
    """One change of the row: from the log (``pos`` set) or on its way in (``stage``)."""

    stage: str  # logged | pending (versioned, no position yet) | captured (not versioned yet)
    pos: int | None
    origin: str | None
    ts: int | None
    op: str
    cl: int | None
    received_from: str | None
    logged_at: str | None
    columns: list[ColumnEntry] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "pos": self.pos, "origin": self.origin, "ts": self.ts,
                "time": us_to_iso(self.ts) if self.ts is not None else None, "op": self.op, "cl": self.cl,
                "received_from": self.received_from, "logged_at": self.logged_at,
                "columns": [c.as_dict() for c in self.columns]}


@dataclass
class RowHistory:
    table: str
    row_id: uuid.UUID
    node: str
    current: dict[str, Any] | None  # {cl, org_code, homes, in_table, columns: {col: {version, value}}}
    entries: list[Entry]
    conflicts: list[dict[str, Any]]
    quarantined: list[dict[str, Any]]
    parked: list[dict[str, Any]]
    note: str = UNKNOWABLE

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "row_id": str(self.row_id), "node": self.node, "current": self.current,
                "entries": [e.as_dict() for e in self.entries], "conflicts": self.conflicts,
                "quarantined": self.quarantined, "parked": self.parked, "note": self.note}


def _logged(r: asyncpg.Record, stage: str, current: dict[str, list[Any]]) -> Entry:
    c = change_from_record(r)
    cols = []
    for name, cc in sorted(c.cols.items()):
        ver = Version(c.cl, cc.round, cc.stage, c.ts, c.origin).as_list()
        cols.append(ColumnEntry(name, cc.value, ver, cc.prev.as_list() if cc.prev else None,
                                current.get(name) == ver))
    return Entry(stage, r["pos"] if stage == "logged" else None, c.origin, c.ts, c.op, c.cl, r["received_from"],
                 _iso(r["logged_at"]) if stage == "logged" else None, cols)


def _captured(r: asyncpg.Record) -> Entry:
    new = json.loads(r["new"]) if r["new"] is not None else None
    old = json.loads(r["old"]) if r["old"] is not None else None
    op = r["op"].decode() if isinstance(r["op"], bytes) else str(r["op"])
    if op == "p":  # new: the changed columns alone (old: the row's context)
        changed = sorted(new or {})
    elif isinstance(old, list):  # op 'u': the names of the changed columns
        changed = sorted(k for k in old if k in (new or {}))
    else:
        changed = sorted(k for k in (new or {}) if old is None or old.get(k) != new.get(k))
    return Entry("captured", None, None, None, op, None, None, _iso(r["stmt_ts"]),
                 [ColumnEntry(k, (new or {}).get(k), [], None, False) for k in changed])


def _held(r: asyncpg.Record, kind: str) -> dict[str, Any]:
    c = change_from_json(r["change"])
    out = {"id": r["id"], "peer": r["peer"], "reason": r["reason"], "origin": c.origin, "ts": c.ts,
           "time": us_to_iso(c.ts), "op": c.op, "cl": c.cl, "columns": sorted(c.cols)}
    if kind == "quarantine":
        out |= {"code": r["code"], "received_at": _iso(r["received_at"]), "released_at": _iso(r["released_at"])}
    else:
        out |= {"parked_at": _iso(r["parked_at"]), "attempts": r["attempts"]}
    return out


async def _current(conn: asyncpg.Connection, table: str, row_id: uuid.UUID) -> dict[str, Any] | None:
    rv = await conn.fetchrow("SELECT org_code, cl, homes, v FROM syncd.rowver WHERE tbl = $1 AND id = $2",
                             table, row_id)
    values = await conn.fetchval(f'SELECT to_jsonb(t) FROM public."{table}" t WHERE id = $1', row_id)
    vals = json.loads(values) if values is not None else None
    if rv is None:
        return None if vals is None else {"cl": None, "org_code": vals.get("org_code"), "homes": None,
                                          "in_table": True, "columns": {}}
    versions = json.loads(rv["v"])
    return {"cl": rv["cl"], "org_code": rv["org_code"], "homes": json.loads(rv["homes"]),
            "in_table": vals is not None,
            "columns": {c: {"version": v[:5], "value": (vals or {}).get(c)} for c, v in sorted(versions.items())}}


async def row_history(conn: asyncpg.Connection, node: str, table: str, row_id: uuid.UUID) -> RowHistory:
    """Everything this node knows of one row (see the module docstring)."""
    current = await _current(conn, table, row_id)
    won = {c: x["version"] for c, x in (current or {}).get("columns", {}).items()}
    logged = await conn.fetch("SELECT * FROM syncd.log WHERE tbl = $1 AND id = $2 ORDER BY pos", table, row_id)
    pending = await conn.fetch("SELECT *, NULL::bigint AS pos, NULL::timestamptz AS logged_at FROM syncd.pending "
                               "WHERE tbl = $1 AND id = $2 ORDER BY serial", table, row_id)
    captured = await conn.fetch("SELECT * FROM syncd.capture WHERE tbl = $1 AND row_id = $2 ORDER BY serial",
                                table, row_id)
    entries = ([_logged(r, "logged", won) for r in logged] + [_logged(r, "pending", won) for r in pending]
               + [_captured(r) for r in captured])
    conflicts = [{"id": r["id"], "column": r["col"], "winner": json.loads(r["winner"]),
                  "loser": json.loads(r["loser"]), "detected_at": _iso(r["detected_at"]),
                  "resolved_at": _iso(r["resolved_at"])}
                 for r in await conn.fetch("SELECT * FROM syncd.conflicts WHERE tbl = $1 AND row_id = $2 "
                                           "ORDER BY detected_at", table, row_id)]
    quarantined = [_held(r, "quarantine") for r in await conn.fetch(
        "SELECT * FROM syncd.quarantine WHERE tbl = $1 AND row_id = $2 ORDER BY id", table, row_id)]
    parked = [_held(r, "parked") for r in await conn.fetch(
        "SELECT * FROM syncd.parked WHERE tbl = $1 AND row_id = $2 ORDER BY id", table, row_id)]
    return RowHistory(table, row_id, node, current, entries, conflicts, quarantined, parked)
