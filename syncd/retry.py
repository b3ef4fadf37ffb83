"""The one place that decides what is retried (CouchDB ``couch_replicator_httpc`` style).

Theory of operation
-------------------
:func:`classify` maps any exception a link loop can meet to one of three verdicts:

* ``"retry"`` — the same request may succeed later with nobody doing anything:
  connection failures and timeouts (:class:`TransportError` without a status,
  ``OSError``, ``asyncio.TimeoutError``), HTTP 408 and 5xx *whatever the body*
  (nginx's HTML 502/504 — HC-32), a :class:`SyncdError` whose error-table row (or,
  for a code this build does not know, the peer's flag) says retryable, and
  PostgreSQL serialization failures, deadlocks and lost connections.
* ``"rate_limited"`` — HTTP 429: wait at least ``Retry-After``; and a parent's
  ``SNAPSHOT_BUSY`` (its snapshot slots are taken, or it is still loading its own):
  the link is ``pending``, waiting its turn, and asks again within ``turn_cap_s``.
* ``"final"`` — retrying the same request cannot help until an operator acts: other
  3xx/4xx (an HTML 413 from a proxy is final: the batch cap or the proxy must
  change), non-retryable protocol errors, and bugs (any other exception).

"final" does not mean "stop": a link loop never dies (DESIGN §9).  :class:`LoopHealth`
turns verdicts into the states shown in ``/status`` and into delays: retryable errors
back off exponentially with full jitter up to ``cap_s``; a ``failed`` link keeps
probing every ``failed_cap_s/2 … failed_cap_s`` (HC-31) so a fixed config heals it
without a restart.  It logs one event per state change and ``recovered`` once.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal

import asyncpg
import structlog
import tenacity

from syncd.errors import SyncdError

Verdict = Literal["retry", "rate_limited", "final"]
State = Literal["initializing", "running", "pending", "crashing", "failed"]

log = structlog.get_logger("syncd.retry")

#: how bad each link state is, for "the worse of two loops" (``stalled`` is a child link's)
SEVERITY = {"running": 0, "initializing": 1, "pending": 2, "stalled": 3, "crashing": 4, "failed": 5}

#: asyncpg errors that a new attempt (new transaction or connection) can get past.
_PG_RETRY: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError, asyncpg.DeadlockDetectedError, asyncpg.LockNotAvailableError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError, asyncpg.InterfaceError, asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
    # the pool's own bookkeeping when a connection is lost under a release (asyncpg 0.32 races
    # its connection_lost cleanup with Pool.release): a new connection gets past it
    asyncpg.InternalClientError,
)


def classify_status(status: int | None) -> Verdict:
    """Verdict for an HTTP status alone (the body may be anything, HC-32): ``None``
    (no answer), 408 and 5xx retry; 429 is rate-limited; other 3xx/4xx are final;
    a 2xx that was not a syncd reply retries (a captive portal or a proxy glitch)."""
    if status is None or status == 408 or status >= 500:
        return "retry"
    if status == 429:
        return "rate_limited"
    if 300 <= status < 500:
        return "final"
    return "retry"


_TURN_CODES = frozenset({"SNAPSHOT_BUSY"})  #: a syncd parent's "wait your turn" answers


def classify(exc: BaseException) -> Verdict:
    """What the loop should do after ``exc`` (see the module docstring).  Total:
    every exception gets a verdict; unknown exceptions are ``"final"`` (bugs)."""
    from syncd.transport.base import TransportError  # transport.base imports this module

    if isinstance(exc, TransportError):
        return classify_status(exc.status)
    if isinstance(exc, SyncdError):
        if exc.code in _TURN_CODES:
            return "rate_limited"
        return "retry" if exc.retryable else "final"
    if isinstance(exc, _PG_RETRY):
        return "retry"
    if isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError)):
        return "retry"
    status = getattr(exc, "status", None)  # aiohttp.ClientResponseError and friends
    if isinstance(status, int) and not isinstance(status, bool):
        return classify_status(status)
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        return "final"
    if isinstance(exc, aiohttp.ClientError):
        return "retry"
    return "final"


def backoff(attempt: int, cap_s: float, base_s: float = 1.0) -> float:
    """Exponential back-off with full jitter: uniform in ``[0, min(cap_s, base_s·2^attempt)]``
    (``attempt`` counts from 0).  Same law as :func:`tenacity_wait`."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 62))
    return random.uniform(0.0, ceiling)


def tenacity_wait(cap_s: float, base_s: float = 1.0) -> tenacity.wait.wait_base:
    """The same back-off as a tenacity wait (for ``tenacity.AsyncRetrying``)."""
    return tenacity.wait_random_exponential(multiplier=base_s, max=cap_s)


def tenacity_retry() -> tenacity.retry_base:
    """A tenacity ``retry=`` predicate that retries everything :func:`classify` does not call final."""
    return tenacity.retry_if_exception(lambda e: classify(e) != "final")


def describe(exc: BaseException) -> dict[str, str | None]:
    """``{code, reason, hint}`` for status pages and logs.  Never PostgreSQL DETAIL text
    or row values (HC-15): for database errors only the class, SQLSTATE and message."""
    if isinstance(exc, SyncdError):
        return {"code": exc.code, "reason": exc.reason, "hint": exc.hint}
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)):
        state = getattr(exc, "sqlstate", None)
        msg = str(getattr(exc, "message", None) or exc).splitlines()[0][:300] if str(exc) else ""
        return {"code": "DATABASE", "reason": f"{type(exc).__name__} {state or ''}: {msg}".strip(),
                "hint": "Check this node's PostgreSQL (running, reachable, not overloaded)."}
    if isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError)):
        return {"code": "UNREACHABLE", "reason": f"{type(exc).__name__}: {exc}"[:300],
                "hint": "Check the network path and that the other side is running."}
    return {"code": "INTERNAL", "reason": f"{type(exc).__name__} (see this node's log)",
            "hint": "An unexpected failure in this daemon; report it with the log excerpt."}


@dataclass(frozen=True)
class HealthEvent:
    """One line of a loop's history: when, the state entered, and the error if any."""

    at: float
    state: State
    code: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "state": self.state, "code": self.code, "reason": self.reason}


@dataclass
class LoopHealth:
    """The health of one loop (a link channel), as shown in ``/status``.

    States: ``initializing`` (never succeeded yet), ``running`` (last exchange
    worked), ``pending`` (rate-limited, waiting its turn), ``crashing`` (retryable
    errors, backing off), ``failed`` (a final error; still probing slowly).
    Call :meth:`ok` after every successful exchange and :meth:`error` after every
    failure, then sleep the delay it returns.  Logs only on state changes.
    """

    name: str = "link"
    cap_s: float = 60.0
    failed_cap_s: float = 300.0
    base_s: float = 1.0
    turn_cap_s: float = 5.0  # the longest wait for a turn at a syncd parent (SNAPSHOT_BUSY)
    state: State = "initializing"
    consecutive_errors: int = 0
    last_error: dict[str, str | float | None] | None = None
    since: float = field(default_factory=time.time)
    history: deque[HealthEvent] = field(default_factory=lambda: deque(maxlen=20))

    def ok(self) -> None:
        """Record a success: state ``running``, error count 0.  Logs ``recovered`` once
        when coming back from ``crashing``/``failed``/``pending``; ``last_error`` is kept
        for the status page."""
        if self.state == "running":
            self.consecutive_errors = 0
            return
        event = "recovered" if self.state in ("crashing", "failed", "pending") else "running"
        log.info(event, link=self.name, previous=self.state, errors=self.consecutive_errors)
        self.consecutive_errors = 0
        self._enter("running")

    def error(self, exc: BaseException) -> float:
        """Record a failure and return the seconds to wait before the next attempt:
        retry → ``crashing`` with jittered back-off up to ``cap_s``; rate-limited →
        ``pending``, at least ``Retry-After``; final → ``failed``, probing every
        ``failed_cap_s/2 … failed_cap_s``."""
        verdict = classify(exc)
        info = describe(exc)
        self.consecutive_errors += 1
        new: State = {"retry": "crashing", "rate_limited": "pending", "final": "failed"}[verdict]  # type: ignore[assignment]
        changed_code = self.last_error is None or self.last_error.get("code") != info["code"]
        self.last_error = {**info, "at": time.time()}
        if new != self.state:
            log.warning("link_state", link=self.name, state=new, previous=self.state, **info)
            self._enter(new, info)
        elif changed_code:
            self.history.append(HealthEvent(time.time(), new, info["code"], info["reason"]))
        return self._delay(verdict, exc)

    def _delay(self, verdict: Verdict, exc: BaseException) -> float:
        if verdict == "final":
            return random.uniform(self.failed_cap_s / 2, self.failed_cap_s)
        delay = backoff(self.consecutive_errors - 1, self.cap_s, self.base_s)
        if verdict == "rate_limited" and getattr(exc, "code", None) in _TURN_CODES:  # waiting its turn: ask again soon
            return min(delay, self.turn_cap_s)
        if verdict == "rate_limited":
            after = getattr(exc, "retry_after_s", None)
            delay = max(delay, after if isinstance(after, (int, float)) else self.base_s)
        return delay

    def _enter(self, state: State, info: dict[str, str | None] | None = None) -> None:
        self.state = state
        self.since = time.time()
        self.history.append(HealthEvent(self.since, state, (info or {}).get("code"),
                                        (info or {}).get("reason")))

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready form for ``/status``."""
        return {"state": self.state, "since": self.since, "consecutive_errors": self.consecutive_errors,
                "last_error": self.last_error, "history": [e.as_dict() for e in self.history]}


async def run_every(interval_s: Callable[[], float], work: Callable[[], Awaitable[Any]], stop: asyncio.Event,
                    health: LoopHealth, at_start: bool = True) -> None:
    """Run ``work`` (now, unless not ``at_start``) and then every ``interval_s()`` seconds until
    ``stop``; never dies: a failure is kept in ``health`` (status) and tried again after its
    back-off, if that is sooner."""
    run_now = at_start
    while not stop.is_set():
        delay = interval_s()
        if run_now:
            try:
                await work()
                health.ok()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop never dies; the error is in status
                delay = min(delay, health.error(e))
        run_now = True
        try:
            await asyncio.wait_for(stop.wait(), max(delay, 0.05))
        except asyncio.TimeoutError:
            pass
