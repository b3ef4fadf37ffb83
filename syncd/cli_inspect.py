"""``syncd verify`` and ``syncd history``: what a node holds, compared and explained (HC-33).

Registered on the ``syncd`` command by :func:`add_parsers`; errors follow the CLI's
rule (one ``syncd: error:`` line and a hint, never a traceback; exit 1 runtime, 2 usage).
The commands get the CLI module they run under (``cli``), so ``python -m syncd.cli``,
whose module is ``__main__``, catches the very ``CliError`` they raise.
"""
from __future__ import annotations

import argparse
import functools
import json
import uuid
from types import ModuleType
from typing import TYPE_CHECKING, Any

from syncd.schema.declarations import SCHEMA

if TYPE_CHECKING:  # the modules doing the work load only when their command runs
    from syncd.store.history import RowHistory
    from syncd.verify_run import VerifyReport


async def cmd_verify(args: argparse.Namespace, cli: ModuleType) -> int:
    """Exit 0 when this node and its parent hold the same shared rows, 1 with the list when not."""
    from syncd.errors import SyncdError
    from syncd.node import http_parent_link, load_topology
    from syncd.verify_run import Verifier, VerifyOptions

    tables = tuple(args.table or ())
    unknown = [t for t in tables if t not in SCHEMA]
    if unknown:
        raise cli.CliError(f"not a replicated table: {', '.join(unknown)}",
                       "tables: " + " ".join(t.name for t in SCHEMA.tables), cli.EXIT_USAGE)
    async with cli._node_db(args) as (cfg, conn):
        if cfg.parent is None:
            raise cli.CliError(f"node {cfg.node.id} has no parent: verify runs at a child, over its own link",
                           "run syncd verify at each child node; it compares that node with its parent")
        link = http_parent_link(cfg)
        opts = VerifyOptions(tables=tables, wait_s=args.wait, max_rows=args.max_rows)
        try:
            report = await Verifier(conn, link, cfg.node.id, cfg.parent.id, await load_topology(conn, cfg),
                                    options=opts, id_hash_key=cfg.node.id_hash_key).run()
        except SyncdError as e:
            raise cli.CliError(f"verify with parent {cfg.parent.id} failed: {e.code}: {e.reason}",
                           e.hint or "check the link with: syncd status --config " + args.config) from None
        finally:
            await link.close()
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        _print_verify(report)
    return cli.EXIT_OK if not report.differences else cli.EXIT_FAIL


def _print_verify(r: "VerifyReport") -> None:
    from syncd.verify_run import NOTE

    here = sum(t.rows_here for t in r.tables)
    there = sum(t.rows_parent for t in r.tables)
    p = r.positions
    print(f"verify {r.node} with parent {r.parent}: {len(r.tables)} table(s), {here} shared row(s) here, "
          f"{there} at the parent")
    print(f"positions: parent's head for this node {r.parent_position}; here pull cursor {p.pull_cursor}, "
          f"push cursor {p.push_cursor} of log {p.log_head} — "
          + ("settled" if r.settled else "NOT settled (the links had not caught up; differences may be in flight)"))
    for t in r.tables:
        for d in t.divergences:
            where = str(d.row_id) if d.row_id else f"ids [{d.range.lo}, {d.range.hi or 'end'})" if d.range else ""
            print(f"{t.table} {where} {d.kind}: {d.detail}")
            for c in d.columns:
                print(f"    {c.column}: {c.what}; parent {_ver(c.parent)}, here {_ver(c.here)}")
    n = len(r.differences)
    print(f"{n} difference(s)" + (f" after {r.rechecked} recheck(s)" if r.rechecked else "") if n
          else "no difference")
    print(f"note: {NOTE}")


async def cmd_history(args: argparse.Namespace, cli: ModuleType) -> int:
    """Every change of one row this node knows, and which version won."""
    from syncd.store.history import row_history
    if args.table not in SCHEMA:
        raise cli.CliError(f"not a replicated table: {args.table}",
                       "tables: " + " ".join(t.name for t in SCHEMA.tables), cli.EXIT_USAGE)
    try:
        row_id = uuid.UUID(args.row_id)
    except ValueError:
        raise cli.CliError(f"not a row id (uuid): {args.row_id[:40]!r}",
                       "give the row's id column, e.g. 0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", cli.EXIT_USAGE) from None
    async with cli._node_db(args) as (cfg, conn):
        h = await row_history(conn, cfg.node.id, args.table, row_id)
    if h.current is None and not (h.entries or h.quarantined or h.parked or h.conflicts):
        raise cli.CliError(f"{args.table} {row_id} is not known at node {cfg.node.id}",
                       "a row that never reached this node (not pushed yet, or outside its scope) cannot be "
                       "shown here; try its home committee's node")
    if args.json:
        print(json.dumps(h.as_dict(), ensure_ascii=False, indent=2))
    else:
        _print_history(h)
    return cli.EXIT_OK


def _short(v: Any, n: int = 40) -> str:
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 1] + "…"


def _ver(v: list[Any] | None) -> str:
    from syncd.store.history import us_to_iso

    if not v:
        return "-"
    return f"[cl {v[0]}, round {v[1]}, stage {v[2]}, {us_to_iso(int(v[3]))}, {v[4]}]"


def _print_history(h: "RowHistory") -> None:
    from syncd.store.history import us_to_iso

    print(f"{h.table} {h.row_id} as known at node {h.node}")
    cur = h.current
    if cur is None:
        print("current: no row and no version here")
    else:
        alive = cur["cl"] is None or cur["cl"] % 2 == 1
        state = ("in the table without a version (written with capture bypassed?)" if cur["cl"] is None
                 else f"{'alive' if alive else 'deleted'} (cl {cur['cl']})")
        if cur["cl"] is not None and alive and not cur["in_table"]:
            state += ", but the table has no such row (deleted with capture bypassed?)"
        print(f"current: {state}; home {cur['org_code']}; routes {cur['homes']}")
        for col, x in cur["columns"].items():
            print(f"    {col:<20} = {_short(x['value']):<42} {_ver(x['version'])}")
    print("changes known here, oldest first (WON: the column's current version):")
    if not h.entries:
        print("    (none in this node's log)")
    for e in h.entries:
        head = {"logged": f"pos {e.pos}", "pending": "versioned, waiting for a log position",
                "captured": "captured here, not versioned yet"}[e.stage]
        when = us_to_iso(e.ts) if e.ts is not None else e.logged_at
        src = f" from {e.received_from}" if e.received_from else (" written here" if e.stage == "logged" else "")
        print(f"  {head}  {when}  op {e.op}" + (f" cl {e.cl}" if e.cl is not None else "")
              + (f"  origin {e.origin}" if e.origin else "") + src)
        for c in e.columns:
            mark = "WON" if c.won else ("" if not c.version else "superseded")
            print(f"    {c.column:<20} = {_short(c.value):<42} {_ver(c.version)} {mark}".rstrip())
    for c in h.conflicts:
        state = f"resolved {c['resolved_at']}" if c["resolved_at"] else "open"
        print(f"  conflict {c['id'][:12]} on {c['column']}: winner {_ver(c['winner'][1])}, loser "
              f"{_ver(c['loser'][1])} ({state})")
    for q in h.quarantined:
        print(f"  quarantined here #{q['id']} from {q['peer']}: {q['code']} {q['reason']} (origin {q['origin']}, "
              f"{q['time']}, columns {', '.join(q['columns']) or '-'})"
              + (f", released {q['released_at']}" if q["released_at"] else ""))
    for p in h.parked:
        print(f"  parked here #{p['id']} from {p['peer']}: {p['reason']} (origin {p['origin']}, {p['time']}, "
              f"{p['attempts']} attempt(s))")
    print(f"note: {h.note}")


def add_parsers(sub: Any, cli: ModuleType) -> None:
    """The ``verify`` and ``history`` subcommands, on ``cli``'s parser."""
    s = sub.add_parser("verify", help="compare this node with its parent (run at a child): exit 1 on differences")
    cli._add_target(s, url=False)
    s.add_argument("--json", action="store_true")
    s.add_argument("--table", action="append", help="only this table (repeatable; default: every table)")
    s.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait for the links to catch up before rechecking a difference (default 30)")
    s.add_argument("--max-rows", type=int, default=100,
                   help="rows named per table; further differing ranges are listed as ranges (default 100)")
    s.set_defaults(func=functools.partial(cmd_verify, cli=cli))

    s = sub.add_parser("history", help="every change of one row known at this node, and which version won")
    cli._add_target(s, url=False)
    s.add_argument("table", help="a replicated table, e.g. members")
    s.add_argument("row_id", help="the row's id (uuid)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=functools.partial(cmd_history, cli=cli))
