"""Hostile input against a live parent node (HC-34, HC-24, HC-23, DESIGN §7).

A real 长沙市 node (in-process, its own database, HTTP on loopback) with two configured
children: 芙蓉区 430102, a real node that keeps syncing throughout, and 岳麓区 430104,
whose key the attacker holds (so fuzzed bodies are *correctly signed* and reach the
decoder and apply) but whose daemon never runs.  Every hostile request must get a
4xx with a named ``code`` in a msgpack ``ErrorReply``, nothing of it may be applied,
and 芙蓉区's rows keep arriving.
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import random
import time
import tracemalloc
import uuid
import zlib
from typing import Any, AsyncIterator

import aiohttp
import msgpack
import pytest

from syncd.errors import SyncdError
from syncd.node import INSTANCE_GRACE_S, Node, now_us
from syncd.proto import codec
from syncd.proto.change import Change, ColumnChange
from syncd.proto.fields import DecodeError
from syncd.proto.messages import ErrorReply, Hello, PullRequest, Push, tables_from_schema
from syncd.proto.signing import Key, sign_request
from syncd.schema.declarations import SCHEMA
from tests.faults.proxy import TcpProxy
from tests.pg import Cluster
from tests.tree import Tree, eventually, node_config, running, secret

pytestmark = pytest.mark.timeout(180)

TREE = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
    "430104": ("岳麓区", "county", "430100"),
}
CITY, GOOD, EVIL = "430100", "430102", "430104"
EVIL_KEY = Key(f"{EVIL}.k1", secret(EVIL).encode())
FIGURES: dict[str, int] = {}


class Tree3(Tree):
    """The tree without a daemon for 430104 (the attacker holds its key)."""

    async def setup(self) -> "Tree3":
        await self.prepare()
        await self.start_all({"430000", "430100", "430102"})
        return self


@pytest.fixture(scope="module")
async def tree(cluster: Cluster) -> AsyncIterator[Tree3]:
    """One live tree for the whole module (each test checks only what it changed)."""
    async with running(Tree3(cluster, TREE, tuning={"pull_wait_s": 1.0})) as t:
        yield t


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.code: str | None = None
        self.details: Any = None
        if headers.get("Content-Type") == "application/msgpack" and status != 200:
            raw = codec.gunzip_capped(body) if headers.get("Content-Encoding") == "gzip" else body
            err = codec.decode("error", raw)
            assert isinstance(err, ErrorReply)
            self.code, self.details = err.code, err.details


async def post(session: aiohttp.ClientSession, port: int, path_qs: str, body: bytes, *,
               key: Key | None = EVIL_KEY, now: int | None = None, nonce: str | None = None,
               headers: dict[str, str] | None = None) -> Answer:
    h = {"Content-Type": "application/msgpack"}
    if key is not None:
        h.update(sign_request(key, "POST", path_qs, body, now if now is not None else int(time.time()), nonce))
    h.update(headers or {})
    data: Any = io.BytesIO(body) if isinstance(body, bytes) and len(body) > 1 << 20 else body
    async with session.post(f"http://127.0.0.1:{port}{path_qs}", data=data, headers=h) as r:
        return Answer(r.status, r.headers, await r.read())


_POS = itertools.count(1000)  # 430104's push positions only grow: the city's cursor for it is shared


def member(pos: int | None = None, *, org: str = EVIL, name: str = "攻击者", **kw: Any) -> Change:
    pos = next(_POS) if pos is None else pos
    base: dict[str, Any] = dict(table="members", id=uuid.uuid4(), org_code=org, op="I", cl=1, ts=now_us() - 1000,
                                origin=org, txn=pos, homes={"home": org}, cols={"name": ColumnChange(name)},
                                pos=pos)
    base.update(kw)
    return Change(**base)


def push_of(*changes: Change, from_pos: int = 0) -> Push:
    return Push(uuid.uuid4(), 0, from_pos, max([c.pos for c in changes] or [from_pos]), tuple(changes))


def hello_of(node: str = EVIL, versions: tuple[int, ...] = (1, 2), clock: int | None = None) -> Hello:
    return Hello(versions, node, uuid.uuid4(), uuid.uuid4(), 0, now_us() if clock is None else clock, 0, None,
                 tables_from_schema(SCHEMA))


async def applied_from_evil(t: Tree3) -> int:
    """Everything of 430104's that could have reached the city's tables, relay queue or log (a change
    moves from ``pending`` to ``log`` in one sequencer transaction, so the sum is stable)."""
    db = t.db(CITY)
    return int(await db.fetchval(
        "SELECT (SELECT count(*) FROM members WHERE org_code = $1) + (SELECT count(*) FROM syncd.log "
        "WHERE origin = $1 OR received_from = $1) + (SELECT count(*) FROM syncd.pending WHERE origin = $1 "
        "OR received_from = $1) + (SELECT count(*) FROM syncd.rowver WHERE org_code = $1)", EVIL))


# -- fuzz ---------------------------------------------------------------------------------

def _mutate(rng: random.Random, base: bytes) -> bytes:
    kind = rng.randrange(6)
    b = bytearray(base)
    if kind == 0:  # random bytes
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    if kind == 1:  # truncated msgpack
        return bytes(b[: rng.randrange(len(b))])
    if kind == 2:  # flipped bytes
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 3:  # inserted garbage
        i = rng.randrange(len(b))
        return bytes(b[:i] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 20))) + b[i:])
    if kind == 4:  # a field of the wrong type
        obj = msgpack.unpackb(base, raw=False)
        k = rng.choice(list(obj))
        obj[k] = rng.choice([None, -1, 2**63, "x" * 40, [1, 2], {"a": 1}, b"\x00" * 3, 1.5])
        return msgpack.packb(obj)
    # a change with a field removed or an extra field
    obj = msgpack.unpackb(base, raw=False)
    if obj.get("ch"):
        c = obj["ch"][0]
        if rng.random() < 0.5 and c:
            c.pop(rng.choice(list(c)))
        else:
            c["zz"] = 1
    else:
        obj["zz"] = 1
    return msgpack.packb(obj)


def _decodes(kind: str, body: bytes) -> bool:
    try:
        codec.decode(kind, body)
    except DecodeError:
        return False
    return True


async def test_hc34_thousands_of_fuzzed_bodies_get_named_4xx_and_apply_nothing(tree: Tree3) -> None:
    rng = random.Random(34)
    port = tree.nodes[CITY].port
    assert port is not None
    base_push = codec.encode(push_of(member(1), member(2, name="张三")))
    base_pull = codec.encode(PullRequest(0, 0, 100, 0))
    base_hello = codec.encode(hello_of())
    bases = [("push", base_push)] * 6 + [("pull", base_pull), ("hello", base_hello)]
    cases: list[tuple[str, bytes, bool]] = []
    while len(cases) < 2200:
        kind, base = rng.choice(bases)
        body = _mutate(rng, base)
        if _decodes(kind, body):
            continue  # still a well-formed message: not a decoder test (scope/validation tests below)
        cases.append((kind, body, rng.random() < 0.7))  # 70 % correctly signed
    before = await applied_from_evil(tree)
    mid = await tree.db(GOOD).fetchval("INSERT INTO members (org_code, name) VALUES ($1, '芙蓉甲') RETURNING id", GOOD)
    codes: dict[str, int] = {}
    bad: list[tuple[str, int, str | None]] = []
    sem = asyncio.Semaphore(8)

    async def one(session: aiohttp.ClientSession, kind: str, body: bytes, signed: bool) -> None:
        path = "/v1/hello" if kind == "hello" else f"/v1/{kind}?v=3"
        async with sem:
            ans = await post(session, port, path, body, key=EVIL_KEY if signed else None)
        if not (400 <= ans.status < 500 and ans.code):
            bad.append((kind, ans.status, ans.code))
        codes[ans.code or "?"] = codes.get(ans.code or "?", 0) + 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, k, b, s) for k, b, s in cases))
    FIGURES["fuzz_inputs"] = len(cases)
    FIGURES["fuzz_signed"] = sum(1 for _, _, s in cases if s)
    print(f"FIGURES {FIGURES} codes {codes}")
    assert not bad, f"{len(bad)} fuzzed bodies were not a named 4xx, e.g. {bad[:5]}"
    assert codes.get("MISSING_SIGNATURE", 0) == len(cases) - FIGURES["fuzz_signed"]
    assert sum(n for c, n in codes.items() if c != "MISSING_SIGNATURE") == FIGURES["fuzz_signed"]
    assert await applied_from_evil(tree) == before
    # the server still serves its real child: 芙蓉区's row arrives, the province's reaches it
    await eventually(lambda: tree.db(CITY).fetchval("SELECT count(*) FROM members WHERE id = $1", mid))
    act = await tree.db("430000").fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                           "VALUES ('430000', '视察', '模糊测试后', now()) RETURNING id")
    await eventually(lambda: tree.db(GOOD).fetchval("SELECT count(*) FROM activities WHERE id = $1", act))


# -- signed but invalid content (HC-34) -------------------------------------------------------

async def _push(tree: Tree3, p: Push | bytes) -> Answer:
    body = p if isinstance(p, bytes) else codec.encode(p)
    async with aiohttp.ClientSession() as s:
        return await post(s, tree.nodes[CITY].port or 0, "/v1/push?v=3", body)


async def test_hc34_future_ts_is_quarantined_by_name(tree: Tree3) -> None:
    c = member(ts=now_us() + 10 * 365 * 86400 * 1_000_000)
    ans = await _push(tree, push_of(c))
    assert ans.status == 200
    reply = codec.decode("push_reply", ans.body)
    assert [(q.pos, q.code) for q in reply.quarantined] == [(c.pos, "FUTURE_TS")]  # type: ignore[union-attr]
    assert await tree.db(CITY).fetchval("SELECT code FROM syncd.quarantine WHERE row_id = $1", c.id) == "FUTURE_TS"
    assert await tree.db(CITY).fetchval("SELECT count(*) FROM members WHERE id = $1", c.id) == 0
    # HC-23: no clock moved towards the future ts — the city's, nor any timestamp it logs after
    hard = 300 * 1_000_000
    assert await tree.db(CITY).fetchval("SELECT hlc FROM syncd.node") < now_us() + hard
    later = await tree.db(CITY).fetchval("INSERT INTO members (org_code, name) VALUES ('430100', '之后') RETURNING id")
    await eventually(lambda: tree.db(CITY).fetchval("SELECT count(*) = 1 FROM syncd.log WHERE id = $1", later))
    assert await tree.db(CITY).fetchval("SELECT max(ts) FROM syncd.log") < now_us() + hard


async def test_hc15_a_personal_value_refused_outside_its_reach_is_not_kept_in_quarantine(tree: Tree3) -> None:
    c = member(cols={"name": ColumnChange("越界者"), "mobile": ColumnChange("13912345678")})
    ans = await _push(tree, push_of(c))
    assert ans.status == 200
    reply = codec.decode("push_reply", ans.body)
    assert [q.pos for q in reply.quarantined] == [c.pos]  # type: ignore[union-attr]
    kept = await tree.db(CITY).fetchval("SELECT change::text FROM syncd.quarantine WHERE row_id = $1", c.id)
    assert "越界者" in kept and "13912345678" not in kept  # the operator sees the change, not the mobile number


async def test_hc34_negative_cl_is_422_named(tree: Tree3) -> None:
    before = await applied_from_evil(tree)
    obj = codec.unpack(codec.encode(push_of(member())))
    obj["ch"][0]["cl"] = -1
    ans = await _push(tree, codec.pack_object(obj))
    assert (ans.status, ans.code) == (422, "NEGATIVE_CL")
    assert await applied_from_evil(tree) == before


async def test_hc34_ten_megabyte_string_is_named(tree: Tree3) -> None:
    before = await applied_from_evil(tree)
    ans = await _push(tree, push_of(member(name="长" * (10 * 1024 * 1024 // 3))))
    assert (ans.status, ans.code) == (422, "VALUE_TOO_LARGE")
    assert await applied_from_evil(tree) == before


async def test_hc34_unknown_column_is_422_named(tree: Tree3) -> None:
    before = await applied_from_evil(tree)
    # the city judges columns against what the child declared at hello (SPEC R3.4); without a
    # hello since its start it would answer HELLO_REQUIRED.  A second instance's hello within
    # the grace time is refused, but then the first one's declaration stands.
    async with aiohttp.ClientSession() as s:
        hello = await post(s, tree.nodes[CITY].port or 0, "/v1/hello", codec.encode(hello_of()))
    assert (hello.status, hello.code) in ((200, None), (409, "DUPLICATE_INSTANCE")), hello
    c = member(cols={"name": ColumnChange("王五"), "favourite_colour": ColumnChange("红")})
    ans = await _push(tree, push_of(c))
    assert (ans.status, ans.code) == (422, "UNKNOWN_COLUMN")
    assert await applied_from_evil(tree) == before


async def test_hc34_same_change_twice_is_422_duplicate_row(tree: Tree3) -> None:
    before = await applied_from_evil(tree)
    c = member()
    ans = await _push(tree, push_of(c, c.replace(pos=next(_POS))))
    assert (ans.status, ans.code) == (422, "DUPLICATE_ROW")
    assert await applied_from_evil(tree) == before


async def test_hc34_oversize_body_and_gzip_bomb_are_413_with_bounded_memory(tree: Tree3) -> None:
    before = await applied_from_evil(tree)
    port = tree.nodes[CITY].port or 0
    big = b"\x00" * (codec.MAX_BODY_BYTES + 1024)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zero = b"\x00" * (1 << 20)
    bomb = b"".join([comp.compress(zero) for _ in range(512)]) + comp.flush()  # 512 MiB inflated
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        async with aiohttp.ClientSession() as s:
            declared = await post(s, port, "/v1/push?v=3", big)
            tracemalloc.reset_peak()

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the server counts
                for i in range(0, len(big), 1 << 20):
                    yield big[i:i + (1 << 20)]
            streamed = await post(s, port, "/v1/push?v=3", chunks(), key=None)  # type: ignore[arg-type]
            bombed = await post(s, port, "/v1/push?v=3", bomb, headers={"Content-Encoding": "gzip"})
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (declared.status, declared.code) == (413, "BODY_TOO_LARGE")
    assert (streamed.status, streamed.code) == (413, "BODY_TOO_LARGE")
    assert (bombed.status, bombed.code) == (413, "BODY_TOO_LARGE")
    assert peak < 3 * codec.MAX_BODY_BYTES, f"peak {peak} bytes while refusing a 512 MiB bomb"
    assert await applied_from_evil(tree) == before


# -- authentication (HC-24) --------------------------------------------------------------------

async def test_hc24_bad_missing_signature_and_stale_time_are_401(tree: Tree3) -> None:
    before = await applied_from_evil(tree)
    port = tree.nodes[CITY].port or 0
    body = codec.encode(push_of(member()))
    async with aiohttp.ClientSession() as s:
        missing = await post(s, port, "/v1/push?v=3", body, key=None)
        wrong = await post(s, port, "/v1/push?v=3", body, key=Key(EVIL_KEY.key_id, b"not-the-secret-at-all"))
        stale = await post(s, port, "/v1/push?v=3", body, now=int(time.time()) - 3600)
    assert (missing.status, missing.code) == (401, "MISSING_SIGNATURE")
    assert (wrong.status, wrong.code) == (401, "BAD_SIGNATURE")
    assert (stale.status, stale.code) == (401, "STALE_TIMESTAMP")
    assert await applied_from_evil(tree) == before


async def test_hc24_replayed_nonce_refused_also_after_parent_restart(tree: Tree3) -> None:
    port = tree.nodes[CITY].port or 0
    body = codec.encode(PullRequest(0, 0, 10, 0))
    nonce, now = uuid.uuid4().hex, int(time.time())
    async with aiohttp.ClientSession() as s:
        first = await post(s, port, "/v1/pull?v=3", body, nonce=nonce, now=now)
        again = await post(s, port, "/v1/pull?v=3", body, nonce=nonce, now=now)
    # accepted past authentication (a new child may be told MUST_RESYNC, 409, before it has a snapshot)
    assert first.status in (200, 409) and first.code in (None, "MUST_RESYNC")
    assert (again.status, again.code) == (401, "REPLAYED_NONCE")
    # restart the city at the same port: nonces live in PostgreSQL
    cfg = tree.nodes[CITY].cfg
    await tree.stop(CITY)
    cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, listen=f"127.0.0.1:{port}"))
    tree.nodes[CITY] = await Node(cfg, tree.dsns[CITY]).start()
    async with aiohttp.ClientSession() as s:
        replay = await post(s, port, "/v1/pull?v=3", body, nonce=nonce, now=now)
    assert (replay.status, replay.code) == (401, "REPLAYED_NONCE")


async def test_hc24_forged_reply_to_a_childs_pull_is_refused_and_nothing_applied(tree: Tree3) -> None:
    """岳麓区 runs for once, behind a man in the middle that flips the last byte of every reply."""
    city_port = tree.nodes[CITY].port or 0
    proxy = await TcpProxy("127.0.0.1", city_port).start()

    def flip_last(data: bytes) -> bytes:
        head = data.find(b"\r\n\r\n")
        if head != -1 and head + 4 == len(data):
            return data  # headers alone: leave them readable, forge the body
        return data[:-1] + bytes([data[-1] ^ 0x01])
    proxy.tamper = flip_last
    cfg = node_config(EVIL, TREE, proxy.url, pull_wait_s=1.0, retry_cap_s=0.5, failed_probe_s=1.0)
    node = await Node(cfg, tree.dsns[EVIL]).start()
    try:
        act = await tree.db("430000").fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                               "VALUES ('430000', '视察', '伪造之下', now()) RETURNING id")
        await eventually(lambda: tree.db(GOOD).fetchval("SELECT count(*) FROM activities WHERE id = $1", act))

        async def refused() -> bool:
            errs = [h.last_error for h in (node.links.pull_health, node.links.push_health) if h.last_error]
            return any(e.get("code") == "FORGED_RESPONSE" for e in errs)
        await eventually(refused, 15)
        assert await tree.db(EVIL).fetchval("SELECT count(*) FROM activities WHERE id = $1", act) == 0
        assert await tree.db(EVIL).fetchval("SELECT count(*) FROM committees") == 0  # nothing at all applied
        proxy.tamper = None  # the man in the middle leaves: the link recovers by itself
        await eventually(lambda: tree.db(EVIL).fetchval("SELECT count(*) FROM activities WHERE id = $1", act), 20)
    finally:
        await node.stop()
        await proxy.close()


# -- scope, clocks, versions -------------------------------------------------------------------

async def test_hc24_push_outside_subtree_quarantined_forbidden_scope_valid_rows_applied(tree: Tree3) -> None:
    own = member(name="岳麓委员")
    foreign = member(org=GOOD, name="冒名委员")  # 芙蓉区's row, pushed by 岳麓区
    ans = await _push(tree, push_of(own, foreign))
    assert ans.status == 200  # SPEC R6.4: the rest of the batch applies, the reply is 200
    reply = codec.decode("push_reply", ans.body)
    assert [(q.pos, q.code) for q in reply.quarantined] == [(foreign.pos, "FORBIDDEN_SCOPE")]  # type: ignore[union-attr]
    db = tree.db(CITY)
    assert await db.fetchval("SELECT code FROM syncd.quarantine WHERE row_id = $1", foreign.id) == "FORBIDDEN_SCOPE"
    assert await db.fetchval("SELECT count(*) FROM members WHERE id = $1", foreign.id) == 0
    assert await db.fetchval("SELECT name FROM members WHERE id = $1", own.id) == "岳麓委员"
    status = await tree.status(CITY)
    assert status["quarantined"] >= 1



async def test_hc23_skewed_clock_refused_at_hello(tree: Tree3) -> None:
    year = 365 * 86400 * 1_000_000
    async with aiohttp.ClientSession() as s:
        ahead = await post(s, tree.nodes[CITY].port or 0, "/v1/hello", codec.encode(hello_of(clock=now_us() + year)))
        behind = await post(s, tree.nodes[CITY].port or 0, "/v1/hello", codec.encode(hello_of(clock=now_us() - year)))
    assert (ahead.status, ahead.code) == (409, "CLOCK_SKEW")
    assert (behind.status, behind.code) == (409, "CLOCK_SKEW")
    # the refusal names the offset, and the city's status shows it for the child
    assert abs(behind.details["offset_s"] + 365 * 86400) <= 5 and abs(ahead.details["offset_s"] - 365 * 86400) <= 5
    view = next(ln for ln in (await tree.status(CITY))["links"] if ln["peer"] == EVIL)
    assert abs(view["clock_offset_ms"] + 365 * 86400 * 1000) <= 5000 and view["clock_skewed"] is True


async def test_hc23_a_child_between_the_skew_bounds_syncs_with_a_warning(tree: Tree3) -> None:
    # one daemon of 430104 whose clock is 30 s ahead (soft bound 5 s, hard 300 s) says hello as a
    # real child would: a new incarnation gets MUST_RESYNC with the new epoch, which it adopts
    instance, incarnation, epoch = uuid.uuid4(), uuid.uuid4(), 0
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            hello = Hello((1, 2), EVIL, instance, incarnation, epoch, now_us() + 30_000_000, 0, None,
                          tables_from_schema(SCHEMA))
            ans = await post(s, tree.nodes[CITY].port or 0, "/v1/hello", codec.encode(hello))
            if ans.code == "MUST_RESYNC":
                epoch = ans.details["epoch"]
            elif ans.code == "DUPLICATE_INSTANCE":  # another test's hello holds 430104's session a while
                await asyncio.sleep(INSTANCE_GRACE_S + 1.5)
            else:
                break
    assert ans.status == 200, ans.code
    view = next(ln for ln in (await tree.status(CITY))["links"] if ln["peer"] == EVIL)
    assert 25_000 <= view["clock_offset_ms"] <= 35_000 and view["clock_skewed"] is True
    # and it syncs: its change, stamped by its clock 30 s ahead (within the hard bound), applies
    c = member(name="钟快委员", ts=now_us() + 30_000_000)
    pushed = await _push(tree, Push(uuid.uuid4(), epoch, c.pos - 1, c.pos, (c,)))
    assert pushed.status == 200, pushed.code
    assert codec.decode("push_reply", pushed.body).quarantined == ()  # type: ignore[union-attr]
    assert await tree.db(CITY).fetchval("SELECT name FROM members WHERE id = $1", c.id) == "钟快委员"
    # the city's own children are within the bound: no warning
    fine = next(ln for ln in (await tree.status(CITY))["links"] if ln["peer"] == "430102")
    assert fine["clock_skewed"] is False and abs(fine["clock_offset_ms"]) < 5_000
    parent = next(ln for ln in (await tree.status(CITY))["links"] if ln["direction"] == "parent")
    assert parent["clock_skewed"] is False and parent["clock_offset_ms"] is not None


async def test_hc13_unknown_protocol_version_refused_at_hello(tree: Tree3) -> None:
    async with aiohttp.ClientSession() as s:
        ans = await post(s, tree.nodes[CITY].port or 0, "/v1/hello", codec.encode(hello_of(versions=(7, 8))))
        qs = await post(s, tree.nodes[CITY].port or 0, "/v1/pull?v=9", codec.encode(PullRequest(0, 0, 10, 0)))
    assert (ans.status, ans.code) == (400, "UNSUPPORTED_VERSION")
    assert (qs.status, qs.code) == (400, "UNSUPPORTED_VERSION")


def test_syncd_error_codes_used_here_are_in_the_table() -> None:
    for code in ("FUTURE_TS", "NEGATIVE_CL", "UNKNOWN_COLUMN", "VALUE_TOO_LARGE", "DUPLICATE_ROW",
                 "BODY_TOO_LARGE", "MISSING_SIGNATURE", "BAD_SIGNATURE", "STALE_TIMESTAMP", "REPLAYED_NONCE",
                 "FORGED_RESPONSE", "FORBIDDEN_SCOPE", "CLOCK_SKEW", "UNSUPPORTED_VERSION"):
        SyncdError(code, "x")
