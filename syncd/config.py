"""Node configuration: one TOML file per node, loaded into frozen dataclasses.

``${VAR}`` anywhere in a string value is replaced from the environment (secrets
stay out of the file).  :func:`load_config` validates everything and raises one
:class:`ConfigError` that lists every problem with its key path and value, so an
operator fixes the file in one pass.  Nothing is written while loading.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from syncd.batching import MAX_BATCH_BYTES, MIN_BATCH_BYTES
from syncd.proto.codec import MAX_CHANGES

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NODE_ID = re.compile(r"^[0-9]{6}$")


class ConfigError(Exception):
    """Every problem found in a config file: ``problems`` is a list of (path, value, message)."""

    def __init__(self, source: str, problems: list[tuple[str, Any, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{p}: {msg} (got {v!r})" if v is not None else f"{p}: {msg}" for p, v, msg in problems]
        super().__init__(f"{source}: {len(problems)} problem(s): " + "; ".join(lines))


@dataclass(frozen=True)
class Secret:
    """A link secret with its key id; two may be live during rotation (HC-24)."""

    key_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class NodeConfig:
    id: str
    name: str
    dsn: str | None
    listen: str
    data_dir: Path
    id_hash_key: Secret | None = None  # HMAC key for id_card_hash, issued by the province (HC-14)


@dataclass(frozen=True)
class ParentConfig:
    id: str
    url: str
    secrets: tuple[Secret, ...]
    tls_verify: bool = True


@dataclass(frozen=True)
class ChildConfig:
    id: str
    secrets: tuple[Secret, ...]


@dataclass(frozen=True)
class Tuning:
    batch_max_changes: int = 2000
    batch_max_bytes: int = 4 * 1024 * 1024
    pull_wait_s: float = 25.0
    sequencer_interval_ms: int = 1000  # the sequencer's safety-net poll; it is woken by NOTIFY (issue #9)
    sequencer_batch: int = 5000
    max_retention: str = "30d"  # a duration: log entries and tombstones are kept at most this long (HC-21)
    max_retention_entries: int = 0  # also keep at most this many log entries (0: no count bound)
    retention_interval_s: float = 60.0  # how often the retention loop truncates the log
    # how often the home recomputes its members' 履职积分 summaries (syncd.refresh_scores, HC-25;
    # only rows whose inputs changed are written, and they travel up); 0: never (an external job does)
    score_refresh_s: float = 300.0
    clock_soft_ms: int = 5_000
    clock_hard_ms: int = 300_000
    retry_cap_s: float = 60.0
    failed_probe_s: float = 300.0
    stall_after_s: float = 60.0  # a cursor stuck this long while its peer has more: link `stalled`
    snapshot_slots: int = 4
    signature_window_s: int = 300

    @property
    def max_retention_s(self) -> float:
        """``max_retention`` in seconds (validated by the loader)."""
        return parse_duration(self.max_retention)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"``;
    ``ValueError`` (``INVALID_DURATION``) for anything else or a zero duration."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"INVALID_DURATION: {text!r} is not a duration such as \"30d\", \"12h\", "
                         "\"90m\" or \"45s\" (a positive number and one of s, m, h, d, w)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class StatusConfig:
    read_token: str | None = None


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    parent: ParentConfig | None
    children: tuple[ChildConfig, ...]
    tuning: Tuning
    status: StatusConfig
    log_format: str = "auto"
    log_level: str = "info"
    source: str = "<memory>"

    def child(self, node_id: str) -> ChildConfig | None:
        return next((c for c in self.children if c.id == node_id), None)


_SECTIONS = {"node", "parent", "children", "tuning", "status", "log"}
_NODE_KEYS = {"id", "name", "dsn", "listen", "data_dir", "id_hash_key", "id_hash_key_id"}
_LINK_KEYS = {"id", "url", "key_id", "secret", "next_key_id", "next_secret", "tls_verify"}
_LOG_KEYS = {"format", "level"}


def _expand(value: Any, path: str, problems: list[tuple[str, Any, str]]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if var not in os.environ:
                problems.append((path, value, f"environment variable {var} is not set"))
                return ""
            return os.environ[var]
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


class _Reader:
    """Collects problems while reading typed keys out of one table."""

    def __init__(self, table: Mapping[str, Any], path: str, problems: list[tuple[str, Any, str]]):
        self.t, self.path, self.problems = table, path, problems

    def unknown(self, allowed: set[str]) -> None:
        for k in sorted(set(self.t) - allowed):
            self.problems.append((f"{self.path}.{k}", self.t[k], "unknown key"))

    def get(self, key: str, kind: type, default: Any = None, required: bool = False) -> Any:
        if key not in self.t:
            if required:
                self.problems.append((f"{self.path}.{key}", None, "is required"))
            return default
        v = self.t[key]
        ok = isinstance(v, kind) and not (kind in (int, float) and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not ok:
            self.problems.append((f"{self.path}.{key}", v, f"must be {kind.__name__}"))
            return default
        return v

    def node_id(self, key: str = "id") -> str:
        v = self.get(key, str, "", required=True)
        if v and not _NODE_ID.match(v):
            self.problems.append((f"{self.path}.{key}", v, "must be a 6-digit committee id"))
        return str(v)

    def secrets(self) -> tuple[Secret, ...]:
        out = []
        secret = self.get("secret", str, required=True)
        if secret is not None and len(secret) < 16:
            self.problems.append((f"{self.path}.secret", "***", "must be at least 16 characters"))
        if secret:
            out.append(Secret(self.get("key_id", str, "k1"), secret))
        nxt = self.get("next_secret", str)
        if nxt:
            out.append(Secret(self.get("next_key_id", str, "k2"), nxt))
        return tuple(out)


def _read_node(t: Mapping[str, Any], problems: list, base: Path) -> NodeConfig:
    r = _Reader(t, "node", problems)
    r.unknown(_NODE_KEYS)
    node_id = r.node_id()
    listen = r.get("listen", str, "127.0.0.1:8470")
    if not re.match(r"^[^:\s]+:\d{1,5}$", listen or ""):
        problems.append(("node.listen", listen, "must be host:port"))
    data_dir = Path(r.get("data_dir", str, f"syncd-data/{node_id or 'node'}"))
    key = r.get("id_hash_key", str)
    return NodeConfig(
        id=node_id,
        name=r.get("name", str, node_id),
        dsn=r.get("dsn", str),
        listen=listen,
        data_dir=data_dir if data_dir.is_absolute() else base / data_dir,
        id_hash_key=Secret(r.get("id_hash_key_id", str, "h1"), key) if key else None,
    )


def _read_parent(t: Any, problems: list) -> ParentConfig | None:
    if t is None:
        return None
    if not isinstance(t, dict):
        problems.append(("parent", t, "must be a table"))
        return None
    r = _Reader(t, "parent", problems)
    r.unknown(_LINK_KEYS)
    url = r.get("url", str, "", required=True)
    u = urlparse(url or "")
    if url and (u.scheme not in ("http", "https") or not u.netloc):
        problems.append(("parent.url", url, "must be an http:// or https:// URL"))
    return ParentConfig(r.node_id(), url.rstrip("/"), r.secrets(), r.get("tls_verify", bool, True))


def _read_children(t: Any, problems: list) -> tuple[ChildConfig, ...]:
    if t is None:
        return ()
    if not isinstance(t, list):
        problems.append(("children", t, "must be an array of tables ([[children]])"))
        return ()
    out, seen = [], set()
    for i, c in enumerate(t):
        r = _Reader(c, f"children[{i}]", problems)
        r.unknown(_LINK_KEYS - {"url", "tls_verify"})
        cid = r.node_id()
        if cid in seen:
            problems.append((f"children[{i}].id", cid, "listed twice"))
        seen.add(cid)
        out.append(ChildConfig(cid, r.secrets()))
    return tuple(out)


def _read_dataclass(cls: type, t: Any, path: str, problems: list) -> Any:
    if t is None:
        return cls()
    r = _Reader(t, path, problems)
    defaults = cls()
    names = set(cls.__dataclass_fields__)
    r.unknown(names)
    kwargs = {}
    for name in names:
        default = getattr(defaults, name)
        kind = type(default) if default is not None else str
        v = r.get(name, kind, default)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            problems.append((f"{path}.{name}", v, "must not be negative"))
        kwargs[name] = v
    return cls(**kwargs)


def parse_config(data: Mapping[str, Any], source: str = "<memory>", base: Path | None = None) -> Config:
    """Validate an already-parsed TOML mapping.  Raises :class:`ConfigError`."""
    problems: list[tuple[str, Any, str]] = []
    data = _expand(dict(data), "", problems)
    problems = [(p.lstrip("."), v, m) for p, v, m in problems]
    for k in sorted(set(data) - _SECTIONS):
        problems.append((k, data[k], "unknown section or key"))
    if "node" not in data or not isinstance(data.get("node"), dict):
        problems.append(("node", None, "section [node] is required"))
        node = NodeConfig("", "", None, "127.0.0.1:8470", Path("."))
    else:
        node = _read_node(data["node"], problems, base or Path.cwd())
    log = data.get("log") or {}
    lr = _Reader(log, "log", problems)
    lr.unknown(_LOG_KEYS)
    fmt = lr.get("format", str, "auto")
    if fmt not in ("auto", "json", "console"):
        problems.append(("log.format", fmt, "must be auto, json or console"))
    cfg = Config(
        node=node,
        parent=_read_parent(data.get("parent"), problems),
        children=_read_children(data.get("children"), problems),
        tuning=_read_dataclass(Tuning, data.get("tuning"), "tuning", problems),
        status=_read_dataclass(StatusConfig, data.get("status"), "status", problems),
        log_format=fmt,
        log_level=lr.get("level", str, "info"),
        source=source,
    )
    if isinstance(cfg.tuning.max_retention, str):
        try:
            parse_duration(cfg.tuning.max_retention)
        except ValueError as e:
            problems.append(("tuning.max_retention", cfg.tuning.max_retention, str(e)))
    if cfg.parent and cfg.parent.id == node.id:
        problems.append(("parent.id", cfg.parent.id, "a node cannot be its own parent"))
    for i, c in enumerate(cfg.children):
        if c.id == node.id:
            problems.append((f"children[{i}].id", c.id, "a node cannot be its own child"))
        elif cfg.parent and c.id == cfg.parent.id:
            problems.append((f"children[{i}].id", c.id, "the parent cannot also be a child"))
    problems += _batch_problems(cfg.tuning)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _batch_problems(t: Tuning) -> list[tuple[str, Any, str]]:
    """The batch bounds within what the protocol carries (``syncd.batching``)."""
    out: list[tuple[str, Any, str]] = []
    if not 1 <= t.batch_max_changes <= MAX_CHANGES:
        out.append(("tuning.batch_max_changes", t.batch_max_changes,
                    f"must be 1 to {MAX_CHANGES} (the protocol's limit of changes per message)"))
    if not MIN_BATCH_BYTES <= t.batch_max_bytes <= MAX_BATCH_BYTES:
        out.append(("tuning.batch_max_bytes", t.batch_max_bytes,
                    f"must be {MIN_BATCH_BYTES} to {MAX_BATCH_BYTES} (64 KiB to 12 MiB: the message cap is "
                    "16 MiB, and the batch size is an estimate)"))
    return out


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``; unreadable or malformed files are ConfigErrors too."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(p), [("<file>", str(p), f"cannot read: {e.strerror or e}")]) from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), [("<file>", str(p), f"not valid TOML: {e}")]) from e
    return parse_config(data, str(p), p.parent.resolve())
