"""How nodes reach each other: the narrow link interface and its backends.

* :mod:`syncd.transport.base` — :class:`ParentLink`, :class:`ParentHandler`,
  :class:`TransportError`, the contracts.
* :mod:`syncd.transport.http` — aiohttp server and link, signed (SPEC §11).
* :mod:`syncd.transport.memory` — the in-process twin for tests.
* :mod:`syncd.transport.nonces` — replay protection (memory and PostgreSQL).
"""
from syncd.transport.base import ParentHandler, ParentLink, TransportError

__all__ = ["ParentHandler", "ParentLink", "TransportError"]
