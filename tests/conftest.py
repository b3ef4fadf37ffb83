from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

from typing import Any, AsyncIterator, Callable, Iterator  # noqa: E402

import asyncpg  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from syncd.aio import loop_factory  # noqa: E402
from tests.pg import Cluster  # noqa: E402

# no per-example deadline: on this shared machine an example's time says nothing about the code
# (an example that took 263 ms once and 2 ms when re-run failed a property test); what a test
# checks is what the code does, never how fast (speed is the bench's, bench/)
settings.register_profile("syncd", deadline=None)
settings.load_profile("syncd")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Async tests run on the event loop the daemon runs on (``syncd.aio``: uvloop)."""
    return {"daemon_loop": loop_factory()}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster().start()
    yield c
    c.stop()


@pytest.fixture
async def county(cluster: Cluster) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh database initialised as 芙蓉区 (430102)."""
    dsn = await cluster.new_node_db("430102")
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()
    await cluster.drop(dsn)
