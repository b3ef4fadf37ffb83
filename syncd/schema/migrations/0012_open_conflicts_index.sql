-- Open conflicts by row: every apply of changes that name a replaced version looks up the open
-- conflicts of their rows (syncd.store.conflicts.close_seen), and the status counts them.  With
-- no index that lookup read every conflict ever recorded, resolved ones included, on every such
-- apply.  Partial: resolved conflicts are kept for the record, only open ones are looked up.
CREATE INDEX conflicts_open ON syncd.conflicts (tbl, row_id) WHERE resolved_at IS NULL;
