"""The in-process twin of the HTTP link, for tests and single-process demos.

:class:`MemoryParentLink` calls a :class:`ParentHandler` directly but round-trips
every message through the codec (:func:`serve_bytes` / :func:`read_reply`), at the
link's protocol version, so it refuses and drops exactly what the wire would.
There is no signing: the child id is trusted as given.

Fault hooks: :meth:`MemoryParentLink.cut` makes every new call, and every call in
flight when its reply comes back, raise :class:`TransportError` (``status None``) —
the second case is a lost reply after the parent applied the request, the case a
push loop must survive.  :meth:`MemoryParentLink.restore` heals the link.
"""
from __future__ import annotations

import uuid

from syncd.proto import codec
from syncd.proto.messages import PROTOCOL_VERSION, HelloReply, Message
from syncd.transport.base import ENDPOINT_OF, LinkMethods, ParentHandler, TransportError, read_reply, serve_bytes


class MemoryParentLink(LinkMethods):
    """A :class:`ParentLink` to ``handler`` as child ``child_id`` (contracts in base)."""

    def __init__(self, handler: ParentHandler, child_id: str, *, version: int = PROTOCOL_VERSION) -> None:
        self.handler = handler
        self.child_id = child_id
        self.version = version
        self.requests = 0  # exchanges attempted, for tests
        self._cut = False
        self._closed = False

    def cut(self) -> None:
        """Fail every new call and every reply still in flight with :class:`TransportError`."""
        self._cut = True

    def restore(self) -> None:
        """Undo :meth:`cut`."""
        self._cut = False

    def _check(self) -> None:
        if self._closed:
            raise TransportError(None, "link is closed")
        if self._cut:
            raise TransportError(None, "link cut (test fault)")

    async def _exchange(self, msg: Message) -> Message:
        self._check()
        self.requests += 1
        ep = ENDPOINT_OF[type(msg)]
        version = self.version
        status, body = await serve_bytes(self.handler, self.child_id, ep.kind,
                                         codec.encode(msg, version), version, uuid.uuid4().hex)
        self._check()  # a cut while the handler ran: the reply is lost
        reply = read_reply(ep, status, body, version)
        if isinstance(reply, HelloReply):
            self.version = reply.version
        return reply

    async def close(self) -> None:
        self._closed = True
