-- 履职积分 (DOMAIN.md §4): computed at the member's home from the events there,
-- with the home's versioned rule table and the Asia/Shanghai year (HC-25). The
-- home fills member_score_summaries; the summaries travel up read-only.

CREATE FUNCTION syncd.shanghai_year(ts timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT extract(year FROM ts AT TIME ZONE 'Asia/Shanghai')::integer $$;
CREATE FUNCTION syncd.shanghai_day(ts timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT (ts AT TIME ZONE 'Asia/Shanghai')::date $$;

-- Proposal statuses that count as 立案 (accepted), in any round.
CREATE FUNCTION syncd.proposal_accepted(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status IN ('立案', '退回', '改办', '重新办理', '交办', '办理中', '已答复', '已评价', '办结')
$$;

-- One row per scoring event: (member, home, day, event, quantity, category).
CREATE VIEW member_score_events AS
SELECT a.member_id, m.org_code, syncd.shanghai_day(coalesce(a.sign_in_at, act.starts_at)) AS day,
       CASE
         WHEN act.kind = '全体会议' THEN CASE a.status WHEN '请假' THEN 'plenary_excused'
              WHEN '缺席' THEN 'plenary_absent' ELSE 'plenary_half_day' END
         WHEN act.kind = '常委会议' THEN CASE a.status WHEN '请假' THEN 'standing_excused'
              WHEN '缺席' THEN 'standing_absent' ELSE 'standing' END
         ELSE CASE WHEN a.status IN ('出席', '迟到早退') THEN 'activity' ELSE 'activity_missed' END
       END AS event,
       CASE WHEN act.kind = '全体会议' AND a.status IN ('出席', '迟到早退') THEN act.half_days ELSE 1 END AS qty,
       'attendance' AS category
  FROM attendance a JOIN activities act ON act.id = a.activity_id JOIN members m ON m.id = a.member_id
UNION ALL
SELECT a.member_id, m.org_code, syncd.shanghai_day(coalesce(a.sign_in_at, act.starts_at)), s.event, 1, 'speech'
  FROM attendance a JOIN activities act ON act.id = a.activity_id JOIN members m ON m.id = a.member_id
  CROSS JOIN LATERAL (VALUES ('speech', a.spoke), ('written_speech', a.written_speech)) s(event, flag)
 WHERE s.flag AND a.status IN ('出席', '迟到早退')
UNION ALL
SELECT p.proposer_id, m.org_code, syncd.shanghai_day(coalesce(p.submitted_at, now())), e.event, 1, 'proposal'
  FROM proposals p JOIN members m ON m.id = p.proposer_id
  CROSS JOIN LATERAL (VALUES
      ('proposal_submitted', p.status NOT IN ('草稿', '征集联名')),
      ('proposal_accepted_lead', syncd.proposal_accepted(p.status)),
      ('proposal_key', p.key_flag AND syncd.proposal_accepted(p.status)),
      ('proposal_excellent', p.excellent AND syncd.proposal_accepted(p.status))) e(event, flag)
 WHERE e.flag
UNION ALL
SELECT c.member_id, m.org_code, syncd.shanghai_day(coalesce(p.submitted_at, now())), 'proposal_accepted_cosigner', 1, 'proposal'
  FROM proposal_cosigners c JOIN proposals p ON p.id = c.proposal_id JOIN members m ON m.id = c.member_id
 WHERE c.confirmed AND syncd.proposal_accepted(p.status)
UNION ALL
SELECT r.author_id, m.org_code, syncd.shanghai_day(r.submitted_at), 'opinion_submitted', 1, 'opinion'
  FROM opinion_reports r JOIN members m ON m.id = r.author_id
UNION ALL
SELECT r.author_id, m.org_code, syncd.shanghai_day(ad.adopted_at), e.event, 1, 'opinion'
  FROM opinion_adoptions ad JOIN opinion_reports r ON r.id = ad.report_id JOIN members m ON m.id = r.author_id
  CROSS JOIN LATERAL (VALUES
      (CASE WHEN ad.level = 'national' THEN 'opinion_adopted_national'
            WHEN ad.org_code = r.org_code THEN 'opinion_adopted_own' ELSE 'opinion_adopted_higher' END),
      ('instruction_' || ad.instruction_level)) e(event)
 WHERE e.event IS NOT NULL
UNION ALL
SELECT s.member_id, m.org_code, syncd.shanghai_day(s.submitted_at), e.event, 1, 'micro'
  FROM micro_suggestions s JOIN members m ON m.id = s.member_id
  CROSS JOIN LATERAL (VALUES ('micro_submitted', true), ('micro_adopted', s.adopted)) e(event, flag)
 WHERE e.flag;

-- Points per member, Shanghai year and category, for members at home only, each
-- event priced by the home's rule in force on its day and capped per year.
CREATE VIEW member_scores AS
WITH priced AS (
    SELECT ev.member_id, extract(year FROM ev.day)::integer AS year, ev.category, ev.event,
           ev.qty * r.points AS points, r.cap, r.rule_version, ev.day
      FROM member_score_events ev
      JOIN LATERAL (SELECT * FROM score_rules r
                     WHERE r.org_code = ev.org_code AND r.event = ev.event AND r.valid_from <= ev.day
                     ORDER BY r.valid_from DESC, r.rule_version DESC LIMIT 1) r ON true
     WHERE ev.org_code = syncd.self_id()
), per_event AS (
    SELECT member_id, year, category, event, sum(points) AS points, min(cap) AS cap,
           max(rule_version) AS rule_version, count(*) AS n, string_agg(day::text, ',' ORDER BY day) AS days
      FROM priced GROUP BY member_id, year, category, event
)
SELECT member_id, year, category,
       sum(CASE WHEN cap IS NULL THEN points ELSE least(points, cap) END) AS points,
       max(rule_version) AS rule_version,
       string_agg(event || ':' || n || ':' || days, ';' ORDER BY event) AS inputs
  FROM per_event GROUP BY member_id, year, category;

-- Fill the home's summaries; a row changes only when its inputs or rules did.
CREATE FUNCTION syncd.refresh_scores() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
    INSERT INTO member_score_summaries (org_code, member_id, year, total, by_category, rule_version, inputs_digest)
    SELECT syncd.self_id(), member_id, year, sum(points),
           jsonb_object_agg(category, points), max(rule_version),
           md5(string_agg(category || '=' || inputs, '|' ORDER BY category))
      FROM member_scores GROUP BY member_id, year
    ON CONFLICT (id) DO UPDATE
       SET total = excluded.total, by_category = excluded.by_category,
           rule_version = excluded.rule_version, inputs_digest = excluded.inputs_digest,
           computed_at = now()
     WHERE member_score_summaries.inputs_digest IS DISTINCT FROM excluded.inputs_digest
        OR member_score_summaries.rule_version IS DISTINCT FROM excluded.rule_version
        OR member_score_summaries.total IS DISTINCT FROM excluded.total;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- The default rule set (DOMAIN.md §4.2), version 1, for one committee.
CREATE FUNCTION syncd.seed_default_rules(org text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
    INSERT INTO score_rules (org_code, rule_version, event, points, cap)
    SELECT org, 1, e, p, c FROM (VALUES
        ('plenary_half_day', 5, NULL), ('plenary_excused', 0, NULL), ('plenary_absent', -10, NULL),
        ('standing', 5, NULL), ('standing_excused', 0, NULL), ('standing_absent', -5, NULL),
        ('activity', 4, NULL), ('activity_missed', 0, NULL),
        ('speech', 10, NULL), ('written_speech', 5, NULL),
        ('proposal_submitted', 2, NULL), ('proposal_accepted_lead', 10, NULL),
        ('proposal_accepted_cosigner', 3, NULL), ('proposal_key', 10, NULL), ('proposal_excellent', 10, NULL),
        ('opinion_submitted', 2, NULL), ('opinion_adopted_own', 5, NULL), ('opinion_adopted_higher', 8, NULL),
        ('opinion_adopted_national', 15, NULL),
        ('instruction_county', 5, NULL), ('instruction_city', 8, NULL),
        ('instruction_province', 10, NULL), ('instruction_national', 20, NULL),
        ('micro_submitted', 1, 10), ('micro_adopted', 3, 15)) AS d(e, p, c)
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
