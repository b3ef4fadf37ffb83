"""The error table of syncd, as data, and the one exception type that carries it.

Theory of operation
-------------------
Every refusal that can cross a link, or that an operator sees in ``/status``, has a
stable string ``code`` (``BAD_SIGNATURE``), a numeric id (never reused), the HTTP
status it is sent with, whether the *same request* may succeed later without an
operator doing anything (``retryable``), what it means, and a one-sentence ``hint``
for an operator in a county IT room.  ``protocol/SPEC.md`` §10 prints this table;
a test checks that the two agree.

:class:`SyncdError` is raised by the pure core (codec, signing, validation) and by
the I/O layers alike.  Its wire form (:meth:`SyncdError.to_wire`) is what an
``ErrorReply`` carries; :meth:`SyncdError.from_wire` rebuilds it on the other side,
keeping codes this build does not know (a newer peer may send them) with the
``retryable`` flag the peer sent.  Reasons and hints never contain row values or
PostgreSQL DETAIL text (HC-15): callers pass identifiers, not data.

Nothing here does I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

#: Codes are upper-case ASCII words joined by ``_`` (SPEC R10.1).
CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,47}$")

#: Detail values are small scalars (SPEC R10.3): an epoch, a position, a clock offset.
DetailValue = int | str | bool | None


@dataclass(frozen=True)
class ErrorSpec:
    """One row of the error table.  ``status`` is ``None`` for internal states
    (parked, quarantined) that never travel as an HTTP response."""

    code: str
    id: int
    status: int | None
    retryable: bool
    meaning: str
    hint: str


def _e(code: str, id: int, status: int | None, retryable: bool, meaning: str, hint: str) -> ErrorSpec:
    return ErrorSpec(code, id, status, retryable, meaning, hint)


_TABLE: tuple[ErrorSpec, ...] = (
    # -- 400: the body is not a message we can read -------------------------------------
    _e("MALFORMED_BODY", 1001, 400, False,
       "The body is not msgpack, or its gzip encoding is corrupt, or the content type is wrong.",
       "A proxy or an incompatible client changed the request body; check that nothing between the two daemons rewrites it."),
    _e("DECODE_ERROR", 1002, 400, False,
       "The body is msgpack but not the message the endpoint expects (wrong type, missing or extra field).",
       "The two daemons disagree about the message format; check both run released syncd versions."),
    _e("UNSUPPORTED_VERSION", 1003, 400, False,
       "No protocol version is spoken by both sides; refused at hello.",
       "Upgrade the older daemon: a node speaks its own protocol version and the one before it."),
    # -- 401: authentication -------------------------------------------------------------
    _e("MISSING_SIGNATURE", 1101, 401, False,
       "A request lacks one of the X-Syncd-Key/-Time/-Nonce/-Signature headers.",
       "Check that a proxy does not strip X-Syncd-* headers and that the sender is a syncd daemon."),
    _e("UNKNOWN_KEY", 1102, 401, False,
       "The key id is not configured for any peer of this node.",
       "Add the peer's key id and secret to this node's config, or fix the key id in the peer's config."),
    _e("BAD_SIGNATURE", 1103, 401, False,
       "The HMAC does not match: wrong secret, or the method, path, query or body changed on the way.",
       "Make the shared secret identical on both sides and make sure no proxy rewrites the path or body."),
    _e("STALE_TIMESTAMP", 1104, 401, False,
       "The signed time is outside the accepted window (default 300 s) of this node's clock.",
       "Fix the clock of the server that is off (enable NTP); the signing window is five minutes."),
    _e("REPLAYED_NONCE", 1105, 401, False,
       "The request nonce was already used: a captured request was sent again.",
       "Nothing to do if it happens once; repeated replays mean someone is resending captured traffic."),
    _e("FORGED_RESPONSE", 1106, 502, True,
       "The parent's response is unsigned or its signature is wrong (checked by the child; nothing applied).",
       "Something between this node and its parent answers in the parent's name; check DNS, proxies and TLS settings."),
    # -- 403: authorisation --------------------------------------------------------------
    _e("NOT_A_CHILD", 1201, 403, False,
       "The sender is not configured as a child of this node.",
       "Add the child to this node's config, or point the child at its real parent's URL."),
    _e("FORBIDDEN_SCOPE", 1202, 403, False,
       "A change or status report lies outside the sender's subtree or breaks the writer rules; it is quarantined.",
       "The sending committee wrote a row it does not own; review the quarantined rows with `syncd quarantine`."),
    # -- 409: state disagreements --------------------------------------------------------
    _e("SCHEMA_INCOMPATIBLE", 1301, 409, False,
       "A table's declared columns or merge-rule version cannot interoperate (column removed or renamed, rule changed).",
       "Upgrade both daemons to releases with compatible table declarations before reconnecting."),
    _e("CLOCK_SKEW", 1302, 409, False,
       "The peer's clock is beyond the hard skew bound; the link is refused until it is fixed.",
       "Set the server clock right (enable NTP) on the node named in the error; the link recovers by itself."),
    _e("MUST_RESYNC", 1303, 409, False,
       "The cursor is below the retained log, or belongs to another epoch or incarnation; details carry the epoch.",
       "No action needed: the daemon resynchronises by itself, merging and keeping local data."),
    _e("DUPLICATE_INSTANCE", 1304, 409, True,
       "Another running daemon already holds this node's link (two copies with the same node id).",
       "Stop the second daemon started with this node's config (a DR copy or a duplicate VM)."),
    _e("HELLO_REQUIRED", 1305, 409, True,
       "The parent has no session for this link (it restarted or the epoch changed); say hello again.",
       "No action needed: the daemon reconnects by itself."),
    # -- 413: size limits ------------------------------------------------------------------
    _e("BODY_TOO_LARGE", 1401, 413, False,
       "The body, its inflated size, or a declared array/map/bin length exceeds the protocol limits.",
       "The sender must cut smaller batches; also check the proxy's body size limit (client_max_body_size)."),
    # -- 415 -------------------------------------------------------------------------------
    _e("UNSUPPORTED_MEDIA_TYPE", 1501, 415, False,
       "The content type is not application/msgpack or the content encoding is not gzip/identity.",
       "Check that a proxy does not rewrite Content-Type or Content-Encoding."),
    # -- 422: signed but invalid content (HC-34) -------------------------------------------
    _e("INVALID_CHANGE", 1601, 422, False,
       "A change is inconsistent (op and cl disagree, positions out of order, prev not below the new version).",
       "The sending daemon produced a bad change record; report it with the batch id to the syncd maintainers."),
    _e("FUTURE_TS", 1602, 422, False,
       "A change's ts lies beyond now + the hard clock bound; that change alone is quarantined, the rest of "
       "the batch applies (R5.4).",
       "The clock of the node that wrote these rows is ahead; fix it (NTP), then release them with `syncd quarantine`."),
    _e("NEGATIVE_CL", 1603, 422, False,
       "A causal length is negative.",
       "The sending daemon or something in between corrupted the batch; report it with the batch id."),
    _e("UNKNOWN_TABLE", 1604, 422, False,
       "A change names a table that is not replicated here.",
       "The sender runs a newer schema than this node accepts; upgrade this node or the table declarations."),
    _e("UNKNOWN_COLUMN", 1605, 422, False,
       "A change names a column that is neither declared here nor announced by the sender at hello.",
       "The sender's table declarations differ from what it announced; restart it so it says hello again."),
    _e("VALUE_TOO_LARGE", 1606, 422, False,
       "A column value exceeds the per-value size limit (1 MiB encoded).",
       "An application stored an oversized value (an attachment in a text field?); shorten it at the home committee."),
    _e("DUPLICATE_ROW", 1607, 422, False,
       "The same change — (table, id, cl, ts, origin) — appears twice in one batch.",
       "The sending daemon built a bad batch; report it with the batch id to the syncd maintainers."),
    # -- 5xx: try again later --------------------------------------------------------------
    _e("INTERNAL", 1701, 500, True,
       "An unexpected failure on the answering node; nothing was applied.",
       "Look in the answering node's log for the request id; the link retries by itself."),
    _e("UNAVAILABLE", 1702, 503, True,
       "The answering node cannot serve now (database down, shutting down, overloaded, a row the batch "
       "changes locked by another transaction there).",
       "Check that the answering node's PostgreSQL is up; the link retries by itself."),
    _e("SNAPSHOT_BUSY", 1703, 503, True,
       "Too many snapshots are being served, or the parent is still loading its own; try again later.",
       "No action needed: snapshots are admission-controlled and this one will be served shortly."),
    # -- internal states, never an HTTP response -------------------------------------------
    _e("FK_MISSING", 1801, None, True,
       "A row waits for the row it references, which has not arrived yet (parked and retried by itself).",
       "Usually clears by itself; if it stays, check that the referenced committee's link is running."),
    _e("POISON", 1802, None, False,
       "A change could not be applied for a reason that retrying will not fix; it waits for an operator.",
       "Inspect it with `syncd quarantine [--json]`, fix the cause, then `syncd quarantine --release ID`."),
)

#: The error table, by code (read-only).
ERRORS: Mapping[str, ErrorSpec] = MappingProxyType({e.code: e for e in _TABLE})


def spec(code: str) -> ErrorSpec | None:
    """The table row for ``code``, or ``None`` for a code this build does not know."""
    return ERRORS.get(code)


class SyncdError(Exception):
    """A named refusal.  ``code`` must be in :data:`ERRORS` unless built by
    :meth:`from_wire` (a newer peer's code); ``details`` holds small scalars
    such as ``{"epoch": 7}`` for ``MUST_RESYNC`` (SPEC R10.3)."""

    def __init__(
        self,
        code: str,
        reason: str,
        hint: str | None = None,
        *,
        details: Mapping[str, DetailValue] | None = None,
        retryable: bool | None = None,
    ) -> None:
        known = ERRORS.get(code)
        if known is None and retryable is None:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.hint = hint if hint is not None else (known.hint if known else None)
        self.details: dict[str, DetailValue] = dict(details or {})
        self.retryable = known.retryable if retryable is None else retryable

    @property
    def status(self) -> int:
        """HTTP status to answer with (500 for internal or unknown codes)."""
        known = ERRORS.get(self.code)
        return known.status if known is not None and known.status is not None else 500

    @property
    def epoch(self) -> int | None:
        """The epoch carried by ``MUST_RESYNC`` (``None`` otherwise)."""
        e = self.details.get("epoch")
        return e if isinstance(e, int) and not isinstance(e, bool) else None

    def to_wire(self) -> dict[str, Any]:
        """``{code, reason, hint, retryable}`` plus ``details`` when there are any."""
        out: dict[str, Any] = {
            "code": self.code, "reason": self.reason, "hint": self.hint, "retryable": self.retryable,
        }
        if self.details:
            out["details"] = dict(self.details)
        return out

    @classmethod
    def from_wire(cls, w: Mapping[str, Any]) -> "SyncdError":
        """Rebuild from :meth:`to_wire` output; raises ``ValueError`` on a bad shape."""
        code, reason = w.get("code"), w.get("reason")
        if not isinstance(code, str) or not CODE_RE.match(code) or not isinstance(reason, str):
            raise ValueError("error wire form needs a code and a reason")
        hint, retryable = w.get("hint"), w.get("retryable")
        if hint is not None and not isinstance(hint, str):
            raise ValueError("hint must be a string")
        if not isinstance(retryable, bool):
            raise ValueError("retryable must be a bool")
        details = w.get("details") or {}
        if not isinstance(details, Mapping):
            raise ValueError("details must be a map")
        return cls(code, reason, hint, details=details, retryable=retryable)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncdError) and self.to_wire() == other.to_wire()

    def __hash__(self) -> int:
        return hash((self.code, self.reason))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.reason!r})"


def must_resync(epoch: int, reason: str) -> SyncdError:
    """``MUST_RESYNC`` carrying the epoch the peer must adopt (SPEC R8.3)."""
    return SyncdError("MUST_RESYNC", reason, details={"epoch": epoch})


class OperatorRequestError(Exception):
    """An operator's request (resolve a conflict, release a quarantined change) that cannot be
    carried out: ``code``, the message and a ``hint`` saying what to do instead."""

    def __init__(self, code: str, message: str, hint: str = ""):
        super().__init__(f"{code}: {message}")
        self.code, self.hint = code, hint
