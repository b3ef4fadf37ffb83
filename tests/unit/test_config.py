"""Config loading: every problem named with its path and value (issue 3)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.config import ConfigError, load_config, parse_config

GOOD = """
[node]
id = "430102"
name = "芙蓉区"
listen = "127.0.0.1:8471"
dsn = "postgresql://syncd@127.0.0.1/zxy"
id_hash_key = "${SYNCD_TEST_HASH_KEY}"

[parent]
id = "430100"
url = "https://changsha.example/"
key_id = "k1"
secret = "${SYNCD_TEST_SECRET}"

[tuning]
batch_max_changes = 500
pull_wait_s = 10
"""


def test_good_config_loads_with_env_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_TEST_SECRET", "s3cret-s3cret-s3cret")
    monkeypatch.setenv("SYNCD_TEST_HASH_KEY", "province-issued-key")
    p = tmp_path / "county.toml"
    p.write_text(GOOD, encoding="utf-8")
    cfg = load_config(p)
    assert cfg.node.id == "430102" and cfg.parent is not None
    assert cfg.parent.url == "https://changsha.example"
    assert cfg.parent.secrets[0].secret == "s3cret-s3cret-s3cret"
    assert cfg.node.id_hash_key is not None and cfg.node.id_hash_key.secret == "province-issued-key"
    assert cfg.tuning.batch_max_changes == 500 and cfg.tuning.pull_wait_s == 10.0
    assert "s3cret" not in repr(cfg)  # secrets are not printed


def test_every_problem_is_listed_with_path_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError) as e:
        parse_config({
            "node": {"name": "x", "listen": "nowhere", "colour": "red"},
            "parent": {"id": "4301", "url": "ftp://x", "secret": "${NOPE_NOT_SET}"},
            "children": [{"id": "430102", "secret": "short"}, {"id": "430102", "secret": "0123456789abcdef"}],
            "tuning": {"batch_max_changes": "many", "pull_wait_s": -1},
            "extra": 1,
        })
    paths = {p for p, _, _ in e.value.problems}
    assert {"node.id", "node.listen", "node.colour", "parent.id", "parent.url", "parent.secret",
            "children[0].secret", "children[1].id", "tuning.batch_max_changes", "tuning.pull_wait_s",
            "extra"} <= paths
    values = {p: v for p, v, _ in e.value.problems}
    assert values["parent.url"] == "ftp://x" and values["node.listen"] == "nowhere"


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid=1", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_cli_bad_config_exits_2_lists_problems_writes_nothing(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[node]\nname = "x"\nmystery = 1\n[parent]\nurl = "nope"\n', encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "syncd.cli", "init", "--config", str(p)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "node.id: is required" in r.stderr and "node.mystery: unknown key" in r.stderr
    assert "parent.url" in r.stderr and "Traceback" not in r.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.toml"]  # nothing written


def _minimal(**over: object) -> dict:
    data: dict = {"node": {"id": "430100", "name": "长沙市", "dsn": "postgresql://x/y"},
                  "parent": {"id": "430000", "url": "https://hn.example/", "secret": "0123456789abcdef"}}
    data.update(over)
    return data


@pytest.mark.parametrize("children, reason", [
    ([{"id": "430100", "secret": "0123456789abcdef"}], "own child"),
    ([{"id": "430000", "secret": "0123456789abcdef"}], "parent cannot also be a child"),
])
def test_a_node_is_neither_its_own_child_nor_its_parents_parent(children: list, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_minimal(children=children))
    assert [(p, v) for p, v, m in e.value.problems if reason in m] == [("children[0].id", children[0]["id"])]


@pytest.mark.parametrize("key, value", [
    ("batch_max_changes", 0), ("batch_max_changes", 10_001),
    ("batch_max_bytes", 1000), ("batch_max_bytes", 16 * 1024 * 1024),
])
def test_batch_bounds_outside_what_the_protocol_carries_are_named(key: str, value: int) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_minimal(tuning={key: value}))
    assert [p for p, _, _ in e.value.problems] == [f"tuning.{key}"]
    assert parse_config(_minimal()).tuning.batch_max_bytes == 4 * 1024 * 1024  # the default is within them
