"""deploy/: the example configs load and agree with each other, nginx fits the protocol (HC-32).

The examples are what operators copy, so they are checked against the code they describe:
every ``[tuning]`` key is listed with the default ``Tuning`` really has, the links of
province → city → county agree (ids, key ids, secrets from the same variables), and
nginx's timeout and body limit sit above syncd's own limits, with no path rewrite.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlparse

import pytest

from syncd.config import Config, Tuning, load_config, parse_config
from syncd.proto.codec import MAX_BODY_BYTES
from syncd.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLES = {"province": "430000", "city": "430100", "county": "430102"}
TOPO = Topology.from_csv(ROOT / "syncd" / "data" / "hunan_divisions.csv")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def link_secret(child: str) -> str:
    """The one secret of the link above ``child``, as both ends' environments hold it."""
    return f"link-secret-{child}-0123456789abcdef"


def env_for(node: str, text: str) -> dict[str, str]:
    """Values for every ${VAR} of one node's config, the way its operator would set them."""
    env = {}
    for var in set(VAR.findall(text)):
        if m := re.fullmatch(r"SYNCD_CHILD_(\d{6})_SECRET", var):
            env[var] = link_secret(m.group(1))
        elif var == "SYNCD_PARENT_SECRET":
            env[var] = link_secret(node)
        else:
            env[var] = f"{var.lower()}-value-0123456789"
    return env


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    path = DEPLOY / "examples" / f"{name}.toml"
    with monkeypatch.context() as m:
        for k, v in env_for(EXAMPLES[name], path.read_text("utf-8")).items():
            m.setenv(k, v)
        return load_config(path)


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Config]:
    return {name: load_example(name, monkeypatch) for name in EXAMPLES}


def test_examples_load_as_their_nodes(configs: dict[str, Config]) -> None:
    for name, node in EXAMPLES.items():
        cfg = configs[name]
        assert cfg.node.id == node and cfg.node.name == TOPO.name(node)
        assert cfg.node.dsn, f"{name}: production examples name their PostgreSQL"
        assert cfg.node.id_hash_key is not None and cfg.status.read_token
        assert cfg.tuning == Tuning(), f"{name}: the example documents the defaults, it does not change them"


def assert_link(parent: Config, child: Config) -> None:
    assert child.parent is not None and child.parent.id == parent.node.id
    entry = parent.child(child.node.id)
    assert entry is not None, f"{parent.node.id} does not list {child.node.id} as a child"
    assert [s.key_id for s in entry.secrets] == [s.key_id for s in child.parent.secrets]
    assert [s.secret for s in entry.secrets] == [s.secret for s in child.parent.secrets]
    assert child.parent.tls_verify and urlparse(child.parent.url).scheme == "https"
    assert urlparse(child.parent.url).path in ("", "/"), "no path prefix: requests are signed over the path"


def test_example_links_agree(configs: dict[str, Config]) -> None:
    province, city, county = configs["province"], configs["city"], configs["county"]
    assert province.parent is None and county.children == ()
    assert_link(province, city)
    assert_link(city, county)
    # Each parent lists exactly the children the topology expects, so none shows as missing.
    for cfg in (province, city):
        assert {c.id for c in cfg.children} == set(TOPO.children(cfg.node.id))
    # Distinct links have distinct secrets.
    secrets = [s.secret for c in province.children for s in c.secrets]
    assert len(set(secrets)) == len(secrets) == 14


def section_lines(text: str, header: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("["):
            inside = line.split("#")[0].strip() == header
            continue
        if inside:
            lines.append(line)
    return lines


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_documents_every_tuning_default(name: str) -> None:
    text = (DEPLOY / "examples" / f"{name}.toml").read_text("utf-8")
    shown = {}
    for line in section_lines(text, "[tuning]"):
        if m := re.match(r"^#\s*([a-z_]+)\s*=\s*(\S+)\s+#\s*\S", line):
            shown[m.group(1)] = tomllib.loads(f"v = {m.group(2)}")["v"]
    defaults = Tuning()
    assert set(shown) == {f.name for f in fields(Tuning)}, "every Tuning key, with a reason"
    for key, value in shown.items():
        assert value == getattr(defaults, key), f"{name}: tuning.{key} shown as {value}, default is " \
                                                f"{getattr(defaults, key)}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_comments_every_key(name: str) -> None:
    text = (DEPLOY / "examples" / f"{name}.toml").read_text("utf-8")
    for header in ("[node]", "[parent]", "[status]", "[log]"):
        for line in section_lines(text, header):
            if re.match(r"^[a-z_]+\s*=", line):
                value_and_comment = line.split("=", 1)[1]
                assert re.search(r"#\s*\S", value_and_comment), f"{name} {header}: {line!r} has no comment"
                assert "default" in value_and_comment, f"{name} {header}: {line!r} names no default"


# -- nginx (HC-32) -------------------------------------------------------------------------

NGINX = (DEPLOY / "nginx.conf").read_text("utf-8")
DIRECTIVES = re.sub(r"#[^\n]*", "", NGINX)  # comments out


def seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", v)
    assert m, v
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def size(v: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG])?", v)
    assert m, v
    return int(m.group(1)) * {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, None: 1}[(m.group(2) or "").lower() or None]


def test_hc32_nginx_read_timeout_above_long_poll() -> None:
    values = re.findall(r"proxy_read_timeout\s+(\S+);", DIRECTIVES)
    assert values
    for v in values:
        assert seconds(v) > Tuning().pull_wait_s + 10, f"proxy_read_timeout {v} would cut long polls"


def test_hc32_nginx_body_limit_above_batch_cap() -> None:
    values = re.findall(r"client_max_body_size\s+(\S+);", DIRECTIVES)
    assert values
    for v in values:
        assert size(v) > MAX_BODY_BYTES and size(v) > Tuning().batch_max_bytes, v


def test_hc32_nginx_does_not_rewrite_paths_or_buffer_pull() -> None:
    passes = re.findall(r"proxy_pass\s+([^;]+);", DIRECTIVES)
    assert passes
    for target in passes:
        u = urlparse(target.strip())
        assert u.scheme in ("http", "https") and u.path == "" and not u.query, \
            f"proxy_pass {target} carries a URI part: it would change the signed path"
    assert not re.search(r"^\s*rewrite\s", DIRECTIVES, re.M)
    pull = re.search(r"location\s+[^{]*pull[^{]*\{([^}]*)\}", DIRECTIVES)
    assert pull and re.search(r"proxy_buffering\s+off;", pull.group(1))
    assert re.search(r"proxy_request_buffering\s+off;", DIRECTIVES)
    assert re.search(r"listen\s+443\s+ssl", DIRECTIVES)


# -- compose, systemd, Dockerfile ----------------------------------------------------------

def compose_configs() -> dict[str, str]:
    """The inline TOML of compose.yaml's ``configs:``, with compose's ``$$`` unescaped."""
    text = (DEPLOY / "compose.yaml").read_text("utf-8")
    out: dict[str, str] = {}
    for m in re.finditer(r"^  (\w+\.toml):\n    content: \|\n((?:      .*\n|\n)+)", text, re.M):
        out[m.group(1)] = "\n".join(line[6:] for line in m.group(2).splitlines()).replace("$$", "$")
    return out


def test_compose_node_configs_load_and_go_through_nginx(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = compose_configs()
    assert set(blocks) == {"province.toml", "city.toml", "county.toml"}
    cfgs = {}
    for name, text in blocks.items():
        node = EXAMPLES[name.removesuffix(".toml")]
        for k, v in env_for(node, text).items():
            monkeypatch.setenv(k, v)
        cfgs[name] = parse_config(tomllib.loads(text), f"compose.yaml:{name}")
    assert cfgs["city.toml"].parent and cfgs["city.toml"].parent.id == "430000"
    assert cfgs["county.toml"].parent and cfgs["county.toml"].parent.id == "430100"
    host = urlparse(cfgs["city.toml"].parent.url).hostname
    assert urlparse(cfgs["city.toml"].parent.url).scheme == "https"
    assert re.search(rf"server_name\s+{re.escape(host or '?')};", DIRECTIVES), "city → province via nginx"
    compose = (DEPLOY / "compose.yaml").read_text("utf-8")
    assert compose.count("image: postgres:16") == 1 and compose.count("<<: *postgres") == 3


def test_systemd_unit_and_dockerfile_run_as_syncd() -> None:
    unit = (DEPLOY / "syncd.service").read_text("utf-8")
    for line in ("User=syncd", "ExecStart=/usr/local/bin/syncd run --config /etc/syncd/syncd.toml",
                 "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                 "ProtectSystem=strict"):
        assert re.search(rf"^{re.escape(line)}$", unit, re.M), line
    docker = (DEPLOY / "Dockerfile").read_text("utf-8")
    assert len(re.findall(r"^FROM python:3\.11-slim", docker, re.M)) == 2
    assert re.search(r"^USER syncd$", docker, re.M)
    assert 'ENTRYPOINT ["syncd"]' in docker
    assert 'CMD ["run", "--config", "/etc/syncd/syncd.toml"]' in docker
