"""Where a batch ends: at most ``batch_max_changes`` changes and about ``batch_max_bytes``
bytes, cut between origin transactions (DESIGN §5, HC-11, HC-32).

A push, a pull reply and a snapshot chunk are each one message; the receiver refuses a
body over the protocol's cap (``codec.MAX_BODY_BYTES``, 16 MiB) and a proxy in front
may refuse less (nginx ``client_max_body_size``).  A count alone does not bound the
body: 2,000 proposals with 10 kB of text each are 20 MB, which no parent would ever
accept, and the link would retry the same refused batch for ever.  So senders also cut by
size, estimated before encoding from what the log (or the table) stores:

* a log entry: the UTF-8 bytes of its stored ``cols`` and ``homes`` JSON
  (:func:`entry_size_sql`) plus :data:`CHANGE_OVERHEAD_BYTES` for the fixed fields.  The JSON
  holds the same split as the wire (``[plain, other]``, or an earlier entry's one map of
  ``[value, round, stage, prev]``), and spells a key, a string, a null, a boolean or an
  integer in at least as many bytes as msgpack does (quotes and separators against its
  headers), so it is an overestimate of the msgpack map for all but float-heavy rows;
  ``batch_max_bytes`` (at most
  :data:`MAX_BATCH_BYTES`) leaves the rest of the cap as headroom;
* a snapshot row: the UTF-8 bytes of its values and versions JSON (:func:`utf8_len`)
  plus :data:`ROW_OVERHEAD_BYTES`.

Cuts fall between origin transactions (a proposal and its co-signers arrive together).
A first transaction that alone exceeds a bound still goes whole as far as the entries
read for the batch and the hard limits (``codec.MAX_CHANGES`` changes,
:data:`MAX_BATCH_BYTES`) reach; beyond them it is cut inside, which costs only the
atomic visibility of that transaction at the receiver (a foreign-key miss is parked and
retried, HC-11).  The changes of one row in an upward snapshot are never separated.
"""
from __future__ import annotations

from typing import Any, Sequence

from syncd.proto.change import UPWARD_TXN_BASE, Change, StoredChange
from syncd.proto.codec import MAX_CHANGES

#: the largest ``tuning.batch_max_bytes``, and how far an oversize transaction may stretch a
#: batch: three quarters of the 16 MiB message cap, the rest headroom for the estimate
MAX_BATCH_BYTES = 12 * 1024 * 1024
#: the smallest ``tuning.batch_max_bytes`` (a batch must hold an ordinary row or two)
MIN_BATCH_BYTES = 64 * 1024
#: a change's fields besides its columns and homes on the wire (keys, table, 16-byte id,
#: codes, five 64-bit integers), generously
CHANGE_OVERHEAD_BYTES = 256
#: a snapshot row's fields besides its values and versions (keys, id, code, cl, homes)
ROW_OVERHEAD_BYTES = 192


def entry_size_sql(alias: str = "") -> str:
    """A select-list item ``size``: a log entry's estimated wire size less its overhead (of the
    log row ``alias``, if the query names it)."""
    p = f"{alias}." if alias else ""
    return f"octet_length({p}cols::text) + octet_length({p}homes::text) AS size"


def utf8_len(text: str | None) -> int:
    """Bytes of ``text`` in UTF-8, without encoding it when it is ASCII (an O(1) check)."""
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode())


def same_group(a: Any, b: Any) -> bool:
    """Two consecutive log entries (changes or log records) a batch must not separate: one
    origin transaction, or the changes of one row in an upward snapshot (they share a
    transaction number)."""
    (ao, at), (bo, bt) = _txn_of(a), _txn_of(b)
    return (ao, at) == (bo, bt) or _one_row(at, bt)


def _one_row(at: int, bt: int) -> bool:
    return at == bt and at >= UPWARD_TXN_BASE


def _txn_of(e: Any) -> tuple[str, int]:
    return (e.origin, e.txn) if isinstance(e, (Change, StoredChange)) else (e["origin"], e["txn"])


def cut_batch(entries: Sequence[Any], max_changes: int, sizes: Sequence[int] | None = None,
              max_bytes: int = MAX_BATCH_BYTES) -> list[Any]:
    """The first entries of ``entries`` (changes or log records: anything with ``origin`` and
    ``txn``) that make one batch: at most ``max_changes`` and, with ``sizes`` (each entry's
    estimated wire bytes), at most ``max_bytes``, cut only between groups (:func:`same_group`).
    A first group over a bound goes whole up to the hard limits (module text); never empty."""
    n = min(len(entries), max_changes)
    if sizes is not None:
        total = 0
        for i in range(n):
            total += sizes[i]
            if total > max_bytes:
                n = i
                break
    if n >= len(entries):
        return list(entries)
    cut = n
    while cut > 0 and same_group(entries[cut - 1], entries[cut]):
        cut -= 1
    if cut > 0:
        return list(entries[:cut])
    # the first group alone is over a bound: whole, as far as the hard limits allow
    cut, total = 1, sizes[0] if sizes is not None else 0
    while cut < len(entries) and same_group(entries[cut - 1], entries[cut]):
        grow = sizes[cut] if sizes is not None else 0
        a, b = _txn_of(entries[cut - 1])[1], _txn_of(entries[cut])[1]
        if (cut >= MAX_CHANGES or total + grow > MAX_BATCH_BYTES) and not _one_row(a, b):
            break
        total += grow
        cut += 1
    return list(entries[:cut])


def cut_log(records: Sequence[Any], max_changes: int, max_bytes: int) -> list[Any]:
    """:func:`cut_batch` of log records read with :func:`entry_size_sql` (a push's, a pull's)."""
    return cut_batch(records, max_changes, [r["size"] + CHANGE_OVERHEAD_BYTES for r in records], max_bytes)
