"""HC-32: a link through the shipped nginx configuration (``deploy/nginx.conf``).

A real nginx (Debian's ``nginx-light``; ``.ci/run`` installs it when missing — a missing
nginx fails this test, it is never skipped) runs the shipped file with only the addresses,
certificate paths and log files swapped for the test's: TLS in front of 长沙市's daemon,
芙蓉区 dialling it over HTTPS.  Through it: hello and the snapshot, long polls left idle
(no 504), changes both ways, a catch-up of 19 MB of long values in size-cut batches (under
``client_max_body_size``; signatures verify, so nothing rewrote the path), and while
长沙市's daemon is down nginx's HTML 502 is classed retryable (``crashing``, not
``failed``) until the link recovers by itself.
"""
from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from syncd.node import Node
from tests.integration.test_batch_bytes import N, insert_long_members
from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually, node_config

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
TREE = {"430100": ("长沙市", "city", None), "430102": ("芙蓉区", "county", "430100")}


def nginx_binary() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        raise AssertionError("nginx is not installed (Debian: apt-get install nginx-light; .ci/run does it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render(upstream_port: int, port: int, tmp: Path) -> Path:
    """The shipped configuration with the test's addresses, certificate and logs, nothing else."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp / "tls.key"), "-out", str(tmp / "tls.crt")], check=True, capture_output=True)
    text = (REPO / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    swaps = {
        "server province:8470;": f"server 127.0.0.1:{upstream_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/nginx/tls/tls.crt": str(tmp / "tls.crt"),
        "/etc/nginx/tls/tls.key": str(tmp / "tls.key"),
        "access_log /dev/stdout;": f"access_log {tmp / 'access.log'};\n    client_body_temp_path {tmp / 'body'};"
                                   f"\n    proxy_temp_path {tmp / 'proxy'};",
        "error_log  /dev/stderr warn;": f"error_log {tmp / 'error.log'} warn;",
    }
    for old, new in swaps.items():
        assert old in text, f"deploy/nginx.conf no longer has {old!r}: update this test"
        text = text.replace(old, new)
    conf = tmp / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


async def _listening(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    w.close()
    return True


async def test_hc32_a_link_through_the_shipped_nginx(cluster: Cluster, tmp_path: Path) -> None:
    t = Tree(cluster, TREE, tuning={"pull_wait_s": 3.0, "retry_cap_s": 1.0})
    proc = None
    try:
        await t.prepare()
        city_port, port = free_port(), free_port()
        await t.start("430100", port=city_port)
        conf = render(city_port, port, tmp_path)
        proc = subprocess.Popen([nginx_binary(), "-p", str(tmp_path), "-c", str(conf),
                                 "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # logs: error.log
        await eventually(lambda: _listening(port), timeout=20)
        cfg = node_config("430102", TREE, f"https://127.0.0.1:{port}", "127.0.0.1:0", **t.tuning)
        assert cfg.parent is not None
        cfg = dataclasses.replace(cfg, parent=dataclasses.replace(cfg.parent, tls_verify=False))  # self-signed
        t.nodes["430102"] = county_node = await Node(cfg, t.dsns["430102"]).start()
        city, county = t.db("430100"), t.db("430102")

        # changes both ways, with idle long polls (3 s each) in between: none ends in a 504
        act = await city.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                  "VALUES ('430100', '视察', '市里视察', now()) RETURNING id")
        await eventually(lambda: county.fetchval("SELECT count(*) = 1 FROM activities WHERE id = $1", act), 60)
        await asyncio.sleep(8)
        assert county_node.links.pull_health.state == "running", county_node.links.pull_health.last_error
        # a catch-up of long values: 19 MB, more than the message cap, cut into batches under nginx's limit
        await insert_long_members(county)
        await eventually(lambda: city.fetchval(
            "SELECT count(*) = $1 FROM members WHERE org_code = '430102' AND length(title) > 1000", N), 120)
        log = (tmp_path / "access.log").read_text()
        assert log.count("POST /v1/push") >= 5 and "POST /v1/pull" in log and "POST /v1/snapshot" in log
        assert " 413 " not in log and " 504 " not in log, log[-2000:]

        # the parent's daemon goes down: nginx answers 502 (HTML); the child retries, it does not give up
        await t.stop("430100")
        await county.execute("INSERT INTO members (org_code, name) VALUES ('430102', '停机期间')")

        async def retrying() -> bool | Pending:
            h = county_node.links.push_health
            err = h.last_error or {}
            return True if h.state == "crashing" and "502" in str(err) else Pending(f"{h.state} {err}")
        await eventually(retrying, 30)
        assert county_node.links.push_health.state != "failed"
        await t.start("430100", port=city_port)
        await eventually(lambda: city.fetchval("SELECT count(*) = 1 FROM members WHERE name = '停机期间'"), 60)
        assert " 502 " in (tmp_path / "access.log").read_text()
        for conn in (city, county):
            assert await conn.fetchval("SELECT count(*) FROM syncd.quarantine") == 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await t.close()

