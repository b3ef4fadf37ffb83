-- The change documents of the log and of the relay queue ({route: home} and
-- {column: [value, round, stage, prev]}) are written whole, moved whole by the sequencer
-- and read back whole by pushes and pulls; nothing queries inside them.  json keeps them
-- as validated text: jsonb parsed each one into a tree on every write and printed it back
-- on every read (COPY of an applied batch cost ~3x as much: README, Benchmarks).
ALTER TABLE syncd.pending ALTER COLUMN homes TYPE json USING homes::json,
                          ALTER COLUMN cols TYPE json USING cols::json;
ALTER TABLE syncd.log ALTER COLUMN homes TYPE json USING homes::json,
                      ALTER COLUMN cols TYPE json USING cols::json;
