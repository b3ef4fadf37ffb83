"""Stalled links: a cursor that has not moved while the peer has more for it (DESIGN §8).

A link can look alive — its requests succeed, or fail and are retried — while nothing
moves: an apply that waits on a lock forever, a batch that fails every time, a peer that
answers but never with the changes it holds.  Each cursor of a link has a
:class:`CursorWatch`, fed by the loop that moves the cursor (and by status reads); a
cursor is *stuck* when it has not moved for ``tuning.stall_after_s`` **and** the peer
has had more for it for that long.  :func:`stall` then gives the reason shown with the
``stalled`` state, e.g. ``pull cursor 1234 unchanged for 75 s while the parent's head
for this node is 2000; last error: UNREACHABLE: …``.

``stalled`` replaces ``initializing``, ``running``, ``pending`` and ``crashing`` (a link
that retries for that long without progress is stalled, whatever the reason), never
``failed``: that one needs an operator anyway and says why.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

OVERRIDES = ("initializing", "running", "pending", "crashing")


@dataclass
class CursorWatch:
    """When a cursor last moved, and since when its peer has had more for it."""

    cursor: int | None = None
    moved_at: float = field(default_factory=time.time)
    behind_since: float | None = None  # only for cursors whose target is observed (pull)
    target: int | None = None

    def observe(self, cursor: int, target: int | None = None, now: float | None = None) -> None:
        """Record the cursor (and, when known, the peer's head for it)."""
        now = time.time() if now is None else now
        if cursor != self.cursor:
            self.cursor, self.moved_at, self.behind_since = cursor, now, None
        if target is not None:
            self.target = target
            if target <= cursor:
                self.behind_since = None
            elif self.behind_since is None:
                self.behind_since = now

    def behind_for(self, now: float) -> float:
        """Seconds the observed target has been ahead of the cursor (0 when it is not)."""
        return now - self.behind_since if self.behind_since is not None else 0.0


@dataclass(frozen=True)
class Stall:
    since: float  # when the cursor last moved (or the peer got ahead, if later)
    reason: str


def stall(watch: CursorWatch, behind_s: float, after_s: float, what: str, waiting: str,
          last_error: Mapping[str, Any] | None = None, now: float | None = None) -> Stall | None:
    """A :class:`Stall` when ``watch``'s cursor is stuck, else None.

    ``behind_s``: how long the peer has had more for this cursor (the age of the oldest
    entry waiting, or :meth:`CursorWatch.behind_for`); ``what`` names the cursor
    (``pull cursor``); ``waiting`` says what grew (``the parent's head for this node is 2000``).
    """
    now = time.time() if now is None else now
    if watch.cursor is None:
        return None
    unchanged = now - watch.moved_at
    if min(unchanged, behind_s) < after_s:
        return None
    err = ""
    if last_error:
        err = f"; last error: {last_error.get('code')}: {last_error.get('reason')}"
    return Stall(max(watch.moved_at, now - behind_s),
                 f"{what} {watch.cursor} unchanged for {unchanged:.0f} s while {waiting}{err}")


def apply_stall(entry: dict[str, Any], found: Stall | None) -> dict[str, Any]:
    """``entry`` (a ``/status`` link) with state ``stalled`` and its reason when ``found``
    applies to its state; ``reason`` is always set (None when not stalled)."""
    if found is None or entry["state"] not in OVERRIDES:
        return {**entry, "reason": entry.get("reason")}
    from syncd.status import iso

    return {**entry, "state": "stalled", "since": iso(found.since), "reason": found.reason}


def parent_link_stall(links: Any, waiting: int, oldest_s: float, after_s: float,
                      last_error: Mapping[str, Any] | None) -> Stall | None:
    """The stall of a child's link to its parent (``links``: :class:`syncd.peer.ChildLinks`):
    its push cursor while its own changes wait, or its pull cursor while the parent's head
    for it (from the last pull reply) is ahead."""
    now = time.time()
    pushed = stall(links.push_watch, oldest_s if waiting else 0.0, after_s, "push cursor",
                   f"{waiting} change(s) here wait for {links.parent}, the oldest for {oldest_s:.0f} s",
                   last_error, now)
    pw = links.pull_watch
    if (links.snapshot_state or {}).get("state") == "loading":  # a resync moves no pull cursor: not a stall
        return pushed
    pulled = stall(pw, pw.behind_for(now), after_s, "pull cursor",
                   f"{links.parent}'s head for this node is {pw.target}", last_error, now)
    return pushed or pulled


def child_link_stall(watch: CursorWatch | None, child: str, waiting: int, head: int | None, oldest_s: float,
                     after_s: float) -> Stall | None:
    """The stall of a parent's link to ``child``: the position the child pulls from has not
    moved while changes for it wait in its outbox here."""
    if watch is None or not waiting:
        return None
    return stall(watch, oldest_s, after_s, f"{child}'s pull cursor",
                 f"its outbox here grew to {head} ({waiting} change(s) waiting, the oldest for {oldest_s:.0f} s)")
