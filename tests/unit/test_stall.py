"""Stalled links (DESIGN §8): a cursor stuck while its peer has more for it, and only then."""
from __future__ import annotations

from syncd.stall import CursorWatch, apply_stall, stall


def test_a_cursor_that_keeps_moving_is_never_stalled_however_far_behind() -> None:
    w = CursorWatch()
    for i in range(100):  # a long catch-up: 1 s apart, 10 000 behind all along
        w.observe(i * 100, target=20_000, now=1000.0 + i)
    assert stall(w, behind_s=w.behind_for(1100.0), after_s=60, what="pull cursor", waiting="…", now=1100.0) is None


def test_an_idle_cursor_is_not_stalled_the_moment_the_peer_gets_ahead() -> None:
    w = CursorWatch()
    w.observe(50, target=50, now=0.0)  # idle for an hour
    w.observe(50, target=51, now=3600.0)  # one new change
    assert w.behind_for(3601.0) == 1.0
    assert stall(w, w.behind_for(3601.0), 60, "pull cursor", "…", now=3601.0) is None
    found = stall(w, w.behind_for(3675.0), 60, "pull cursor", "the parent's head for this node is 51",
                  {"code": "UNREACHABLE", "reason": "no reply"}, now=3675.0)
    assert found is not None and found.since == 3600.0
    assert found.reason == ("pull cursor 50 unchanged for 3675 s while the parent's head for this node is 51; "
                            "last error: UNREACHABLE: no reply")
    w.observe(51, target=51, now=3676.0)  # it moved: not stalled any more
    assert stall(w, w.behind_for(3700.0), 60, "pull cursor", "…", now=3700.0) is None


def test_a_never_observed_cursor_is_not_stalled() -> None:
    assert stall(CursorWatch(), 1e9, 60, "push cursor", "…") is None


def test_stalled_replaces_running_and_crashing_but_never_failed() -> None:
    w = CursorWatch()
    w.observe(7, now=0.0)
    found = stall(w, behind_s=100.0, after_s=60, what="push cursor", waiting="3 change(s) wait", now=100.0)
    assert found is not None
    for state in ("initializing", "running", "pending", "crashing"):
        out = apply_stall({"state": state, "since": None}, found)
        assert out["state"] == "stalled" and out["reason"].startswith("push cursor 7 unchanged for 100 s")
    assert apply_stall({"state": "failed", "since": None}, found) == {"state": "failed", "since": None,
                                                                       "reason": None}
    assert apply_stall({"state": "running"}, None) == {"state": "running", "reason": None}


def test_a_parent_link_is_not_stalled_by_a_resync_in_progress() -> None:
    from types import SimpleNamespace

    from syncd.stall import parent_link_stall

    pull = CursorWatch()
    pull.observe(10, target=500, now=0.0)  # the last pull reply said the parent is far ahead …
    links = SimpleNamespace(parent="430100", push_watch=CursorWatch(), pull_watch=pull,
                            snapshot_state={"state": "loading"})  # … and then MUST_RESYNC: loading a snapshot
    pull.moved_at = pull.behind_since = -1000.0
    assert parent_link_stall(links, 0, 0.0, 60, None) is None
    links.snapshot_state = {"state": "done"}
    found = parent_link_stall(links, 0, 0.0, 60, None)
    assert found is not None and "430100's head for this node is 500" in found.reason
