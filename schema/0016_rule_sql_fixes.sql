-- Rules in SQL: two places where the 0014 helpers disagreed with the workflow template
-- engine (Python), both found by tests/integration/test_rules_sql_differential.py.
-- Replaced in place: the compiled rules call the helpers by name, so registered rules need
-- no recompiling.
--
-- 1. Iterating the empty string yields nothing.
-- regexp_split_to_table('', '') returns one row (the empty string), so the 0014 helper
-- made `'' | list` [""] where the workflow template engine makes [] — `not ('' | list)`
-- was false in SQL and true on a worker, and `'' | first` was "" instead of undefined

CREATE OR REPLACE FUNCTION attune.rx_iter(v jsonb, what text) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, what);
    CASE jsonb_typeof(v)
    WHEN 'array' THEN RETURN v;
    WHEN 'string' THEN
        IF v = '""' THEN RETURN '[]'; END IF;
        RETURN (SELECT jsonb_agg(c ORDER BY n) FROM regexp_split_to_table(v #>> '{}', '')
                                 WITH ORDINALITY AS s(c, n));
    WHEN 'object' THEN
        RETURN coalesce((SELECT jsonb_agg(k) FROM jsonb_object_keys(v) k), '[]'::jsonb);
    ELSE PERFORM attune.rx_fail(format('%s: %L object is not iterable', what, attune.rx_pytype(v)));
    END CASE;
    RETURN NULL;
END $$;

-- 2. Arithmetic on an undefined value is an error, as in Python. rx_isnum(NULL) was NULL,
-- so `NOT (rx_isnum(a) AND rx_isnum(b))` let an undefined operand through `//` and `%`
-- (and round): `(1 // event.payload.missing) is defined` was false where Python raises.
CREATE OR REPLACE FUNCTION attune.rx_isnum(v jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_typeof(v) IN ('number', 'boolean'), false)
$$;
