"""The change log: rows of ``syncd.log`` and ``syncd.pending`` <-> :class:`Change`.

Column changes are stored as jsonb ``{col: [value, round, stage, prev]}`` with
``prev`` a 5-array version or null; ``homes`` as ``{route: home}``.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import asyncpg

from syncd.proto.change import Change, ColumnChange, Version

LOG_COLUMNS = ("pos", "epoch", "tbl", "id", "org_code", "op", "cl", "ts", "origin", "txn",
               "homes", "cols", "received_from")


def encode_cols(change: Change) -> str:
    return json.dumps({name: c for name, c in change.cols.items()}, ensure_ascii=False)  # named tuples: arrays


def decode_cols(raw: str | dict[str, Any]) -> dict[str, ColumnChange]:
    data = json.loads(raw) if isinstance(raw, str) else raw
    # written by encode_cols: ints are ints already, a prev is a 5-list
    return {name: ColumnChange(v[0], v[1], v[2], Version._make(v[3]) if v[3] else None) for name, v in data.items()}


def _op(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def change_from_record(r: asyncpg.Record) -> Change:
    return Change(
        table=r["tbl"], id=r["id"], org_code=r["org_code"], op=_op(r["op"]), cl=r["cl"],
        ts=r["ts"], origin=r["origin"], txn=r["txn"], homes=json.loads(r["homes"]),
        cols=decode_cols(r["cols"]), pos=r["pos"] if "pos" in r.keys() else 0,
    )


def log_record(pos: int, epoch: int, c: Change, received_from: str | None) -> tuple[Any, ...]:
    return (pos, epoch, c.table, c.id, c.org_code, c.op.encode(), c.cl, c.ts, c.origin, c.txn,
            json.dumps(c.homes), encode_cols(c), received_from)


async def append_log(conn: asyncpg.Connection, first_pos: int, epoch: int,
                     items: Sequence[tuple[Change, str | None]]) -> int:
    """Write ``items`` at positions ``first_pos…``; return the last position used."""
    records = [log_record(first_pos + i, epoch, c, rf) for i, (c, rf) in enumerate(items)]
    if records:
        await conn.copy_records_to_table("log", schema_name="syncd", columns=LOG_COLUMNS, records=records)
    return first_pos + len(records) - 1


async def add_pending(conn: asyncpg.Connection, items: Sequence[tuple[Change, str | None]]) -> None:
    """Queue versioned changes for the sequencer (apply never assigns positions, HC-2)."""
    if not items:
        return
    await conn.copy_records_to_table(
        "pending", schema_name="syncd",
        columns=("tbl", "id", "org_code", "op", "cl", "ts", "origin", "txn", "homes", "cols", "received_from"),
        records=[log_record(0, 0, c, rf)[2:] for c, rf in items])


async def read_log(conn: asyncpg.Connection, after: int, limit: int = 1000) -> list[Change]:
    recs = await conn.fetch("SELECT * FROM syncd.log WHERE pos > $1 ORDER BY pos LIMIT $2", after, limit)
    return [change_from_record(r) for r in recs]


async def head(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT head FROM syncd.node"))
