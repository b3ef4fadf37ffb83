-- Caps per category (DOMAIN.md §4.2: "Caps per category are common (must be modelled)").
-- A committee caps a category's yearly points with a rule row whose event is 'cap:<category>'
-- (cap:attendance, cap:speech, cap:proposal, cap:opinion, cap:micro): its `cap` bounds the
-- category's total for a year, after the per-event caps, and the rule in force is the one valid
-- on the year's last day (rule versions and valid_from as for any rule).  None is seeded: the
-- default rule table of DOMAIN §4.2 names no category cap.  The view keeps its columns.
CREATE OR REPLACE VIEW member_scores AS
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
), per_category AS (
    SELECT member_id, year, category,
           sum(CASE WHEN cap IS NULL THEN points ELSE least(points, cap) END) AS points,
           max(rule_version) AS rule_version,
           string_agg(event || ':' || n || ':' || days, ';' ORDER BY event) AS inputs
      FROM per_event GROUP BY member_id, year, category
)
SELECT c.member_id, c.year, c.category,
       CASE WHEN k.cap IS NULL THEN c.points ELSE least(c.points, k.cap) END AS points,
       greatest(c.rule_version, k.rule_version) AS rule_version,
       c.inputs
  FROM per_category c
  LEFT JOIN LATERAL (SELECT r.cap, r.rule_version FROM score_rules r
                      WHERE r.org_code = syncd.self_id() AND r.event = 'cap:' || c.category
                        AND r.valid_from <= make_date(c.year, 12, 31)
                      ORDER BY r.valid_from DESC, r.rule_version DESC LIMIT 1) k ON true;
