-- Before going back to a release earlier than session 16's: rewrite the change documents of
-- syncd.log and syncd.pending that this release wrote as [plain, other] (README, Upgrades)
-- into the one map an earlier release reads, {col: [value, round, stage, prev]}.
-- Stop the daemon first; run once with psql -v ON_ERROR_STOP=1 -1 -f <this file>.
-- Entries already in that form are left as they are; running it twice changes nothing.
CREATE OR REPLACE FUNCTION pg_temp.one_map(cols json) RETURNS json LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(json_object_agg(k, v ORDER BY k), '{}'::json)
    FROM (SELECT key AS k, json_build_array(value, 0, 0, NULL) AS v FROM json_each(cols -> 0)
          UNION ALL
          SELECT key, value FROM json_each(cols -> 1)) AS split
$$;

UPDATE syncd.log SET cols = pg_temp.one_map(cols) WHERE json_typeof(cols) = 'array';
UPDATE syncd.pending SET cols = pg_temp.one_map(cols) WHERE json_typeof(cols) = 'array';
