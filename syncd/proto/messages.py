"""Every message of the syncd protocol, as frozen dataclasses (SPEC §4–§9).

Theory of operation
-------------------
A message is a plain value: no I/O, no validation beyond shape normalisation.
:mod:`syncd.proto.codec` turns messages into bytes and back and enforces types and
limits; :mod:`syncd.proto.validate` checks the meaning of a push.  Sequences are
stored as tuples (lists passed in are converted), so two messages with the same
content compare equal whatever built them.  Changes are
:class:`syncd.proto.change.Change`; column versions are
:class:`syncd.proto.change.Version`.

Direction: the child sends ``Hello``, ``Push``, ``PullRequest``, ``SnapshotRequest``
and ``VerifyRequest``; the parent answers ``HelloReply``, ``PushReply``, ``PullReply``,
``SnapshotChunk``, ``VerifyReply`` or ``ErrorReply``.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import orjson

from syncd.errors import SyncdError
from syncd.proto.change import Change, Version

#: The protocol version this build prefers, and every version it speaks (SPEC R3.1).
PROTOCOL_VERSION = 4
SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2, 3, 4)


def _tuple(obj: object, name: str) -> None:
    """Freeze a sequence field of a frozen dataclass in place."""
    value = getattr(obj, name)
    if not isinstance(value, tuple):
        object.__setattr__(obj, name, tuple(value))


@dataclass(frozen=True)
class TableDecl:
    """What a node declares about one table at hello: its merge-rule version and
    the columns it ships (SPEC R3.4)."""

    version: int
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        _tuple(self, "columns")


@dataclass(frozen=True)
class Hello:
    """Child → parent, first on every channel.  Its layout is the same in every
    protocol version (SPEC R3.2)."""

    versions: tuple[int, ...]  # protocol versions the child speaks
    node: str  # the child's node id (its committee code at registration)
    instance: uuid.UUID  # one per running daemon process (HC-28)
    incarnation: uuid.UUID  # made at `syncd init` (HC-7)
    epoch: int  # the epoch of the child's pull cursor
    clock: int  # child's wall clock, µs since the Unix epoch (HC-23)
    pull_cursor: int  # last parent position the child applied
    pull_hash: bytes | None  # change_hash of the change at pull_cursor; None at 0
    tables: Mapping[str, TableDecl]

    def __post_init__(self) -> None:
        _tuple(self, "versions")


@dataclass(frozen=True)
class HelloReply:
    """Parent → child.  Encoded in the chosen ``version``'s form; ``clock`` is
    absent (``None``) in version 1 (SPEC R3.3)."""

    version: int  # the version both will speak on this channel
    node: str  # the parent's node id
    incarnation: uuid.UUID
    epoch: int  # the parent's current epoch for this child
    clock: int | None  # parent's wall clock in µs; None in v1
    push_cursor: int  # last child position the parent applied
    push_hash: bytes | None  # change_hash of that change; None at 0
    tables: Mapping[str, TableDecl]


@dataclass(frozen=True)
class Push:
    """Child → parent: changes with positions in ``(from_pos, to_pos]`` of the
    child's log (toward this parent), and compact status of the child's subtree.
    ``summary`` does not exist in version 1 (SPEC R3.5, §7)."""

    batch_id: uuid.UUID
    epoch: int
    from_pos: int
    to_pos: int
    changes: tuple[Change, ...]  # a sender's may be StoredChange: the same wire map (codec)
    summary: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _tuple(self, "changes")
        _tuple(self, "summary")


@dataclass(frozen=True)
class Quarantined:
    """A change of a push the parent stored for operators instead of applying."""

    pos: int
    code: str


@dataclass(frozen=True)
class PushReply:
    acked_pos: int  # the child may move its push cursor here
    applied: int  # how many changes were applied
    quarantined: tuple[Quarantined, ...] = ()

    def __post_init__(self) -> None:
        _tuple(self, "quarantined")


@dataclass(frozen=True)
class PullRequest:
    """Child → parent long poll: changes after ``after``; wait up to ``wait_ms``
    when there are none (SPEC R8.1)."""

    after: int
    epoch: int
    limit: int
    wait_ms: int


@dataclass(frozen=True)
class PullReply:
    changes: tuple[Change, ...]  # a sender's may be StoredChange: the same wire map (codec)
    last_pos: int  # the cursor to store once the changes are applied
    head: int  # the parent's newest position for this child
    epoch: int
    more: bool  # True when changes remain after last_pos

    def __post_init__(self) -> None:
        _tuple(self, "changes")


@dataclass(frozen=True)
class SnapshotRequest:
    """Child → parent: rows of ``table`` with id > ``after_id``; ``position`` is the
    p₀ of a snapshot in progress (``None`` starts a new one) (SPEC R9.1)."""

    table: str
    after_id: uuid.UUID | None
    limit: int
    position: int | None


@dataclass(frozen=True)
class SnapshotRow:
    """One row as the parent holds it for this child: versions, ``cl`` and, for a
    tombstone (even ``cl``), no columns.  ``prevs``: the version each column's write
    replaced, where known (protocol version 3 on; a conflict met in a snapshot is judged
    by them, HC-17)."""

    id: uuid.UUID
    org_code: str
    cl: int
    homes: Mapping[str, str]
    cols: Mapping[str, tuple[Any, Version]]
    prevs: Mapping[str, Version] = field(default_factory=dict)

    @property
    def names(self) -> Any:
        """The columns the row carries (as :attr:`StoredRow.names`)."""
        return self.cols.keys()

    @property
    def has_prevs(self) -> bool:
        return bool(self.prevs)



_tnew = tuple.__new__  # a Version from a checked 5-list, without its Python-level __new__


class StoredRow:
    """A snapshot row in the form the parent stores it and protocol version 4 carries it
    (SPEC R9.2): its values ``{column: value}`` and its versions ``{column: [cl, round,
    stage, ts, origin, prev|nil]}`` (``syncd.rowver.v``), as JSON text (``vals_json``,
    ``vers_json``) and as Python values (``vals``, ``vers``), each made from the other on
    first use.  Rows go from the parent's database to the child's this way without a
    :class:`Version` made per cell, and without holding each cell as an object on the way: a
    bootstrap moves a million of them.  ``cols`` and ``prevs``, the :class:`SnapshotRow`
    view, are made on first use (rows that need a merge, older protocol versions, verify);
    it equals a :class:`SnapshotRow` with the same content.  ``names``: the columns (the
    keys of both); the codec checks a row from the wire before one is made."""

    __slots__ = ("id", "org_code", "cl", "homes", "names", "_has_prevs", "_vals", "_vers", "_vals_json",
                 "_vers_json", "_cols", "_prevs")

    def __init__(self, id: uuid.UUID, org_code: str, cl: int, homes: Mapping[str, str],
                 vals: dict[str, Any] | None = None, vers: dict[str, list[Any]] | None = None, *,
                 vals_json: str | None = None, vers_json: str | None = None,
                 names: tuple[str, ...] | None = None, has_prevs: bool | None = None) -> None:
        if (vals is None and vals_json is None) or (vers is None and vers_json is None):
            raise ValueError("a StoredRow needs its values and its versions")
        self.id, self.org_code, self.cl, self.homes = id, org_code, cl, homes
        self._vals, self._vers, self._vals_json, self._vers_json = vals, vers, vals_json, vers_json
        self._cols: dict[str, tuple[Any, Version]] | None = None
        self._prevs: dict[str, Version] | None = None
        self.names: tuple[str, ...] = names if names is not None else tuple(self.vers)
        self._has_prevs = has_prevs

    @classmethod
    def of(cls, r: "SnapshotRow | StoredRow") -> "StoredRow":
        """``r`` in stored form: each version followed by the one its write replaced, or None."""
        if type(r) is StoredRow:
            return r
        prevs = r.prevs
        return cls(r.id, r.org_code, r.cl, r.homes, {k: cell[0] for k, cell in r.cols.items()},
                   {k: [*cell[1], list(prevs[k]) if k in prevs else None] for k, cell in r.cols.items()})

    @property
    def has_prevs(self) -> bool:
        """Some version carries the one its write replaced (closes conflicts, R9.2)."""
        if self._has_prevs is None:
            self._has_prevs = any(len(v) > 5 and v[5] for v in self.vers.values())
        return self._has_prevs

    @property
    def vals(self) -> dict[str, Any]:
        if self._vals is None:
            self._vals = orjson.loads(self._vals_json)  # type: ignore[arg-type]
        return self._vals

    @property
    def vers(self) -> dict[str, list[Any]]:
        if self._vers is None:
            self._vers = orjson.loads(self._vers_json)  # type: ignore[arg-type]
        return self._vers

    @property
    def vals_json(self) -> str:
        if self._vals_json is None:
            self._vals_json = json_text(self._vals)
        return self._vals_json

    @property
    def vers_json(self) -> str:
        if self._vers_json is None:
            self._vers_json = json_text(self._vers)
        return self._vers_json

    @property
    def cols(self) -> Mapping[str, tuple[Any, Version]]:
        if self._cols is None:
            vals = self.vals
            self._cols = {k: (vals.get(k), _tnew(Version, v[:5])) for k, v in self.vers.items()}
        return self._cols

    @property
    def prevs(self) -> Mapping[str, Version]:
        if self._prevs is None:
            self._prevs = {k: _tnew(Version, v[5]) for k, v in self.vers.items() if len(v) > 5 and v[5]}
        return self._prevs

    def _key(self) -> tuple[Any, ...]:
        return (self.id, self.org_code, self.cl, dict(self.homes), dict(self.cols), dict(self.prevs))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (StoredRow, SnapshotRow)):
            return NotImplemented
        return self._key() == (other.id, other.org_code, other.cl, dict(other.homes), dict(other.cols),
                               dict(other.prevs))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"StoredRow(id={self.id!r}, org_code={self.org_code!r}, cl={self.cl}, homes={dict(self.homes)!r}, "
                f"vals={self.vals!r}, vers={self.vers!r})")


def json_text(o: Any) -> str:
    """Canonical JSON text (keys sorted at every depth, R4.2) of a :class:`StoredRow`'s values
    or versions; an integer beyond 64 bits (which the receiver refuses by name) by ``json``."""
    try:
        return orjson.dumps(o, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(o, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class SnapshotChunk:
    table: str
    position: int  # p₀: the log position the snapshot is consistent with
    rows: tuple[SnapshotRow | StoredRow, ...]
    next_after_id: uuid.UUID | None  # ask again with this after_id; None when done
    done: bool

    def __post_init__(self) -> None:
        _tuple(self, "rows")


@dataclass(frozen=True)
class IdRange:
    """Ids ``lo <= id < hi`` (``hi`` ``None`` = no upper bound), in uuid byte order."""

    lo: uuid.UUID
    hi: uuid.UUID | None


@dataclass(frozen=True)
class RangeSum:
    """Row count and checksum (SPEC R9.2) of one id range."""

    lo: uuid.UUID
    hi: uuid.UUID | None
    count: int
    checksum: bytes  # 32 bytes


@dataclass(frozen=True)
class VerifyRequest:
    table: str
    position: int | None  # None: the parent's current position
    ranges: tuple[IdRange, ...]

    def __post_init__(self) -> None:
        _tuple(self, "ranges")


@dataclass(frozen=True)
class VerifyReply:
    table: str
    position: int  # the parent's position the sums were taken at
    ranges: tuple[RangeSum, ...]

    def __post_init__(self) -> None:
        _tuple(self, "ranges")


@dataclass(frozen=True)
class ErrorReply:
    """Any refusal, with the error table's fields (SPEC §10)."""

    code: str
    reason: str
    hint: str | None
    retryable: bool
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_error(cls, err: SyncdError) -> "ErrorReply":
        return cls(err.code, err.reason, err.hint, err.retryable, dict(err.details))

    def to_error(self) -> SyncdError:
        return SyncdError(self.code, self.reason, self.hint, details=self.details, retryable=self.retryable)


Message = (
    Hello | HelloReply | Push | PushReply | PullRequest | PullReply | SnapshotRequest
    | SnapshotChunk | VerifyRequest | VerifyReply | ErrorReply
)

#: The kind names used by ``codec.decode`` and the vectors, per message class.
KINDS: Mapping[str, type] = {
    "hello": Hello, "hello_reply": HelloReply, "push": Push, "push_reply": PushReply,
    "pull": PullRequest, "pull_reply": PullReply, "snapshot": SnapshotRequest,
    "snapshot_chunk": SnapshotChunk, "verify": VerifyRequest, "verify_reply": VerifyReply,
    "error": ErrorReply,
}
KIND_OF: Mapping[type, str] = {cls: kind for kind, cls in KINDS.items()}


def tables_from_schema(schema: Any) -> dict[str, TableDecl]:
    """The ``tables`` a node declares at hello for a :class:`syncd.schema.declarations.Schema`."""
    return {t.name: TableDecl(t.version, tuple(t.shipped_names)) for t in schema.tables}


def negotiate(theirs: Sequence[int], ours: Sequence[int] = SUPPORTED_VERSIONS) -> int:
    """The highest version both speak; ``UNSUPPORTED_VERSION`` when none (SPEC R3.1)."""
    common = set(theirs) & set(ours)
    if not common:
        raise SyncdError(
            "UNSUPPORTED_VERSION",
            f"peer speaks {sorted(set(theirs))}, this node speaks {sorted(ours)}",
        )
    return max(common)
