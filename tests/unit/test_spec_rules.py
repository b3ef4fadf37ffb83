"""SPEC.md and the code say the same thing (SPEC §10, §12)."""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

from syncd.errors import ERRORS, SyncdError, must_resync
from syncd.proto.codec import MAX_BODY_BYTES, MAX_CHANGES, MAX_VALUE_BYTES

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = (ROOT / "protocol" / "SPEC.md").read_text(encoding="utf-8")


def test_r10_2_error_table_in_spec_matches_errors_py() -> None:
    block = SPEC.split("<!-- errors-table -->")[1].split("<!-- /errors-table -->")[0]
    rows = [r for r in block.strip().splitlines()[2:]]
    assert len(rows) == len(ERRORS)
    for row, e in zip(rows, ERRORS.values()):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:4] == [str(e.id), f"`{e.code}`", str(e.status) if e.status else "—",
                             "yes" if e.retryable else "no"], row


def test_error_codes_required_by_the_brief_exist_with_their_status() -> None:
    want = {"MALFORMED_BODY": 400, "DECODE_ERROR": 400, "UNSUPPORTED_VERSION": 400, "SCHEMA_INCOMPATIBLE": 409,
            "BAD_SIGNATURE": 401, "MISSING_SIGNATURE": 401, "UNKNOWN_KEY": 401, "STALE_TIMESTAMP": 401,
            "REPLAYED_NONCE": 401, "NOT_A_CHILD": 403, "FORBIDDEN_SCOPE": 403, "BODY_TOO_LARGE": 413,
            "INVALID_CHANGE": 422, "FUTURE_TS": 422, "NEGATIVE_CL": 422, "UNKNOWN_TABLE": 422,
            "UNKNOWN_COLUMN": 422, "VALUE_TOO_LARGE": 422, "DUPLICATE_ROW": 422, "CLOCK_SKEW": 409,
            "MUST_RESYNC": 409, "DUPLICATE_INSTANCE": 409, "SNAPSHOT_BUSY": 503, "UNAVAILABLE": 503,
            "INTERNAL": 500}
    for code, status in want.items():
        assert ERRORS[code].status == status, code
    assert {"FORGED_RESPONSE", "FK_MISSING", "POISON"} <= set(ERRORS)
    assert all(ERRORS[c].retryable for c in ("SNAPSHOT_BUSY", "UNAVAILABLE", "INTERNAL"))
    assert len({e.id for e in ERRORS.values()}) == len(ERRORS)
    for e in ERRORS.values():  # one readable sentence each
        assert e.hint.endswith(".") and len(e.hint) < 160, e.code


def test_r10_1_error_wire_form_round_trips_and_unknown_codes_survive() -> None:
    err = must_resync(5, "cursor below retention")
    assert err.to_wire() == {"code": "MUST_RESYNC", "reason": "cursor below retention",
                             "hint": ERRORS["MUST_RESYNC"].hint, "retryable": False, "details": {"epoch": 5}}
    assert SyncdError.from_wire(err.to_wire()) == err and err.status == 409
    newer = SyncdError.from_wire({"code": "FROM_THE_FUTURE", "reason": "r", "hint": None, "retryable": True})
    assert newer.retryable and newer.status == 500
    with pytest.raises(ValueError):
        SyncdError("NO_SUCH_CODE", "x")
    with pytest.raises(ValueError):
        SyncdError.from_wire({"code": "x", "reason": "r", "retryable": True})


def test_rules_are_numbered_uniquely_and_every_cited_rule_exists() -> None:
    defined = re.findall(r"\*\*(R\d+\.\d+)\*\*", SPEC)
    assert len(defined) == len(set(defined)) >= 40
    cited = set()
    for path in list((ROOT / "syncd" / "proto").glob("*.py")) + [ROOT / "syncd" / "errors.py"]:
        cited |= set(re.findall(r"SPEC (R\d+\.\d+)", path.read_text(encoding="utf-8")))
    assert cited and cited <= set(defined), cited - set(defined)


def test_r4_7_limits_in_spec_match_codec() -> None:
    assert MAX_BODY_BYTES == 16 * 2**20 and "16 MiB" in SPEC
    assert MAX_VALUE_BYTES == 2**20 and "1 MiB per str" in SPEC
    assert MAX_CHANGES == 10_000 and "10 000" in SPEC


def _imports(path: pathlib.Path, allowed: frozenset[str] = frozenset()) -> set[str]:
    """The top-level packages ``path`` imports, but for the modules named in ``allowed``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names if a.name not in allowed}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module not in allowed:
            names.add(node.module.split(".")[0])
    return names


#: asyncpg's uuid type (``syncd.proto.fields.uuid_from_bytes``): a data type written in C, no I/O
DATA_TYPES = frozenset({"asyncpg.pgproto.pgproto"})


def test_proto_and_errors_do_no_io() -> None:
    for path in list((ROOT / "syncd" / "proto").glob("*.py")) + [ROOT / "syncd" / "errors.py"]:
        bad = _imports(path, DATA_TYPES) & {"asyncio", "aiohttp", "asyncpg", "structlog", "socket", "requests"}
        assert not bad, f"{path.name} imports {bad}"


def test_only_codec_imports_msgpack() -> None:
    users = {p.relative_to(ROOT).as_posix() for p in (ROOT / "syncd").rglob("*.py") if "msgpack" in _imports(p)}
    assert users == {"syncd/proto/codec.py"}
