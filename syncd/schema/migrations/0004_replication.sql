-- Replication state: per-link cursors, per-child outboxes, conflicts, parked and
-- quarantined changes, nonces, the audit of what crossed each link, and the
-- subtree status roll-up.

-- Where each link stands.  kind:
--   'pull'    (at a child)  last parent position applied
--   'push'    (at a child)  last own position the parent acknowledged
--   'applied' (at a parent) last child position applied; locked FOR UPDATE by
--             every push apply, so two daemons never apply one push twice (HC-28)
CREATE TABLE syncd.cursors (
    peer       text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('pull', 'push', 'applied')),
    pos        bigint NOT NULL DEFAULT 0,
    hash       bytea,
    epoch      integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (peer, kind)
);

-- Per-child outbox: the log positions a child is entitled to (HC-37).
CREATE TABLE syncd.outbox (
    peer text NOT NULL,
    pos  bigint NOT NULL,
    PRIMARY KEY (peer, pos)
);

CREATE TABLE syncd.conflicts (
    id          text PRIMARY KEY,
    tbl         text NOT NULL,
    row_id      uuid NOT NULL,
    org_code    text NOT NULL,
    col         text NOT NULL,
    winner      jsonb NOT NULL,   -- [value, version]
    loser       jsonb NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution  jsonb
);

-- Changes whose foreign-key target has not arrived yet: retried by themselves.
CREATE TABLE syncd.parked (
    id        bigserial PRIMARY KEY,
    peer      text NOT NULL,
    tbl       text NOT NULL,
    row_id    uuid NOT NULL,
    change    jsonb NOT NULL,
    reason    text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    attempts  integer NOT NULL DEFAULT 0
);

-- Changes refused (scope, writers, clock) or poison (a local constraint): wait
-- for an operator.  reason never carries PostgreSQL DETAIL text (HC-15).
CREATE TABLE syncd.quarantine (
    id          bigserial PRIMARY KEY,
    peer        text NOT NULL,
    code        text NOT NULL,
    reason      text NOT NULL,
    tbl         text NOT NULL,
    row_id      uuid NOT NULL,
    change      jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);

-- Request nonces seen, kept past the signature window (HC-24).
CREATE TABLE syncd.nonces (
    nonce   text PRIMARY KEY,
    key_id  text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);

-- What crossed each link, per batch (HC-15).
CREATE TABLE syncd.audit (
    id               bigserial PRIMARY KEY,
    peer             text NOT NULL,
    direction        text NOT NULL CHECK (direction IN ('sent', 'received')),
    at               timestamptz NOT NULL DEFAULT now(),
    batch_id         text,
    tables           jsonb NOT NULL,
    changes          integer NOT NULL,
    personal_columns jsonb NOT NULL
);

-- Compact status summaries of the nodes below, as last reported (HC-30).
CREATE TABLE syncd.subtree_status (
    node        text PRIMARY KEY,
    via         text NOT NULL,
    summary     jsonb NOT NULL,
    reported_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
