"""Fixtures shared by the integration tests."""
from __future__ import annotations

from typing import AsyncIterator

import pytest

from tests.pg import Cluster
from tests.tree import SMALL_TREE, Tree


@pytest.fixture
async def tree(cluster: Cluster) -> AsyncIterator[Tree]:
    """The replication issue's six-node tree, each node a real daemon on its own database."""
    t = Tree(cluster, SMALL_TREE)
    try:
        await t.setup()
        yield t
    finally:
        await t.close()
