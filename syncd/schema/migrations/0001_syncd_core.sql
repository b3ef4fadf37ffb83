-- syncd's own state. Everything syncd keeps lives in PostgreSQL (DESIGN §10).
CREATE SCHEMA IF NOT EXISTS syncd;

-- One row: who this database is. incarnation is new at every init of an empty
-- database, so a restored copy is recognised (HC-7); hlc is the hybrid clock.
CREATE TABLE syncd.node (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id          text    NOT NULL,
    incarnation uuid    NOT NULL,
    epoch       integer NOT NULL DEFAULT 1,
    hlc         bigint  NOT NULL DEFAULT 0,
    head        bigint  NOT NULL DEFAULT 0,   -- last log position assigned
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION syncd.self_id() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT id FROM syncd.node $$;

-- Derived ids of natural-key rows: UUIDv8 over SHA-256 (RFC 9562 §B.2); the
-- Python twin is syncd.schema.declarations.natural_id.
CREATE FUNCTION syncd.natural_id(tbl text, key text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(
        set_byte(set_byte(b, 6, (get_byte(b, 6) & 15) | 128), 8, (get_byte(b, 8) & 63) | 128),
        'hex')::uuid
    FROM (SELECT substring(sha256(
        decode('6f1c2c1e5a0b4f8e9d0e2a1c0d3e4b5f', 'hex')
        || convert_to(tbl || chr(31) || key, 'UTF8')) FROM 1 FOR 16) AS b) s
$$;

-- Row images appended by the statement triggers in the writing transaction.
CREATE TABLE syncd.capture (
    serial   bigserial PRIMARY KEY,
    stmt_ts  timestamptz NOT NULL,
    xid      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tbl      text NOT NULL,
    op       "char" NOT NULL,
    row_id   uuid NOT NULL,
    old      jsonb,
    new      jsonb
);

-- Per-row merge state: causal length, route homes and one version per column
-- ({col: [cl, round, stage, ts, origin]}).
CREATE TABLE syncd.rowver (
    tbl      text NOT NULL,
    id       uuid NOT NULL,
    org_code text NOT NULL,
    cl       integer NOT NULL,
    homes    jsonb NOT NULL,
    v        jsonb NOT NULL,
    PRIMARY KEY (tbl, id)
);

-- Versioned changes waiting for a position: written by apply (received changes
-- and local captures versioned under its lock); only the sequencer moves them.
CREATE TABLE syncd.pending (
    serial        bigserial PRIMARY KEY,
    tbl           text NOT NULL,
    id            uuid NOT NULL,
    org_code      text NOT NULL,
    op            "char" NOT NULL,
    cl            integer NOT NULL,
    ts            bigint NOT NULL,
    origin        text NOT NULL,
    txn           bigint NOT NULL,
    homes         jsonb NOT NULL,
    cols          jsonb NOT NULL,
    received_from text
);

-- The ordered change log. Positions are dense and assigned only by the sequencer.
CREATE TABLE syncd.log (
    pos           bigint PRIMARY KEY,
    epoch         integer NOT NULL,
    tbl           text NOT NULL,
    id            uuid NOT NULL,
    org_code      text NOT NULL,
    op            "char" NOT NULL,
    cl            integer NOT NULL,
    ts            bigint NOT NULL,
    origin        text NOT NULL,
    txn           bigint NOT NULL,
    homes         jsonb NOT NULL,
    cols          jsonb NOT NULL,
    received_from text,
    logged_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX log_row ON syncd.log (tbl, id);

-- Capture triggers we installed, with the table's oid, so a recreated or
-- altered table is detected (HC-29).
CREATE TABLE syncd.capture_tables (
    tbl       text PRIMARY KEY,
    table_oid oid NOT NULL
);
