"""The narrow seam between a link loop and the wire (Litestream ``ReplicaClient`` style).

Theory of operation
-------------------
A child reaches its parent through a :class:`ParentLink`; a parent serves its
children through a :class:`ParentHandler`.  Two backends implement the link:
:class:`syncd.transport.http.HttpParentLink` (aiohttp, signed, the real one) and
:class:`syncd.transport.memory.MemoryParentLink` (in-process twin for tests).  One
contract suite, ``tests/contract/test_transport_contract.py``, runs against both.

Both backends move **bytes**: a request is encoded with :func:`codec.encode`, served
by :func:`serve_bytes` (decode → handler → encode, errors → ``ErrorReply``) and read
back by :func:`read_reply`.  So the twin is as strict as the wire: whatever the
codec refuses or drops (a v1 ``Push`` has no ``summary``) is refused or dropped in
memory too.

How errors surface
------------------
* Parent side: a handler refuses by raising :class:`SyncdError`; it is sent as an
  ``ErrorReply`` with the error table's HTTP status.  Any other exception becomes
  ``INTERNAL`` (500) with a request id and nothing of the exception's text; the
  exception is logged with its traceback on the parent.
* Child side: the link raises the very same :class:`SyncdError` (code, reason,
  hint, retryable, details), or :class:`TransportError` when no syncd reply came
  back: connection refused or reset, timeout, a link closed or cut, or an HTTP
  answer that is not msgpack (nginx's HTML 502/504/413, HC-32).
  ``FORGED_RESPONSE`` means a reply came back that the parent did not sign (HC-24).
  :func:`syncd.retry.classify` decides what each of these means for the loop.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Mapping, Protocol, TypeVar, runtime_checkable

import structlog

from syncd.errors import SyncdError
from syncd.proto import codec
from syncd.proto.fields import DecodeError
from syncd.proto.messages import (
    ErrorReply, Hello, HelloReply, Message, PullReply, PullRequest, Push, PushReply,
    SnapshotChunk, SnapshotRequest, VerifyReply, VerifyRequest,
)

log = structlog.get_logger("syncd.transport")
_R = TypeVar("_R")


class TransportError(SyncdError):
    """No syncd reply: the exchange failed below the protocol.

    ``status`` is the HTTP status when an HTTP answer came back that was not a
    syncd reply (an HTML page from a proxy), ``None`` for a connection failure,
    a timeout, or a cut/closed link.  ``code`` is ``UNREACHABLE`` (no status) or
    ``HTTP_ERROR``; neither is ever sent on the wire.  ``retryable`` follows
    :func:`syncd.retry.classify_status` (408, 429, 5xx and no status: yes).
    ``retry_after_s`` carries a ``Retry-After`` header when there was one.
    """

    def __init__(self, status: int | None, reason: str, *, retry_after_s: float | None = None) -> None:
        from syncd.retry import classify_status  # retry imports this module

        code = "UNREACHABLE" if status is None else "HTTP_ERROR"
        super().__init__(
            code, reason, _transport_hint(status),
            details={"status": status} if status is not None else None,
            retryable=classify_status(status) != "final",
        )
        self.http_status = status
        self.retry_after_s = retry_after_s

    @property
    def status(self) -> int | None:  # type: ignore[override]
        """The HTTP status received, or ``None`` when no HTTP answer came back."""
        return self.http_status


def _transport_hint(status: int | None) -> str:
    if status is None:
        return ("The parent did not answer: check the network path, DNS and that the parent's "
                "syncd is running; the link retries by itself.")
    if status == 413:
        return ("A proxy refused the body size: raise its body limit (nginx client_max_body_size) "
                "above syncd's batch cap of 16 MiB.")
    if status in (502, 504):
        return ("A proxy could not reach the parent or gave up waiting: check the parent is up and "
                "that proxy_read_timeout exceeds the longest pull wait.")
    return (f"Something between this node and its parent answered HTTP {status} without a syncd "
            "reply; check proxies and the parent URL.")


@dataclass(frozen=True)
class Endpoint:
    """One request kind: its codec kind, URL path, message classes and handler method."""

    kind: str
    path: str
    request: type
    reply: type
    reply_kind: str
    method: str


ENDPOINTS: Mapping[str, Endpoint] = {e.kind: e for e in (
    Endpoint("hello", "/v1/hello", Hello, HelloReply, "hello_reply", "on_hello"),
    Endpoint("push", "/v1/push", Push, PushReply, "push_reply", "on_push"),
    Endpoint("pull", "/v1/pull", PullRequest, PullReply, "pull_reply", "on_pull"),
    Endpoint("snapshot", "/v1/snapshot", SnapshotRequest, SnapshotChunk, "snapshot_chunk", "on_snapshot"),
    Endpoint("verify", "/v1/verify", VerifyRequest, VerifyReply, "verify_reply", "on_verify"),
)}
ENDPOINT_OF: Mapping[type, Endpoint] = {e.request: e for e in ENDPOINTS.values()}


@runtime_checkable
class ParentHandler(Protocol):
    """What a parent node does with its children's requests (implemented by the node).

    Contracts, for every method:

    * ``child`` is the authenticated child id (the owner of the key that signed the
      request); the message is already decoded and shape-checked by the codec, at
      the protocol version the child named (a v1 ``Push`` has ``summary == ()``).
    * Refuse by raising :class:`SyncdError` with a code of the error table; it
      reaches the child unchanged.  Any other exception is a bug: the child gets
      ``INTERNAL`` (retryable) and nothing of its text.
    * A reply is encoded at the request's version; ``on_hello`` chooses that version
      (``HelloReply.version``) and the link speaks it from then on.
    * Handlers run concurrently (one per request, several per child); a request may
      be a retry of one whose reply was lost, so push handling must be idempotent.
    """

    async def on_hello(self, child: str, msg: Hello) -> HelloReply:
        """Open a channel (SPEC §3).  Raises ``NOT_A_CHILD``, ``UNSUPPORTED_VERSION``,
        ``DUPLICATE_INSTANCE``, ``CLOCK_SKEW``, ``SCHEMA_INCOMPATIBLE``, ``MUST_RESYNC``."""
        ...

    async def on_push(self, child: str, msg: Push) -> PushReply:
        """Apply a batch (SPEC §7); idempotent for a batch already applied."""
        ...

    async def on_pull(self, child: str, msg: PullRequest) -> PullReply:
        """Changes after ``msg.after``; with none, wait up to ``msg.wait_ms`` for new ones
        and then answer (possibly empty).  Must not wait longer than ``wait_ms``."""
        ...

    async def on_snapshot(self, child: str, msg: SnapshotRequest) -> SnapshotChunk:
        """One chunk of a snapshot consistent with p₀ (SPEC §9); ``SNAPSHOT_BUSY`` when full."""
        ...

    async def on_verify(self, child: str, msg: VerifyRequest) -> VerifyReply:
        """Range checksums at a stated position (SPEC R9.3)."""
        ...


@runtime_checkable
class ParentLink(Protocol):
    """How a child reaches its parent.  Contracts, for every request method:

    * One call is one exchange: it returns the parent's reply (equal to what the
      handler returned, at the channel's version) or raises.
    * It raises the parent's :class:`SyncdError` as sent, ``FORGED_RESPONSE`` for a
      reply the parent did not sign, and :class:`TransportError` when no reply came
      (connection, timeout, non-msgpack HTTP answer, cut or closed link).  After any
      exception the caller must assume the request may or may not have been applied.
    * Nothing is retried here; retries belong to the loop (:mod:`syncd.retry`).
    * A successful ``hello`` makes the link speak the chosen ``HelloReply.version``
      for every later request (both channels, when they share one link).
    * Safe for concurrent use by several tasks (the push and the pull loop).
    * ``pull`` waits up to ``msg.wait_ms`` plus the link's timeout; never less.
    """

    async def hello(self, msg: Hello) -> HelloReply: ...

    async def push(self, msg: Push) -> PushReply: ...

    async def pull(self, msg: PullRequest) -> PullReply: ...

    async def snapshot(self, msg: SnapshotRequest) -> SnapshotChunk: ...

    async def verify(self, msg: VerifyRequest) -> VerifyReply: ...

    async def close(self) -> None:
        """Release connections; idempotent.  Later calls raise :class:`TransportError`."""
        ...


# -- the parent side, bytes to bytes --------------------------------------------------

def error_body(err: SyncdError) -> bytes:
    """The wire bytes of an ``ErrorReply`` for ``err`` (same in every version)."""
    return codec.encode(ErrorReply.from_error(err))


def internal_error(exc: BaseException, child: str, kind: str, request_id: str) -> SyncdError:
    """Log an unexpected handler failure with its traceback; return the ``INTERNAL``
    refusal to send, which names only the request id (no text of ``exc``, HC-15)."""
    log.error("handler_failed", child=child, kind=kind, request_id=request_id,
              error_type=type(exc).__name__, exc_info=exc)
    return SyncdError("INTERNAL", f"unexpected failure serving {kind} (request {request_id})")


async def serve_bytes(handler: ParentHandler, child: str, kind: str, body: bytes, version: int,
                      request_id: str | None = None) -> tuple[int, bytes]:
    """Decode ``body`` as a ``kind`` request at ``version``, call the handler and
    return ``(HTTP status, reply bytes)``: 200 and the reply, or an error status and
    an ``ErrorReply``.  Never raises except ``CancelledError``."""
    ep = ENDPOINTS[kind]
    rid = request_id or uuid.uuid4().hex
    try:
        msg = codec.decode(kind, body, version)
        reply = await getattr(handler, ep.method)(child, msg)
        if not isinstance(reply, ep.reply):
            raise TypeError(f"{ep.method} returned {type(reply).__name__}, not {ep.reply.__name__}")
        return 200, codec.encode(reply, version)
    except SyncdError as err:
        return err.status, error_body(err)
    except Exception as exc:  # a handler bug: log it, tell the child only a request id
        err = internal_error(exc, child, kind, rid)
        return err.status, error_body(err)


# -- the child side, bytes to a reply or an exception ---------------------------------

def read_reply(ep: Endpoint, status: int, body: bytes, version: int) -> Message:
    """The reply in ``body`` for a request to ``ep`` (already authenticated), or raise:
    the parent's :class:`SyncdError` for a non-200 ``ErrorReply``, a :class:`SyncdError`
    with the decoder's code for a reply this node cannot read, :class:`TransportError`
    for an error status whose body is not an ``ErrorReply``."""
    if status == 200:
        try:
            return codec.decode(ep.reply_kind, body, version)
        except DecodeError as e:
            raise SyncdError(e.code, f"parent's {ep.reply_kind}: {e.reason}", details=e.details) from None
    try:
        reply = codec.decode("error", body, version)
    except DecodeError as e:
        raise TransportError(status, f"HTTP {status} whose body is not an ErrorReply ({e.reason})") from None
    assert isinstance(reply, ErrorReply)
    raise reply.to_error()


class LinkMethods:
    """The five typed request methods of :class:`ParentLink`, over one ``_exchange``."""

    async def _exchange(self, msg: Message) -> Message:
        raise NotImplementedError

    async def _typed(self, msg: Message, cls: type[_R]) -> _R:
        reply = await self._exchange(msg)
        if not isinstance(reply, cls):  # read_reply decodes by endpoint, so this is a bug
            raise TypeError(f"expected {cls.__name__}, got {type(reply).__name__}")
        return reply

    async def hello(self, msg: Hello) -> HelloReply:
        return await self._typed(msg, HelloReply)

    async def push(self, msg: Push) -> PushReply:
        return await self._typed(msg, PushReply)

    async def pull(self, msg: PullRequest) -> PullReply:
        return await self._typed(msg, PullReply)

    async def snapshot(self, msg: SnapshotRequest) -> SnapshotChunk:
        return await self._typed(msg, SnapshotChunk)

    async def verify(self, msg: VerifyRequest) -> VerifyReply:
        return await self._typed(msg, VerifyReply)
