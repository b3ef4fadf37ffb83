"""The event loop: the daemon, the bench and the tests run on the same one (``syncd.aio``)."""
from __future__ import annotations

import asyncio
import sys

import pytest

from syncd import aio

uvloop_expected = pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not a dependency on Windows")


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@uvloop_expected
def test_the_daemon_runs_on_uvloop() -> None:
    assert aio.run(_loop_module()).startswith("uvloop")


@uvloop_expected
async def test_async_tests_run_on_the_daemons_loop() -> None:
    assert (await _loop_module()).startswith("uvloop")


def test_run_returns_what_main_returns_and_raises_what_it_raises() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise LookupError("nothing here")

    assert aio.run(answer()) == 42
    with pytest.raises(LookupError, match="nothing here"):
        aio.run(fail())
