-- The capture triggers' row images (syncd.capture old/new) are appended by every application
-- write and read whole, once, by the sequencer's versioner in Python; nothing queries inside
-- them.  As json the triggers write to_json(row) — text, with no jsonb tree built, sorted and
-- serialised per row (a fifth of an UPDATE's trigger time) — and the versioner's read prints
-- nothing back.  Captures are drained continuously, so the rewrite is of a short table.
ALTER TABLE syncd.capture ALTER COLUMN old TYPE json USING old::json,
                          ALTER COLUMN new TYPE json USING new::json;
