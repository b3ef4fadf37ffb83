"""Reload a running node's link secrets and URLs from its config file (SIGHUP), no restart (HC-31).

What an operator fixes in the TOML while the daemon runs, and what happens on
``kill -HUP``:

* ``[parent]`` ``url``, ``key_id``/``secret``/``next_*``, ``tls_verify`` → a new
  parent link replaces the old one; the push and pull loops use it on their next
  attempt (a ``failed`` link probes within ``tuning.failed_probe_s``), so a 401
  after a secret rotation heals without a restart.
* ``[[children]]`` secrets → the children's keyrings are replaced in place (the
  server reads them on every request).
* ``[status] read_token`` → used by the next ``/status`` request.

Anything else (node id, parent id, the set of children, ``listen``, ``dsn``,
``[tuning]``) needs a restart: :func:`reload_config` leaves it as it was and names
it in :attr:`ReloadResult.needs_restart`.  A config that does not load (a
:class:`~syncd.config.ConfigError`) changes nothing.  Nothing here is logged with a
secret.
"""
from __future__ import annotations

import asyncio
import dataclasses
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from syncd.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from syncd.node import Node

log = structlog.get_logger("syncd.reload")


@dataclass
class ReloadResult:
    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)


def _restart_only(old: Config, new: Config) -> list[str]:
    out = []
    if old.node.id != new.node.id:
        out.append("node.id")
    if (old.parent is None) != (new.parent is None) or (old.parent and new.parent and old.parent.id != new.parent.id):
        out.append("parent.id")
    if [c.id for c in old.children] != [c.id for c in new.children]:
        out.append("children (ids)")
    if old.node.listen != new.node.listen:
        out.append("node.listen")
    if old.node.dsn != new.node.dsn:
        out.append("node.dsn")
    if old.tuning != new.tuning:
        out.append("tuning")
    return out


def _child_keyrings(new: Config) -> dict[str, Any]:
    from syncd.node import wire_key_id
    from syncd.proto.signing import Keyring

    rings: dict[str, Keyring] = {}
    for c in new.children:
        rings[c.id] = Keyring()
        for s in c.secrets:
            rings[c.id].add(c.id, wire_key_id(c.id, s.key_id), s.secret)
    return rings


async def reload_config(node: "Node", new: Config) -> ReloadResult:
    """Apply the reloadable parts of ``new`` to the running ``node`` (see the module docstring)."""
    old = node.cfg
    res = ReloadResult(needs_restart=_restart_only(old, new))
    if res.needs_restart:  # keep what needs a restart, take the rest
        new = dataclasses.replace(old, parent=new.parent if "parent.id" not in res.needs_restart else old.parent,
                                  children=new.children if "children (ids)" not in res.needs_restart
                                  else old.children, status=new.status)
    else:
        new = dataclasses.replace(new, node=old.node, tuning=old.tuning)
    node.cfg = new
    if node.service is not None:
        node.service.cfg = new
    if old.children != new.children:
        server = getattr(node, "server", None)  # Node keeps its HttpParentServer as .server
        if server is not None and isinstance(server.keyrings, dict):
            server.keyrings.clear()
            server.keyrings.update(_child_keyrings(new))
            res.applied.append("children secrets")
        else:
            res.needs_restart.append("children secrets (this build's Node does not expose its server)")
    if old.parent != new.parent and node.links is not None and node._link is None:
        links = node.links
        fresh = node._http_link()  # built from node.cfg, now the new config
        stale, links.link = links.link, fresh
        links.cfg = new
        await stale.close()  # an in-flight long poll fails once and is retried on the new link
        res.applied.append("parent link")
    if old.status != new.status:
        res.applied.append("status.read_token")
    log.info("config_reloaded", node=new.node.id, applied=res.applied, needs_restart=res.needs_restart)
    return res


async def reload_from_file(node: "Node", path: str | Path) -> ReloadResult | None:
    """Load ``path`` and :func:`reload_config`; a bad file is logged (keys and paths, no values) and ignored."""
    try:
        new = load_config(path)
    except ConfigError as e:
        log.error("config_reload_refused", node=node.cfg.node.id, source=e.source,
                  problems=[f"{p}: {m}" for p, _, m in e.problems])
        return None
    return await reload_config(node, new)


def install_sighup(node: "Node", path: str | Path) -> None:
    """Reload ``path`` into ``node`` on every SIGHUP (call from the running event loop)."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload_from_file(node, path))
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
