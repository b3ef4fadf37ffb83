-- syncd.natural_id, the same ids, computed in PL/pgSQL: as a SQL function with a FROM clause
-- it could not be inlined and ran through the SQL-function executor for every row written to a
-- natural-key table (attendance, proposals, …): ~8 µs a row against ~2 µs now, 6 s of the
-- city's PostgreSQL in a bootstrap of 1M attendance rows.  The Python twin is
-- syncd.schema.declarations.natural_id; tests/integration/test_capture.py checks they agree.
CREATE OR REPLACE FUNCTION syncd.natural_id(tbl text, key text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    b bytea := substring(sha256('\x6f1c2c1e5a0b4f8e9d0e2a1c0d3e4b5f'::bytea
                                || convert_to(tbl || chr(31) || key, 'UTF8')) FROM 1 FOR 16);
BEGIN
    RETURN encode(set_byte(set_byte(b, 6, (get_byte(b, 6) & 15) | 128), 8, (get_byte(b, 8) & 63) | 128),
                  'hex')::uuid;
END
$$;
