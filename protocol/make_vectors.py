"""Generate ``protocol/vectors/<family>/<case>.hex`` + ``.json``.

The committed files are the truth: ``tests/unit/test_vectors.py`` reads them, not
this script.  Run ``python protocol/make_vectors.py`` only to add cases; review the
diff of any existing file it changes — a changed byte is a protocol change.

Each ``.json`` holds ``kind``, ``version``, ``valid``, ``description`` and either
``expect`` (the decoded message as JSON, :mod:`syncd.proto.jsonform`) or ``error``
(the error code), plus ``stage`` (``decode``, ``validate``, ``sign`` or ``gzip``)
and what that stage needs.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import sys
import uuid
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncd.proto import codec, signing  # noqa: E402
from syncd.proto.change import Change, ColumnChange, Version  # noqa: E402
from syncd.proto.jsonform import to_json  # noqa: E402
from syncd.proto.messages import (  # noqa: E402
    ErrorReply, Hello, HelloReply, IdRange, PullReply, PullRequest, Push, PushReply, Quarantined,
    RangeSum, SnapshotChunk, SnapshotRequest, SnapshotRow, TableDecl, VerifyReply, VerifyRequest,
)

OUT = ROOT / "protocol" / "vectors"
NOW_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SECRET = "furong-changsha-2026-secret"

U = {n: uuid.UUID(f"00000000-0000-4000-8000-{n:012x}") for n in range(1, 10)}
ROW = uuid.UUID("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b")
ROW2 = uuid.UUID("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2c")
TABLES = {"attendance": TableDecl(1, ("activity_id", "member_id", "status")),
          "members": TableDecl(1, ("name", "status"))}


def change(**kw: Any) -> Change:
    base: dict[str, Any] = dict(
        table="members", id=ROW, org_code="430102", op="U", cl=1, ts=NOW_US - 5_000_000,
        origin="430102", txn=41, homes={"home": "430102"},
        cols={"name": ColumnChange("张三", 0, 0, Version(1, 0, 0, NOW_US - 9_000_000, "430102"))}, pos=101,
    )
    base.update(kw)
    return Change(**base)


DELETE = change(id=ROW2, op="D", cl=2, cols={}, pos=102, txn=42)
PUSH = Push(U[1], 3, 100, 102, (change(), DELETE), ({"node": "430102", "lag": 0, "reported_at": 1767225600},))
HELLO = Hello((1, 2), "430102", U[2], U[3], 3, NOW_US, 250, bytes(range(32)), TABLES)


def raw_push(changes: list[dict[str, Any]], version: int = 2, **extra: Any) -> bytes:
    m: dict[str, Any] = {"b": U[1].bytes, "e": 3, "f": 100, "to": 102, "ch": changes}
    if version >= 2:
        m["sm"] = []
    m.update(extra)
    return codec.pack_object(m)


def cmap(c: Change = PUSH.changes[0]) -> dict[str, Any]:
    return codec.change_map(c)


def valid(family: str, case: str, msg: Any, desc: str, version: int = 2) -> dict[str, Any]:
    data = codec.encode(msg, version)
    kind = {Hello: "hello", HelloReply: "hello_reply", Push: "push", PushReply: "push_reply",
            PullRequest: "pull", PullReply: "pull_reply", SnapshotRequest: "snapshot",
            SnapshotChunk: "snapshot_chunk", VerifyRequest: "verify", VerifyReply: "verify_reply",
            ErrorReply: "error"}[type(msg)]
    return dict(family=family, case=case, data=data, kind=kind, version=version, valid=True,
                expect=to_json(msg), description=desc)


def invalid(family: str, case: str, kind: str, data: bytes, error: str, desc: str,
            version: int = 2, **extra: Any) -> dict[str, Any]:
    return dict(family=family, case=case, data=data, kind=kind, version=version, valid=False,
                error=error, description=desc, stage="decode", **extra)


def messages() -> list[dict[str, Any]]:
    hello_bytes = codec.encode(HELLO)
    reply = HelloReply(2, "430100", U[4], 3, NOW_US + 1000, 240, bytes(32), TABLES)
    reply_v1 = HelloReply(1, "430100", U[4], 3, None, 0, None, {})
    chunk = SnapshotChunk("members", 5000, (
        SnapshotRow(ROW, "430102", 1, {"home": "430102"},
                    {"name": ("张三", Version(1, 0, 0, NOW_US - 9_000_000, "430102"))}),
        SnapshotRow(ROW2, "430102", 2, {"home": "430102"}, {}),
    ), ROW2, False)
    edited = Version(1, 0, 0, NOW_US - 5_000_000, "430000")
    chunk_v3 = SnapshotChunk("attendance", 5000, (
        SnapshotRow(ROW, "430102", 1, {"home": "430102"},
                    {"status": ("缺席", edited), "note": ("", Version(1, 0, 0, NOW_US - 9_000_000, "430102"))},
                    {"status": Version(1, 0, 0, NOW_US - 9_000_000, "430102")}),
    ), None, True)
    chunk_v4 = SnapshotChunk("attendance", 5000, (
        *chunk_v3.rows, SnapshotRow(ROW2, "430102", 2, {"home": "430102"}, {})), None, True)

    def v4_chunk_with(**row: str) -> bytes:
        m = codec.unpack(codec.encode(chunk_v4, 4))
        m["r"][0].update(row)
        return codec.pack_object(m)
    return [
        valid("hello", "v2_basic", HELLO, "Child 芙蓉区 (430102) says hello speaking versions 1 and 2."),
        valid("hello", "fresh_node", Hello((2,), "430102", U[2], U[3], 0, NOW_US, 0, None, {}),
              "A node with an empty cursor: pull_hash is nil."),
        invalid("hello", "extra_field", "hello", codec.pack_object({**codec.unpack(hello_bytes), "zz": 1}),
                "DECODE_ERROR", "An unknown key in the hello map."),
        invalid("hello", "missing_field", "hello",
                codec.pack_object({k: v for k, v in codec.unpack(hello_bytes).items() if k != "inc"}),
                "DECODE_ERROR", "The incarnation is missing."),
        invalid("hello", "epoch_as_string", "hello", codec.pack_object({**codec.unpack(hello_bytes), "e": "3"}),
                "DECODE_ERROR", "epoch is a str, not an int."),
        invalid("hello", "uuid_15_bytes", "hello",
                codec.pack_object({**codec.unpack(hello_bytes), "in": bytes(15)}),
                "DECODE_ERROR", "The instance id is 15 bytes, not 16."),
        invalid("hello", "truncated", "hello", hello_bytes[:-7], "DECODE_ERROR", "The body ends mid-map."),
        valid("hello_reply", "v2_basic", reply, "Parent 长沙市 (430100) chooses version 2."),
        valid("hello_reply", "v1_no_clock", reply_v1, "A version-1 reply has no clock (ck).", version=1),
        invalid("hello_reply", "unknown_version", "hello_reply",
                codec.pack_object({**codec.unpack(codec.encode(reply)), "v": 9}),
                "UNSUPPORTED_VERSION", "The parent chose version 9, which this node does not speak."),
        invalid("hello_reply", "v1_with_clock", "hello_reply",
                codec.pack_object({**codec.unpack(codec.encode(reply_v1)), "ck": NOW_US}),
                "DECODE_ERROR", "A version-1 reply may not carry ck."),
        valid("push", "v2_update_and_delete", PUSH, "An update of one member name and a tombstone, "
              "with the child's status summary."),
        valid("push", "v1_no_summary", Push(U[1], 3, 100, 102, PUSH.changes, ()),
              "The same batch in version 1: no sm key.", version=1),
        valid("push", "empty", Push(U[5], 0, 0, 0, (), ()), "An empty batch (a heartbeat with no summary)."),
        valid("push", "v3_insert_and_update", Push(U[1], 3, 99, 101, (
            change(op="I", pos=100, txn=40, ts=NOW_US - 9_000_000,
                   cols={"name": ColumnChange("张三"), "status": ColumnChange("在任")}), change()), ()),
              "Version 3: an insert's columns are bare values in c; the update of name, which replaced a "
              "version, is in x as [value, round, stage, prev].", version=3),
        invalid("push", "v1_with_summary", "push", codec.encode(PUSH, 2), "DECODE_ERROR",
                "A version-2 push (with sm) read at version 1.", version=1),
        invalid("push", "unknown_protocol_version", "push", codec.encode(PUSH, 2), "UNSUPPORTED_VERSION",
                "Decoding at version 5, which this build does not speak.", version=5),
        invalid("push", "truncated", "push", codec.encode(PUSH, 2)[:60], "DECODE_ERROR", "Cut after 60 bytes."),
        invalid("push", "trailing_bytes", "push", codec.encode(PUSH, 2) + b"\xc0", "DECODE_ERROR",
                "A nil after the message."),
        invalid("push", "not_a_map", "push", codec.pack_object([1, 2, 3]), "DECODE_ERROR",
                "The body is an array."),
        invalid("push", "negative_cl", "push", raw_push([{**cmap(), "cl": -1}]), "NEGATIVE_CL",
                "A change with cl = -1."),
        invalid("push", "negative_prev_cl", "push",
                raw_push([{**cmap(), "c": {"name": {"v": "x", "r": 0, "s": 0, "p": [-3, 0, 0, 1, "430102"]}}}]),
                "NEGATIVE_CL", "A column's prev version with cl = -3."),
        invalid("push", "bad_op", "push", raw_push([{**cmap(), "op": "X"}]), "DECODE_ERROR", "op is X."),
        invalid("push", "version_4_array", "push",
                raw_push([{**cmap(), "c": {"name": {"v": "x", "r": 0, "s": 0, "p": [1, 0, 0, 1]}}}]),
                "DECODE_ERROR", "A prev version with 4 elements."),
        invalid("push", "bad_column_name", "push",
                raw_push([{**cmap(), "c": {"Name; DROP": {"v": "x", "r": 0, "s": 0, "p": None}}}]),
                "UNKNOWN_COLUMN", "A column name that cannot be an identifier."),
        invalid("push", "nan_value", "push",
                raw_push([{**cmap(), "c": {"name": {"v": float("nan"), "r": 0, "s": 0, "p": None}}}]),
                "DECODE_ERROR", "NaN is not a JSON value."),
        invalid("push", "bin_value", "push",
                raw_push([{**cmap(), "c": {"name": {"v": b"\x00\x01", "r": 0, "s": 0, "p": None}}}]),
                "DECODE_ERROR", "bin is not a JSON value."),
        invalid("push", "invalid_utf8", "push", codec.encode(PUSH, 2).replace("张三".encode(), b"\xff\xfe\xfd\xfc\xfb\xfa"),
                "DECODE_ERROR", "A str that is not UTF-8."),
        invalid("push", "declared_10mb_string", "push",
                codec.encode(PUSH, 2).split(b"\xa1v\xa6")[0] + b"\xa1v\xdb" + (10 * 2**20).to_bytes(4, "big") + b"abc",
                "VALUE_TOO_LARGE", "A value declares a 10 MiB str and the body stops after 3 bytes."),
        invalid("push", "declared_huge_array", "push",
                b"\x85" + codec.pack_object({"b": U[1].bytes, "e": 3, "f": 100, "to": 102})[1:]
                + b"\xa2ch\xdd" + (2**32 - 1).to_bytes(4, "big"),
                "BODY_TOO_LARGE", "changes declares 4294967295 items."),
        valid("push_reply", "one_quarantined", PushReply(102, 1, (Quarantined(101, "FORBIDDEN_SCOPE"),)),
              "One change applied, one quarantined for scope."),
        invalid("push_reply", "applied_negative", "push_reply", codec.pack_object({"a": 102, "ap": -1, "q": []}),
                "DECODE_ERROR", "applied is negative."),
        valid("pull", "long_poll", PullRequest(250, 3, 500, 60_000), "Wait up to 60 s for changes after 250."),
        invalid("pull", "limit_zero", "pull", codec.pack_object({"a": 250, "e": 3, "l": 0, "w": 0}),
                "DECODE_ERROR", "limit must be at least 1."),
        invalid("pull", "wait_too_long", "pull", codec.pack_object({"a": 250, "e": 3, "l": 10, "w": 3_600_000}),
                "DECODE_ERROR", "wait_ms over 300000."),
        valid("pull_reply", "two_changes", PullReply(PUSH.changes, 102, 180, 3, True),
              "Two changes; more remain up to head 180."),
        valid("snapshot", "start", SnapshotRequest("members", None, 1000, None), "Start a snapshot of members."),
        valid("snapshot", "resume", SnapshotRequest("members", ROW2, 1000, 5000), "Resume at p0 = 5000."),
        valid("snapshot_chunk", "row_and_tombstone", chunk, "A live row and a tombstone (cl 2)."),
        valid("snapshot_chunk", "v3_cell_with_prev", chunk_v3,
              "Version 3: note, never edited, is a bare value at the row's version v; 湖南省's edit of status "
              "is in x with the version it replaced.", version=3),
        valid("snapshot_chunk", "v4_stored_rows", chunk_v4,
              "Version 4: each row's values and versions as JSON text, as the parent stores them; 湖南省's edit "
              "of status carries the version it replaced; the tombstone has no columns.", version=4),
        invalid("snapshot_chunk", "v4_versions_not_json", "snapshot_chunk",
                v4_chunk_with(v='{"status": [1, 0, 0, 5, "430102", null]'), "DECODE_ERROR",
                "A version-4 row whose versions text is cut short."),
        invalid("snapshot_chunk", "v4_column_without_version", "snapshot_chunk",
                v4_chunk_with(c='{"note": "", "status": "缺席"}', v='{"status": [1, 0, 0, 5, "430102", null]}'),
                "DECODE_ERROR", "A version-4 row with a value for note but no version."),
        invalid("snapshot_chunk", "v4_version_float", "snapshot_chunk",
                v4_chunk_with(c='{"status": "缺席"}', v='{"status": [1.0, 0, 0, 5, "430102", null]}'),
                "DECODE_ERROR", "A version-4 row whose version's cl is a float."),
        invalid("snapshot_chunk", "v3_row_read_at_v2", "snapshot_chunk", codec.encode(chunk_v3, 3), "DECODE_ERROR",
                "A version-3 row (v, c, x) read at version 2."),
        valid("verify", "two_ranges", VerifyRequest("members", None, (IdRange(U[1], U[8]), IdRange(U[8], None))),
              "Ask for sums of two id ranges."),
        valid("verify_reply", "two_ranges", VerifyReply("members", 5000, (
            RangeSum(U[1], U[8], 12, bytes(range(32))), RangeSum(U[8], None, 0, codec.range_checksum([])))),
              "Counts and checksums at position 5000."),
        valid("error", "must_resync", ErrorReply("MUST_RESYNC", "cursor 12 is below the retained log (from 900)",
                                                 None, False, {"epoch": 4}), "MUST_RESYNC carrying epoch 4."),
        valid("error", "snapshot_busy", ErrorReply("SNAPSHOT_BUSY", "12 snapshots in progress",
                                                   "No action needed.", True, {}), "A retryable 503."),
        invalid("error", "lowercase_code", "error",
                codec.pack_object({"c": "oops", "r": "x", "h": None, "rt": False, "d": {}}),
                "DECODE_ERROR", "Codes are upper case."),
    ]


def hostile() -> list[dict[str, Any]]:
    """HC-34: well-formed, correctly signed pushes whose content is invalid."""
    def case(name: str, push: Push, error: str, desc: str) -> dict[str, Any]:
        data = codec.encode(push, 2)
        headers = signing.sign_request(signing.Key("k2026", SECRET.encode()), "POST", "/v1/push", data,
                                       NOW_US // 1_000_000, nonce="0f" * 16)
        return dict(family="hostile", case=name, data=data, kind="push", version=2, valid=False,
                    error=error, description=desc, stage="validate", now_us=NOW_US,
                    max_future_us=300_000_000, headers=headers, secret=SECRET, key_id="k2026",
                    path="/v1/push")
    year = 365 * 86400 * 1_000_000
    return [
        case("future_ts", Push(U[1], 3, 100, 101, (change(ts=NOW_US + year),)), "FUTURE_TS",
             "A change stamped one year ahead (HC-23)."),
        case("unknown_column", Push(U[1], 3, 100, 101, (change(cols={"wechat_id": ColumnChange("wx")}),)),
             "UNKNOWN_COLUMN", "members.wechat_id, not declared here nor at hello (HC-13)."),
        case("local_column", Push(U[1], 3, 100, 101, (change(cols={"updated_at": ColumnChange(1)}),)),
             "UNKNOWN_COLUMN", "updated_at is a local column and never ships (HC-19)."),
        case("unknown_table", Push(U[1], 3, 100, 101, (change(table="secrets"),)), "UNKNOWN_TABLE",
             "A table that is not replicated."),
        case("duplicate_row", Push(U[1], 3, 100, 102, (change(), change(pos=102, txn=42))), "DUPLICATE_ROW",
             "The same (members, id) twice in one batch."),
        case("delete_with_odd_cl", Push(U[1], 3, 100, 101, (change(op="D", cl=3, cols={}),)), "INVALID_CHANGE",
             "A delete must have an even causal length."),
    ]


def signed() -> list[dict[str, Any]]:
    """Request and response signatures (SPEC §11)."""
    body = codec.encode(PullRequest(250, 3, 500, 60_000), 2)
    key = signing.Key("k2026", SECRET.encode())
    now = NOW_US // 1_000_000
    h = signing.sign_request(key, "POST", "/v1/pull?wait=1", body, now, nonce="a1" * 16)
    base = dict(kind="signed_request", version=2, stage="sign", secret=SECRET, key_id="k2026", peer="430102",
                method="POST", path="/v1/pull?wait=1", now=now)
    resp = codec.encode(PullReply((), 250, 250, 3, False), 2)
    rh = signing.sign_response(key, "a1" * 16, 200, resp, now)
    rbase = dict(kind="signed_response", version=2, stage="sign", secret=SECRET, key_id="k2026",
                 peer="430100", request_nonce="a1" * 16, status=200, now=now)
    return [
        dict(family="signing", case="request_ok", data=body, valid=True, headers=h,
             description="A correctly signed pull request.", **base),
        dict(family="signing", case="request_body_altered", data=body[:-1] + b"\x00", valid=False, headers=h,
             error="BAD_SIGNATURE", description="One body byte changed after signing.", **base),
        dict(family="signing", case="request_query_altered", data=body, valid=False, headers=h,
             error="BAD_SIGNATURE", description="Signed for ?wait=1, sent to /v1/pull?wait=2.",
             **{**base, "path": "/v1/pull?wait=2"}),
        dict(family="signing", case="request_stale", data=body, valid=False, headers=h, error="STALE_TIMESTAMP",
             description="Verified 301 s after signing.", **{**base, "now": now + 301}),
        dict(family="signing", case="request_missing_nonce", data=body, valid=False,
             headers={k: v for k, v in h.items() if k != signing.H_NONCE}, error="MISSING_SIGNATURE",
             description="X-Syncd-Nonce stripped by a proxy.", **base),
        dict(family="signing", case="request_unknown_key", data=body, valid=False,
             headers={**h, signing.H_KEY: "k1999"}, error="UNKNOWN_KEY", description="An unconfigured key id.",
             **base),
        dict(family="signing", case="response_ok", data=resp, valid=True, headers=rh,
             description="A correctly signed pull reply.", **rbase),
        dict(family="signing", case="response_forged", data=resp, valid=False,
             headers=signing.sign_response(signing.Key("k2026", b"not-the-real-secret!"), "a1" * 16, 200, resp, now),
             error="FORGED_RESPONSE", description="A reply signed with the wrong secret (HC-24).", **rbase),
        dict(family="signing", case="response_other_nonce", data=resp, valid=False,
             headers=signing.sign_response(key, "b2" * 16, 200, resp, now), error="FORGED_RESPONSE",
             description="A genuine reply to another request, replayed.", **rbase),
    ]


def gzipped() -> list[dict[str, Any]]:
    body = codec.encode(PUSH, 2)
    bomb = codec.gzip_body(b"\x00" * 200_000)
    return [
        dict(family="gzip", case="push_ok", data=codec.gzip_body(body), kind="push", version=2, valid=True,
             stage="gzip", limit=codec.MAX_BODY_BYTES, expect=to_json(PUSH), description="A gzipped push."),
        dict(family="gzip", case="bomb", data=bomb, kind="push", version=2, valid=False, stage="gzip",
             limit=65_536, error="BODY_TOO_LARGE",
             description=f"{len(bomb)} bytes that inflate to 200000, over a 65536-byte cap."),
        dict(family="gzip", case="corrupt", data=codec.gzip_body(body)[:-12], kind="push", version=2, valid=False,
             stage="gzip", limit=codec.MAX_BODY_BYTES, error="MALFORMED_BODY", description="A truncated gzip stream."),
    ]


def write(cases: list[dict[str, Any]]) -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    for c in cases:
        d = OUT / c.pop("family")
        d.mkdir(parents=True, exist_ok=True)
        name = c.pop("case")
        (d / f"{name}.hex").write_text(c.pop("data").hex() + "\n")
        c.setdefault("stage", "decode")
        (d / f"{name}.json").write_text(json.dumps(c, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def main() -> None:
    cases = messages() + hostile() + signed() + gzipped()
    write(cases)
    print(f"wrote {len(cases)} vectors under {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
