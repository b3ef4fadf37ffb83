-- Retention (HC-21) and restore detection (HC-7): issue 6.

-- The first log position still kept; entries below it were removed by retention.
ALTER TABLE syncd.node ADD COLUMN log_first bigint NOT NULL DEFAULT 1;

-- One row per link, at both ends (peer = the parent at a child, the child at a parent).
--   epoch            the link epoch (SPEC §8): kept by the parent, adopted by the child;
--                    0 at a child that has not adopted one yet
--   peer_incarnation the other end's incarnation as last seen at hello
--   hash_pos, hash   position (in the other end's log) and change_hash of the last change
--                    received over the link: the parent's push side, the child's pull side
--   acked_max        (child) the highest push position the parent ever acknowledged
--   upward           (child) an upward snapshot is due once the pull-side resync has merged
CREATE TABLE syncd.links (
    peer             text PRIMARY KEY,
    epoch            integer NOT NULL DEFAULT 0,
    peer_incarnation uuid,
    hash_pos         bigint NOT NULL DEFAULT 0,
    hash             bytea,
    acked_max        bigint NOT NULL DEFAULT 0,
    upward           boolean NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Tombstones (rows with an even causal length) as retention first saw them; collected
-- once older than max_retention and out of the log.
CREATE TABLE syncd.tombstones (
    tbl     text NOT NULL,
    id      uuid NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tbl, id)
);
CREATE INDEX rowver_tombstones ON syncd.rowver (tbl, id) WHERE cl % 2 = 0;
