"""``python -m bench [--size tiny|small|full] [--only SCENARIO,…] [--out DIR] [--pg-dir DIR] [--statements N]``

One run = one embedded PostgreSQL cluster (settings in ``bench.harness.SETTINGS``, the same
for ceilings and syncd), the chosen scenarios in order, a table on stdout and
``<out>/<YYYY-MM-DD>-<size>.json`` (``<YYYY-MM-DD>b-<size>.json`` and on for a day's later runs:
nothing is overwritten).  Ratios are only taken between measures of the same run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

from bench import bootstrap, capture, catchup, ceilings, latency, scale, tree137  # noqa: E402
from bench.harness import SETTINGS, SIZES, STATEMENTS, BenchCluster, Run, sequencer_interval_ms  # noqa: E402
from syncd import aio  # noqa: E402

#: scenario -> the function measuring it (memory is measured inside the catch-up run)
SCENARIOS: dict[str, Any] = {
    "ceilings": ceilings.run,
    "capture": capture.run,
    "catchup": catchup.run,
    "latency": latency.run,
    "bootstrap": bootstrap.run,
    "memory": catchup.run,
    "scale": scale.run,
    "tree137": tree137.run,
}
NOT_BUILT: dict[str, str] = {}


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    if v != v:  # nan
        return "nan"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(run: Run, scenarios: dict[str, dict[str, Any]]) -> str:
    head = ("scenario", "measure", "value", "unit", "ceiling", "ratio", "goal", "verdict")
    rows = [head]
    for res in run.results:
        rows.append((res.scenario, res.measure, _fmt(res.value), res.unit, res.ceiling or "",
                     _fmt(res.ratio), res.goal or "", res.verdict))
    for name, info in scenarios.items():
        if info["status"] != "ok":
            rows.append((name, info.get("detail", info["status"])[:100], "", "", "", "", "", info["status"].upper()))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    widths[1] = min(widths[1], 78)
    out = []
    for i, r in enumerate(rows):
        out.append("  ".join(str(c)[:widths[j]].ljust(widths[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _profile_text(prof: dict[str, Any], top: int = 15) -> str:
    lines = [f"catch-up profile ({prof['rows']} rows, wall {prof['wall_s']} s, Python busy "
             f"{prof['profiled_s'] - prof['waiting_in_poll_s']:.2f} s, waiting in poll {prof['waiting_in_poll_s']} s)",
             "  top own time (tottime):"]
    for e in prof["top_tottime"][:top]:
        lines.append(f"    {e['tottime_s']:8.3f} s  {e['ncalls']:>9}  {e['function']}")
    lines.append("  top cumulative (syncd / asyncpg / json / aiohttp):")
    for e in prof["top_cumtime_syncd"][:top]:
        lines.append(f"    {e['cumtime_s']:8.3f} s  {e['ncalls']:>9}  {e['function']}")
    return "\n".join(lines)


def _statements_text(per_scenario: dict[str, list[dict[str, Any]]], top: int = 8) -> str:
    lines = ["PostgreSQL's time by statement (pg_stat_statements, summed over the nodes' databases; "
             "ms executing + planning, calls, mean ms):"]
    for name, rows in per_scenario.items():
        lines.append(f"  [{name}]")
        for r in rows[:top]:
            total = r["exec_ms"] + r["plan_ms"]
            lines.append(f"    {total:10.1f} {r['calls']:9d} {total / max(1, r['calls']):9.3f}  {r['query'][:110]}")
    return "\n".join(lines)


async def main(size: str, only: list[str] | None, out_dir: Path, pg_dir: Path | None = None,
               statements: int = 0) -> Path:
    from syncd.log import configure

    configure("json", "error")
    chosen = only or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    base = pg_dir or Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    cluster = BenchCluster(base, {**SETTINGS, **(STATEMENTS if statements else {})}).start()
    run = Run(SIZES[size], cluster)
    scenarios: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        settings = await cluster.show()
        print(f"syncd bench, size {size}, PostgreSQL settings (ceilings and syncd alike):", flush=True)
        print("  " + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
        print(f"  nodes: sequencer_interval_ms={sequencer_interval_ms()} (scale: {scale.SEQUENCER_INTERVAL_MS}), event loop "
              f"{aio.loop_factory().__module__}", flush=True)
        if statements:
            print("  pg_stat_statements loaded (--statements): timings carry its cost, compare them with "
                  "runs like this one only", flush=True)
        done: set[Any] = set()
        need = list(chosen)
        if any(s in need for s in ("catchup", "memory", "scale", "bootstrap")) and "ceilings" not in need:
            need.insert(0, "ceilings")  # ratios need the ceilings of the same run
        for name in need:
            fn = SCENARIOS[name]
            if fn is None:
                scenarios[name] = {"status": "not built", "detail": NOT_BUILT[name]}
                print(f"[{name}] {NOT_BUILT[name]}", flush=True)
                continue
            if fn in done:
                scenarios[name] = dict(scenarios[next(k for k, v in SCENARIOS.items() if v is fn and k in scenarios)])
                continue
            print(f"[{name}] running …", flush=True)
            t0 = time.perf_counter()
            try:
                if statements:
                    await cluster.reset_statements()
                await fn(run)
                if statements:
                    run.extra.setdefault("statements", {})[name] = await cluster.top_statements(statements)
                scenarios[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1)}
            except Exception as e:  # noqa: BLE001 - one failed scenario does not lose the others
                traceback.print_exc()
                scenarios[name] = {"status": "error", "detail": f"{type(e).__name__}: {e}",
                                   "seconds": round(time.perf_counter() - t0, 1)}
            done.add(fn)
            print(f"[{name}] {scenarios[name]['status']} in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        cluster.stop()
        if pg_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(run, scenarios))
    if "profile_catchup" in run.extra:
        print()
        print(_profile_text(run.extra["profile_catchup"]))
    if "statements" in run.extra:
        print()
        print(_statements_text(run.extra["statements"]))
    today = dt.date.today().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = result_path(out_dir, today, size)
    doc = {
        "date": today, "size": size, "params": {**run.size.__dict__, "sequencer_interval_ms": sequencer_interval_ms()}, "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "postgresql_settings": settings, "scenarios": scenarios,
        "results": [r.as_dict() for r in run.results], "ceilings_rows_per_s": run.rates,
        "nodes": "in-process: every Node runs in the bench's Python process (one event loop), "
                 "each on its own database of the one cluster, HTTP on loopback",
        **run.extra,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)
    print(f"\nwrote {path}")
    return path


def result_path(out_dir: Path, day: str, size: str) -> Path:
    """The first free of ``<day>-<size>.json``, ``<day>b-<size>.json`` … ``<day>z-<size>.json``:
    a second run of the day keeps the first one's results."""
    for tag in ["", *"bcdefghijklmnopqrstuvwxyz"]:
        path = out_dir / f"{day}{tag}-{size}.json"
        if not path.exists():
            return path
    raise SystemExit(f"RESULTS_FULL: {out_dir} already holds 26 {size} results of {day}; move some away")


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--pg-dir", type=Path, help="directory for the throwaway cluster (default: a temp dir)")
    ap.add_argument("--statements", type=int, default=0, metavar="N",
                    help="load pg_stat_statements and keep each scenario's N costliest statements (JSON: statements)")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()] if a.only else None
    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # so the cluster is stopped on SIGTERM too

    signal.signal(signal.SIGTERM, _interrupt)
    aio.run(main(a.size, only, a.out, a.pg_dir, a.statements))  # the daemon's event loop (uvloop): nodes run in this process
    return 0


if __name__ == "__main__":
    sys.exit(cli())
