"""Every committed vector in protocol/vectors/ holds (SPEC §12).

Valid ``decode`` vectors decode to ``expect`` and re-encode to the same bytes; invalid
ones raise their named code.  ``validate`` vectors decode and are then refused by
``validate_push``; ``sign`` vectors check request/response signatures; ``gzip`` vectors
check the inflation cap.  The files are the truth, not ``make_vectors.py``.
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest

from syncd.errors import SyncdError
from syncd.proto import codec, signing
from syncd.proto.fields import DecodeError
from syncd.proto.jsonform import to_json
from syncd.proto.validate import validate_push
from syncd.schema.declarations import SCHEMA

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocol" / "vectors"
CASES = sorted(VECTORS.glob("*/*.json"))


def _load(path: pathlib.Path) -> tuple[dict[str, Any], bytes]:
    meta = json.loads(path.read_text(encoding="utf-8"))
    data = bytes.fromhex(path.with_suffix(".hex").read_text().strip())
    return meta, data


def _id(p: pathlib.Path) -> str:
    return f"{p.parent.name}/{p.stem}"


def test_there_are_enough_vectors() -> None:
    assert len(CASES) >= 30
    assert sum(1 for p in CASES if not _load(p)[0]["valid"]) >= 15


def _check_decode(meta: dict[str, Any], data: bytes) -> None:
    if meta["valid"]:
        msg = codec.decode(meta["kind"], data, meta["version"])
        assert to_json(msg) == meta["expect"]
        assert codec.encode(msg, meta["version"]) == data
    else:
        with pytest.raises(DecodeError) as info:
            codec.decode(meta["kind"], data, meta["version"])
        assert info.value.code == meta["error"], info.value.reason


def _check_validate(meta: dict[str, Any], data: bytes) -> None:
    ring = signing.Keyring()
    ring.add("430102", meta["key_id"], meta["secret"])
    verified = signing.verify_request(ring, "POST", meta["path"], meta["headers"], data,
                                      meta["now_us"] // 1_000_000)
    assert verified.peer == "430102"  # signed correctly: the hostile content is what fails
    push = codec.decode("push", data, meta["version"])
    with pytest.raises(SyncdError) as info:
        validate_push(push, SCHEMA, meta["now_us"], meta["max_future_us"])
    assert info.value.code == meta["error"]


def _check_sign(meta: dict[str, Any], data: bytes) -> None:
    ring = signing.Keyring()
    ring.add(meta["peer"], meta["key_id"], meta["secret"])
    if meta["kind"] == "signed_request":
        def run() -> None:
            signing.verify_request(ring, meta["method"], meta["path"], meta["headers"], data, meta["now"])
    else:
        def run() -> None:
            signing.verify_response(ring, meta["peer"], meta["request_nonce"], meta["status"],
                                    meta["headers"], data, meta["now"])
    if meta["valid"]:
        run()
    else:
        with pytest.raises(SyncdError) as info:
            run()
        assert info.value.code == meta["error"]


def _check_gzip(meta: dict[str, Any], data: bytes) -> None:
    if meta["valid"]:
        msg = codec.decode(meta["kind"], codec.gunzip_capped(data, meta["limit"]), meta["version"])
        assert to_json(msg) == meta["expect"]
    else:
        with pytest.raises(SyncdError) as info:
            codec.gunzip_capped(data, meta["limit"])
        assert info.value.code == meta["error"]


@pytest.mark.parametrize("path", CASES, ids=_id)
def test_vector(path: pathlib.Path) -> None:
    meta, data = _load(path)
    {"decode": _check_decode, "validate": _check_validate, "sign": _check_sign,
     "gzip": _check_gzip}[meta["stage"]](meta, data)


def test_spec_quotes_match_vector_files() -> None:
    """Every ``vector: family/case`` block quoted in SPEC.md is the file's hex."""
    spec = (ROOT / "protocol" / "SPEC.md").read_text(encoding="utf-8")
    quotes = re.findall(r"<!-- vector: ([\w/]+) -->\n```\n([0-9a-f\n ]+)```", spec)
    assert len(quotes) >= 5
    for name, text in quotes:
        expected = (VECTORS / f"{name}.hex").read_text().strip()
        assert "".join(text.split()) == expected, f"SPEC.md quotes a stale {name}"
