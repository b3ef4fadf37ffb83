"""The protocol over HTTP with aiohttp: the parent's server and the child's link (SPEC §11).

Theory of operation
-------------------
Every request is ``POST <path>?v=<version>`` with an ``application/msgpack`` body,
optionally ``Content-Encoding: gzip``, signed over the bytes as sent (HMAC, SPEC
R11.1).  The server answers with a body signed over the request's nonce, the status
and the bytes as sent (R11.2), gzipped when large and the child accepts gzip.

Server pipeline (:class:`HttpParentServer`), first failure wins:

1. ``Content-Length`` over ``max_body`` → 413 ``BODY_TOO_LARGE`` before reading;
2. content type / encoding not msgpack / gzip|identity → 415;
3. read at most ``max_body`` wire bytes (chunked bodies too) → else 413;
4. signature (401 ``MISSING_SIGNATURE``/``UNKNOWN_KEY``/``BAD_SIGNATURE``/
   ``STALE_TIMESTAMP``), then the nonce store (401 ``REPLAYED_NONCE``; store down →
   503 ``UNAVAILABLE``);
5. the version from ``?v=`` (400 ``UNSUPPORTED_VERSION``);
6. inflate gzip with :func:`codec.gunzip_capped` (413 for a bomb, never holding more
   than ``max_body``; 400 ``MALFORMED_BODY`` when corrupt);
7. :func:`serve_bytes`: decode (400 ``DECODE_ERROR`` with the field path), handler,
   encode; non-``SyncdError`` exceptions → 500 ``INTERNAL`` naming only a request id.

Every answer, errors included, is signed with the key named by ``X-Syncd-Key`` when
that key is live here and the nonce is well-formed (so even a 401 for a stale clock
reaches the child authenticated); otherwise it goes unsigned.

**Version negotiation over HTTP.**  ``/v1/hello`` has one layout in every version
(R3.2) and ignores ``?v``; the handler's ``HelloReply.version`` is the choice, and
the reply is encoded in that version's form.  Every other request names the version
its body is encoded in with the query parameter ``v`` (signed, being part of the
path); the server decodes the body and encodes the reply at that version.  A request
without ``v`` is version 1 (the base layout); a ``v`` this build does not speak is
400 ``UNSUPPORTED_VERSION``.  :class:`HttpParentLink` sends ``v`` = the version of its
last successful hello (or its constructor's ``version`` before one).

**The server must run with ``auto_decompress=False``** (aiohttp inflates request
bodies by default, which would hide the signed bytes and the bomb): use
:meth:`HttpParentServer.runner` or pass ``auto_decompress=False`` to ``AppRunner`` or
to ``TestServer.start_server()`` (``TestServer()`` itself silently drops it).  A
server that inflates anyway answers gzip requests ``MALFORMED_BODY`` and logs why.
"""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Callable, Mapping

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from syncd.errors import SyncdError
from syncd.proto import codec
from syncd.proto.messages import PROTOCOL_VERSION, SUPPORTED_VERSIONS, ErrorReply, HelloReply, Message, PullRequest
from syncd.proto.signing import (
    DEFAULT_WINDOW_S, H_KEY, H_NONCE, Key, Keyring, sign_request, sign_response, verify_request,
    verify_response,
)
from syncd.transport.base import (
    ENDPOINT_OF, ENDPOINTS, Endpoint, LinkMethods, ParentHandler, TransportError, error_body,
    read_reply, serve_bytes,
)
from syncd.transport.nonces import MemoryNonceStore, NonceStore, PgNonceStore

__all__ = ["HttpParentServer", "HttpParentLink", "NonceStore", "MemoryNonceStore", "PgNonceStore",
           "MSGPACK", "GZIP_MIN_BYTES", "VERSION_PARAM"]

log = structlog.get_logger("syncd.transport.http")

MSGPACK = "application/msgpack"
GZIP_MIN_BYTES = 8192  #: bodies at least this large are sent gzipped
VERSION_PARAM = "v"  #: query parameter naming the body's protocol version
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_READ_CHUNK = 64 * 1024
#: 401 codes a child believes without a response signature: they only make it wait.
_AUTH_CODES = frozenset({"MISSING_SIGNATURE", "UNKNOWN_KEY", "BAD_SIGNATURE", "STALE_TIMESTAMP",
                         "REPLAYED_NONCE"})

Clock = Callable[[], float]
#: told the wire bytes of each exchange: (peer, endpoint kind, "sent" or "received", bytes)
OnBytes = Callable[[str, str, str, int], None]


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _encoding(value: str | None) -> str:
    return (value or "identity").strip().lower()


def _too_large(limit: int) -> SyncdError:
    return SyncdError("BODY_TOO_LARGE", f"body exceeds {limit} bytes")


class HttpParentServer:
    """Serves ``POST /v1/hello|push|pull|snapshot|verify`` to ``handler`` (pipeline above).

    ``keyrings`` maps a child id to the :class:`Keyring` holding that child's live
    keys (a single ``Keyring`` holding every child is accepted too); it is read on
    every request, so replacing an entry reloads keys without a restart (SIGHUP).
    The child id given to the handler is the keyring peer that owns the signing key.
    ``self.app`` is a plain :class:`aiohttp.web.Application`: add ``/status`` etc. to it.
    """

    def __init__(self, handler: ParentHandler, keyrings: Mapping[str, Keyring] | Keyring,
                 nonces: NonceStore, *, max_body: int = codec.MAX_BODY_BYTES,
                 window_s: int = DEFAULT_WINDOW_S, versions: tuple[int, ...] = SUPPORTED_VERSIONS,
                 gzip_min_bytes: int = GZIP_MIN_BYTES, clock: Clock = time.time,
                 app: web.Application | None = None, on_bytes: OnBytes | None = None) -> None:
        self.handler = handler
        self.on_bytes = on_bytes  # (child, kind, "received"|"sent", wire bytes) of every authenticated exchange
        self.keyrings = keyrings
        self.nonces = nonces
        self.max_body = max_body
        self.window_s = window_s
        self.versions = versions
        self.gzip_min_bytes = gzip_min_bytes
        self.clock = clock
        self.app = app if app is not None else web.Application()
        for ep in ENDPOINTS.values():
            self.app.router.add_post(ep.path, self._route(ep))

    def runner(self, **kwargs: object) -> web.AppRunner:
        """An ``AppRunner`` for ``self.app`` with request auto-decompression off (required)."""
        return web.AppRunner(self.app, auto_decompress=False, **kwargs)  # type: ignore[arg-type]

    def _route(self, ep: Endpoint) -> Callable[[web.Request], object]:
        async def route(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, ep.kind)
        return route

    def _keyring_for(self, key_id: str | None) -> Keyring:
        rings = [self.keyrings] if isinstance(self.keyrings, Keyring) else list(self.keyrings.values())
        for ring in rings:
            if key_id is not None and any(k.key_id == key_id for ks in ring.by_peer.values() for k in ks):
                return ring
        return Keyring()

    def _response_key(self, request: web.Request) -> tuple[Key, str] | None:
        """The key and nonce to sign the answer with, when the request names a live key."""
        key_id, nonce = request.headers.get(H_KEY), request.headers.get(H_NONCE)
        if key_id is None or nonce is None or not _NONCE_RE.match(nonce):
            return None
        try:
            return self._keyring_for(key_id).lookup(key_id)[1], nonce
        except SyncdError:
            return None

    async def handle(self, request: web.Request, kind: str) -> web.Response:
        """Serve one request of ``kind``; never raises except ``CancelledError``."""
        signer = self._response_key(request)
        rid = signer[1] if signer else uuid.uuid4().hex
        try:
            self._check_media(request)
            wire = await self._read_capped(request)
            self._check_gzip_magic(request, wire)
            child = await self._authenticate(request, wire)
            version = self._version(request, kind)
            body = self._inflate(request, wire)
        except SyncdError as err:
            status, out = err.status, error_body(err)
            child = None
        else:
            status, out = await serve_bytes(self.handler, child, kind, body, version, rid)
        resp = self._respond(request, status, out, signer)
        if self.on_bytes is not None and child is not None:
            self.on_bytes(child, kind, "received", len(wire))
            self.on_bytes(child, kind, "sent", len(resp.body))  # type: ignore[arg-type]
        return resp

    def _check_media(self, request: web.Request) -> None:
        if request.content_length is not None and request.content_length > self.max_body:
            raise _too_large(self.max_body)
        if _media_type(request.headers.get("Content-Type")) != MSGPACK:
            raise SyncdError("UNSUPPORTED_MEDIA_TYPE", f"Content-Type must be {MSGPACK}")
        if _encoding(request.headers.get("Content-Encoding")) not in ("identity", "gzip"):
            raise SyncdError("UNSUPPORTED_MEDIA_TYPE", "Content-Encoding must be gzip or identity")

    async def _read_capped(self, request: web.Request) -> bytes:
        """The wire body, refusing (413) as soon as more than ``max_body`` bytes arrive."""
        buf = bytearray()
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > self.max_body:
                raise _too_large(self.max_body)

    async def _authenticate(self, request: web.Request, wire: bytes) -> str:
        """Verify the signature and record the nonce; returns the child id."""
        key_id = request.headers.get(H_KEY)
        verified = verify_request(self._keyring_for(key_id), request.method, request.raw_path,
                                  request.headers, wire, int(self.clock()), self.window_s)
        try:
            replayed = await self.nonces.seen(verified.nonce, verified.key_id)
        except Exception as exc:  # the nonce store is the database: say "try later"
            log.error("nonce_store_failed", error_type=type(exc).__name__, exc_info=exc)
            raise SyncdError("UNAVAILABLE", "cannot check the request nonce now") from None
        if replayed:
            log.warning("replayed_nonce", child=verified.peer, key_id=verified.key_id)
            raise SyncdError("REPLAYED_NONCE", f"nonce {verified.nonce} was already used")
        return verified.peer

    def _version(self, request: web.Request, kind: str) -> int:
        if kind == "hello":
            return PROTOCOL_VERSION  # Hello has one layout in every version (R3.2)
        raw = request.query.get(VERSION_PARAM)
        if raw is None:
            return 1
        if not raw.isdigit() or int(raw) not in self.versions:
            raise SyncdError("UNSUPPORTED_VERSION",
                             f"protocol version {raw[:8]!r} is not spoken here (speaks {list(self.versions)})")
        return int(raw)

    def _check_gzip_magic(self, request: web.Request, wire: bytes) -> None:
        """A gzip body must start with the gzip magic; if it does not, aiohttp probably
        inflated it already (``auto_decompress=True``), so say so in the log."""
        if _encoding(request.headers.get("Content-Encoding")) == "gzip" and not wire.startswith(b"\x1f\x8b"):
            log.error("gzip_body_without_magic",
                      note="corrupt body, or the server runs with auto_decompress=True (it must not)")
            raise SyncdError("MALFORMED_BODY", "Content-Encoding is gzip but the body is not a gzip stream")

    def _inflate(self, request: web.Request, wire: bytes) -> bytes:
        if _encoding(request.headers.get("Content-Encoding")) != "gzip":
            return wire
        return codec.gunzip_capped(wire, self.max_body)

    def _respond(self, request: web.Request, status: int, body: bytes,
                 signer: tuple[Key, str] | None) -> web.Response:
        headers = {"Content-Type": MSGPACK}
        if len(body) >= self.gzip_min_bytes and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = codec.gzip_body(body)
            headers["Content-Encoding"] = "gzip"
        if signer is not None:
            headers.update(sign_response(signer[0], signer[1], status, body, int(self.clock())))
        return web.Response(status=status, body=body, headers=headers)


class HttpParentLink(LinkMethods):
    """A :class:`ParentLink` over HTTP (contracts in :mod:`syncd.transport.base`).

    ``keyring`` holds the link's keys filed under ``key_peer`` (default: ``child_id``
    — a link's keys are named after its child on both sides); requests are signed
    with the first, responses accepted from any live one (rotation, R11.5).
    ``timeout`` bounds a whole exchange; a pull gets ``timeout + wait_ms``.
    Redirects are not followed (the signed path would change).  Replies are checked
    before anything is decoded: unsigned or wrongly signed → ``FORGED_RESPONSE``,
    except a 401 carrying an authentication code, which is raised as that code
    (it tells the child to wait and fix its key, and applies nothing).
    """

    def __init__(self, base_url: str, child_id: str, keyring: Keyring, *,
                 session: aiohttp.ClientSession | None = None, timeout: float = 30.0,
                 tls_verify: bool = True, version: int = PROTOCOL_VERSION,
                 gzip_min_bytes: int = GZIP_MIN_BYTES, max_body: int = codec.MAX_BODY_BYTES,
                 window_s: int = DEFAULT_WINDOW_S, key_peer: str | None = None,
                 clock: Clock = time.time, on_bytes: OnBytes | None = None) -> None:
        self.on_bytes = on_bytes  # (parent url, kind, "sent"|"received", wire bytes) of every exchange answered
        self.base_url = base_url.rstrip("/")
        self.child_id = child_id
        self.keyring = keyring
        self.key_peer = key_peer or child_id
        self.timeout = timeout
        self.tls_verify = tls_verify
        self.version = version
        self.gzip_min_bytes = gzip_min_bytes
        self.max_body = max_body
        self.window_s = window_s
        self.clock = clock
        self._prefix = URL(self.base_url).path.rstrip("/")
        self._origin = str(URL(self.base_url).origin())
        self._session = session
        self._own_session = session is None
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        return self._session

    async def close(self) -> None:
        """Close the session if this link made it; idempotent."""
        self._closed = True
        if self._own_session and self._session is not None:
            await self._session.close()

    def _request_body(self, msg: Message, version: int) -> tuple[bytes, dict[str, str]]:
        body = codec.encode(msg, version)
        headers = {"Content-Type": MSGPACK, "Accept-Encoding": "gzip"}
        if len(body) >= self.gzip_min_bytes:
            body = codec.gzip_body(body)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    async def _exchange(self, msg: Message) -> Message:
        if self._closed:
            raise TransportError(None, "link is closed")
        ep = ENDPOINT_OF[type(msg)]
        version = self.version
        body, headers = self._request_body(msg, version)
        path_qs = self._prefix + ep.path + ("" if ep.kind == "hello" else f"?{VERSION_PARAM}={version}")
        sig = sign_request(self.keyring.signing_key(self.key_peer), "POST", path_qs, body, int(self.clock()))
        headers.update(sig)
        wait_s = msg.wait_ms / 1000 if isinstance(msg, PullRequest) else 0.0
        url = URL(self._origin + path_qs, encoded=True)
        status, rheaders, raw = await self._post(url, body, headers, self.timeout + wait_s)
        if self.on_bytes is not None:
            self.on_bytes(self.base_url, ep.kind, "sent", len(body))
            self.on_bytes(self.base_url, ep.kind, "received", len(raw))
        reply = self._interpret(ep, sig[H_NONCE], status, rheaders, raw, version)
        if isinstance(reply, HelloReply):
            self.version = reply.version
        return reply

    async def _post(self, url: URL, body: bytes, headers: dict[str, str],
                    total_s: float) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """One HTTP exchange; connection problems and non-msgpack answers → TransportError."""
        try:
            async with self._get_session().post(
                    url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=total_s),
                    allow_redirects=False, auto_decompress=False, ssl=self.tls_verify) as resp:
                if _media_type(resp.headers.get("Content-Type")) != MSGPACK:
                    raise TransportError(resp.status, f"HTTP {resp.status} with a "
                                         f"{_media_type(resp.headers.get('Content-Type')) or 'typeless'} "
                                         "body, not a syncd reply",
                                         retry_after_s=_retry_after(resp.headers.get("Retry-After")))
                return resp.status, resp.headers, await self._read_capped(resp)
        except (asyncio.TimeoutError, TimeoutError):
            raise TransportError(None, f"no reply within {total_s:.1f} s") from None
        except aiohttp.ClientError as exc:
            raise TransportError(None, f"{type(exc).__name__}: {exc}"[:300]) from None
        except OSError as exc:
            raise TransportError(None, f"{type(exc).__name__}: {exc}"[:300]) from None

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            buf += chunk
            if len(buf) > self.max_body:
                raise SyncdError("BODY_TOO_LARGE", f"the parent's reply exceeds {self.max_body} bytes")
        return bytes(buf)

    def _interpret(self, ep: Endpoint, nonce: str, status: int, headers: CIMultiDictProxy[str],
                   raw: bytes, version: int) -> Message:
        try:
            verify_response(self.keyring, self.key_peer, nonce, status, headers, raw,
                            int(self.clock()), self.window_s)
        except SyncdError as forged:
            raise self._unverified(status, headers, raw, version, forged) from None
        return read_reply(ep, status, self._inflate(headers, raw), version)

    def _inflate(self, headers: CIMultiDictProxy[str], raw: bytes) -> bytes:
        if _encoding(headers.get("Content-Encoding")) == "gzip":
            return codec.gunzip_capped(raw, self.max_body)
        return raw

    def _unverified(self, status: int, headers: CIMultiDictProxy[str], raw: bytes, version: int,
                    forged: SyncdError) -> SyncdError:
        """The exception for a reply that is not signed by this link's parent (HC-24)."""
        if status == 401:
            try:
                claimed = codec.decode("error", self._inflate(headers, raw), version)
            except SyncdError:
                claimed = None
            if isinstance(claimed, ErrorReply) and claimed.code in _AUTH_CODES:
                return SyncdError(claimed.code, f"{claimed.reason} (unsigned 401 from the parent)",
                                  claimed.hint)
        log.warning("forged_response", child=self.child_id, status=status, reason=forged.reason)
        return SyncdError("FORGED_RESPONSE", f"{forged.reason} (HTTP {status})")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta-seconds form only)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
