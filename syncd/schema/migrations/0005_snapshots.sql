-- Snapshot bootstrap and resync (issue 6): per-table progress at the child, so a
-- snapshot killed midway resumes where it stopped; more cursor kinds at the parent.
CREATE TABLE syncd.snapshot_progress (
    peer       text NOT NULL,
    tbl        text NOT NULL,
    position   bigint NOT NULL,          -- p0: the parent's log position the snapshot is consistent with
    after_id   uuid,                     -- last row id merged; NULL before the first chunk
    rows       bigint NOT NULL DEFAULT 0,
    done       boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (peer, tbl)
);

-- 'served'    (at a parent) the position a child last pulled from
-- 'truncated' (at a parent) outbox entries at or below pos were removed by retention
ALTER TABLE syncd.cursors DROP CONSTRAINT cursors_kind_check;
ALTER TABLE syncd.cursors ADD CONSTRAINT cursors_kind_check
    CHECK (kind IN ('pull', 'push', 'applied', 'served', 'truncated'));
