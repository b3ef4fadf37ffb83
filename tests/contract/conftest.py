"""Fixtures of the contract suite (defined in :mod:`tests.contract.fakes`)."""
from tests.contract.fakes import rig  # noqa: F401
