"""The event loop a syncd process runs on.

uvloop (libuv under asyncio's API; the usual loop under asyncpg and aiohttp servers) where
it is installed — a dependency wherever it builds — else asyncio's own.  Every round trip a
node makes (a statement, a push, a long poll) costs the loop a wake-up; in the bench's
two-hop latency run uvloop took the idle p50 from 71 to 43 ms with the same code
(``python -m bench --only latency``, issue #9).  The tests run on the same loop
(``tests/conftest.py``).
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop here: uvloop's if importable, else asyncio's."""
    try:
        import uvloop
    except ImportError:  # a platform without a uvloop wheel (Windows): asyncio's loop
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` makes."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
