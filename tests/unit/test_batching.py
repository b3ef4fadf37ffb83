"""Where batches end: by count and by estimated size, between origin transactions (syncd.batching)."""
from __future__ import annotations

from syncd.batching import MAX_BATCH_BYTES, cut_batch, utf8_len
from syncd.proto.change import UPWARD_TXN_BASE
from syncd.proto.codec import MAX_CHANGES


def entries(*txns: int, origin: str = "430102") -> list[dict]:
    """Log-record stand-ins: one per transaction number given, in order."""
    return [{"origin": origin, "txn": t, "pos": i + 1} for i, t in enumerate(txns)]


def test_size_cuts_between_transactions_before_the_count_does() -> None:
    log = entries(1, 2, 2, 3, 4)
    sizes = [100, 100, 100, 100, 100]
    assert cut_batch(log, 10, sizes, 250) == log[:1]  # 2 + 2 would pass 250: not inside txn 2
    assert cut_batch(log, 10, sizes, 300) == log[:3]
    assert cut_batch(log, 10, sizes, 10_000) == log
    assert cut_batch(log, 2, sizes, 10_000) == log[:1]  # the count bound as before
    assert cut_batch(log, 4, None) == log[:4]


def test_a_first_transaction_over_the_size_goes_whole_within_the_hard_limits() -> None:
    log = entries(7, 7, 7, 8)
    assert cut_batch(log, 10, [100] * 4, 150) == log[:3]
    # but never beyond the message cap: a transaction of 3 × 5 MiB is cut inside
    big = 5 * 1024 * 1024
    assert cut_batch(log, 10, [big] * 4, 4 * 1024 * 1024) == log[:2]
    assert 2 * big <= MAX_BATCH_BYTES < 3 * big
    # nor beyond the protocol's changes per message
    huge = entries(*[9] * (MAX_CHANGES + 5))
    assert len(cut_batch(huge, 2000, [10] * len(huge), 4 * 1024 * 1024)) == MAX_CHANGES


def test_one_rows_changes_of_an_upward_snapshot_are_never_separated_even_over_the_cap() -> None:
    row = UPWARD_TXN_BASE + 3
    log = entries(row, row, row, row + 1)
    big = 5 * 1024 * 1024
    assert cut_batch(log, 10, [big] * 4, 4 * 1024 * 1024) == log[:3]


def test_a_batch_is_never_empty_and_a_lone_oversize_change_goes_alone() -> None:
    log = entries(1, 2)
    assert cut_batch(log, 10, [20 * 1024 * 1024, 10], 65536) == log[:1]


def test_utf8_len_counts_bytes() -> None:
    assert utf8_len("abc") == 3 and utf8_len("长沙") == 6 and utf8_len(None) == 0 and utf8_len("") == 0
