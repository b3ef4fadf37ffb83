"""HTTP-only behaviour of the link and server: signing, replay, size caps, forged replies,
rotation, proxies (SPEC §11; HC-24, HC-32, HC-34)."""
from __future__ import annotations

import asyncio
import gzip
import time
import tracemalloc
from typing import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from syncd import retry
from syncd.errors import SyncdError
from syncd.proto import codec
from syncd.proto.messages import ErrorReply, PullReply, PullRequest
from syncd.proto.signing import H_KEY, H_SIGNATURE, Key, sign_request, sign_response, verify_response
from syncd.transport.base import TransportError
from syncd.transport.http import HttpParentLink, HttpParentServer
from syncd.transport.nonces import MemoryNonceStore, PgNonceStore
from tests.contract.fakes import CHILD, SECRET, FakeParent, change, hello, keyring, push, start_http

K1 = Key("k1", SECRET.encode())
PULL = codec.encode(PullRequest(250, 3, 500, 0))


class Answer:
    """A raw HTTP answer: status, headers, body bytes and the decoded ErrorReply, if any."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.error: ErrorReply | None = None
        if status != 200 and headers.get("Content-Type") == "application/msgpack":
            raw = codec.gunzip_capped(body) if headers.get("Content-Encoding") == "gzip" else body
            decoded = codec.decode("error", raw)
            assert isinstance(decoded, ErrorReply)
            self.error = decoded

    @property
    def code(self) -> str | None:
        return self.error.code if self.error else None


async def post(ts: TestServer, path_qs: str, body: bytes, *, key: Key | None = K1,
               signed_path: str | None = None, now: int | None = None, nonce: str | None = None,
               extra: dict[str, str] | None = None, after_sign: Callable[[bytes], bytes] | None = None,
               ) -> Answer:
    """POST ``body`` as a child would, signed with ``key`` (unsigned if ``None``)."""
    headers = {"Content-Type": "application/msgpack"}
    if key is not None:
        headers.update(sign_request(key, "POST", signed_path or path_qs, body,
                                    now if now is not None else int(time.time()), nonce))
    headers.update(extra or {})
    if after_sign is not None:
        body = after_sign(body)
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(str(ts.make_url("")).rstrip("/") + path_qs, data=body, headers=headers) as r:
            return Answer(r.status, r.headers, await r.read())


@pytest.fixture
async def parent() -> FakeParent:
    return FakeParent()


@pytest.fixture
async def server(parent: FakeParent) -> AsyncIterator[tuple[HttpParentServer, TestServer]]:
    srv, ts = await start_http(parent)
    yield srv, ts
    await ts.close()


def link_to(url: str, ring_keys: tuple[tuple[str, str], ...] = (("k1", SECRET),), **kw: object) -> HttpParentLink:
    return HttpParentLink(url, CHILD, keyring(*ring_keys), timeout=5.0, **kw)  # type: ignore[arg-type]


# -- authentication (R11.1, R11.3) ------------------------------------------------------

async def test_hc24_missing_signature_is_401_named(server: tuple, parent: FakeParent) -> None:
    ans = await post(server[1], "/v1/pull?v=2", PULL, key=None)
    assert ans.status == 401 and ans.code == "MISSING_SIGNATURE"
    assert H_SIGNATURE not in ans.headers  # nothing to sign with
    assert parent.received == []


async def test_hc24_unknown_key_is_401_named(server: tuple, parent: FakeParent) -> None:
    ans = await post(server[1], "/v1/pull?v=2", PULL, key=Key("k9", SECRET.encode()))
    assert ans.status == 401 and ans.code == "UNKNOWN_KEY" and parent.received == []


@pytest.mark.parametrize("case", ["body", "path_rewrite", "version_param", "wrong_secret"])
async def test_hc24_bad_signature_is_401_named(server: tuple, parent: FakeParent, case: str) -> None:
    ts = server[1]
    if case == "body":
        ans = await post(ts, "/v1/pull?v=2", PULL, after_sign=lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    elif case == "path_rewrite":  # HC-32: a proxy's `location /syncd/` rewrite
        ans = await post(ts, "/v1/pull?v=2", PULL, signed_path="/syncd/v1/pull?v=2")
    elif case == "version_param":  # ?v is signed: it cannot be changed on the way
        ans = await post(ts, "/v1/pull?v=1", PULL, signed_path="/v1/pull?v=2")
    else:
        ans = await post(ts, "/v1/pull?v=2", PULL, key=Key("k1", b"another-secret-of-16-bytes"))
    assert ans.status == 401 and ans.code == "BAD_SIGNATURE" and parent.received == []
    # the answer is signed with the named key: a child holding it can trust the 401
    assert ans.headers.get(H_KEY) == "k1" and H_SIGNATURE in ans.headers


async def test_hc24_stale_timestamp_is_401_named(server: tuple, parent: FakeParent) -> None:
    ans = await post(server[1], "/v1/pull?v=2", PULL, now=int(time.time()) - 3600)
    assert ans.status == 401 and ans.code == "STALE_TIMESTAMP" and parent.received == []


async def test_hc24_child_with_wrong_secret_gets_final_bad_signature(server: tuple) -> None:
    link = link_to(str(server[1].make_url("")), (("k1", "a-secret-nobody-configured"),))
    try:
        with pytest.raises(SyncdError) as info:
            await link.hello(hello())
    finally:
        await link.close()
    assert info.value.code == "BAD_SIGNATURE" and retry.classify(info.value) == "final"


async def test_hc24_error_answers_are_signed_over_the_request_nonce(server: tuple) -> None:
    nonce = "ab" * 16
    ans = await post(server[1], "/v1/pull?v=9", PULL, nonce=nonce)
    assert ans.status == 400 and ans.code == "UNSUPPORTED_VERSION"
    verify_response(keyring(("k1", SECRET)), CHILD, nonce, 400, ans.headers, ans.body, int(time.time()))
    with pytest.raises(SyncdError, match="does not match"):
        verify_response(keyring(("k1", SECRET)), CHILD, "cd" * 16, 400, ans.headers, ans.body, int(time.time()))


# -- replay (R11.3) -----------------------------------------------------------------------

async def test_hc24_replayed_nonce_is_refused_also_after_restart(parent: FakeParent) -> None:
    nonces = MemoryNonceStore()
    _, ts = await start_http(parent, nonces=nonces)
    nonce, now = "0f" * 16, int(time.time())
    try:
        first = await post(ts, "/v1/pull?v=2", PULL, nonce=nonce, now=now)
        again = await post(ts, "/v1/pull?v=2", PULL, nonce=nonce, now=now)
    finally:
        await ts.close()
    assert first.status == 200 and again.status == 401 and again.code == "REPLAYED_NONCE"
    assert len(parent.received) == 1
    _, restarted = await start_http(parent, nonces=nonces)  # a new server object, same store
    try:
        after = await post(restarted, "/v1/pull?v=2", PULL, nonce=nonce, now=now)
        fresh = await post(restarted, "/v1/pull?v=2", PULL, now=now)
    finally:
        await restarted.close()
    assert after.status == 401 and after.code == "REPLAYED_NONCE"
    assert fresh.status == 200 and len(parent.received) == 2


async def test_hc24_pg_nonce_store_is_durable_and_prunes(cluster) -> None:  # type: ignore[no-untyped-def]
    import asyncpg

    dsn = await cluster.new_database()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        store, other_replica = PgNonceStore(pool), PgNonceStore(pool)
        results = await asyncio.gather(*(store.seen("1a" * 16, "k1") for _ in range(5)))
        assert sorted(results) == [False, True, True, True, True]  # exactly one caller wins
        assert await other_replica.seen("1a" * 16, "k1") is True
        assert await store.seen("2b" * 16, "k2") is False
        await pool.execute("UPDATE syncd.nonces SET seen_at = now() - interval '1 hour' WHERE nonce = $1",
                           "1a" * 16)
        assert await store.prune(600) == 1
        assert await store.seen("1a" * 16, "k1") is False and await store.seen("2b" * 16, "k2") is True
    finally:
        await pool.close()
        await cluster.drop(dsn)


# -- size caps and bad bodies (R4.7, R11.4, HC-34) ---------------------------------------

async def raw_exchange(ts: TestServer, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes on a socket and read one answer: (status, body)."""
    reader, writer = await asyncio.open_connection(ts.host, ts.port)
    try:
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        length = 0
        while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


def signed_head(path: str, body: bytes, extra: str = "", length: int | None = None) -> bytes:
    h = sign_request(K1, "POST", path, body, int(time.time()))
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/msgpack",
             *(f"{k}: {v}" for k, v in h.items())]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


async def test_hc34_declared_oversize_body_is_413_before_it_is_sent(server: tuple, parent: FakeParent) -> None:
    head = signed_head("/v1/push?v=2", b"", length=codec.MAX_BODY_BYTES + 1)
    status, body = await raw_exchange(server[1], head, b"\x86")  # 1 byte of 16 MiB sent
    assert status == 413 and codec.decode("error", body).code == "BODY_TOO_LARGE"  # type: ignore[union-attr]
    assert parent.received == []


async def test_hc34_chunked_body_over_cap_is_413(parent: FakeParent) -> None:
    _, ts = await start_http(parent, max_body=64 * 1024)
    chunk = b"\x00" * 16 * 1024
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    try:
        status, out = await raw_exchange(ts, signed_head("/v1/push?v=2", b"", "Transfer-Encoding: chunked\r\n"), body)
    finally:
        await ts.close()
    assert status == 413 and codec.decode("error", out).code == "BODY_TOO_LARGE"  # type: ignore[union-attr]
    assert parent.received == []


async def test_hc34_gzip_bomb_is_413_in_bounded_memory_then_serves(server: tuple, parent: FakeParent) -> None:
    bomb = gzip.compress(b"\x00" * (50 * 2**20), compresslevel=9)
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        ans = await post(server[1], "/v1/push?v=2", bomb, extra={"Content-Encoding": "gzip"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ans.status == 413 and ans.code == "BODY_TOO_LARGE"
    assert peak < 40 * 2**20, f"inflated too much: peak {peak} bytes"
    link = link_to(str(server[1].make_url("")))
    try:
        assert (await link.hello(hello())).version == 2
    finally:
        await link.close()
    assert [k for k, _, _ in parent.received] == ["hello"]


@pytest.mark.parametrize("case,status,code", [
    ("not_msgpack", 400, "DECODE_ERROR"),
    ("wrong_message", 400, "DECODE_ERROR"),
    ("corrupt_gzip", 400, "MALFORMED_BODY"),
    ("content_type", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("encoding", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("version", 400, "UNSUPPORTED_VERSION"),
])
async def test_hc34_signed_bad_bodies_get_named_errors(server: tuple, parent: FakeParent, case: str,
                                                       status: int, code: str) -> None:
    path, body, extra = "/v1/push?v=2", codec.encode(push()), {}
    if case == "not_msgpack":
        body = b"\xc1\xc1 this is not msgpack"
    elif case == "wrong_message":
        path, body = "/v1/pull?v=2", codec.encode(push())
    elif case == "corrupt_gzip":
        body, extra = codec.gzip_body(body)[:-9] + b"garbage!!", {"Content-Encoding": "gzip"}
    elif case == "content_type":
        extra = {"Content-Type": "application/json"}
    elif case == "encoding":
        extra = {"Content-Encoding": "br"}
    else:
        path = "/v1/push?v=99"
    ans = await post(server[1], path, body, extra=extra)
    assert (ans.status, ans.code) == (status, code)
    assert parent.received == []
    if case == "wrong_message":
        assert ans.error is not None and ans.error.details.get("path") == "b"  # the first unknown field


# -- forged responses (R11.2, HC-24) -------------------------------------------------------

async def tamper_proxy(upstream: TestServer, mode: str) -> TestServer:
    """A man in the middle that forwards requests and spoils the answers."""
    captured: list[tuple[int, dict[str, str], bytes]] = []

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith(("x-syncd", "content-"))}
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            async with s.post(str(upstream.make_url("")).rstrip("/") + request.raw_path,
                              data=await request.read(), headers=headers) as r:
                status, body = r.status, await r.read()
                out = {k: v for k, v in r.headers.items() if k.lower().startswith(("x-syncd", "content-t"))}
        captured.append((status, out, body))
        if mode == "alter":
            forged = PullReply((change(1, origin="430000", org_code="430000"),), 1, 1, 3, False)
            body = codec.encode(forged) if status == 200 else body  # a valid, different reply
        elif mode == "strip":
            out = {k: v for k, v in out.items() if not k.lower().startswith("x-syncd")}
        elif mode == "replay":
            status, out, body = captured[0]
        elif mode == "resign":
            # the right key id and the request's nonce, but not the link's secret
            out.update(sign_response(Key("k1", b"attacker-secret-16+"), request.headers["X-Syncd-Nonce"],
                                     status, body, int(time.time())))
        return web.Response(status=status, body=body, headers=out)

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server(auto_decompress=False)
    return ts


@pytest.mark.parametrize("mode", ["alter", "strip", "replay", "resign"])
async def test_hc24_forged_or_altered_response_is_refused(server: tuple, parent: FakeParent, mode: str) -> None:
    proxy = await tamper_proxy(server[1], mode)
    link = link_to(str(proxy.make_url("")))
    try:
        if mode == "replay":
            await link.pull(PullRequest(0, 3, 10, 0))  # captured by the proxy
        with pytest.raises(SyncdError) as info:
            await link.pull(PullRequest(0, 3, 10, 0))
    finally:
        await link.close()
        await proxy.close()
    assert info.value.code == "FORGED_RESPONSE" and not isinstance(info.value, TransportError)
    assert retry.classify(info.value) == "retry"


# -- rotation (R11.5) ---------------------------------------------------------------------

async def test_hc24_rotation_two_live_secrets_both_work(parent: FakeParent) -> None:
    rings = {CHILD: keyring(("k1", SECRET), ("k2", "the-new-2027-secret-xx"))}
    _, ts = await start_http(parent, keyrings=rings)
    url = str(ts.make_url(""))
    old, new = link_to(url, (("k1", SECRET),)), link_to(url, (("k2", "the-new-2027-secret-xx"),))
    try:
        assert (await old.hello(hello())).version == 2
        assert (await new.hello(hello())).version == 2
    finally:
        await old.close(), await new.close()
        await ts.close()
    assert [c for _, c, _ in parent.received] == [CHILD, CHILD]


async def test_hc24_rotation_sequence_has_zero_failed_requests(parent: FakeParent) -> None:
    """Parent adds k2, child switches to k2 (keeping k1 to read answers), parent drops k1."""
    old_s, new_s = SECRET, "the-new-2027-secret-xx"
    rings = {CHILD: keyring(("k1", old_s))}
    _, ts = await start_http(parent, keyrings=rings)
    url = str(ts.make_url(""))
    steps = [
        ({CHILD: keyring(("k1", old_s))}, (("k1", old_s),)),
        ({CHILD: keyring(("k1", old_s), ("k2", new_s))}, (("k1", old_s),)),
        ({CHILD: keyring(("k1", old_s), ("k2", new_s))}, (("k2", new_s), ("k1", old_s))),
        ({CHILD: keyring(("k2", new_s))}, (("k2", new_s),)),
    ]
    try:
        for server_rings, child_keys in steps:
            rings.clear()
            rings.update(server_rings)  # a SIGHUP reload: same mapping object, new keys
            link = link_to(url, child_keys)
            try:
                await link.hello(hello())
                await link.push(push())
            finally:
                await link.close()
    finally:
        await ts.close()
    assert len(parent.received) == 8


# -- proxies and timeouts (HC-32) ----------------------------------------------------------

async def nginx_like(status: int, headers: dict[str, str] | None = None) -> TestServer:
    async def page(request: web.Request) -> web.Response:
        return web.Response(status=status, text=f"<html><body><h1>{status}</h1>nginx</body></html>",
                            content_type="text/html", headers=headers or {})
    app = web.Application()
    app.router.add_post("/{tail:.*}", page)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    return ts


@pytest.mark.parametrize("status,verdict", [
    (502, "retry"), (504, "retry"), (503, "retry"), (408, "retry"), (413, "final"), (404, "final"),
    (429, "rate_limited"),
])
async def test_hc32_html_error_pages_are_classified_by_status(status: int, verdict: str) -> None:
    ts = await nginx_like(status, {"Retry-After": "7"} if status == 429 else None)
    link = link_to(str(ts.make_url("")))
    try:
        with pytest.raises(TransportError) as info:
            await link.push(push())
    finally:
        await link.close()
        await ts.close()
    assert info.value.status == status and info.value.code == "HTTP_ERROR"
    assert retry.classify(info.value) == verdict
    assert info.value.retryable == (verdict != "final")
    if status == 429:
        assert info.value.retry_after_s == 7.0
        assert retry.LoopHealth().error(info.value) >= 7.0


async def test_hc32_long_poll_outlives_the_link_timeout(server: tuple, parent: FakeParent) -> None:
    link = link_to(str(server[1].make_url("")))
    link.timeout = 0.3
    try:
        start = time.monotonic()
        reply = await link.pull(PullRequest(5, 3, 10, 1000))
    finally:
        await link.close()
    assert time.monotonic() - start >= 0.9 and reply.last_pos == 5


async def test_a_silent_parent_is_a_timeout_transport_error(parent: FakeParent) -> None:
    class Hanging(FakeParent):
        async def on_hello(self, child, msg):  # type: ignore[no-untyped-def]
            await asyncio.sleep(10)

    _, ts = await start_http(Hanging())
    link = link_to(str(ts.make_url("")))
    link.timeout = 0.3
    try:
        with pytest.raises(TransportError) as info:
            await link.hello(hello())
    finally:
        await link.close()
        await ts.close()
    assert info.value.status is None and "no reply" in info.value.reason
    assert retry.classify(info.value) == "retry"


async def test_base_url_prefix_is_part_of_the_signed_path(parent: FakeParent) -> None:
    """A parent mounted under /syncd (no rewrite) verifies the prefixed path."""
    srv = HttpParentServer(parent, {CHILD: keyring(("k1", SECRET))}, MemoryNonceStore())
    root = web.Application()
    root.add_subapp("/syncd", srv.app)
    ts = TestServer(root, host="127.0.0.1")
    await ts.start_server(auto_decompress=False)
    link = link_to(str(ts.make_url("/syncd")))
    try:
        assert (await link.hello(hello())).version == 2
        assert (await link.push(push())).acked_pos == 2
    finally:
        await link.close()
        await ts.close()


# -- encoding and versions on the wire ----------------------------------------------------

async def test_r11_4_large_replies_are_gzipped_and_signed_as_sent(server: tuple, parent: FakeParent) -> None:
    parent.wake(*push(300).changes)
    nonce = "5e" * 16
    ans = await post(server[1], "/v1/pull?v=2", codec.encode(PullRequest(0, 3, 10_000, 0)), nonce=nonce,
                     extra={"Accept-Encoding": "gzip"})
    assert ans.status == 200 and ans.headers.get("Content-Encoding") == "gzip"
    verify_response(keyring(("k1", SECRET)), CHILD, nonce, 200, ans.headers, ans.body, int(time.time()))
    reply = codec.decode("pull_reply", codec.gunzip_capped(ans.body), 2)
    assert len(reply.changes) == 300  # type: ignore[union-attr]


async def test_version_param_absent_means_version_1(server: tuple, parent: FakeParent) -> None:
    v1 = await post(server[1], "/v1/push", codec.encode(push(), 1))
    assert v1.status == 200 and parent.received[-1][2].summary == ()  # type: ignore[union-attr]
    v2_unnamed = await post(server[1], "/v1/push", codec.encode(push(), 2))
    assert v2_unnamed.status == 400 and v2_unnamed.code == "DECODE_ERROR"  # `sm` is not a v1 field
    v2 = await post(server[1], "/v1/push?v=2", codec.encode(push(), 2))
    assert v2.status == 200 and parent.received[-1][2].summary != ()  # type: ignore[union-attr]
