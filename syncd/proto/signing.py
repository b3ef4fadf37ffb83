"""HMAC-SHA256 signing of requests and responses (SPEC §11, HC-24).

Theory of operation
-------------------
Each link has a shared secret named by a key id.  The child signs every request::

    METHOD \\n /path?query \\n unix-seconds \\n nonce \\n sha256hex(wire body)

and sends ``X-Syncd-Key``, ``X-Syncd-Time``, ``X-Syncd-Nonce`` (128 random bits,
32 lower-case hex digits) and ``X-Syncd-Signature`` (lower-case hex).  The parent
signs its response with the key that verified the request::

    request nonce \\n status \\n unix-seconds \\n sha256hex(wire body)

so a response cannot be replayed for another request or forged by a proxy.  The
body digest covers the bytes on the wire (after gzip, if any).  No component may
contain a newline, so a request string (5 lines) can never equal a response string
(4 lines).

A :class:`Keyring` holds at most two live keys per peer (rotation: the new key is
added on both sides, senders switch, the old key is removed).  Verification checks
the signature before the time window, so ``STALE_TIMESTAMP`` is only reported for
authentic requests.  Nonce replay is *not* checked here: :func:`verify_request`
returns the nonce and the caller records it durably (PostgreSQL) and refuses
repeats with ``REPLAYED_NONCE``.

Pure functions, constant-time comparison (:func:`hmac.compare_digest`), no I/O.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Mapping

from syncd.errors import SyncdError

H_KEY = "X-Syncd-Key"
H_TIME = "X-Syncd-Time"
H_NONCE = "X-Syncd-Nonce"
H_SIGNATURE = "X-Syncd-Signature"
DEFAULT_WINDOW_S = 300  #: accepted |now - signed time| (SPEC R11.3)
MAX_KEYS_PER_PEER = 2

_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_SIG_RE = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TIME_RE = re.compile(r"^[0-9]{1,12}$")


@dataclass(frozen=True)
class Key:
    key_id: str
    secret: bytes


@dataclass
class Keyring:
    """Live keys per peer node id; the first key of a peer is the one we sign with."""

    by_peer: dict[str, list[Key]] = field(default_factory=dict)

    def add(self, peer: str, key_id: str, secret: bytes | str) -> None:
        """Add a live key; ``ValueError`` for a bad key id, a reused id or a third key."""
        if not _KEY_ID_RE.match(key_id):
            raise ValueError(f"key id {key_id!r} must be 1-64 of [A-Za-z0-9._-]")
        if any(k.key_id == key_id for keys in self.by_peer.values() for k in keys):
            raise ValueError(f"key id {key_id!r} is already in use")
        keys = self.by_peer.setdefault(peer, [])
        if len(keys) >= MAX_KEYS_PER_PEER:
            raise ValueError(f"peer {peer} already has {MAX_KEYS_PER_PEER} live keys")
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw) < 16:
            raise ValueError("a secret has at least 16 bytes")
        keys.append(Key(key_id, raw))

    def signing_key(self, peer: str) -> Key:
        """The key to sign requests to ``peer`` with (its first live key)."""
        keys = self.by_peer.get(peer)
        if not keys:
            raise SyncdError("UNKNOWN_KEY", f"no key configured for peer {peer}")
        return keys[0]

    def lookup(self, key_id: str) -> tuple[str, Key]:
        """``(peer, key)`` for a key id; ``UNKNOWN_KEY`` when it is not live."""
        for peer, keys in self.by_peer.items():
            for k in keys:
                if hmac.compare_digest(k.key_id, key_id):
                    return peer, k
        raise SyncdError("UNKNOWN_KEY", f"key id {key_id[:64]!r} is not configured here")


@dataclass(frozen=True)
class Verified:
    """An authentic request: who sent it, with which key, and the nonce to record."""

    peer: str
    key_id: str
    nonce: str
    time: int


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def new_nonce() -> str:
    """128 random bits as 32 lower-case hex digits."""
    return secrets.token_hex(16)


def request_string(method: str, path_qs: str, time: int, nonce: str, body: bytes) -> bytes:
    """The signed text of a request (SPEC R11.1); ``ValueError`` if a part has a newline."""
    if "\n" in method or "\n" in path_qs or "\r" in path_qs:
        raise ValueError("method and path may not contain line breaks")
    return f"{method.upper()}\n{path_qs}\n{time}\n{nonce}\n{body_digest(body)}".encode()


def response_string(request_nonce: str, status: int, time: int, body: bytes) -> bytes:
    """The signed text of a response (SPEC R11.2)."""
    return f"{request_nonce}\n{status}\n{time}\n{body_digest(body)}".encode()


def _mac(secret: bytes, text: bytes) -> str:
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def sign_request(key: Key, method: str, path_qs: str, body: bytes, now: int,
                 nonce: str | None = None) -> dict[str, str]:
    """Headers to send with a request signed by ``key`` at unix time ``now``."""
    n = nonce if nonce is not None else new_nonce()
    sig = _mac(key.secret, request_string(method, path_qs, now, n, body))
    return {H_KEY: key.key_id, H_TIME: str(now), H_NONCE: n, H_SIGNATURE: sig}


def sign_response(key: Key, request_nonce: str, status: int, body: bytes, now: int) -> dict[str, str]:
    """Headers to send with a response to the request that carried ``request_nonce``."""
    sig = _mac(key.secret, response_string(request_nonce, status, now, body))
    return {H_KEY: key.key_id, H_TIME: str(now), H_SIGNATURE: sig}


def _get(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup ignoring case (plain dicts in tests, CIMultiDict in aiohttp)."""
    v = headers.get(name)
    if v is None:
        low = name.lower()
        v = next((val for k, val in headers.items() if k.lower() == low), None)
    return v


def _check_time(raw: str, now: int, window: int, what: str) -> int:
    t = int(raw)
    if abs(now - t) > window:
        raise SyncdError("STALE_TIMESTAMP", f"{what} time {t} is {t - now:+d} s from this node's clock "
                                            f"(window ±{window} s)")
    return t


def verify_request(keyring: Keyring, method: str, path_qs: str, headers: Mapping[str, str],
                   body: bytes, now: int, window: int = DEFAULT_WINDOW_S) -> Verified:
    """Check a request's signature, then its time.  Raises ``MISSING_SIGNATURE``,
    ``UNKNOWN_KEY``, ``BAD_SIGNATURE`` or ``STALE_TIMESTAMP``; on success returns
    the peer and the nonce, which the caller must record and refuse when seen again."""
    key_id, t, nonce, sig = (_get(headers, h) for h in (H_KEY, H_TIME, H_NONCE, H_SIGNATURE))
    if key_id is None or t is None or nonce is None or sig is None:
        missing = [h for h, v in zip((H_KEY, H_TIME, H_NONCE, H_SIGNATURE), (key_id, t, nonce, sig)) if v is None]
        raise SyncdError("MISSING_SIGNATURE", f"request lacks {', '.join(missing)}")
    peer, key = keyring.lookup(key_id)
    if not _TIME_RE.match(t) or not _NONCE_RE.match(nonce) or not _SIG_RE.match(sig):
        raise SyncdError("BAD_SIGNATURE", "malformed time, nonce or signature header")
    expected = _mac(key.secret, request_string(method, path_qs, int(t), nonce, body))
    if not hmac.compare_digest(expected, sig):
        raise SyncdError("BAD_SIGNATURE", f"signature does not match for key {key.key_id}")
    return Verified(peer, key.key_id, nonce, _check_time(t, now, window, "request"))


def verify_response(keyring: Keyring, peer: str, request_nonce: str, status: int,
                    headers: Mapping[str, str], body: bytes, now: int,
                    window: int = DEFAULT_WINDOW_S) -> None:
    """Check the response to our request carrying ``request_nonce``: it must be signed
    by one of ``peer``'s live keys over this nonce, status and body, within the time
    window.  Any failure is ``FORGED_RESPONSE`` and the caller applies nothing (HC-24)."""
    key_id, t, sig = (_get(headers, h) for h in (H_KEY, H_TIME, H_SIGNATURE))
    if key_id is None or t is None or sig is None:
        raise SyncdError("FORGED_RESPONSE", f"response from {peer} is not signed")
    keys = {k.key_id: k for k in keyring.by_peer.get(peer, [])}
    key = keys.get(key_id)
    if key is None:
        raise SyncdError("FORGED_RESPONSE", f"response signed with key {key_id[:64]!r}, not a key of {peer}")
    if not _TIME_RE.match(t) or not _SIG_RE.match(sig):
        raise SyncdError("FORGED_RESPONSE", "malformed response signature headers")
    expected = _mac(key.secret, response_string(request_nonce, status, int(t), body))
    if not hmac.compare_digest(expected, sig):
        raise SyncdError("FORGED_RESPONSE", f"response signature from {peer} does not match")
    if abs(now - int(t)) > window:
        raise SyncdError("FORGED_RESPONSE", f"response time {t} is outside ±{window} s")
