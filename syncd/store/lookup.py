"""Rows looked up by arrays of keys, planned as index probes whatever the table's size was.

A daemon prepares each statement once and runs it thousands of times; PostgreSQL plans a
prepared statement generically from its sixth run and keeps that plan, made on the table's
size of that moment, until the next ANALYZE.  ``WHERE id = ANY($1)`` planned while the table
was nearly empty (a new node, a province before its counties report) is a sequential scan
searching the array for every row — kept while the table grows: 60 ms at 4k member rows and
230 ms at 9k for a 900-id batch, each apply, until autovacuum came by (bench latency scenario
under load, ``auto_explain``).  A lookup inside a LATERAL subquery that PostgreSQL cannot
flatten into a join (it locks rows, or has a LIMIT) is a parameterised index probe in any plan.
The same for ``syncd.rowver`` joined to ``unnest($1, $2)``: kept from an empty table, a hash join
over a sequential scan of every version held (60 ms at 200k rows, each apply).

The queues the sequencer empties (``syncd.capture``, ``syncd.pending``) meet the other side of
it: once autovacuum's ANALYZE has found a queue empty it records pages but no rows, and the
planner estimates one row however many wait.  ``serial IN (SELECT serial … LIMIT $1)`` then
became a nested-loop semi join running the subquery again for every queued row: 64 s to claim
5,000 of 20,000 captures (bench catch-up, a county's 20k offline writes).  A range up to the
batch's last serial is one index range scan in any plan.
"""
from __future__ import annotations


def rows_by_id(table: str, columns: str, lock: bool = False) -> str:
    """SQL for ``columns`` (over alias ``x``) of the rows of ``public.table`` whose ids are in
    $1 (``uuid[]``, duplicates allowed), one index probe per distinct id, in id order; with
    ``lock`` each row is locked ``FOR UPDATE`` as it is found, so in id order too."""
    tail = "FOR UPDATE" if lock else "LIMIT 1"  # either keeps the subquery a per-id probe (ids are keys)
    return (f"SELECT x.* FROM (SELECT DISTINCT unnest($1::uuid[]) AS id ORDER BY 1) AS k "
            f'CROSS JOIN LATERAL (SELECT {columns} FROM public."{table}" x WHERE x.id = k.id {tail}) AS x')


def rowvers_by_key(columns: str) -> str:
    """SQL for ``columns`` (over alias ``r``) of the ``syncd.rowver`` rows whose (tbl, id) are
    among the pairs ($1 ``text[]``, $2 ``uuid[]``), one index probe per pair (a pair given twice
    is found twice)."""
    return ("SELECT r.* FROM unnest($1::text[], $2::uuid[]) AS k(tbl, id) CROSS JOIN LATERAL "
            f"(SELECT {columns} FROM syncd.rowver r WHERE r.tbl = k.tbl AND r.id = k.id LIMIT 1) AS r")


def oldest_of_queue(table: str) -> str:
    """SQL condition on ``table``'s ``serial``: the oldest $1 rows visible to the statement (a
    range up to the last of them, which holds exactly those rows in the statement's snapshot)."""
    return f"serial <= (SELECT max(serial) FROM (SELECT serial FROM {table} ORDER BY serial LIMIT $1) AS q)"
