-- A row's column versions ({col: [cl, round, stage, ts, origin, prev]}, the largest document
-- an applied row writes: ~1 kB for a members row) are written whole by apply and read whole
-- into Python by merges, snapshots and verify.  As json (validated text) a new row's versions
-- are not parsed into a tree on the way in; the one statement that looks inside them, the
-- fast-forward check of an update (syncd/store/fastpath.py), reads them as jsonb once a row.
ALTER TABLE syncd.rowver ALTER COLUMN v TYPE json USING v::json;
