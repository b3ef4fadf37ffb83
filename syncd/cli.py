"""The ``syncd`` command: one function per subcommand.

Every failure an operator can cause (bad config, unreachable database, wrong
node id) ends as one readable line with a hint on stderr and a non-zero exit
code — never a traceback.  Exit codes: 0 ok, 1 runtime failure, 2 bad usage
or configuration.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version as pkg_version
from typing import Awaitable, Callable

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

import asyncpg  # noqa: E402

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


async def cmd_init(args: argparse.Namespace) -> int:
    from syncd.store.db import open_database
    from syncd.store.migrate import init_node
    from syncd.store.sequencer import Sequencer

    cfg = _load(args.config)
    db = await open_database(cfg)
    try:
        conn = await asyncpg.connect(db.dsn)
        try:
            res = await init_node(conn, cfg.node.id)
            logged = await Sequencer(me=cfg.node.id, id_hash_key=cfg.node.id_hash_key).drain(conn)
        finally:
            await conn.close()
    finally:
        db.close()
    state = "created" if res.created else "already initialised"
    print(f"node {res.node_id}: {state}; incarnation {res.incarnation}; "
          f"migrations applied {res.migrations_applied or 'none'}; "
          f"existing rows brought into the log {res.rows_seeded}; log entries written {logged}")
    return EXIT_OK


async def cmd_log(args: argparse.Namespace) -> int:
    from syncd.store.db import open_database
    from syncd.store.log import read_log
    from syncd.store.sequencer import log_row_as_json

    cfg = _load(args.config)
    db = await open_database(cfg)
    try:
        conn = await asyncpg.connect(db.dsn)
        try:
            changes = await read_log(conn, args.after, args.limit)
        finally:
            await conn.close()
    finally:
        db.close()
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

    from syncd.node import Node
    from syncd.store.db import open_database

    cfg = _load(args.config)
    db = await open_database(cfg)
    try:
        node = await Node(cfg, db.dsn).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"syncd {cfg.node.id} running" + (f" on port {node.port}" if node.port else ""), flush=True)
        await stop.wait()
        await node.stop()
    finally:
        db.close()
    return EXIT_OK


async def cmd_version(args: argparse.Namespace) -> int:
    from syncd.store.migrate import LATEST

    print(f"syncd {syncd_version()} (schema {LATEST})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncd", description="Multi-level data sync for the 政协云 committee tree.")
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
    s.add_argument("--data-dir", default="syncd-data/demo")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("version", help="print the syncd version")
    s.set_defaults(func=cmd_version)
    return p


def _report(message: str, hint: str) -> None:
    print(f"syncd: error: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)


def run_command(func: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    try:
        return asyncio.run(func(args))
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
