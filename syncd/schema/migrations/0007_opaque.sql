-- Rolling upgrades (HC-13, issue 6): values of columns this node's tables do not have yet.
-- A newer node may add a column (members.wechat_id) before this one is upgraded.  Its
-- versions live in syncd.rowver like any other column's; its values are kept here,
-- {column: value} per row, relayed from the log as received, served in snapshots, and
-- written into the table by the daemon once an upgrade has added the column.
CREATE TABLE syncd.opaque (
    tbl  text NOT NULL,
    id   uuid NOT NULL,
    vals jsonb NOT NULL,
    PRIMARY KEY (tbl, id)
);
