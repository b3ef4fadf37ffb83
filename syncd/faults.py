"""Named crash points for fault-injection tests (HC-35; CouchDB-style fault injection).

A test starts a daemon with ``SYNCD_FAULT=<name>`` (or ``<name>:N``); when the code
reaches ``fault_point(<name>)`` for the N-th time (default: the first), the process
logs one line to stderr and leaves with ``os._exit(137)`` — no ``finally``, no
transaction rollback sent, no socket closed politely: the same as SIGKILL at that
line.  Without the variable :func:`fault_point` is one comparison.

The environment is read once, at import: set it before the daemon starts.

Named points (where they are, what has happened when the process dies there):

``after_copy``
    ``store.apply.apply_batch``, right after ``merge_rows``: the batch's rows are
    written inside the apply transaction but nothing is committed.
``before_cursor_commit``
    ``store.apply.apply_batch``, right before ``UPDATE syncd.cursors``: rows, conflicts
    and relay queue written, cursor not moved, parked changes not retried yet,
    transaction not committed.
``after_commit_before_response``
    ``node.ParentService.on_push``, after ``apply_batch`` returned: the push is
    committed at the parent but the child never gets the reply (it must resend, and
    the parent must apply it once).
``after_pull_apply``
    ``peer.ChildLinks._pull_once``, after ``apply_batch`` returned: the pulled batch
    and the pull cursor are committed, the in-memory cursor is not updated.
``before_push_cursor_save``
    ``peer.ChildLinks._save_push``, before the push cursor is stored: the parent has
    acknowledged the batch but the child's stored push cursor is behind (and the batch's
    audit row and ``acked_max``, written by the same statement, are not).  The save runs
    while the next batch is read and sent, so that batch may have reached the parent too.

``mid_snapshot_chunk``
    ``peer.ChildLinks.bootstrap``, after a snapshot chunk is merged and before it and
    its progress commit: the restarted daemon resumes the snapshot at that table.
    (``after_copy`` is placed there too: a snapshot chunk's rows are written the same way.)
"""
from __future__ import annotations

import os
import sys

#: Every name a test may put in ``SYNCD_FAULT``.
FAULT_POINTS = ("after_copy", "before_cursor_commit", "after_commit_before_response",
                "after_pull_apply", "before_push_cursor_save", "mid_snapshot_chunk")
EXIT_CODE = 137  # what a shell reports for SIGKILL


def _parse(raw: str) -> tuple[str | None, int]:
    if not raw:
        return None, 0
    name, _, nth = raw.partition(":")
    return name, int(nth) if nth.isdigit() and int(nth) > 0 else 1


_ARMED, _NTH = _parse(os.environ.get("SYNCD_FAULT", "").strip())
_hits = 0


def fault_point(name: str) -> None:
    """Die here (exit 137) if ``SYNCD_FAULT`` names this point and this is the N-th hit."""
    global _hits
    if name != _ARMED:
        return
    _hits += 1
    if _hits < _NTH:
        return
    sys.stderr.write(f"syncd: fault point {name} reached (hit {_hits}): exiting {EXIT_CODE}\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)
