"""What operators see: the status model, ``/status``, ``/healthz``, ``/readyz``, ``/metrics``, ``/``.

``/healthz`` only says the process is alive (a liveness probe must never restart a
daemon for a network fault); ``/readyz`` says whether every link is healthy
(HC-31).  ``/status`` is the JSON model documented in the README; its ``subtree``
lists this node and every node the topology expects below it, from the compact
summaries children push up (HC-30): a node reported only through a link that is
down shows ``stale``, a node never heard from ``missing``.  Nothing here carries
PostgreSQL DETAIL text or values of personal columns (HC-15).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from syncd.store.health import capture_health

if TYPE_CHECKING:
    from syncd.node import Node

STALE_AFTER_S = 60.0
LINK_DOWN_STATES = ("crashing", "failed", "stalled")


def iso(ts: float | datetime | None) -> str | None:
    if ts is None:
        return None
    if isinstance(ts, datetime):
        return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


class Metrics:
    """Prometheus metrics of one node (a registry per node: many nodes per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.captured = Counter("syncd_changes_captured_total", "local changes versioned into the log", registry=r)
        self.sent = Counter("syncd_changes_sent_total", "changes sent to a peer", ["peer"], registry=r)
        self.applied = Counter("syncd_changes_applied_total", "changes applied from a peer", ["peer"], registry=r)
        self.batches = Counter("syncd_batches_total", "batches applied", ["peer", "kind"], registry=r)
        self.apply_seconds = Histogram("syncd_apply_seconds", "batch apply latency", registry=r)
        self.lag = Gauge("syncd_link_lag_changes", "changes not yet acknowledged", ["peer", "direction"], registry=r)
        self.conflicts = Gauge("syncd_conflicts_open", "open conflicts", registry=r)
        self.errors = Counter("syncd_errors_total", "link errors by code", ["peer", "code"], registry=r)
        # set from the database and the links at each scrape (refresh), so they are never stale
        self.link_up = Gauge("syncd_link_up", "1 when the link is running", ["peer", "direction"], registry=r)
        self.link_errors = Gauge("syncd_link_consecutive_errors", "consecutive errors of a link",
                                 ["peer", "direction"], registry=r)
        self.quarantined = Gauge("syncd_quarantined", "quarantined changes waiting for an operator", registry=r)
        self.parked = Gauge("syncd_parked", "changes parked for a missing foreign-key target", registry=r)
        self.log_position = Gauge("syncd_log_position", "head of this node's change log", registry=r)
        self.capture_healthy = Gauge("syncd_capture_healthy", "1 when capture triggers are all in place",
                                     registry=r)
        self.subtree_nodes = Gauge("syncd_subtree_nodes", "expected nodes of the subtree by state", ["state"],
                                   registry=r)

    def refresh(self, status: dict[str, Any]) -> None:
        """Set the gauges from a ``/status`` model (called on every scrape)."""
        for ln in status["links"]:
            self.lag.labels(ln["peer"], ln["direction"]).set(ln["lag_changes"] or 0)
            self.link_up.labels(ln["peer"], ln["direction"]).set(1 if ln["state"] == "running" else 0)
            self.link_errors.labels(ln["peer"], ln["direction"]).set(ln["consecutive_errors"] or 0)
        self.conflicts.set(status["conflicts_open"])
        self.quarantined.set(status["quarantined"])
        self.parked.set(status["parked"])
        self.log_position.set(status["node"]["log_position"])
        self.capture_healthy.set(1 if status["capture"]["healthy"] else 0)
        states: dict[str, int] = {s: 0 for s in ("healthy", "degraded", "failed", "stale", "missing")}
        for n in status["subtree"]:
            states[n["state"]] = states.get(n["state"], 0) + 1
        for state, count in states.items():
            self.subtree_nodes.labels(state).set(count)


async def _counts(conn: asyncpg.Connection) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM syncd.conflicts WHERE resolved_at IS NULL) AS conflicts_open, "
        "(SELECT count(*) FROM syncd.parked) AS parked, "
        "(SELECT count(*) FROM syncd.quarantine WHERE released_at IS NULL) AS quarantined, "
        "(SELECT count(*) FROM syncd.capture) AS backlog, "
        "(SELECT head FROM syncd.node) AS head, (SELECT epoch FROM syncd.node) AS epoch, "
        "(SELECT log_first FROM syncd.node) AS log_first")
    return {k: int(v) for k, v in row.items()}


def own_summary(node: "Node", counts: dict[str, int], links: list[dict[str, Any]]) -> dict[str, Any]:
    """This node's compact summary, as it travels up in pushes (no history, no error text)."""
    down = sum(1 for ln in links if ln["state"] in LINK_DOWN_STATES)
    lag = max([ln["lag_changes"] or 0 for ln in links] or [0])
    state = "failed" if any(ln["state"] == "failed" for ln in links) else ("degraded" if down else "healthy")
    topo = node.topo_ref.topo
    me = node.cfg.node.id
    return {"node": me, "name": node.cfg.node.name, "level": topo.level(me), "parent": topo.parent(me),
            "state": state, "reported_at": iso(time.time()), "lag_changes": lag,
            "conflicts_open": counts["conflicts_open"], "quarantined": counts["quarantined"],
            "parked": counts["parked"], "links_down": down}


async def subtree_view(node: "Node", conn: asyncpg.Connection, me_summary: dict[str, Any],
                       links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every expected node of this subtree with its latest summary, stale or missing (HC-30)."""
    topo = node.topo_ref.topo
    me = node.cfg.node.id
    reported = {r["node"]: r for r in await conn.fetch(
        "SELECT node, via, summary, reported_at, received_at FROM syncd.subtree_status")}
    link_state = {ln["peer"]: ln["state"] for ln in links if ln["direction"] == "child"}
    out = [{**me_summary, "received_at": me_summary["reported_at"]}]
    for code in sorted(topo.subtree(me) - {me}, key=lambda c: (topo.depth(c), c)):
        base = {"node": code, "name": topo.name(code), "level": topo.level(code), "parent": topo.parent(code)}
        r = reported.get(code)
        if r is None:
            out.append({**base, "state": "missing", "reported_at": None, "received_at": None, "lag_changes": None,
                        "conflicts_open": None, "quarantined": None, "parked": None, "links_down": None})
            continue
        import json
        s = json.loads(r["summary"]) if isinstance(r["summary"], str) else dict(r["summary"])
        stale = (link_state.get(r["via"]) in LINK_DOWN_STATES
                 or time.time() - r["received_at"].timestamp() > STALE_AFTER_S)
        out.append({**base, **{k: s.get(k) for k in ("lag_changes", "conflicts_open", "quarantined", "parked",
                                                      "links_down")},
                    "state": "stale" if stale else s.get("state", "healthy"),
                    "reported_at": s.get("reported_at"), "received_at": iso(r["received_at"])})
    return out


async def build_status(node: "Node") -> dict[str, Any]:
    assert node.pool is not None
    async with node.pool.acquire() as conn:
        counts = await _counts(conn)
        problems = await capture_health(conn, node.schema, heartbeat=False)
        links = await node.link_status(conn)
        me = own_summary(node, counts, links)
        subtree = await subtree_view(node, conn, me, links)
    from syncd.cli import syncd_version

    topo = node.topo_ref.topo
    return {
        "node": {"id": node.cfg.node.id, "name": node.cfg.node.name, "level": topo.level(node.cfg.node.id),
                 "version": syncd_version(), "uptime_s": round(time.time() - node.started_at, 1),
                 "log_position": counts["head"], "log_first": counts["log_first"], "epoch": counts["epoch"],
                 "capture_backlog": counts["backlog"], "started_at": iso(node.started_at),
                 "retention": {"state": node.retention_health.state,
                               "last_error": node.retention_health.last_error}},
        "links": links,
        "conflicts_open": counts["conflicts_open"], "parked": counts["parked"], "quarantined": counts["quarantined"],
        "capture": {"healthy": not problems, "problems": [p.as_dict() for p in problems],
                    "backlog": counts["backlog"]},
        "subtree": subtree,
    }


def _authorised(node: "Node", request: web.Request) -> bool:
    token = node.cfg.status.read_token
    if not token:
        return True
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or request.query.get("token")
    return given == token


def add_routes(app: web.Application, node: "Node") -> None:
    """Mount the operator endpoints on a node's aiohttp application."""

    async def status(request: web.Request) -> web.Response:
        if not _authorised(node, request):
            return web.json_response({"code": "STATUS_TOKEN_REQUIRED", "reason": "a read token is required",
                                      "hint": "send Authorization: Bearer <[status] read_token>"}, status=401)
        return web.json_response(await build_status(node), dumps=_dumps)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "node": node.cfg.node.id})

    async def readyz(request: web.Request) -> web.Response:
        assert node.pool is not None
        async with node.pool.acquire() as conn:
            links = await node.link_status(conn)
        bad = [f"{ln['peer']} {ln['state']}" for ln in links if ln["state"] != "running"]
        if bad:
            return web.json_response({"ready": False, "reason": "links not running: " + ", ".join(bad)}, status=503)
        return web.json_response({"ready": True})

    async def metrics(request: web.Request) -> web.Response:
        node.metrics.refresh(await build_status(node))
        return web.Response(body=generate_latest(node.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def dashboard(request: web.Request) -> web.Response:
        return _static("dashboard.html")

    async def static(request: web.Request) -> web.Response:
        return _static(request.match_info["name"])

    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", static)


_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css", ".png": "image/png"}


def _static(name: str) -> web.Response:
    if "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    f = resources.files("syncd.static").joinpath(name)
    if not f.is_file():
        raise web.HTTPNotFound()
    ext = name[name.rfind("."):]
    return web.Response(body=f.read_bytes(), content_type=_TYPES.get(ext, "application/octet-stream"),
                        charset="utf-8" if ext != ".png" else None)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False, default=str)
