"""履职积分 at the member's home (issue 3, HC-25)."""
from __future__ import annotations

import json

import asyncpg
import pytest

ME = "430102"


async def _history(conn: asyncpg.Connection) -> str:
    """A hand-built year for one member; returns the member id."""
    mid = await conn.fetchval("INSERT INTO members (org_code, name) VALUES ($1, '王五') RETURNING id", ME)
    plenary = await conn.fetchval(
        "INSERT INTO activities (org_code, kind, title, starts_at, half_days) "
        "VALUES ($1, '全体会议', '全会', '2025-01-10 09:00+08', 4) RETURNING id", ME)
    standing = await conn.fetchval(
        "INSERT INTO activities (org_code, kind, title, starts_at) "
        "VALUES ($1, '常委会议', '常委会', '2025-03-01 09:00+08') RETURNING id", ME)
    visit = await conn.fetchval(
        "INSERT INTO activities (org_code, kind, title, starts_at) "
        "VALUES ($1, '视察', '视察', '2025-06-01 09:00+08') RETURNING id", ME)
    # late-December sign-in: 2024-12-31 23:30 in Shanghai is 2024 there, 15:30 UTC the same day
    late = await conn.fetchval(
        "INSERT INTO activities (org_code, kind, title, starts_at) "
        "VALUES ($1, '调研', '年末调研', '2024-12-31 23:30+08') RETURNING id", ME)
    # new year's early-morning sign-in: 2025-01-01 00:30 Shanghai = 2024-12-31 16:30 UTC
    early = await conn.fetchval(
        "INSERT INTO activities (org_code, kind, title, starts_at) "
        "VALUES ($1, '调研', '元旦调研', '2025-01-01 00:30+08') RETURNING id", ME)
    await conn.executemany(
        "INSERT INTO attendance (org_code, activity_id, member_id, status, spoke) VALUES ($1, $2, $3, $4, $5)",
        [(ME, plenary, mid, "出席", True), (ME, standing, mid, "缺席", False),
         (ME, visit, mid, "出席", False), (ME, late, mid, "出席", False), (ME, early, mid, "出席", False)])
    await conn.execute(
        "INSERT INTO proposals (org_code, term, session, seq, title, proposer_id, status, key_flag, submitted_at) "
        "VALUES ($1, 13, 4, 1, '关于…的建议', $2, '已答复', true, '2025-01-12 10:00+08')", ME, mid)
    await conn.execute(
        "INSERT INTO proposals (org_code, term, session, seq, title, proposer_id, status, submitted_at) "
        "VALUES ($1, 13, 4, 2, '另一建议', $2, '不立案', '2025-02-12 10:00+08')", ME, mid)
    for i in range(15):  # 15 微建议: 1 point each, capped at 10
        await conn.execute(
            "INSERT INTO micro_suggestions (org_code, member_id, title, submitted_at) "
            "VALUES ($1, $2, $3, '2025-05-01 10:00+08')", ME, mid, f"微建议{i}")
    return mid


async def _scores(conn: asyncpg.Connection, mid: str) -> dict[tuple[int, str], float]:
    rows = await conn.fetch("SELECT year, category, points FROM member_scores WHERE member_id = $1", mid)
    return {(r["year"], r["category"]): float(r["points"]) for r in rows}


EXPECTED_2025 = {
    # plenary 4 half-days x 5 = 20; standing absent -5; visit 4; early-January 调研 4
    (2025, "attendance"): 20 - 5 + 4 + 4,
    (2025, "speech"): 10,
    # 1st: submitted 2 + 立案 10 + 重点 10; 2nd (不立案): submitted 2
    (2025, "proposal"): 2 + 10 + 10 + 2,
    (2025, "micro"): 10,
}


@pytest.mark.parametrize("tz", ["UTC", "Asia/Shanghai", "America/New_York"])
async def test_hc25_scores_follow_default_rules_and_shanghai_year(county: asyncpg.Connection, tz: str) -> None:
    await county.execute(f"SET TimeZone = '{tz}'")
    mid = await _history(county)
    scores = await _scores(county, mid)
    assert scores == {**EXPECTED_2025, (2024, "attendance"): 4}


async def test_hc25_mid_year_rule_change_and_summary_row(county: asyncpg.Connection) -> None:
    mid = await _history(county)
    # from 2025-06-01 an ordinary activity is worth 6 (rule version 2)
    await county.execute(
        "INSERT INTO score_rules (org_code, rule_version, event, points, valid_from) "
        "VALUES ($1, 2, 'activity', 6, '2025-06-01')", ME)
    scores = await _scores(county, mid)
    assert scores[(2025, "attendance")] == 20 - 5 + 6 + 4
    assert await county.fetchval("SELECT syncd.refresh_scores()") == 2
    row = await county.fetchrow(
        "SELECT total, by_category, rule_version, inputs_digest FROM member_score_summaries "
        "WHERE member_id = $1 AND year = 2025", mid)
    assert float(row["total"]) == sum(EXPECTED_2025.values()) + 2
    assert row["rule_version"] == 2 and len(row["inputs_digest"]) == 32
    assert await county.fetchval("SELECT syncd.refresh_scores()") == 0  # unchanged inputs: no churn


async def test_hc25_copy_of_a_summary_is_read_only(county: asyncpg.Connection) -> None:
    await county.execute("SET syncd.applying = 'on'")
    mid = await county.fetchval("INSERT INTO members (org_code, name) VALUES ('430100', '市委员') RETURNING id")
    await county.execute(
        "INSERT INTO member_score_summaries (org_code, member_id, year, total, by_category, rule_version, "
        "inputs_digest) VALUES ('430100', $1, 2025, 42, '{}', 1, 'x')", mid)
    await county.execute("RESET syncd.applying")
    with pytest.raises(asyncpg.PostgresError, match="READ_ONLY_COPY"):
        await county.execute("UPDATE member_score_summaries SET total = 99 WHERE member_id = $1", mid)
    # members of other committees are not scored here
    assert await county.fetchval("SELECT count(*) FROM member_scores WHERE member_id = $1", mid) == 0


async def test_domain_speech_at_the_plenary_only_absence_per_half_day_and_duty_sessions(
        county: asyncpg.Connection) -> None:
    """DOMAIN §4.2: 大会发言 10 / written 5 at the plenary, an unexcused plenary absence −10 per
    half-day, 委员值班 2 a session (migration 0014; 0003 scored speeches anywhere, an absence
    once, and duty as an ordinary activity)."""
    mid = await county.fetchval("INSERT INTO members (org_code, name) VALUES ($1, '赵六') RETURNING id", ME)
    plenary = await county.fetchval("INSERT INTO activities (org_code, kind, title, starts_at, half_days) "
                                    "VALUES ($1, '全体会议', '全会', '2025-01-10 09:00+08', 4) RETURNING id", ME)
    consult = await county.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                    "VALUES ($1, '专题协商会', '协商', '2025-03-10 09:00+08') RETURNING id", ME)
    duty = await county.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                 "VALUES ($1, '委员值班', '值班', '2025-04-10 09:00+08') RETURNING id", ME)
    await county.executemany(
        "INSERT INTO attendance (org_code, activity_id, member_id, status, spoke, written_speech) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        [(ME, plenary, mid, "缺席", False, False), (ME, consult, mid, "出席", True, True),
         (ME, duty, mid, "出席", False, False)])
    assert await _scores(county, mid) == {(2025, "attendance"): -10 * 4 + 4 + 2}  # no speech points
    other = await county.fetchval("INSERT INTO members (org_code, name) VALUES ($1, '钱七') RETURNING id", ME)
    await county.execute("INSERT INTO attendance (org_code, activity_id, member_id, status, spoke, written_speech) "
                         "VALUES ($1, $2, $3, '出席', true, true)", ME, plenary, other)
    assert await _scores(county, other) == {(2025, "attendance"): 20, (2025, "speech"): 10 + 5}


async def test_a_summary_with_no_event_left_is_deleted_by_the_refresh(county: asyncpg.Connection) -> None:
    mid = await county.fetchval("INSERT INTO members (org_code, name) VALUES ($1, '孙八') RETURNING id", ME)
    visit = await county.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                  "VALUES ($1, '视察', '视察', '2025-06-01 09:00+08') RETURNING id", ME)
    await county.execute("INSERT INTO attendance (org_code, activity_id, member_id, status) VALUES ($1, $2, $3, '出席')",
                         ME, visit, mid)
    assert await county.fetchval("SELECT syncd.refresh_scores()") == 1
    await county.execute("DELETE FROM attendance WHERE member_id = $1", mid)  # the sign-in was a mistake
    assert await county.fetchval("SELECT syncd.refresh_scores()") == 1
    assert await county.fetchval("SELECT count(*) FROM member_score_summaries WHERE member_id = $1", mid) == 0


async def test_domain_a_category_cap_bounds_a_years_points_after_the_event_caps(county: asyncpg.Connection) -> None:
    """DOMAIN §4.2 "caps per category": a 'cap:<category>' rule bounds the category's year (0015)."""
    mid = await _history(county)
    assert (await _scores(county, mid))[(2025, "micro")] == 10  # 15 微建议, the per-event cap
    await county.execute("INSERT INTO score_rules (org_code, rule_version, event, points, cap, valid_from) "
                         "VALUES ($1, 2, 'cap:micro', 0, 6, '2025-01-01'), "
                         "       ($1, 2, 'cap:proposal', 0, 30, '2025-01-01')", ME)
    scores = await _scores(county, mid)
    assert scores[(2025, "micro")] == 6
    assert scores[(2025, "proposal")] == EXPECTED_2025[(2025, "proposal")]  # 24, under its cap of 30
    assert scores[(2025, "attendance")] == EXPECTED_2025[(2025, "attendance")]  # no cap: as before
    assert await county.fetchval("SELECT syncd.refresh_scores()") >= 1
    by = json.loads(await county.fetchval("SELECT by_category FROM member_score_summaries "
                                          "WHERE member_id = $1 AND year = 2025", mid))
    assert float(by["micro"]) == 6
