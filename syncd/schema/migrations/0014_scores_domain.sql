-- 履职积分 as DOMAIN.md §4.2 states it, where 0003 departed from it (an audit of the domain):
-- * oral and written speeches score at the plenary (大会发言) only, not at any activity;
-- * an unexcused plenary absence costs its points per half-day session, as attendance earns them;
-- * online duty (委员值班 / 网上委员工作站) scores 2 a session (rule event 'duty'; init seeds it for
--   the node's committee with the rest of rule version 1), not 4 as an ordinary activity;
-- * refresh_scores also deletes the summary of a member-year with no event left (the deletion is
--   captured and travels up like the summaries), and returns the rows written and deleted.
-- Per-category caps (DOMAIN: "common, must be modelled") are not here yet: caps are per event.

CREATE OR REPLACE VIEW member_score_events AS
SELECT a.member_id, m.org_code, syncd.shanghai_day(coalesce(a.sign_in_at, act.starts_at)) AS day,
       CASE
         WHEN act.kind = '全体会议' THEN CASE a.status WHEN '请假' THEN 'plenary_excused'
              WHEN '缺席' THEN 'plenary_absent' ELSE 'plenary_half_day' END
         WHEN act.kind = '常委会议' THEN CASE a.status WHEN '请假' THEN 'standing_excused'
              WHEN '缺席' THEN 'standing_absent' ELSE 'standing' END
         WHEN act.kind IN ('委员值班', '网上委员工作站') THEN CASE WHEN a.status IN ('出席', '迟到早退') THEN 'duty'
              ELSE 'activity_missed' END
         ELSE CASE WHEN a.status IN ('出席', '迟到早退') THEN 'activity' ELSE 'activity_missed' END
       END AS event,
       CASE WHEN act.kind = '全体会议' AND a.status IN ('出席', '迟到早退', '缺席') THEN act.half_days ELSE 1 END AS qty,
       'attendance' AS category
  FROM attendance a JOIN activities act ON act.id = a.activity_id JOIN members m ON m.id = a.member_id
UNION ALL
SELECT a.member_id, m.org_code, syncd.shanghai_day(coalesce(a.sign_in_at, act.starts_at)), s.event, 1, 'speech'
  FROM attendance a JOIN activities act ON act.id = a.activity_id JOIN members m ON m.id = a.member_id
  CROSS JOIN LATERAL (VALUES ('speech', a.spoke), ('written_speech', a.written_speech)) s(event, flag)
 WHERE s.flag AND a.status IN ('出席', '迟到早退') AND act.kind = '全体会议'
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

CREATE OR REPLACE FUNCTION syncd.refresh_scores() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE n integer; d integer;
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
    -- a member-year whose events are all gone (a sign-in deleted, a proposal withdrawn) has no score
    DELETE FROM member_score_summaries s
     WHERE s.org_code = syncd.self_id()
       AND NOT EXISTS (SELECT 1 FROM member_scores ms WHERE ms.member_id = s.member_id AND ms.year = s.year);
    GET DIAGNOSTICS d = ROW_COUNT;
    RETURN n + d;
END $$;

CREATE OR REPLACE FUNCTION syncd.seed_default_rules(org text) RETURNS integer LANGUAGE plpgsql AS $$
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
        ('micro_submitted', 1, 10), ('micro_adopted', 3, 15), ('duty', 2, NULL)) AS d(e, p, c)
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
