"""The ``syncd`` command: one function per subcommand.

Every failure an operator can cause (bad config, unreachable database, wrong
node id) ends as one readable line with a hint on stderr and a non-zero exit
code — never a traceback.  Exit codes: 0 ok, 1 runtime failure, 2 bad usage
or configuration.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import unicodedata
import warnings
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version as pkg_version
from typing import Any, AsyncIterator, Awaitable, Callable, NoReturn

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

import asyncpg  # noqa: E402

from syncd import aio  # noqa: E402
from syncd.config import Config, ConfigError, load_config  # noqa: E402
from syncd.log import configure  # noqa: E402

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report as one line: ``message`` plus an operator ``hint``."""

    def __init__(self, message: str, hint: str = "", code: int = EXIT_FAIL):
        super().__init__(message)
        self.hint, self.code = hint, code


def syncd_version() -> str:
    try:
        return pkg_version("syncd")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _load(path: str) -> Config:
    cfg = load_config(path)
    configure(cfg.log_format, cfg.log_level)
    return cfg


@asynccontextmanager
async def _connected(cfg: Config) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the node's database (the embedded cluster started if it is one),
    closed afterwards."""
    from syncd.store.db import open_database

    db = await open_database(cfg)
    try:
        conn = await asyncpg.connect(db.dsn)
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        db.close()


async def cmd_init(args: argparse.Namespace) -> int:
    from syncd.store.migrate import init_node
    from syncd.store.sequencer import Sequencer

    cfg = _load(args.config)
    async with _connected(cfg) as conn:
        res = await init_node(conn, cfg.node.id)
        logged = await Sequencer(me=cfg.node.id, id_hash_key=cfg.node.id_hash_key).drain(conn)
    state = "created" if res.created else "already initialised"
    print(f"node {res.node_id}: {state}; incarnation {res.incarnation}; "
          f"migrations applied {res.migrations_applied or 'none'}; "
          f"existing rows brought into the log {res.rows_seeded}; log entries written {logged}")
    return EXIT_OK


async def cmd_log(args: argparse.Namespace) -> int:
    from syncd.store.log import read_log
    from syncd.store.sequencer import log_row_as_json

    async with _connected(_load(args.config)) as conn:
        changes = await read_log(conn, args.after, args.limit)
    for c in changes:
        if args.json:
            print(log_row_as_json(c))
        else:
            cols = ", ".join(f"{k}={v.value!r}" for k, v in list(c.cols.items())[:6])
            more = f" (+{len(c.cols) - 6} more)" if len(c.cols) > 6 else ""
            print(f"{c.pos:>8} {c.op} {c.table:<22} {c.id} org={c.org_code} cl={c.cl} "
                  f"origin={c.origin} ts={c.ts} {cols}{more}")
    return EXIT_OK


async def cmd_walkthrough(args: argparse.Namespace) -> int:
    from pathlib import Path

    from syncd.walkthrough import run_walkthrough

    configure("console", "warning")
    return await run_walkthrough(Path(args.data_dir).resolve())


async def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from syncd.demo import run_demo

    configure("json", "error")
    return await run_demo(Path(args.data_dir).resolve(), args.once, args.topology)


async def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from syncd.node import Node, tune_gc
    from syncd.reload import install_sighup
    from syncd.store.db import open_database

    cfg = _load(args.config)
    db = await open_database(cfg)
    try:
        node = await Node(cfg, db.dsn).start()
        tune_gc(freeze=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        install_sighup(node, args.config)  # kill -HUP: reload link secrets and URLs (syncd/reload.py)
        print(f"syncd {cfg.node.id} running" + (f" on port {node.port}" if node.port else ""), flush=True)
        await stop.wait()
        await node.stop()
    finally:
        db.close()
    return EXIT_OK


# --- operator commands: status, conflicts, resolve, quarantine, check -------------------------------

LIVE_TIMEOUT_S = 3.0


@asynccontextmanager
async def _node_db(args: argparse.Namespace) -> AsyncIterator[tuple[Config, asyncpg.Connection]]:
    """The node's config and a connection to its initialised database (closed afterwards)."""
    cfg = _load(args.config)
    async with _connected(cfg) as conn:
        try:
            me = await conn.fetchval("SELECT id FROM syncd.node")
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            me = None
        if me != cfg.node.id:
            raise CliError(f"the database of node {cfg.node.id} is not initialised"
                           + (f" (it belongs to node {me})" if me else ""),
                           f"run: syncd init --config {args.config}")
        yield cfg, conn


def _live_url(cfg: Config) -> str:
    host, port = cfg.node.listen.rsplit(":", 1)
    host = "127.0.0.1" if host in ("0.0.0.0", "", "*") else ("[::1]" if host in ("::", "[::]") else host)
    return f"http://{host}:{port}"


async def _get_json(url: str, path: str, token: str | None, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
    """GET ``url + path``; (status, JSON body).  Unreachable or non-JSON → CliError (one line)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIVE_TIMEOUT_S)) as s:
            async with s.get(url.rstrip("/") + path, headers=headers) as r:
                status, text = r.status, await r.text()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
        raise CliError(f"cannot reach {url}: {type(e).__name__} {e}".strip(),
                       "check that syncd runs there and the URL (--url or [node] listen) is right") from e
    try:
        body = json.loads(text)
    except ValueError:
        raise CliError(f"{url}{path} answered {status} without JSON",
                       "is this a syncd node? check the URL and any proxy in front of it") from None
    if status == 401:
        raise CliError(f"{url}{path} needs a read token ({body.get('code', '401')})",
                       "pass --token or set [status] read_token in the config")
    if status not in ok:
        raise CliError(f"{url}{path} answered {status}: {body.get('reason', '')}".strip(),
                       body.get("hint") or "see the node's log")
    return status, body


async def _db_status(cfg: Config, conn: asyncpg.Connection) -> dict[str, Any]:
    """``/status`` as far as the database tells it, for a node whose daemon does not answer.

    Link states live in the daemon's memory, so they are ``unknown``; lags and cursors
    are real; the subtree ages out to ``stale`` as it does in the daemon.
    """
    from types import SimpleNamespace

    from syncd.node import TopologyRef, load_topology
    from syncd.status import _counts, iso, own_summary, subtree_view
    from syncd.store.health import capture_health

    counts = await _counts(conn)
    problems = await capture_health(conn, heartbeat=False)
    cursors = {(r["peer"], r["kind"]): r for r in await conn.fetch("SELECT * FROM syncd.cursors")}
    links: list[dict[str, Any]] = []

    def link(peer: str, direction: str, cursor: int | None, lag: int | None, lag_s: float | None,
             since: Any) -> dict[str, Any]:
        return {"peer": peer, "direction": direction, "state": "unknown", "since": iso(since), "cursor": cursor,
                "lag_changes": lag, "lag_seconds": lag_s, "consecutive_errors": None, "last_error": None,
                "clock_offset_ms": None, "history": [], "reason": None}

    if cfg.parent is not None:
        push = cursors.get((cfg.parent.id, "push"))
        pull = cursors.get((cfg.parent.id, "pull"))
        row = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM now() - min(logged_at))::float8 AS age FROM syncd.log "
            "WHERE pos > $1 AND received_from IS DISTINCT FROM $2", push["pos"] if push else 0, cfg.parent.id)
        links.append({**link(cfg.parent.id, "parent", pull["pos"] if pull else 0, int(row["n"]),
                             round(row["age"] or 0.0, 3), push["updated_at"] if push else None),
                      "push_cursor": push["pos"] if push else 0})
    for c in cfg.children:
        seen = await conn.fetchval("SELECT received_at FROM syncd.subtree_status WHERE node = $1", c.id)
        applied = cursors.get((c.id, "applied"))
        links.append(link(c.id, "child", applied["pos"] if applied else None, None, None, seen))
    shim: Any = SimpleNamespace(cfg=cfg, topo_ref=TopologyRef(await load_topology(conn, cfg)))
    me = {**own_summary(shim, counts, links), "state": "unknown"}
    topo = shim.topo_ref.topo
    return {"source": "database",
            "node": {"id": cfg.node.id, "name": cfg.node.name, "level": topo.level(cfg.node.id),
                     "version": syncd_version(), "uptime_s": None, "log_position": counts["head"],
                     "log_first": counts["log_first"], "epoch": counts["epoch"], "capture_backlog": counts["backlog"], "started_at": None},
            "links": links, "conflicts_open": counts["conflicts_open"], "parked": counts["parked"],
            "quarantined": counts["quarantined"],
            "capture": {"healthy": not problems, "problems": [p.as_dict() for p in problems],
                        "backlog": counts["backlog"]},
            "subtree": await subtree_view(shim, conn, me, links)}


async def _status_of(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """(status, where it came from): ``--url``; else the config's daemon; else its database."""
    if args.url:
        return (await _get_json(args.url, "/status", args.token))[1], f"live {args.url}"
    cfg = _load(args.config)
    url = _live_url(cfg)
    if not getattr(args, "offline", False):
        try:
            return (await _get_json(url, "/status", args.token or cfg.status.read_token))[1], f"live {url}"
        except CliError as e:
            why = str(e)
    else:
        why = "--offline"
    async with _node_db(args) as (cfg, conn):
        return await _db_status(cfg, conn), f"database ({why}; link states unknown)"


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v + " " * (w - _width(v)) for v, w in zip(r, widths)).rstrip() for r in cells)


def _ago(ts: str | None) -> str | None:
    if not ts:
        return None
    from datetime import datetime, timezone

    s = (datetime.now(timezone.utc) - datetime.fromisoformat(ts.replace("Z", "+00:00"))).total_seconds()
    return f"{s:.0f}s ago" if s < 120 else (f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago")


def _print_status(st: dict[str, Any], source: str) -> None:
    n = st["node"]
    cap = st["capture"]
    print(f"{n['name']} {n['id']} ({n['level']})  syncd {n['version']}  log {n.get('log_first', 1)}…{n['log_position']}  "
          f"epoch {n['epoch']}  capture {'healthy' if cap['healthy'] else 'UNHEALTHY'} (backlog {cap['backlog']})")
    print(f"source: {source}")
    db = st.get("database") or {}
    if db.get("state") == "down":
        e = db.get("last_error") or {}
        print(f"database DOWN since {_ago(db.get('since'))}: {e.get('code')}: {e.get('reason')}  hint: {e.get('hint')}")
    for p in cap["problems"]:
        print(f"  capture {p['code']} {p['table']}: {p['detail']}")
    print(f"conflicts open {st['conflicts_open']}  parked {st['parked']}  quarantined {st['quarantined']}")
    print("\nLINKS")
    print(_table(["PEER", "DIRECTION", "STATE", "SINCE", "CURSOR", "LAG", "LAG_S", "ERRORS", "LAST ERROR"],
                 [[ln["peer"], ln["direction"], ln["state"], _ago(ln["since"]), ln["cursor"], ln["lag_changes"],
                   ln["lag_seconds"], ln["consecutive_errors"], (ln["last_error"] or {}).get("code")]
                  for ln in st["links"]]) if st["links"] else "  (none)")
    for ln in st["links"]:
        if ln["last_error"]:
            e = ln["last_error"]
            print(f"  {ln['peer']}: {e.get('code')}: {e.get('reason')}" + (f"  hint: {e['hint']}" if e.get("hint")
                                                                          else ""))
    nodes = st["subtree"]
    by_state: dict[str, int] = {}
    for s in nodes:
        by_state[s["state"]] = by_state.get(s["state"], 0) + 1
    print(f"\nSUBTREE ({len(nodes)} nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) + ")")
    kids: dict[str | None, list[dict[str, Any]]] = {}
    for s in nodes:
        kids.setdefault(s["parent"], []).append(s)
    rows: list[list[Any]] = []

    def walk(s: dict[str, Any], depth: int) -> None:
        rows.append(["  " * depth + s["node"], s["name"], s["level"], s["state"], _ago(s["reported_at"]),
                     s["lag_changes"], s["conflicts_open"], s["quarantined"], s["parked"]])
        for k in kids.get(s["node"], []):
            walk(k, depth + 1)

    if nodes:
        walk(nodes[0], 0)
    print(_table(["NODE", "NAME", "LEVEL", "STATE", "REPORTED", "LAG", "CONFLICTS", "QUARANTINED", "PARKED"], rows))


async def cmd_status(args: argparse.Namespace) -> int:
    st, source = await _status_of(args)
    if args.json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
    else:
        _print_status(st, source)
    return EXIT_OK


def _short(v: Any, n: int = 28) -> str:
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 1] + "…"


async def cmd_conflicts(args: argparse.Namespace) -> int:
    from syncd.store.conflicts import list_conflicts

    async with _node_db(args) as (_, conn):
        rows = await list_conflicts(conn, include_resolved=args.all)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], ensure_ascii=False, indent=2))
        return EXIT_OK
    if not rows:
        print("no open conflicts" if not args.all else "no conflicts")
        return EXIT_OK
    print(_table(["ID", "TABLE", "ROW", "COLUMN", "WINNER", "LOSER", "DETECTED", "RESOLVED"],
                 [[r.id[:12], r.table, str(r.row_id)[:8], r.column, _short(r.winner[0]), _short(r.loser[0]),
                   r.detected_at[:19], (r.resolved_at or "")[:19] or None] for r in rows]))
    print(f"{len(rows)} conflict(s); resolve one with: syncd resolve ID --take local|remote|value")
    return EXIT_OK


async def cmd_resolve(args: argparse.Namespace) -> int:
    from syncd.store.conflicts import ConflictError, resolve

    if (args.take == "value") != (args.value is not None):
        raise CliError("--value is required with --take value, and only with it",
                       'e.g. syncd resolve ID --take value --value \'"出席"\'', EXIT_USAGE)
    value = None
    if args.value is not None:
        try:
            value = json.loads(args.value)
        except ValueError:
            raise CliError(f"--value is not JSON: {args.value[:40]!r}",
                           "quote strings as JSON: --value '\"出席\"'; numbers and null as they are",
                           EXIT_USAGE) from None
    async with _node_db(args) as (_, conn):
        ids = [r["id"] for r in await conn.fetch(
            "SELECT id FROM syncd.conflicts WHERE id LIKE $1 || '%' ORDER BY id LIMIT 3", args.id)]
        if len(ids) != 1:
            raise CliError(f"{'no' if not ids else 'more than one'} conflict with id {args.id!r} at this node",
                           "list them with: syncd conflicts --all" if not ids else "give more characters of the id")
        try:
            row = await resolve(conn, ids[0], args.take, value)
        except ConflictError as e:
            raise CliError(str(e), e.hint or "syncd conflicts --all shows every conflict and its resolution") from None
        except asyncpg.RaiseError as e:  # the check triggers: this node may not write that cell (HC-9, HC-16)
            raise CliError(f"{e.sqlstate} {str(e).splitlines()[0]}",
                           "resolve it at the row's home committee, which may write that column") from None
    print(f"resolved {row.id[:12]}: {row.table}.{row.column} of {row.row_id} = "
          f"{_short((row.resolution or {}).get('value'), 60)} (take {args.take}); it replicates like any write")
    return EXIT_OK


async def cmd_quarantine(args: argparse.Namespace) -> int:
    from syncd.node import load_topology
    from syncd.schema.declarations import SCHEMA
    from syncd.store.apply import ApplyContext
    from syncd.store.quarantine import QuarantineError, list_quarantined, release_quarantined

    async with _node_db(args) as (cfg, conn):
        if args.release is not None:
            t = cfg.tuning
            ctx = ApplyContext(SCHEMA, cfg.node.id, await load_topology(conn, cfg), cfg.node.id_hash_key,
                               t.clock_soft_ms * 1000, t.clock_hard_ms * 1000)
            try:
                res = await release_quarantined(conn, ctx, args.release)
            except QuarantineError as e:
                raise CliError(str(e), e.hint) from None
            if res.outcome == "still_quarantined":
                raise CliError(f"quarantined change {res.id} failed again: {res.code}: {res.reason}",
                               "fix the cause (constraint, scope, clock), then release it again")
            print(f"released {res.id}: {res.outcome}"
                  + (" (its foreign-key target is not here yet; it is retried by itself)"
                     if res.outcome == "parked" else ""))
            return EXIT_OK
        rows = await list_quarantined(conn, include_released=args.all)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], ensure_ascii=False, indent=2))
    elif not rows:
        print("nothing quarantined")
    else:
        print(_table(["ID", "PEER", "CODE", "TABLE", "ROW", "OP", "ORIGIN", "RECEIVED", "REASON"],
                     [[r.id, r.peer, r.code, r.table, str(r.row_id)[:8], r.op, r.origin, r.received_at[:19],
                       r.reason[:60]] for r in rows]))
        print(f"{len(rows)} change(s); after fixing the cause: syncd quarantine --release ID")
    return EXIT_OK


async def _db_problems(cfg: Config, conn: asyncpg.Connection, max_lag_s: float) -> list[str]:
    """Capture health (with a probe write) and link freshness, from the database alone."""
    from syncd.store.health import capture_health

    out = [f"capture {p.code} {p.table}: {p.detail}" for p in await capture_health(conn)]
    if cfg.parent is not None:
        push = await conn.fetchval("SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'push'",
                                   cfg.parent.id) or 0
        row = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM now() - min(logged_at))::float8 AS age FROM syncd.log "
            "WHERE pos > $1 AND received_from IS DISTINCT FROM $2", push, cfg.parent.id)
        if row["n"] and (row["age"] or 0) > max_lag_s:
            out.append(f"link {cfg.parent.id} (parent): {row['n']} change(s) not acknowledged, oldest "
                       f"{row['age']:.0f}s — hint: syncd status shows the link's last error")
    for c in cfg.children:
        age = await conn.fetchval("SELECT extract(epoch FROM now() - received_at)::float8 FROM syncd.subtree_status "
                                  "WHERE node = $1", c.id)
        if age is None or age > max_lag_s:
            out.append(f"link {c.id} (child): " + ("never reported" if age is None else f"silent for {age:.0f}s")
                       + " — hint: check that child's daemon and its [parent] url and secret")
    return out


async def _live_problems(url: str, token: str | None, subtree: bool) -> list[str]:
    _, ready = await _get_json(url, "/readyz", token, ok=(200, 503))
    _, st = await _get_json(url, "/status", token)
    out = [f"capture {p['code']} {p['table']}: {p['detail']}" for p in st["capture"]["problems"]]
    for ln in st["links"]:
        if ln["state"] != "running":
            e = ln["last_error"] or {}
            out.append(f"link {ln['peer']} ({ln['direction']}) {ln['state']}"
                       + (f": {ln['reason']}" if ln.get("reason") else
                          f": {e.get('code')}: {e.get('reason')} — hint: {e.get('hint')}" if e else ""))
    if not ready.get("ready", False) and not any(x.startswith("link ") for x in out):
        out.append(f"not ready: {ready.get('reason', '')}")
    if subtree:
        out += [f"node {s['node']} {s['name']} {s['state']}" for s in st["subtree"][1:]
                if s["state"] not in ("healthy",)]
    return out


async def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when capture is healthy and every link runs; else 1 with one line per problem."""
    if args.url:
        problems = await _live_problems(args.url, args.token, args.subtree)
        where = args.url
    else:
        async with _node_db(args) as (cfg, conn):
            problems = await _db_problems(cfg, conn, args.max_lag_s)
        where = _live_url(cfg)
        try:
            problems += await _live_problems(where, args.token or cfg.status.read_token, args.subtree)
        except CliError as e:
            problems.append(f"daemon: {e} — hint: {e.hint}")
        where = f"node {cfg.node.id}"
    for p in dict.fromkeys(problems):
        print(p)
    if problems:
        return EXIT_FAIL
    print(f"ok: {where}: capture healthy, every link running")
    return EXIT_OK


def _add_target(s: argparse.ArgumentParser, url: bool = True) -> None:
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", "-c", help="the node's TOML config (its database, its daemon's listen address)")
    if url:
        g.add_argument("--url", help="a node's base URL, e.g. https://changsha.zxy.example")
        s.add_argument("--token", default=os.environ.get("SYNCD_STATUS_TOKEN"),
                       help="[status] read_token of that node (default: $SYNCD_STATUS_TOKEN)")


def _add_ops_parsers(sub: Any) -> None:
    s = sub.add_parser("status", help="links and subtree of a node (live, or from its database)")
    _add_target(s)
    s.add_argument("--json", action="store_true", help="the /status JSON (fields: README, Status fields)")
    s.add_argument("--offline", action="store_true", help="with --config: read the database, do not ask the daemon")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("conflicts", help="list open conflicts at this node")
    _add_target(s, url=False)
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="include resolved conflicts")
    s.set_defaults(func=cmd_conflicts)

    s = sub.add_parser("resolve", help="resolve a conflict by an ordinary write of the chosen value")
    _add_target(s, url=False)
    s.add_argument("id", help="the conflict id (a unique prefix is enough)")
    s.add_argument("--take", required=True, choices=("local", "remote", "value"))
    s.add_argument("--value", help="with --take value: the value as JSON")
    s.set_defaults(func=cmd_resolve)

    s = sub.add_parser("quarantine", help="list quarantined changes, or release one")
    _add_target(s, url=False)
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="include released changes")
    s.add_argument("--release", type=int, metavar="ID", help="re-apply quarantined change ID")
    s.set_defaults(func=cmd_quarantine)

    s = sub.add_parser("check", help="exit 0 if capture is healthy and every link runs, else 1 (for monitoring)")
    _add_target(s)
    s.add_argument("--subtree", action="store_true", help="also fail on any node of the subtree not healthy")
    s.add_argument("--max-lag-s", type=float, default=120.0,
                   help="with --config: unacknowledged changes or child silence older than this is a problem")
    s.set_defaults(func=cmd_check)

    from syncd.cli_inspect import add_parsers  # verify, history (HC-33)
    add_parsers(sub, sys.modules[__name__])


async def cmd_version(args: argparse.Namespace) -> int:
    from syncd.store.migrate import LATEST

    print(f"syncd {syncd_version()} (schema {LATEST})")
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line plus a hint, exit 2."""

    def error(self, message: str) -> NoReturn:
        _report(message, f"see: {self.prog} --help")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="syncd", description="Multi-level data sync for the 政协云 committee tree.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="create or upgrade syncd's schema and triggers in the node's database")
    s.add_argument("--config", "-c", required=True, help="the node's TOML config")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("log", help="print change-log entries after a position")
    s.add_argument("--config", "-c", required=True)
    s.add_argument("--after", type=int, default=0, help="print entries with position > N (default 0)")
    s.add_argument("--limit", type=int, default=1000)
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=cmd_log)

    s = sub.add_parser("walkthrough", help="show change capture step by step on embedded PostgreSQL")
    s.add_argument("--data-dir", default="syncd-data/walkthrough", help="where the embedded cluster lives")
    s.set_defaults(func=cmd_walkthrough)

    s = sub.add_parser("run", help="run the node's daemon until SIGTERM")
    s.add_argument("--config", "-c", required=True)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("demo", help="a Hunan subtree of nodes syncing over HTTP on embedded PostgreSQL")
    s.add_argument("--once", action="store_true", help="run the story and exit (non-zero if a check fails)")
    s.add_argument("--topology", choices=("subtree", "hunan"), default="subtree",
                   help="subtree: 湖南省 + 长沙市 + 岳阳市 and their counties; hunan: all 137 nodes")
    s.add_argument("--data-dir", default="syncd-data/demo", help="where the embedded cluster lives")
    s.set_defaults(func=cmd_demo)

    _add_ops_parsers(sub)

    s = sub.add_parser("version", help="print the syncd version")
    s.set_defaults(func=cmd_version)
    return p


def _report(message: str, hint: str) -> None:
    print(f"syncd: error: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)


def run_command(func: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    try:
        return aio.run(func(args))
    except ConfigError as e:
        print(f"syncd: error: bad config {e.source}:", file=sys.stderr)
        for path, value, msg in e.problems:
            shown = "" if value is None else f" (got {value!r})"
            print(f"  {path}: {msg}{shown}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as e:
        _report(str(e), e.hint)
        return e.code
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        _report(f"{type(e).__name__}: {e}".splitlines()[0],
                "check that the node's PostgreSQL is running and [node] dsn is right")
        return EXIT_FAIL
    except RuntimeError as e:
        _report(str(e).splitlines()[0], "")
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
