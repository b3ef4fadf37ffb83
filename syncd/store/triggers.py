"""SQL for the capture and check triggers, generated from the declarations.

Per replicated table, three AFTER statement triggers (INSERT / UPDATE / DELETE,
with transition tables) check the write against the declarations (HC-9, HC-16)
and append the row images to ``syncd.capture`` — an append, nothing more
(DESIGN §4), as ``json`` (``to_json``: text, no jsonb tree per row; migration 0010).  An
UPDATE is captured as op ``u``: ``new`` the full new image, ``old`` the names of the shipped
columns it changed (a JSON array); op ``U`` with a full old
image (written by earlier releases and by conflict resolution) is read the same way.  A BEFORE row trigger with a WHEN clause refuses changes of the
immutable keys (HC-6) and a BEFORE TRUNCATE trigger refuses TRUNCATE (HC-29).
Triggers are ``ENABLE ALWAYS`` so ``session_replication_role = replica`` does not
bypass them.  syncd's own apply sets ``syncd.applying = on`` for its transaction
and is exempt.

Both kinds of work for the sequencer announce themselves at commit with
``NOTIFY syncd_capture`` (one per transaction: PostgreSQL folds identical
notifications), so it is woken by an event, not a timer: the capture functions
notify, and a statement trigger on ``syncd.pending`` does for received changes
queued by an apply, whichever process ran it (the daemon, ``syncd quarantine
--release``, a second daemon on the database).

Errors raised for applications carry SQLSTATEs of class ``SY``:

========  =========================  ==========================================
SQLSTATE  name                       meaning
========  =========================  ==========================================
SY001     READ_ONLY_COPY             the row belongs to another committee
SY002     PERSONAL_DATA_AWAY_FROM_HOME  a reach-limited column written away from home
SY003     IMMUTABLE_KEY              id, org_code or a natural-key column changed
SY004     TRUNCATE_REFUSED           TRUNCATE of a replicated table
========  =========================  ==========================================
"""
from __future__ import annotations

from syncd.schema.declarations import HOME, Column, Schema, Table

SQLSTATES = {
    "SY001": "READ_ONLY_COPY",
    "SY002": "PERSONAL_DATA_AWAY_FROM_HOME",
    "SY003": "IMMUTABLE_KEY",
    "SY004": "TRUNCATE_REFUSED",
}

_APPLYING = "current_setting('syncd.applying', true) = 'on'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _writer_ok(t: Table, c: Column, row: str) -> str:
    """SQL: this node may write column ``c`` of ``row`` (one of its writer homes is me)."""
    parts = []
    for w in c.writers:
        if w == HOME:
            parts.append(f"{row}.org_code = me")
        else:
            route = t.route(w)
            fk, target, _ = route.path
            parts.append(f"(SELECT x.org_code FROM public.{_q(target)} x WHERE x.id = {row}.{_q(fk)}) = me")
    return "(" + " OR ".join(parts) + ")"


def _bad_write(t: Table, personal: bool, update: bool) -> str:
    """SQL condition: some column of the row is written by a node not allowed to."""
    terms = []
    for c in t.shipped:
        if c.personal != personal or c.derived_from:
            continue
        unchanged = f"n.{_q(c.name)} IS NOT DISTINCT FROM o.{_q(c.name)}" if update else f"n.{_q(c.name)} IS NULL"
        terms.append(f"NOT ({unchanged} OR {_writer_ok(t, c, 'n')})")
    return " OR ".join(terms) if terms else "false"


def _raise(code: str, msg: str, hint: str) -> str:
    return (f"RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = {msg}, "
            f"HINT = '{hint}';")


def _check_block(t: Table, update: bool) -> str:
    src = "new_rows n JOIN old_rows o USING (id)" if update else "new_rows n"
    name = t.name
    return f"""
    SELECT n.id, n.org_code INTO bad FROM {src}
     WHERE n.org_code <> me AND ({_bad_write(t, True, update)}) LIMIT 1;
    IF FOUND THEN
        {_raise('SY002', f"format('PERSONAL_DATA_AWAY_FROM_HOME: {name} row %s belongs to committee %s; "
                f"personal columns are written only at home, not at %s', bad.id, bad.org_code, me)",
                'Personal data (ID number, mobile, address, leave reason) stays at the member''s home committee.')}
    END IF;
    SELECT n.id, n.org_code INTO bad FROM {src}
     WHERE n.org_code <> me AND ({_bad_write(t, False, update)}) LIMIT 1;
    IF FOUND THEN
        {_raise('SY001', f"format('READ_ONLY_COPY: {name} row %s belongs to committee %s; "
                f"this node (%s) holds a read-only copy', bad.id, bad.org_code, me)",
                'Change the row at its home committee; copies elsewhere are read-only.')}
    END IF;"""


def _capture_fn(t: Table, op: str) -> str:
    fn = f"syncd.{_q('cap_' + t.name + '_' + op.lower())}"
    if op == "I":
        check = _check_block(t, update=False)
        ins = (f"SELECT ts, '{t.name}', 'I', n.id, NULL, to_json(n) FROM new_rows n")
    elif op == "U":
        check = _check_block(t, update=True)
        # op 'u': old is the names of the shipped columns the statement changed, not a second
        # full image (to_jsonb of the old row doubled what an UPDATE wrote: 3× a plain UPDATE)
        diff = ", ".join(f"CASE WHEN n.{_q(c)} IS DISTINCT FROM o.{_q(c)} THEN '{c}' END" for c in t.shipped_names)
        ins = (f"SELECT ts, '{t.name}', 'u', n.id, to_json(array_remove(ARRAY[{diff}]::text[], NULL)), to_json(n) "
               "FROM new_rows n JOIN old_rows o USING (id) WHERE n IS DISTINCT FROM o")
    else:
        check = f"""
    SELECT o.id, o.org_code INTO bad FROM old_rows o WHERE o.org_code <> me LIMIT 1;
    IF FOUND THEN
        {_raise('SY001', f"format('READ_ONLY_COPY: {t.name} row %s belongs to committee %s; "
                "only its home deletes it, not %s', bad.id, bad.org_code, me)",
                'Delete the row at its home committee; copies elsewhere are read-only.')}
    END IF;"""
        ins = f"SELECT ts, '{t.name}', 'D', o.id, to_json(o), NULL FROM old_rows o"
    return f"""
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    me text;
    bad record;
    ts timestamptz := clock_timestamp();
BEGIN
    IF {_APPLYING} THEN RETURN NULL; END IF;
    me := syncd.self_id();{check}
    INSERT INTO syncd.capture (stmt_ts, tbl, op, row_id, old, new) {ins};
    PERFORM pg_notify('syncd_capture', '');
    RETURN NULL;
END $fn$;"""


def _key_columns(t: Table) -> list[str]:
    return ["org_code", *[k for k in t.natural_key if k != "org_code"]] if t.natural_key else ["id", "org_code"]


def table_trigger_sql(t: Table) -> str:
    """Idempotent SQL installing every syncd trigger of one replicated table."""
    tbl = f"public.{_q(t.name)}"
    keys = _key_columns(t)
    when = " OR ".join(f"OLD.{_q(k)} IS DISTINCT FROM NEW.{_q(k)}" for k in keys)
    parts = [_capture_fn(t, op) for op in ("I", "U", "D")]
    events = {"i": "INSERT", "u": "UPDATE", "d": "DELETE"}
    for suffix, event in events.items():
        refs = {"i": "NEW TABLE AS new_rows", "u": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                "d": "OLD TABLE AS old_rows"}[suffix]
        trg = _q(f"syncd_capture_{suffix}")
        parts.append(f"DROP TRIGGER IF EXISTS {trg} ON {tbl};")
        parts.append(f"CREATE TRIGGER {trg} AFTER {event} ON {tbl} REFERENCING {refs} "
                     f"FOR EACH STATEMENT EXECUTE FUNCTION syncd.{_q(f'cap_{t.name}_{suffix}')}();")
        parts.append(f"ALTER TABLE {tbl} ENABLE ALWAYS TRIGGER {trg};")
    parts += [
        f"DROP TRIGGER IF EXISTS syncd_immutable_keys ON {tbl};",
        f"CREATE TRIGGER syncd_immutable_keys BEFORE UPDATE OF {', '.join(map(_q, keys))} ON {tbl} "
        f"FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION syncd.refuse_key_change();",
        f"ALTER TABLE {tbl} ENABLE ALWAYS TRIGGER syncd_immutable_keys;",
        f"DROP TRIGGER IF EXISTS syncd_no_truncate ON {tbl};",
        f"CREATE TRIGGER syncd_no_truncate BEFORE TRUNCATE ON {tbl} "
        "FOR EACH STATEMENT EXECUTE FUNCTION syncd.refuse_truncate();",
        f"ALTER TABLE {tbl} ENABLE ALWAYS TRIGGER syncd_no_truncate;",
        f"INSERT INTO syncd.capture_tables (tbl, table_oid) VALUES ('{t.name}', '{tbl}'::regclass) "
        "ON CONFLICT (tbl) DO UPDATE SET table_oid = excluded.table_oid;",
    ]
    return "\n".join(parts)


COMMON_SQL = f"""
CREATE OR REPLACE FUNCTION syncd.refuse_key_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    {_raise('SY003', "format('IMMUTABLE_KEY: %s row %s: id, org_code and natural-key columns never change', TG_TABLE_NAME, OLD.id)",
            'A transfer is a new row at the new home (end the old one); a wrong key is fixed by delete + insert.')}
END $fn$;
CREATE OR REPLACE FUNCTION syncd.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    {_raise('SY004', "format('TRUNCATE_REFUSED: TRUNCATE of replicated table %s would not be replicated', TG_TABLE_NAME)",
            'Delete the rows with DELETE so every level sees the deletion.')}
END $fn$;
CREATE OR REPLACE FUNCTION syncd.notify_pending() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('syncd_capture', '');
    RETURN NULL;
END $fn$;
DROP TRIGGER IF EXISTS syncd_pending_notify ON syncd.pending;
CREATE TRIGGER syncd_pending_notify AFTER INSERT ON syncd.pending
    FOR EACH STATEMENT EXECUTE FUNCTION syncd.notify_pending();
ALTER TABLE syncd.pending ENABLE ALWAYS TRIGGER syncd_pending_notify;
"""

#: The trigger names every replicated table must carry, enabled ALWAYS (HC-29).
TRIGGER_NAMES = ("syncd_capture_i", "syncd_capture_u", "syncd_capture_d",
                 "syncd_immutable_keys", "syncd_no_truncate")


def all_trigger_sql(schema: Schema) -> str:
    return COMMON_SQL + "\n".join(table_trigger_sql(t) for t in schema.tables)
