"""The retry policy (syncd/retry.py): one classifier, back-off and loop health (HC-31, HC-32)."""
from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest
import tenacity
from structlog.testing import capture_logs

from syncd import retry
from syncd.errors import ERRORS, SyncdError
from syncd.transport.base import TransportError


@pytest.mark.parametrize("exc,verdict", [
    (TransportError(None, "connection refused"), "retry"),
    (TransportError(502, "html"), "retry"),
    (TransportError(504, "html"), "retry"),
    (TransportError(500, "html"), "retry"),
    (TransportError(408, "html"), "retry"),
    (TransportError(429, "html"), "rate_limited"),
    (TransportError(413, "html"), "final"),
    (TransportError(401, "html"), "final"),
    (TransportError(301, "redirect"), "final"),
    (ConnectionResetError(), "retry"),
    (OSError("network unreachable"), "retry"),
    (asyncio.TimeoutError(), "retry"),
    (aiohttp.ServerDisconnectedError(), "retry"),
    (asyncpg.SerializationError("could not serialize"), "retry"),
    (asyncpg.DeadlockDetectedError("deadlock"), "retry"),
    (asyncpg.ConnectionDoesNotExistError("gone"), "retry"),
    (asyncpg.CannotConnectNowError("starting up"), "retry"),
    (asyncpg.InterfaceError("connection is closed"), "retry"),
    (asyncpg.InternalClientError("PoolConnectionHolder.release() called on a free connection holder"), "retry"),
    (asyncpg.UniqueViolationError("duplicate key"), "final"),
    (KeyError("bug"), "final"),
    (SyncdError("FUTURE_CODE", "from a newer peer", retryable=True), "retry"),
    (SyncdError("FUTURE_CODE", "from a newer peer", retryable=False), "final"),
], ids=repr)
def test_classify(exc: BaseException, verdict: str) -> None:
    assert retry.classify(exc) == verdict


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_classify_follows_the_error_table(code: str) -> None:
    expected = "rate_limited" if code == "SNAPSHOT_BUSY" else "retry" if ERRORS[code].retryable else "final"
    assert retry.classify(SyncdError(code, "x")) == expected


def test_a_parents_snapshot_busy_is_a_short_wait_for_a_turn_not_a_crash() -> None:
    health = retry.LoopHealth("430102<-430100 pull", turn_cap_s=5.0)
    delays = [health.error(SyncdError("SNAPSHOT_BUSY", "still loading")) for _ in range(12)]
    assert health.state == "pending" and max(delays) <= 5.0
    health.ok()
    assert health.state == "running"


def test_hc32_status_alone_decides_for_non_msgpack_bodies() -> None:
    assert [retry.classify_status(s) for s in (502, 504, 413, 429, None)] == [
        "retry", "retry", "final", "rate_limited", "retry"]


def test_backoff_is_full_jitter_capped() -> None:
    for attempt in range(0, 40):
        for _ in range(20):
            d = retry.backoff(attempt, cap_s=30.0, base_s=0.5)
            assert 0.0 <= d <= min(30.0, 0.5 * 2**attempt)
    assert max(retry.backoff(20, 30.0) for _ in range(200)) > 15.0  # really reaches toward the cap


async def test_tenacity_helpers_retry_only_what_classify_allows() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransportError(502, "html")
        return "ok"

    async for attempt in tenacity.AsyncRetrying(retry=retry.tenacity_retry(), wait=retry.tenacity_wait(0.01, 0.001),
                                                 stop=tenacity.stop_after_attempt(5)):
        with attempt:
            result = await flaky()
    assert result == "ok" and len(calls) == 3
    with pytest.raises(SyncdError):
        async for attempt in tenacity.AsyncRetrying(retry=retry.tenacity_retry(), reraise=True,
                                                     stop=tenacity.stop_after_attempt(5)):
            with attempt:
                calls.append(1)
                raise SyncdError("BAD_SIGNATURE", "wrong secret")
    assert len(calls) == 4  # final: tried once


def test_loop_health_states_and_delays() -> None:
    h = retry.LoopHealth("430102→430100", cap_s=8.0, failed_cap_s=300.0)
    assert h.state == "initializing"
    h.ok()
    assert h.state == "running" and h.consecutive_errors == 0
    delays = [h.error(TransportError(None, "refused")) for _ in range(6)]
    assert h.state == "crashing" and h.consecutive_errors == 6
    assert all(0 <= d <= 8.0 for d in delays)
    assert h.last_error is not None and h.last_error["code"] == "UNREACHABLE" and h.last_error["hint"]
    d = h.error(SyncdError("BAD_SIGNATURE", "wrong secret"))
    assert h.state == "failed" and 150.0 <= d <= 300.0  # HC-31: keeps probing slowly
    assert h.error(TransportError(429, "slow down", retry_after_s=42)) >= 42 and h.state == "pending"
    h.ok()
    assert h.state == "running" and h.consecutive_errors == 0
    assert h.last_error is not None and h.last_error["code"] == "HTTP_ERROR"  # kept for status


def test_loop_health_logs_state_changes_only_and_recovered_once() -> None:
    h = retry.LoopHealth("l")
    with capture_logs() as logs:
        h.ok()
        h.ok()
        for _ in range(10):
            h.error(OSError("down"))
        h.ok()
        h.ok()
    events = [e["event"] for e in logs]
    assert events == ["running", "link_state", "recovered"]
    assert [e.state for e in h.history] == ["running", "crashing", "running"]


def test_loop_health_history_is_bounded_and_json_ready() -> None:
    h = retry.LoopHealth("l")
    for i in range(30):
        h.error(OSError("down"))
        h.ok()
    assert len(h.history) == 20
    d = h.as_dict()
    assert d["state"] == "running" and len(d["history"]) == 20 and set(d["last_error"]) >= {"code", "reason", "hint"}


def test_describe_never_carries_postgres_detail() -> None:
    err = asyncpg.UniqueViolationError("duplicate key value violates unique constraint \"members_pkey\"")
    err.detail = "Key (id_card)=(430102199001011234) already exists."  # type: ignore[attr-defined]
    info = retry.describe(err)
    assert info["code"] == "DATABASE" and "430102199001011234" not in str(info)
