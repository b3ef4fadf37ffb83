"""The dashboard in headless Chromium, against a /status built here from the real Hunan tree.

A tiny aiohttp app serves ``syncd/static/`` at the paths syncd uses (``/`` and
``/static/<name>``) and a ``/status`` that needs a bearer token, so the page must pass
``?token=`` on.  怀化市's link is ``failed`` and its 12 counties are ``stale`` (HC-30's
"cut 怀化市"); one county is ``missing`` and one city ``degraded``, so every state shows.

Set ``SYNCD_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to also save the screenshot that the
docs show (taken from this same page, with 怀化市's detail open).
"""
from __future__ import annotations

import asyncio
import os
import re
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from syncd.topology import Topology
from tests.browser import Element, dump_dom, parse_dom, screenshot

CSV = Path(__file__).resolve().parents[2] / "syncd" / "data" / "hunan_divisions.csv"
TOKEN = "dash-test-token-7f3a"
FAILED_CITY = "431200"  # 怀化市
DEGRADED_CITY = "430600"  # 岳阳市
MISSING_COUNTY = "430524"  # 隆回县: absent from 邵阳市's config (HC-30)
SKEWED_CITY = "430300"  # 湘潭市: its clock 7.35 s ahead, past the soft bound (HC-23)
WAIT_MS = 4000


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def history(now: datetime, n: int = 20) -> list[dict[str, Any]]:
    """A link's last ``n`` events, oldest first: retries, a recovery, then the final 401s."""
    out = []
    for i in range(n):
        at = now - timedelta(hours=3, minutes=12) + timedelta(minutes=9 * i) - timedelta(hours=3)
        if i < 8:
            ev, detail = ("crashing", "CONNECTION_FAILED: connect timeout") if i % 2 == 0 else ("recovered", "")
        else:
            ev, detail = "failed", f"BAD_SIGNATURE: key k2 unknown at 430000 (attempt {i - 7})"
        out.append({"at": iso(at), "event": ev, "detail": detail})
    return out


def link(peer: str, now: datetime, state: str = "running", **kw: Any) -> dict[str, Any]:
    base = {"peer": peer, "direction": "child", "state": state, "since": iso(now - timedelta(hours=2)),
            "cursor": 48_210, "lag_changes": 0, "lag_seconds": 0.2, "consecutive_errors": 0,
            "last_error": None, "clock_offset_ms": 12, "history": [
                {"at": iso(now - timedelta(hours=2)), "event": "running", "detail": "hello ok, protocol 2"}]}
    return {**base, **kw}


def hunan_status(now: datetime) -> dict[str, Any]:
    """/status of 湖南省 as the lead's ``build_status`` shapes it, for all 137 expected nodes."""
    topo = Topology.from_csv(CSV)
    root = topo.root
    cut = topo.subtree(FAILED_CITY)
    subtree = []
    for code in sorted(topo.nodes, key=lambda c: (topo.depth(c), c)):
        n: dict[str, Any] = {
            "node": code, "name": topo.name(code), "level": topo.level(code), "parent": topo.parent(code),
            "state": "healthy", "reported_at": iso(now - timedelta(seconds=4)),
            "received_at": iso(now - timedelta(seconds=3)), "lag_changes": int(code[-2:]) % 4,
            "conflicts_open": 1 if code == "430111" else 0, "quarantined": 2 if code == "430921" else 0,
            "parked": 0, "links_down": 0}
        if code in cut:  # what came through 怀化市 before its link failed, 3 h 12 min ago
            old = now - timedelta(hours=3, minutes=12)
            n.update(state="stale", reported_at=iso(old - timedelta(seconds=2)), received_at=iso(old))
        if code == DEGRADED_CITY:
            n.update(state="degraded", lag_changes=1840, links_down=1)
        if code == MISSING_COUNTY:
            n.update(state="missing", reported_at=None, received_at=None, lag_changes=None,
                     conflicts_open=None, quarantined=None, parked=None, links_down=None)
        if code == root:
            n.update(state="failed", links_down=1, lag_changes=2317)
        subtree.append(n)
    failed_error = {"code": "BAD_SIGNATURE",
                    "reason": "the request signature does not verify with any live key for this link",
                    "hint": "the two ends have different secrets for this link: compare [[children]] secret "
                            "here with [parent] secret at 431200 (during rotation set next_secret on both)"}
    links = [link(c, now) for c in topo.children(root)]
    for ln in links:
        if ln["peer"] == FAILED_CITY:
            ln.update(state="failed", since=iso(now - timedelta(hours=3, minutes=12)), cursor=40_893,
                      lag_changes=2317, lag_seconds=11_520.0, consecutive_errors=47,
                      last_error=failed_error, clock_offset_ms=None, history=history(now))
        if ln["peer"] == DEGRADED_CITY:
            ln.update(lag_changes=1840, lag_seconds=42.5)
        if ln["peer"] == SKEWED_CITY:  # running, but its clock is past the soft bound (HC-23)
            ln.update(clock_offset_ms=7350, clock_skewed=True)
    return {
        "node": {"id": root, "name": topo.name(root), "level": topo.level(root), "version": "0.1.0",
                 "uptime_s": 93_784.2, "log_position": 1_204_877, "epoch": 1, "capture_backlog": 0,
                 "started_at": iso(now - timedelta(seconds=93_784))},
        "links": links, "conflicts_open": 1, "parked": 0, "quarantined": 2,
        "capture": {"healthy": True, "problems": [], "backlog": 0},
        "subtree": subtree,
        "awaiting_upgrade": [{"table": "members", "column": "wechat_id", "rows": 1532}],
    }


def dashboard_app(status: dict[str, Any], token: str | None) -> web.Application:
    """syncd's static routes (``/``, ``/static/<name>``) from the package, plus a fixed /status."""
    static = resources.files("syncd.static")

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=static.joinpath("dashboard.html").read_bytes(), content_type="text/html",
                            charset="utf-8")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        f = static.joinpath(name)
        if "/" in name or not f.is_file():
            raise web.HTTPNotFound()
        kind = {".js": "application/javascript", ".css": "text/css"}.get(Path(name).suffix, "text/plain")
        return web.Response(body=f.read_bytes(), content_type=kind, charset="utf-8")

    async def status_json(request: web.Request) -> web.Response:
        if token and request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"code": "STATUS_TOKEN_REQUIRED", "hint": "send a bearer token"}, status=401)
        return web.json_response(status)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/status", status_json)
    return app


def state_of(e: Element) -> str:
    states = [c for c in e.classes if c.startswith("state-")]
    assert len(states) == 1, f"node {e.attrs.get('data-node')} has state classes {states}"
    return states[0].removeprefix("state-")


async def test_hc30_dashboard_renders_hunan_with_failed_city_and_stale_counties() -> None:
    now = datetime.now(timezone.utc)
    status = hunan_status(now)
    topo = Topology.from_csv(CSV)
    server = TestServer(dashboard_app(status, TOKEN), host="127.0.0.1", port=None)
    await server.start_server()
    try:
        base = str(server.make_url("/"))
        html = await asyncio.to_thread(dump_dom, f"{base}?token={TOKEN}", WAIT_MS)
        detail_html = await asyncio.to_thread(dump_dom, f"{base}?token={TOKEN}&select={FAILED_CITY}", WAIT_MS)
        unauthorised = await asyncio.to_thread(dump_dom, base, WAIT_MS)
        shot = os.environ.get("SYNCD_DASHBOARD_SCREENSHOT")
        if shot:
            await asyncio.to_thread(screenshot, f"{base}?token={TOKEN}&select={FAILED_CITY}", shot,
                                    WAIT_MS, "1400,2300")
    finally:
        await server.close()

    dom = parse_dom(html)
    assert dom.by_id("node-count").text() == "137"
    nodes = {e.attrs["data-node"]: e for e in dom.find_all(**{"data-node": True})}
    assert len(dom.find_all(**{"data-node": True})) == 137, "one element per node"
    assert set(nodes) == set(topo.nodes)
    for code, e in nodes.items():
        assert topo.name(code) in e.text() and code in e.text(), f"{code} shows its Chinese name and id"

    assert state_of(nodes[FAILED_CITY]) == "failed"  # stale in the roll-up, raised by its failed link
    counties = topo.children(FAILED_CITY)
    assert len(counties) == 12
    for c in counties:
        assert state_of(nodes[c]) == "stale", c
        assert "失联" in nodes[c].text()
    assert state_of(nodes[DEGRADED_CITY]) == "degraded"
    assert state_of(nodes[MISSING_COUNTY]) == "missing" and "从未上报" in nodes[MISSING_COUNTY].text()
    assert state_of(nodes["430102"]) == "healthy"
    assert "冲突 1" in nodes["430111"].text() and "隔离 2" in nodes["430921"].text()

    # The counties sit inside their city's block: the tree is by 市州.
    block = next(g for g in dom.find_all(cls="group") if g.find_all(**{"data-node": FAILED_CITY}))
    assert {e.attrs["data-node"] for e in block.find_all(**{"data-node": True})} == {FAILED_CITY, *counties}

    summary = {e.attrs["data-state"]: int(e.one("b").text()) for e in dom.by_id("summary").find_all(
        **{"data-state": True})}
    assert summary == {"healthy": 137 - 1 - 1 - 12 - 1 - 1, "degraded": 1, "failed": 2, "stale": 12, "missing": 1}
    assert "正常" in dom.by_id("summary").text() and "失联" in dom.by_id("summary").text()

    header = dom.by_id("self").text()
    assert "湖南省" in header and "430000" in header and "省" in header and "0.1.0" in header
    assert "1,204,877" in header  # log position
    assert "待升级列" in header and "members.wechat_id · 1,532 行" in header  # HC-13: kept opaque here
    table = dom.one("table", id="links")
    rows = table.find_all("tr", cls="link")
    assert [r.attrs["data-peer"] for r in rows] == [FAILED_CITY, SKEWED_CITY], \
        "the failed link and the one with a skewed clock are shown, running ones fold"
    assert "BAD_SIGNATURE" in rows[0].text() and "故障" in rows[0].text() and "3 小时 12 分" in rows[0].text()
    assert "7350 ms（超出容差）" in rows[1].text()
    assert "其余 12 条下级链路运行正常" in table.one("tr", cls="folded").text()

    detail = parse_dom(detail_html).by_id("detail")
    assert "hidden" not in detail.attrs
    text = detail.text()
    assert "怀化市" in text and FAILED_CITY in text
    assert "BAD_SIGNATURE" in text and "compare [[children]] secret" in text
    assert len(detail.find_all("li", cls="hist-row")) == 20

    # Without the token /status answers 401: the page says so instead of drawing an empty tree.
    bare = parse_dom(unauthorised)
    assert bare.by_id("node-count").text() == "0"
    assert "401" in bare.by_id("banner").text() and "token" in bare.by_id("banner").text()


def test_dashboard_assets_are_self_contained() -> None:
    """No CDN, no web fonts, no absolute URLs: the page works on an offline county server."""
    static = resources.files("syncd.static")
    for name in ("dashboard.html", "dashboard.js", "dashboard.css"):
        text = static.joinpath(name).read_text("utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{name} refers to a host"
        assert "@import" not in text and "@font-face" not in text, name
        assert not re.search(r"""(?:src|href)=["']/""", text), f"{name}: asset paths stay relative"
