-- The reach of each reach-limited column as this node last enforced it (HC-16).  A release
-- that narrows a column's reach (work_unit from all to home, say) is found at the daemon's
-- start by comparing the declarations with these rows; the node then clears the values it
-- holds outside the new reach (syncd.store.purge) and records the new reach.
CREATE TABLE syncd.column_reach (
    tbl   text NOT NULL,
    col   text NOT NULL,
    reach text NOT NULL,
    PRIMARY KEY (tbl, col)
);
