"""SQL for the capture and check triggers, generated from the declarations.

Per replicated table, three AFTER statement triggers (INSERT / UPDATE / DELETE,
with transition tables) check the write against the declarations (HC-9, HC-16)
and append the row images to ``syncd.capture`` — an append, nothing more
(DESIGN §4), as ``json`` (``to_json``: text, no jsonb tree per row; migration 0010).  An
UPDATE is captured as op ``p``: ``new`` the shipped columns it changed with their new values,
``old`` the row's context (``org_code`` and route columns); a row whose shipped columns did not
change is not captured.  Op ``u`` (``new`` the full new image, ``old`` the changed names, written
by earlier releases) and op ``U`` (a full old image, written by earlier releases and by conflict
resolution) are read the same way.  A BEFORE row trigger with a WHEN clause refuses changes of the
immutable keys (HC-6) and a BEFORE TRUNCATE trigger refuses TRUNCATE (HC-29).
Triggers are ``ENABLE ALWAYS`` so ``session_replication_role = replica`` does not
bypass them.  syncd's own apply sets ``syncd.applying = on`` for its transaction
and is exempt.  The functions' own variables (``me``, ``bad``, ``ts``) win over columns of
the same names (``#variable_conflict use_variable``): every column they read is qualified.

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

import json

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
                "Personal data (ID number, mobile, address, leave reason) stays at the member''s home committee.")}
    END IF;
    SELECT n.id, n.org_code INTO bad FROM {src}
     WHERE n.org_code <> me AND ({_bad_write(t, False, update)}) LIMIT 1;
    IF FOUND THEN
        {_raise('SY001', f"format('READ_ONLY_COPY: {name} row %s belongs to committee %s; "
                f"this node (%s) holds a read-only copy', bad.id, bad.org_code, me)",
                'Change the row at its home committee; copies elsewhere are read-only.')}
    END IF;"""


_MAX_ARGS = 90


def _json_key(name: str) -> str:
    """SQL literal of ``"name":``, the start of a member of a JSON object."""
    return "'" + json.dumps(name, ensure_ascii=False).replace("'", "''") + ":'"


def _partial_update_image(t: Table) -> str:
    """SELECT of an UPDATE's captures, op ``p``: ``new`` the shipped columns the statement
    changed with their new values, ``old`` the row's context (``org_code`` and the route
    columns, as they are now).  A row whose shipped columns did not change is not captured.

    The image is written as JSON text, one ``CASE`` per column, so an unchanged column costs
    one comparison and nothing is rendered for it: the full new image (``to_json(n)``), a list
    of the changed names beside it and a whole-row comparison had cost as much as the UPDATE
    itself (1k-row statements).  ``OFFSET 0`` keeps the text computed once per row, not once
    for the filter and again for the insert.  The versioner reads the whole row itself for an
    update of a row that has no version yet (``syncd.store.versioning``)."""
    members = [f"CASE WHEN n.{_q(c.name)} IS DISTINCT FROM o.{_q(c.name)} THEN "
               f"{_json_key(c.name)} || coalesce(to_json(n.{_q(c.name)})::text, 'null') END"
               for c in t.shipped if not c.derived_from]
    while len(members) > _MAX_ARGS:  # a function takes at most 100 arguments: join in groups
        members = [f"nullif(concat_ws(',', {', '.join(members[i:i + _MAX_ARGS])}), '')"
                   for i in range(0, len(members), _MAX_ARGS)]
    context = ", ".join(f"'{c}', n.{_q(c)}" for c in _context_columns(t))
    return (f"SELECT ts, '{t.name}', 'p', x.id, x.context, ('{{' || x.changed || '}}')::json FROM ("
            f"SELECT n.id, json_build_object({context}) AS context, concat_ws(',', {', '.join(members)}) AS changed "
            "FROM new_rows n JOIN old_rows o USING (id) OFFSET 0) x WHERE x.changed <> ''")


def _context_columns(t: Table) -> list[str]:
    """Columns an update's capture carries whether or not they changed: the row's home and the
    columns its route homes are found through (``versioning.lookup_homes``)."""
    return ["org_code", *dict.fromkeys(r.path[0] for r in t.routes if len(r.path) == 3)]


def _capture_fn(t: Table, op: str) -> str:
    fn = f"syncd.{_q('cap_' + t.name + '_' + op.lower())}"
    if op == "I":
        check = _check_block(t, update=False)
        ins = (f"SELECT ts, '{t.name}', 'I', n.id, NULL, to_json(n) FROM new_rows n")
    elif op == "U":
        check = _check_block(t, update=True)
        ins = _partial_update_image(t)
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
#variable_conflict use_variable
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
