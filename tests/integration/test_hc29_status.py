"""HC-29: capture bypasses show by name in a running node's /status and in ``syncd check``.

``tests/integration/test_init.py`` checks the verdicts of ``capture_health`` itself; this is
what an operator sees.  A disabled trigger is named at once; a capture function replaced by
one that records nothing (the triggers look right) is caught by the probe write, which
``/status`` makes at most once a minute (``status.HEARTBEAT_EVERY_S``) and ``check`` always.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from syncd import status as status_module
from syncd.store.migrate import init_node
from tests.integration.test_cli_ops import syncd, write_toml
from tests.pg import Cluster
from tests.tree import Tree

pytestmark = pytest.mark.timeout(240)

TREE = {"430100": ("长沙市", "city", None), "430102": ("芙蓉区", "county", "430100")}
NOOP = """CREATE OR REPLACE FUNCTION syncd."cap_score_rules_i"() RETURNS trigger LANGUAGE plpgsql
          AS $$ BEGIN RETURN NULL; END $$"""


async def _codes(t: Tree) -> set[tuple[str, str]]:
    st = await t.status("430102")
    return {(p["code"], p["table"]) for p in st["capture"]["problems"]}


async def test_hc29_bypasses_are_named_in_status_and_check(cluster: Cluster, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    t = Tree(cluster, TREE)
    try:
        await t.setup()
        county = t.db("430102")
        cfg = write_toml(t, "430102", tmp_path)
        assert await _codes(t) == set() and (await t.status("430102"))["capture"]["healthy"] is True
        await county.execute("ALTER TABLE members DISABLE TRIGGER syncd_capture_u")
        assert ("CAPTURE_TRIGGER_DISABLED", "members") in await _codes(t)
        rc, out, _ = await syncd("check", "--config", cfg)
        assert rc == 1 and "capture CAPTURE_TRIGGER_DISABLED members" in out, out
        await county.execute("ALTER TABLE members ENABLE ALWAYS TRIGGER syncd_capture_u")
        # a capture function that records nothing: every trigger is in place, only the probe tells
        await county.execute(NOOP)
        monkeypatch.setattr(status_module, "HEARTBEAT_EVERY_S", 0.0)  # no minute's wait for the next probe
        assert await _codes(t) == {("CAPTURE_HEARTBEAT_FAILED", "score_rules")}
        st = await t.status("430102")
        assert st["capture"]["healthy"] is False
        rc, out, _ = await syncd("check", "--config", cfg)
        assert rc == 1 and "capture CAPTURE_HEARTBEAT_FAILED score_rules" in out, out
        await init_node(county, "430102")  # init repairs
        assert await _codes(t) == set()
    finally:
        await t.close()
