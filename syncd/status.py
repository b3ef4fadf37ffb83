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

from syncd.retry import SEVERITY, describe as describe_error
from syncd.store.health import capture_health, heartbeat_problems
from syncd.store import opaque

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
        # bodies as they crossed the wire (gzip included), per link and endpoint: the volume a link
        # carries, to hold against what its changes should weigh (HC-35)
        self.link_bytes = Counter("syncd_link_bytes_total", "message bytes on the wire per link",
                                  ["peer", "kind", "direction"], registry=r)
        # set from the database and the links at each scrape (refresh), so they are never stale
        self.link_up = Gauge("syncd_link_up", "1 when the link is running", ["peer", "direction"], registry=r)
        self.link_errors = Gauge("syncd_link_consecutive_errors", "consecutive errors of a link",
                                 ["peer", "direction"], registry=r)
        self.quarantined = Gauge("syncd_quarantined", "quarantined changes waiting for an operator", registry=r)
        self.parked = Gauge("syncd_parked", "changes parked for a missing foreign-key target", registry=r)
        self.log_position = Gauge("syncd_log_position", "head of this node's change log", registry=r)
        self.capture_healthy = Gauge("syncd_capture_healthy", "1 when capture triggers are all in place",
                                     registry=r)
        self.database_up = Gauge("syncd_database_up", "1 when this node's PostgreSQL answers", registry=r)
        self.subtree_nodes = Gauge("syncd_subtree_nodes", "expected nodes of the subtree by state", ["state"],
                                   registry=r)

    def count_bytes(self, peer: str, kind: str, direction: str, n: int) -> None:
        """``n`` message bytes crossed the link with ``peer`` (``transport.http.OnBytes``)."""
        self.link_bytes.labels(peer, kind, direction).inc(n)

    def batch_applied(self, peer: str, kind: str, res: Any, seconds: float) -> None:
        """One batch from ``peer`` went through ``apply_batch`` (a retried duplicate counts no changes)."""
        self.apply_seconds.observe(seconds)
        if not res.duplicate:
            self.batches.labels(peer, kind).inc()
            self.applied.labels(peer).inc(res.applied)

    def link_error(self, peer: str, e: BaseException) -> None:
        self.errors.labels(peer, str(getattr(e, "code", None) or type(e).__name__)).inc()

    def refresh(self, status: dict[str, Any]) -> None:
        """Set the gauges from a ``/status`` model (called on every scrape).  While the
        database is down, gauges read from it keep their last value."""
        self.database_up.set(1 if status["database"]["state"] == "up" else 0)
        for ln in status["links"]:
            if ln["lag_changes"] is not None:
                self.lag.labels(ln["peer"], ln["direction"]).set(ln["lag_changes"])
            self.link_up.labels(ln["peer"], ln["direction"]).set(1 if ln["state"] == "running" else 0)
            self.link_errors.labels(ln["peer"], ln["direction"]).set(ln["consecutive_errors"] or 0)
        if status["database"]["state"] != "up":
            return
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


def database_view(node: "Node", error: BaseException | None = None) -> dict[str, Any]:
    """This node's own PostgreSQL as the daemon sees it: ``up``, or ``down`` with the error.

    ``error`` is the failure met while building this status; otherwise the sequencer's
    health says whether its last tick reached the database (DESIGN §9).
    """
    health = getattr(getattr(node, "sequencer", None), "health", None)
    if error is None and health is not None and health.state in ("crashing", "failed"):
        return {"state": "down", "since": iso(health.since), "consecutive_errors": health.consecutive_errors,
                "last_error": {k: (health.last_error or {}).get(k) for k in ("code", "reason", "hint")}}
    if error is not None:
        return {"state": "down", "since": iso(health.since) if health is not None else None,
                "consecutive_errors": health.consecutive_errors if health is not None else 1,
                "last_error": describe_error(error)}
    last = (health.last_error if health is not None else None) or None
    return {"state": "up", "since": iso(health.since) if health is not None else None, "consecutive_errors": 0,
            "last_error": {k: last.get(k) for k in ("code", "reason", "hint")} if last else None}


#: how often ``/status`` also makes capture's probe write (a rolled-back insert, HC-29); the
#: dashboard asks every few seconds, and a probe between those is answered from the last one
HEARTBEAT_EVERY_S = 60.0


async def capture_problems(node: Any, conn: asyncpg.Connection) -> list[Any]:
    """Capture's problems for ``/status``: the triggers' state at every call, and the probe
    write's verdict at most every :data:`HEARTBEAT_EVERY_S` (kept on the node in between)."""
    problems = await capture_health(conn, node.schema, heartbeat=False)
    if problems:  # the probe only tells something when the triggers look right
        return problems
    now = time.monotonic()
    if now - node.heartbeat_at >= HEARTBEAT_EVERY_S:
        node.heartbeat_problems, node.heartbeat_at = await heartbeat_problems(conn), now
    return list(node.heartbeat_problems)


def clock_skewed(offset_ms: int | None, soft_ms: int) -> bool:
    """The peer's clock is past the soft skew bound (HC-23: synced, but warned in status)."""
    return offset_ms is not None and abs(offset_ms) > soft_ms


def parent_link_view(ln: Any, lag_changes: int | None, lag_seconds: float | None) -> dict[str, Any]:
    """The parent link's ``/status`` entry from its loops (``ChildLinks``) and its lag."""
    worst = max((ln.push_health, ln.pull_health), key=lambda h: SEVERITY[h.state])
    err = worst.last_error
    history = sorted([*ln.push_health.history, *ln.pull_health.history], key=lambda e: e.at)[-20:]
    return {"peer": ln.parent, "direction": "parent", "state": worst.state, "since": iso(worst.since),
            "cursor": ln.pull_cursor, "push_cursor": ln.push_cursor, "lag_changes": lag_changes,
            "lag_seconds": lag_seconds,
            "consecutive_errors": ln.push_health.consecutive_errors + ln.pull_health.consecutive_errors,
            "last_error": {k: err.get(k) for k in ("code", "reason", "hint")} if err else None,
            "clock_offset_ms": ln.clock_offset_ms,
            "clock_skewed": clock_skewed(ln.clock_offset_ms, ln.cfg.tuning.clock_soft_ms),
            "snapshot": ln.snapshot_state,
            "history": [{"at": iso(e.at), "event": e.state, "detail": e.code} for e in history]}


def child_link_view(service: Any, child: str, lag_changes: int | None, lag_seconds: float | None) -> dict[str, Any]:
    """A child link's ``/status`` entry from what the parent service saw of the child."""
    stalled_after = service.cfg.tuning.pull_wait_s * 2 + 10
    offset = service.clock_offsets.get(child)
    seen = service.last_seen.get(child)
    state = "initializing" if seen is None else "running" if time.time() - seen < stalled_after else "stalled"
    return {"peer": child, "direction": "child", "state": state, "since": iso(seen),
            "cursor": service.pull_after.get(child), "lag_changes": lag_changes, "lag_seconds": lag_seconds,
            "consecutive_errors": 0, "last_error": None, "clock_offset_ms": offset,
            "clock_skewed": clock_skewed(offset, service.cfg.tuning.clock_soft_ms), "history": [],
            "reason": f"not heard from for {time.time() - seen:.0f} s" if state == "stalled" and seen else None}


def links_from_memory(node: "Node") -> list[dict[str, Any]]:
    """The links as the loops know them, without the database (lags ``null``): what
    ``/status`` shows while this node's PostgreSQL is down."""
    out = [parent_link_view(node.links, None, None)] if node.links is not None else []
    if node.service is not None:
        out += [child_link_view(node.service, c.id, None, None) for c in node.cfg.children]
    return out


_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


async def build_status(node: "Node") -> dict[str, Any]:
    """The ``/status`` model.  When this node's own database cannot be reached it is still
    built, from what the daemon holds in memory: ``database.state`` is ``down``, counts
    and lags are ``null`` and this node's summary is ``degraded``."""
    assert node.pool is not None
    try:
        async with node.pool.acquire() as conn:
            counts: dict[str, Any] = await _counts(conn)
            problems = await capture_problems(node, conn)
            links = await node.link_status(conn)
            me = own_summary(node, counts, links)
            subtree = await subtree_view(node, conn, me, links)
            awaiting = await opaque.held(conn)
        database = database_view(node)
    except _DB_ERRORS as e:
        database = database_view(node, e)
        counts = dict.fromkeys(("conflicts_open", "parked", "quarantined", "backlog", "head", "log_first", "epoch"))
        problems = []
        links = links_from_memory(node)
        me = {**own_summary(node, counts, links), "state": "degraded", "database": "down"}
        subtree = [{**me, "received_at": me["reported_at"]}]
        awaiting = None
    if database["state"] == "down" and me.get("state") == "healthy":
        me["state"] = subtree[0]["state"] = "degraded"
    from syncd.cli import syncd_version

    topo = node.topo_ref.topo
    return {
        "node": {"id": node.cfg.node.id, "name": node.cfg.node.name, "level": topo.level(node.cfg.node.id),
                 "version": syncd_version(), "uptime_s": round(time.time() - node.started_at, 1),
                 "log_position": counts["head"], "log_first": counts["log_first"], "epoch": counts["epoch"],
                 "capture_backlog": counts["backlog"], "started_at": iso(node.started_at),
                 "retention": {"state": node.retention_health.state,
                               "last_error": node.retention_health.last_error},
                 "scores": {"state": node.scores_health.state, "last_error": node.scores_health.last_error}},
        "database": database,
        "links": links,
        "conflicts_open": counts["conflicts_open"], "parked": counts["parked"], "quarantined": counts["quarantined"],
        "capture": {"healthy": not problems if database["state"] == "up" else None,
                    "problems": [p.as_dict() for p in problems], "backlog": counts["backlog"]},
        "subtree": subtree,
        # columns a newer node added that this node keeps opaque until its upgrade (HC-13)
        "awaiting_upgrade": awaiting,
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
        try:
            async with node.pool.acquire() as conn:
                links = await node.link_status(conn)
        except _DB_ERRORS as e:
            return web.json_response({"ready": False, "reason": "database unreachable: "
                                      + str(describe_error(e)["reason"])}, status=503)
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
