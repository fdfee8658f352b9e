-- Rules matched inside emit_event, in the caller's transaction (issue 9 item 3), payloads
-- bounded where they enter (issue 7), and concurrency slots released in one global order.
--
-- At registration each rule's conditions and action_params are compiled
-- (src/attune_pg/spec/rule_sql.py) into SQL expressions over two parameters: $1, the
-- scope ({"event", "trigger", "rule", "pack"}) and $2, the rule's argument array, which
-- holds EVERY literal of the rule. The compiled text is made only of calls to the rx_*
-- helpers below, CASE, and $1/$2: no text of the rule file is ever part of it. A rule the
-- compiler cannot translate keeps worker matching (match_path = 'worker', match_note says
-- why). The helpers implement the workflow template engine's (Python's) semantics on jsonb
-- values (SQL NULL = undefined); where they cannot be exact for one value they raise
-- SQLSTATE AT001 and that (rule, event) pair goes to a worker, which evaluates it in Python.
-- Helpers that can raise are VOLATILE on purpose: EXECUTE ... USING plans with the
-- parameters' values, and the planner would fold an IMMUTABLE call in a CASE branch
-- Python never evaluates (`false and x.y`), raising where Python does not.

-- ---------------------------------------------------------------- rules and events

ALTER TABLE attune.rule
    ADD COLUMN match_path text NOT NULL DEFAULT 'worker' CHECK (match_path IN ('sql', 'worker')),
    ADD COLUMN match_note text,
    ADD COLUMN match_sql text,
    ADD COLUMN params_sql text,
    ADD COLUMN match_args jsonb NOT NULL DEFAULT '[]';
-- Rules registered before this migration have no compiled SQL: workers match them until
-- their pack is registered again.
UPDATE attune.rule SET match_note = 'registered before schema 14: register its pack again to match it in SQL';

-- The rules emit_event left to a worker (worker path, or a value the SQL could not treat
-- exactly). NULL on events stored before 0014: every enabled rule of the trigger.
ALTER TABLE attune.event ADD COLUMN deferred_rules text[];

-- ---------------------------------------------------------------- helpers: basics

CREATE FUNCTION attune.rx_defer(why text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'needs the Python engine: %', why USING ERRCODE = 'AT001';
END $$;

CREATE FUNCTION attune.rx_fail(why text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', why USING ERRCODE = 'data_exception';
END $$;

-- The Python type of a value: undefined (SQL NULL), none, bool, int, float, str, list,
-- dict. jsonb prints a number with a '.' exactly when Python reads it as a float.
CREATE FUNCTION attune.rx_kind(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v IS NULL THEN 'undefined'
                ELSE CASE jsonb_typeof(v)
                         WHEN 'number' THEN CASE WHEN strpos(v::text, '.') > 0 THEN 'float' ELSE 'int' END
                         WHEN 'string' THEN 'str'
                         WHEN 'boolean' THEN 'bool'
                         WHEN 'array' THEN 'list'
                         WHEN 'object' THEN 'dict'
                         ELSE 'none' END END
$$;

CREATE FUNCTION attune.rx_pytype(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE attune.rx_kind(v) WHEN 'none' THEN 'NoneType' WHEN 'undefined' THEN 'Undefined'
                ELSE attune.rx_kind(v) END
$$;

CREATE FUNCTION attune.rx_type_error(what text, a jsonb, b jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF a IS NULL OR b IS NULL THEN
        PERFORM attune.rx_fail(format('%s: a value is undefined (a missing key or name)', what));
    END IF;
    PERFORM attune.rx_fail(format('%s not supported between instances of %L and %L',
                                  what, attune.rx_pytype(a), attune.rx_pytype(b)));
END $$;

CREATE FUNCTION attune.rx_need(v jsonb, what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF v IS NULL THEN
        PERFORM attune.rx_fail(format('%s: a value is undefined (a missing key or name)', what));
    END IF;
END $$;

-- Undefined cannot sit inside a jsonb array: build arrays of tags ([v], or [] for undefined).
CREATE FUNCTION attune.rx_tag(v jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(v) END
$$;

-- A single {{ expr }}: its value, which must be defined.
CREATE FUNCTION attune.rx_val(v jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, 'the value');
    RETURN v;
END $$;

-- A list literal [a, b]: a list holding an undefined item has no jsonb form.
CREATE FUNCTION attune.rx_list(tags jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(tags) t WHERE t = '[]') THEN
        PERFORM attune.rx_defer('a list literal holding an undefined value');
    END IF;
    RETURN coalesce((SELECT jsonb_agg(t -> 0 ORDER BY n) FROM jsonb_array_elements(tags)
                               WITH ORDINALITY AS e(t, n)), '[]'::jsonb);
END $$;

-- ---------------------------------------------------------------- helpers: numbers

-- A float literal (Python's repr) as a value that stays a float ('.' in its jsonb text).
CREATE FUNCTION attune.rx_flit(t text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    n numeric;
BEGIN
    IF t IN ('inf', '-inf', 'nan') THEN
        PERFORM attune.rx_defer('an infinite float');
    END IF;
    n := t::numeric;
    IF scale(n) = 0 THEN
        n := round(n, 1);
    END IF;
    RETURN to_jsonb(n);
END $$;

-- A number as a double, as Python's float() reads the same text (correctly rounded).
-- Integers past 2**53 and magnitudes near the double's limits go to Python.
CREATE FUNCTION attune.rx_f8(v jsonb) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    n numeric;
BEGIN
    IF jsonb_typeof(v) = 'boolean' THEN
        RETURN CASE WHEN v = 'true' THEN 1 ELSE 0 END;
    END IF;
    n := (v #>> '{}')::numeric;
    IF attune.rx_kind(v) = 'int' AND abs(n) > 9007199254740992 THEN
        PERFORM attune.rx_defer('an integer beyond 2**53 mixed with a float');
    END IF;
    IF n <> 0 AND (abs(n) < 1e-300 OR abs(n) > 1e300) THEN
        PERFORM attune.rx_defer('a float near the limits of a double');
    END IF;
    RETURN n::float8;
END $$;

-- A double as a value: its shortest round-trip digits (Python's repr), kept a float.
CREATE FUNCTION attune.rx_ff(f float8) RETURNS jsonb
LANGUAGE plpgsql SET extra_float_digits = 1 AS $$
DECLARE
    n numeric;
BEGIN
    IF f = 'Infinity'::float8 OR f = '-Infinity'::float8 OR f = 'NaN'::float8 THEN
        PERFORM attune.rx_defer('an infinite float');
    END IF;
    IF f = 0 AND f::text LIKE '-%' THEN
        PERFORM attune.rx_defer('a negative zero');
    END IF;
    IF f <> 0 AND (abs(f) < 1e-300 OR abs(f) > 1e300) THEN
        PERFORM attune.rx_defer('a float near the limits of a double');
    END IF;
    n := f::text::numeric;
    IF scale(n) = 0 THEN
        n := round(n, 1);
    END IF;
    RETURN to_jsonb(n);
END $$;

-- Python's repr() of a float value.
CREATE FUNCTION attune.rx_repr(v jsonb) RETURNS text
LANGUAGE plpgsql SET extra_float_digits = 1 AS $$
DECLARE
    t text := attune.rx_f8(v)::text;
    m text[];
    sign text;
    digits text;
    decpt int;
    e int;
BEGIN
    m := regexp_match(t, '^(-?)([0-9]+)(?:\.([0-9]+))?(?:e([-+][0-9]+))?$');
    sign := m[1];
    digits := m[2] || coalesce(m[3], '');
    decpt := length(m[2]) + coalesce(m[4]::int, 0);
    WHILE length(digits) > 1 AND left(digits, 1) = '0' LOOP
        digits := substr(digits, 2);
        decpt := decpt - 1;
    END LOOP;
    digits := rtrim(digits, '0');
    IF digits = '' THEN
        RETURN sign || '0.0';
    END IF;
    e := decpt - 1;
    IF e < -4 OR e >= 16 THEN
        RETURN sign || left(digits, 1)
            || CASE WHEN length(digits) > 1 THEN '.' || substr(digits, 2) ELSE '' END
            || 'e' || CASE WHEN e < 0 THEN '-' ELSE '+' END || lpad(abs(e)::text, 2, '0');
    ELSIF decpt <= 0 THEN
        RETURN sign || '0.' || repeat('0', -decpt) || digits;
    ELSIF decpt >= length(digits) THEN
        RETURN sign || digits || repeat('0', decpt - length(digits)) || '.0';
    END IF;
    RETURN sign || left(digits, decpt) || '.' || substr(digits, decpt + 1);
END $$;

-- The exact decimal value of a double (for Python's round(), which rounds that value).
CREATE FUNCTION attune.rx_exact(f float8) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    g float8 := abs(f);
    k int := 0;
    m numeric;
    digits text;
BEGIN
    IF g >= 9223372036854775807::float8 THEN
        PERFORM attune.rx_defer('a float beyond 2**63');
    END IF;
    WHILE g <> trunc(g) LOOP
        g := g * 2;
        k := k + 1;
    END LOOP;
    m := g::bigint::numeric;
    FOR i IN 1 .. k LOOP
        m := m * 5;  -- g / 2**k = g * 5**k / 10**k, exactly
    END LOOP;
    digits := m::text;
    IF k > 0 THEN
        digits := lpad(digits, k + 1, '0');
        digits := left(digits, length(digits) - k) || '.' || right(digits, k);
    END IF;
    RETURN CASE WHEN f < 0 THEN -digits::numeric ELSE digits::numeric END;
END $$;

-- A number or bool as an exact numeric (comparisons: no bound needed).
CREATE FUNCTION attune.rx_num(v jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v) WHEN 'boolean' THEN CASE WHEN v = 'true' THEN 1 ELSE 0 END
                ELSE (v #>> '{}')::numeric END
$$;

CREATE FUNCTION attune.rx_isnum(v jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_typeof(v) IN ('number', 'boolean')
$$;

-- An int or bool as an exact integer (bounded: huge integers go to Python).
CREATE FUNCTION attune.rx_int(v jsonb) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    n numeric;
BEGIN
    IF jsonb_typeof(v) = 'boolean' THEN
        RETURN CASE WHEN v = 'true' THEN 1 ELSE 0 END;
    END IF;
    n := (v #>> '{}')::numeric;
    IF abs(n) >= 1e300 THEN
        PERFORM attune.rx_defer('a very large integer');
    END IF;
    RETURN n;
END $$;

-- + - * / on two numbers: integers exactly, floats as IEEE doubles. Results a double
-- cannot hold (overflow to inf, underflow to 0) go to Python, which has them.
CREATE FUNCTION attune.rx_arith(op text, a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    x float8;
    y float8;
    i numeric;
    j numeric;
BEGIN
    IF attune.rx_kind(a) <> 'float' AND attune.rx_kind(b) <> 'float' THEN
        i := attune.rx_int(a);
        j := attune.rx_int(b);
        IF op = '+' THEN RETURN to_jsonb(i + j);
        ELSIF op = '-' THEN RETURN to_jsonb(i - j);
        ELSIF op = '*' THEN RETURN to_jsonb(i * j);
        END IF;
        IF j = 0 THEN
            PERFORM attune.rx_fail('division by zero');
        END IF;
        IF abs(i) > 9007199254740992 OR abs(j) > 9007199254740992 THEN
            PERFORM attune.rx_defer('dividing integers beyond 2**53');
        END IF;
        RETURN attune.rx_ff(i::float8 / j::float8);
    END IF;
    x := attune.rx_f8(a);
    y := attune.rx_f8(b);
    IF op = '+' THEN RETURN attune.rx_ff(x + y);
    ELSIF op = '-' THEN RETURN attune.rx_ff(x - y);
    END IF;
    IF op = '/' AND y = 0 THEN
        PERFORM attune.rx_fail('float division by zero');
    END IF;
    IF x = 0 OR y = 0 THEN
        RETURN attune.rx_ff(CASE WHEN op = '*' THEN x * y ELSE x / y END);
    END IF;
    IF abs(ln(abs(x)) + CASE WHEN op = '*' THEN ln(abs(y)) ELSE -ln(abs(y)) END) > 690 THEN
        PERFORM attune.rx_defer('a float product near the limits of a double');
    END IF;
    RETURN attune.rx_ff(CASE WHEN op = '*' THEN x * y ELSE x / y END);
END $$;

CREATE FUNCTION attune.rx_textlen(t text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    -- Python bounds what one render builds (1,000,000 characters per string, 50,000,000
    -- in all): big texts go to Python, so its limits decide.
    IF length(t) > 100000 THEN
        PERFORM attune.rx_defer('a text over 100,000 characters');
    END IF;
    RETURN t;
END $$;

CREATE FUNCTION attune.rx_add(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF attune.rx_isnum(a) AND attune.rx_isnum(b) THEN
        RETURN attune.rx_arith('+', a, b);
    ELSIF jsonb_typeof(a) = 'string' AND jsonb_typeof(b) = 'string' THEN
        RETURN to_jsonb(attune.rx_textlen((a #>> '{}') || (b #>> '{}')));
    ELSIF jsonb_typeof(a) = 'array' AND jsonb_typeof(b) = 'array' THEN
        IF jsonb_array_length(a) + jsonb_array_length(b) > 100000 THEN
            PERFORM attune.rx_defer('a list over 100,000 items');
        END IF;
        RETURN a || b;
    END IF;
    PERFORM attune.rx_type_error('''+''', a, b);
    RETURN NULL;
END $$;

CREATE FUNCTION attune.rx_sub(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF attune.rx_isnum(a) AND attune.rx_isnum(b) THEN
        RETURN attune.rx_arith('-', a, b);
    END IF;
    PERFORM attune.rx_type_error('''-''', a, b);
    RETURN NULL;
END $$;

CREATE FUNCTION attune.rx_div(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF attune.rx_isnum(a) AND attune.rx_isnum(b) THEN
        RETURN attune.rx_arith('/', a, b);
    END IF;
    PERFORM attune.rx_type_error('''/''', a, b);
    RETURN NULL;
END $$;

CREATE FUNCTION attune.rx_mul(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    seq jsonb;
    times numeric;
BEGIN
    IF attune.rx_isnum(a) AND attune.rx_isnum(b) THEN
        RETURN attune.rx_arith('*', a, b);
    END IF;
    -- Repetition: a str or list times an int (a bool counts as one).
    IF jsonb_typeof(a) IN ('string', 'array') AND attune.rx_kind(b) IN ('int', 'bool') THEN
        seq := a;
        times := attune.rx_int(b);
    ELSIF jsonb_typeof(b) IN ('string', 'array') AND attune.rx_kind(a) IN ('int', 'bool') THEN
        seq := b;
        times := attune.rx_int(a);
    ELSE
        PERFORM attune.rx_type_error('''*''', a, b);
    END IF;
    times := greatest(times, 0);
    IF jsonb_typeof(seq) = 'string' THEN
        IF length(seq #>> '{}') * times > 100000 THEN
            PERFORM attune.rx_defer('a text over 100,000 characters');
        END IF;
        RETURN to_jsonb(repeat(seq #>> '{}', times::int));
    END IF;
    IF jsonb_array_length(seq) * times > 100000 THEN
        PERFORM attune.rx_defer('a list over 100,000 items');
    END IF;
    RETURN coalesce((SELECT jsonb_agg(e.v ORDER BY r, e.n)
                       FROM generate_series(1, times::int) r,
                            jsonb_array_elements(seq) WITH ORDINALITY AS e(v, n)), '[]'::jsonb);
END $$;

-- // and %: integers exactly, with Python's signs (the divisor's); floats and text
-- formatting ('%s' % x) go to Python.
CREATE FUNCTION attune.rx_intdiv(op text, a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    i numeric;
    j numeric;
    q numeric;
    r numeric;
BEGIN
    IF op = '%' AND jsonb_typeof(a) = 'string' THEN
        PERFORM attune.rx_defer('% formatting of text');
    END IF;
    IF NOT (attune.rx_isnum(a) AND attune.rx_isnum(b)) THEN
        PERFORM attune.rx_type_error(quote_literal(op), a, b);
    END IF;
    IF (jsonb_typeof(b) = 'boolean' AND b = 'false') OR (jsonb_typeof(b) = 'number' AND (b #>> '{}')::numeric = 0) THEN
        PERFORM attune.rx_fail('integer division or modulo by zero');
    END IF;
    IF attune.rx_kind(a) = 'float' OR attune.rx_kind(b) = 'float' THEN
        PERFORM attune.rx_defer('// or % of a float');
    END IF;
    i := attune.rx_int(a);
    j := attune.rx_int(b);
    q := div(i, j);
    r := mod(i, j);
    IF r <> 0 AND sign(r) <> sign(j) THEN
        q := q - 1;
        r := r + j;
    END IF;
    RETURN to_jsonb(CASE WHEN op = '%' THEN r ELSE q END);
END $$;

CREATE FUNCTION attune.rx_floordiv(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT attune.rx_intdiv('//', a, b) $$;

CREATE FUNCTION attune.rx_mod(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT attune.rx_intdiv('%', a, b) $$;

CREATE FUNCTION attune.rx_neg(v jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF attune.rx_kind(v) = 'float' THEN
        RETURN attune.rx_ff(-attune.rx_f8(v));
    ELSIF attune.rx_isnum(v) THEN
        RETURN to_jsonb(-attune.rx_int(v));
    END IF;
    PERFORM attune.rx_fail(format('bad operand type for unary -: %L', attune.rx_pytype(v)));
    RETURN NULL;
END $$;

CREATE FUNCTION attune.rx_pos(v jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF attune.rx_kind(v) = 'float' THEN
        RETURN v;
    ELSIF attune.rx_isnum(v) THEN
        RETURN to_jsonb(attune.rx_int(v));
    END IF;
    PERFORM attune.rx_fail(format('bad operand type for unary +: %L', attune.rx_pytype(v)));
    RETURN NULL;
END $$;

-- ---------------------------------------------------------------- helpers: comparisons

-- Python's == on two defined values: numbers and bools by value (1 == 1.0 == true),
-- lists and dicts item by item, different types never equal.
CREATE FUNCTION attune.rx_equal(a jsonb, b jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    ka text;
    kb text;
BEGIN
    IF a = b THEN
        RETURN true;  -- equal jsonb values are equal Python values
    END IF;
    ka := attune.rx_kind(a);
    kb := attune.rx_kind(b);
    IF ka IN ('int', 'bool', 'float') AND kb IN ('int', 'bool', 'float') THEN
        IF ka = 'int' AND kb = 'int' THEN
            RETURN false;  -- not equal as jsonb: different integers
        ELSIF ka <> 'float' AND kb <> 'float' THEN
            RETURN attune.rx_num(a) = attune.rx_num(b);
        END IF;
        RETURN attune.rx_f8(a) = attune.rx_f8(b);
    ELSIF ka = 'list' AND kb = 'list' THEN
        IF jsonb_array_length(a) <> jsonb_array_length(b) THEN
            RETURN false;
        END IF;
        RETURN NOT EXISTS (SELECT 1 FROM generate_series(0, jsonb_array_length(a) - 1) i
                            WHERE NOT attune.rx_equal(a -> i, b -> i));
    ELSIF ka = 'dict' AND kb = 'dict' THEN
        IF (SELECT count(*) FROM jsonb_object_keys(a)) <> (SELECT count(*) FROM jsonb_object_keys(b)) THEN
            RETURN false;
        END IF;
        RETURN NOT EXISTS (SELECT 1 FROM jsonb_each(a) e
                            WHERE NOT (b ? e.key) OR NOT attune.rx_equal(e.value, b -> e.key));
    END IF;
    RETURN false;
END $$;

-- Python's ordering: numbers (and bools) by value, str by code point, lists
-- lexicographically; anything else is a TypeError.
CREATE FUNCTION attune.rx_order(a jsonb, b jsonb, op text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    ka text := attune.rx_kind(a);
    kb text := attune.rx_kind(b);
    x float8;
    y float8;
    i int;
    n int;
BEGIN
    IF ka IN ('int', 'bool', 'float') AND kb IN ('int', 'bool', 'float') THEN
        IF ka <> 'float' AND kb <> 'float' THEN
            RETURN sign(attune.rx_num(a) - attune.rx_num(b))::int;
        END IF;
        x := attune.rx_f8(a);
        y := attune.rx_f8(b);
        RETURN CASE WHEN x < y THEN -1 WHEN x > y THEN 1 ELSE 0 END;
    ELSIF ka = 'str' AND kb = 'str' THEN
        RETURN CASE WHEN (a #>> '{}') COLLATE "C" < (b #>> '{}') COLLATE "C" THEN -1
                    WHEN a = b THEN 0 ELSE 1 END;
    ELSIF ka = 'list' AND kb = 'list' THEN
        n := least(jsonb_array_length(a), jsonb_array_length(b));
        FOR i IN 0 .. n - 1 LOOP
            IF NOT attune.rx_equal(a -> i, b -> i) THEN
                RETURN attune.rx_order(a -> i, b -> i, op);
            END IF;
        END LOOP;
        RETURN sign(jsonb_array_length(a) - jsonb_array_length(b))::int;
    END IF;
    PERFORM attune.rx_type_error(quote_literal(op), a, b);
    RETURN NULL;
END $$;

CREATE FUNCTION attune.rx_eq(a jsonb, b jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF a IS NULL OR b IS NULL THEN
        PERFORM attune.rx_type_error('''==''', a, b);
    END IF;
    RETURN attune.rx_equal(a, b);
END $$;

CREATE FUNCTION attune.rx_ne(a jsonb, b jsonb) RETURNS boolean
LANGUAGE sql AS $$ SELECT NOT attune.rx_eq(a, b) $$;

CREATE FUNCTION attune.rx_lt(a jsonb, b jsonb) RETURNS boolean
LANGUAGE sql AS $$ SELECT attune.rx_order(a, b, '<') < 0 $$;
CREATE FUNCTION attune.rx_le(a jsonb, b jsonb) RETURNS boolean
LANGUAGE sql AS $$ SELECT attune.rx_order(a, b, '<=') <= 0 $$;
CREATE FUNCTION attune.rx_gt(a jsonb, b jsonb) RETURNS boolean
LANGUAGE sql AS $$ SELECT attune.rx_order(a, b, '>') > 0 $$;
CREATE FUNCTION attune.rx_ge(a jsonb, b jsonb) RETURNS boolean
LANGUAGE sql AS $$ SELECT attune.rx_order(a, b, '>=') >= 0 $$;

-- Python's `needle in haystack`.
CREATE FUNCTION attune.rx_in(needle jsonb, hay jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    kn text := attune.rx_kind(needle);
BEGIN
    PERFORM attune.rx_need(hay, '''in''');
    CASE jsonb_typeof(hay)
    WHEN 'string' THEN
        IF kn <> 'str' THEN
            PERFORM attune.rx_fail(format('''in <string>'' requires string as left operand, not %s',
                                          attune.rx_pytype(needle)));
        END IF;
        RETURN strpos(hay #>> '{}', needle #>> '{}') > 0;
    WHEN 'array' THEN
        IF jsonb_array_length(hay) = 0 THEN
            RETURN false;
        END IF;
        PERFORM attune.rx_need(needle, '''in''');
        IF hay @> jsonb_build_array(needle) AND kn NOT IN ('list', 'dict') THEN
            RETURN true;  -- jsonb containment of a scalar is equality with an item
        END IF;
        RETURN EXISTS (SELECT 1 FROM jsonb_array_elements(hay) e WHERE attune.rx_equal(e, needle));
    WHEN 'object' THEN
        PERFORM attune.rx_need(needle, '''in''');
        IF kn IN ('list', 'dict') THEN
            PERFORM attune.rx_fail(format('unhashable type: %L', attune.rx_pytype(needle)));
        END IF;
        RETURN kn = 'str' AND hay ? (needle #>> '{}');
    ELSE
        PERFORM attune.rx_fail(format('argument of type %L is not iterable', attune.rx_pytype(hay)));
    END CASE;
    RETURN NULL;
END $$;

-- ---------------------------------------------------------------- helpers: truth, text

CREATE FUNCTION attune.rx_truth(v jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, 'a condition');
    CASE attune.rx_kind(v)
    WHEN 'none' THEN RETURN false;
    WHEN 'bool' THEN RETURN v = 'true';
    WHEN 'int' THEN RETURN (v #>> '{}')::numeric <> 0;
    WHEN 'float' THEN RETURN attune.rx_f8(v) <> 0;
    WHEN 'str' THEN RETURN v <> '""';
    WHEN 'list' THEN RETURN v <> '[]';
    ELSE RETURN v <> '{}';
    END CASE;
END $$;

-- Python's str.strip() whitespace.
CREATE FUNCTION attune.rx_whitespace() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT U&'\0009\000A\000B\000C\000D\001C\001D\001E\001F\0020\0085\00A0\1680\2000\2001\2002\2003\2004\2005\2006\2007\2008\2009\200A\2028\2029\202F\205F\3000'
$$;

-- template.truthy: the condition's value; text "false", "no", "0", "none", "null" or
-- blank is false (any case, surrounding whitespace ignored).
CREATE FUNCTION attune.rx_cond(v jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, 'the condition');
    IF jsonb_typeof(v) = 'string' THEN
        -- Lower-casing ASCII is enough: no other character lower-cases into these words.
        RETURN lower(btrim(v #>> '{}', attune.rx_whitespace()) COLLATE "C")
               NOT IN ('', 'false', 'no', '0', 'none', 'null');
    END IF;
    RETURN attune.rx_truth(v);
END $$;

-- json.dumps(value, ensure_ascii=False), floats as Python writes them.
CREATE FUNCTION attune.rx_dumps(v jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    CASE attune.rx_kind(v)
    WHEN 'float' THEN RETURN attune.rx_repr(v);
    WHEN 'list' THEN
        IF strpos(v::text, '.') = 0 THEN RETURN v::text; END IF;
        RETURN '[' || coalesce((SELECT string_agg(attune.rx_dumps(e), ', ' ORDER BY n)
                                  FROM jsonb_array_elements(v) WITH ORDINALITY AS a(e, n)), '') || ']';
    WHEN 'dict' THEN
        IF strpos(v::text, '.') = 0 THEN RETURN v::text; END IF;
        RETURN '{' || coalesce((SELECT string_agg(to_jsonb(key)::text || ': ' || attune.rx_dumps(value), ', ')
                                  FROM jsonb_each(v)), '') || '}';
    ELSE RETURN v::text;
    END CASE;
END $$;

-- How a value is written into text (`~`, {{ }} inside text): str as is, True/False/None,
-- numbers as Python prints them, lists and dicts as JSON.
CREATE FUNCTION attune.rx_text(v jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, 'a value written as text');
    CASE attune.rx_kind(v)
    WHEN 'str' THEN RETURN v #>> '{}';
    WHEN 'bool' THEN RETURN CASE WHEN v = 'true' THEN 'True' ELSE 'False' END;
    WHEN 'none' THEN RETURN 'None';
    WHEN 'int' THEN
        IF length(v::text) > 4000 THEN
            PERFORM attune.rx_defer('an integer of over 4,000 digits');  -- Python refuses str()
        END IF;
        RETURN v::text;
    ELSE RETURN attune.rx_textlen(attune.rx_dumps(v));
    END CASE;
END $$;

-- Python's str(): lists and dicts print as Python reprs, which only Python writes.
CREATE FUNCTION attune.rx_str(v jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(v) IN ('array', 'object') THEN
        PERFORM attune.rx_defer('str() of a list or mapping');
    END IF;
    RETURN attune.rx_text(v);
END $$;

-- a ~ b ~ ..., and text with {{ }} in it: the parts (tags) written as text, joined.
CREATE FUNCTION attune.rx_concat(tags jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT to_jsonb(attune.rx_textlen(coalesce(string_agg(attune.rx_text(t -> 0), '' ORDER BY n), '')))
      FROM jsonb_array_elements(tags) WITH ORDINALITY AS e(t, n)
$$;

CREATE FUNCTION attune.rx_render(tags jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT attune.rx_concat(tags) $$;

-- The rendered action_params as the Python engine stores them: floats written as
-- Python writes them, then read back by PostgreSQL (1e16 is stored as an integer).
CREATE FUNCTION attune.rx_out(v jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF strpos(v::text, '.') = 0 THEN
        RETURN v;
    END IF;
    CASE attune.rx_kind(v)
    WHEN 'float' THEN RETURN attune.rx_repr(v)::jsonb;
    WHEN 'list' THEN
        RETURN coalesce((SELECT jsonb_agg(attune.rx_out(e) ORDER BY n)
                           FROM jsonb_array_elements(v) WITH ORDINALITY AS a(e, n)), '[]'::jsonb);
    WHEN 'dict' THEN
        RETURN coalesce((SELECT jsonb_object_agg(key, attune.rx_out(value)) FROM jsonb_each(v)), '{}'::jsonb);
    ELSE RETURN v;
    END CASE;
END $$;

-- ---------------------------------------------------------------- helpers: lookups

-- x.name and x['name'] (the compiler keeps Python's method names off this path).
CREATE FUNCTION attune.rx_attr(v jsonb, name text) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, format('.%s', name));
    IF jsonb_typeof(v) = 'object' THEN
        RETURN v -> name;  -- NULL (undefined) when missing
    END IF;
    RETURN NULL;
END $$;

-- x[n]: an item of a list, a character of a str (negative from the end); undefined
-- when out of range or for other types.
CREATE FUNCTION attune.rx_item(v jsonb, key jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    n numeric := (key #>> '{}')::numeric;
    len int;
BEGIN
    PERFORM attune.rx_need(v, '[]');
    IF jsonb_typeof(v) NOT IN ('array', 'string') OR abs(n) > 2147483647 THEN
        RETURN NULL;
    END IF;
    len := CASE WHEN jsonb_typeof(v) = 'array' THEN jsonb_array_length(v) ELSE length(v #>> '{}') END;
    IF n < 0 THEN
        n := n + len;
    END IF;
    IF n < 0 OR n >= len THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) = 'array' THEN
        RETURN v -> n::int;
    END IF;
    RETURN to_jsonb(substr(v #>> '{}', n::int + 1, 1));
END $$;

-- A legacy criterion's field: a dotted path into event.payload (digits index lists).
CREATE FUNCTION attune.rx_field(scope jsonb, path jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    node jsonb := scope -> 'event' -> 'payload';
    part text;
BEGIN
    FOR part IN SELECT p FROM jsonb_array_elements_text(path) WITH ORDINALITY AS a(p, n) ORDER BY n LOOP
        IF jsonb_typeof(node) = 'object' AND node ? part THEN
            node := node -> part;
        ELSIF jsonb_typeof(node) = 'array' AND part ~ '^[0-9]+$'
              AND part::numeric < jsonb_array_length(node) THEN
            node := node -> part::int;
        ELSE
            RETURN NULL;
        END IF;
    END LOOP;
    RETURN node;
END $$;

-- equals / not_equals / contains (engine/rules.py _criterion): a missing field equals
-- nothing and contains nothing.
CREATE FUNCTION attune.rx_criterion(value jsonb, op text, wanted jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF op = 'equals' THEN
        RETURN value IS NOT NULL AND attune.rx_equal(value, wanted);
    ELSIF op = 'not_equals' THEN
        RETURN value IS NULL OR NOT attune.rx_equal(value, wanted);
    ELSIF jsonb_typeof(value) = 'string' THEN
        RETURN jsonb_typeof(wanted) = 'string' AND strpos(value #>> '{}', wanted #>> '{}') > 0;
    ELSIF jsonb_typeof(value) = 'array' THEN
        RETURN EXISTS (SELECT 1 FROM jsonb_array_elements(value) e WHERE attune.rx_equal(e, wanted));
    ELSIF jsonb_typeof(value) = 'object' THEN
        RETURN jsonb_typeof(wanted) = 'string' AND value ? (wanted #>> '{}');
    END IF;
    RETURN false;
END $$;

-- ---------------------------------------------------------------- helpers: filters, tests

CREATE FUNCTION attune.rx_f_length(v jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, 'length');
    CASE jsonb_typeof(v)
    WHEN 'string' THEN RETURN to_jsonb(length(v #>> '{}'));
    WHEN 'array' THEN RETURN to_jsonb(jsonb_array_length(v));
    WHEN 'object' THEN RETURN to_jsonb((SELECT count(*) FROM jsonb_object_keys(v)));
    ELSE PERFORM attune.rx_fail(format('object of type %L has no len()', attune.rx_pytype(v)));
    END CASE;
    RETURN NULL;
END $$;

-- The items a Python iteration yields: characters of a str, items of a list, keys of a dict.
CREATE FUNCTION attune.rx_iter(v jsonb, what text) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, what);
    CASE jsonb_typeof(v)
    WHEN 'array' THEN RETURN v;
    WHEN 'string' THEN
        RETURN coalesce((SELECT jsonb_agg(c ORDER BY n) FROM regexp_split_to_table(v #>> '{}', '')
                                 WITH ORDINALITY AS s(c, n)), '[]'::jsonb);
    WHEN 'object' THEN
        RETURN coalesce((SELECT jsonb_agg(k) FROM jsonb_object_keys(v) k), '[]'::jsonb);
    ELSE PERFORM attune.rx_fail(format('%s: %L object is not iterable', what, attune.rx_pytype(v)));
    END CASE;
    RETURN NULL;
END $$;

CREATE FUNCTION attune.rx_f_list(v jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT attune.rx_iter(v, 'list') $$;

CREATE FUNCTION attune.rx_f_first(v jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT attune.rx_iter(v, 'first') -> 0 $$;

CREATE FUNCTION attune.rx_f_last(v jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT attune.rx_iter(v, 'last') -> -1 $$;

CREATE FUNCTION attune.rx_f_string(v jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT to_jsonb(attune.rx_str(v)) $$;

CREATE FUNCTION attune.rx_f_to_json(v jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.rx_need(v, 'to_json');
    RETURN to_jsonb(attune.rx_textlen(attune.rx_dumps(v)));
END $$;

CREATE FUNCTION attune.rx_f_abs(v jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF attune.rx_kind(v) = 'float' THEN
        RETURN CASE WHEN (v #>> '{}')::numeric < 0 THEN attune.rx_neg(v) ELSE v END;
    ELSIF attune.rx_isnum(v) THEN
        RETURN to_jsonb(abs(attune.rx_int(v)));
    END IF;
    PERFORM attune.rx_fail(format('bad operand type for abs(): %L', attune.rx_pytype(v)));
    RETURN NULL;
END $$;

-- lower / upper: str(value) re-cased; Python's Unicode case rules only for ASCII here.
CREATE FUNCTION attune.rx_f_case(v jsonb, up boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    t text := attune.rx_str(v);
BEGIN
    IF t !~ '^[\x01-\x7f]*$' THEN
        PERFORM attune.rx_defer('lower/upper of non-ASCII text');
    END IF;
    RETURN to_jsonb(CASE WHEN up THEN upper(t COLLATE "C") ELSE lower(t COLLATE "C") END);
END $$;

CREATE FUNCTION attune.rx_f_trim(v jsonb, chars text) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT to_jsonb(btrim(attune.rx_str(v), coalesce(chars, attune.rx_whitespace())))
$$;

CREATE FUNCTION attune.rx_f_default(v jsonb, fallback jsonb, on_false boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF v IS NULL OR (on_false AND NOT attune.rx_truth(v)) THEN
        RETURN fallback -> 0;
    END IF;
    RETURN v;
END $$;

-- Python's float() grammar for text (ASCII; surrounding whitespace allowed): the number
-- as numeric, 'inf'/'nan' for those words, NULL when float() would raise ValueError.
CREATE FUNCTION attune.rx_parse_float(t text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s text := btrim(t, E' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f');
BEGIN
    IF lower(s COLLATE "C") IN ('inf', '+inf', '-inf', 'infinity', '+infinity', '-infinity') THEN
        RETURN 'inf';
    ELSIF lower(s COLLATE "C") IN ('nan', '+nan', '-nan') THEN
        RETURN 'nan';
    ELSIF s ~ '^[+-]?([0-9](_?[0-9])*(\.([0-9](_?[0-9])*)?)?|\.[0-9](_?[0-9])*)([eE][+-]?[0-9](_?[0-9])*)?$' THEN
        RETURN replace(s, '_', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION attune.rx_f_int(v jsonb, fallback jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    s text;
    p text;
    n numeric;
    f float8;
BEGIN
    PERFORM attune.rx_need(v, 'int');
    CASE attune.rx_kind(v)
    WHEN 'int', 'bool' THEN RETURN to_jsonb(attune.rx_int(v));
    WHEN 'float' THEN
        f := attune.rx_f8(v);
        IF abs(f) >= 9223372036854775807::float8 THEN
            PERFORM attune.rx_defer('int() of a float beyond 2**63');
        END IF;
        RETURN to_jsonb(trunc(f)::bigint);
    WHEN 'str' THEN
        s := v #>> '{}';
        IF s !~ '^[\x01-\x7f]*$' OR length(s) > 300 THEN
            PERFORM attune.rx_defer('int() of non-ASCII or long text');
        END IF;
        s := btrim(s, E' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f');
        IF s ~ '^[+-]?[0-9](_?[0-9])*$' THEN
            RETURN to_jsonb(replace(s, '_', '')::numeric);
        END IF;
        p := attune.rx_parse_float(s);
        IF p IS NULL OR p IN ('inf', 'nan') THEN
            RETURN fallback -> 0;  -- int(float(s)) raised, which int() turns into the default
        END IF;
        n := p::numeric;
        IF abs(n) < 1e-300 THEN
            RETURN '0'::jsonb;
        ELSIF abs(n) > 1e300 THEN
            PERFORM attune.rx_defer('int() of a huge number');
        END IF;
        f := n::float8;
        IF abs(f) >= 9223372036854775807::float8 THEN
            PERFORM attune.rx_defer('int() of a float beyond 2**63');
        END IF;
        RETURN to_jsonb(trunc(f)::bigint);
    ELSE RETURN fallback -> 0;  -- None, lists and dicts: TypeError, the default
    END CASE;
END $$;

CREATE FUNCTION attune.rx_f_float(v jsonb, fallback jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    s text;
    p text;
BEGIN
    PERFORM attune.rx_need(v, 'float');
    CASE attune.rx_kind(v)
    WHEN 'float' THEN RETURN v;
    WHEN 'int', 'bool' THEN
        IF abs(attune.rx_int(v)) > 1e300 THEN
            PERFORM attune.rx_defer('float() of a huge integer');
        END IF;
        RETURN attune.rx_ff(attune.rx_int(v)::float8);
    WHEN 'str' THEN
        s := v #>> '{}';
        IF s !~ '^[\x01-\x7f]*$' OR length(s) > 300 THEN
            PERFORM attune.rx_defer('float() of non-ASCII or long text');
        END IF;
        p := attune.rx_parse_float(s);
        IF p IS NULL THEN
            RETURN fallback -> 0;
        ELSIF p IN ('inf', 'nan') THEN
            PERFORM attune.rx_defer('an infinite float');
        END IF;
        IF p::numeric <> 0 AND (abs(p::numeric) < 1e-300 OR abs(p::numeric) > 1e300) THEN
            PERFORM attune.rx_defer('a float near the limits of a double');
        END IF;
        RETURN attune.rx_ff(p::numeric::float8);
    ELSE RETURN fallback -> 0;
    END CASE;
END $$;

-- Jinja's round(value, precision, method): common is Python's round() (half to even on
-- the double's exact value); ceil and floor scale, round and divide as Jinja does.
CREATE FUNCTION attune.rx_f_round(v jsonb, places jsonb, method text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    p int := (places #>> '{}')::int;
    scale numeric := 10::numeric ^ p;
    x numeric;
    r numeric;
    f float8;
BEGIN
    IF NOT attune.rx_isnum(v) THEN
        PERFORM attune.rx_fail(format('type %s doesn''t define __round__ method', attune.rx_pytype(v)));
    END IF;
    IF attune.rx_kind(v) <> 'float' THEN
        IF method = 'common' THEN
            RETURN to_jsonb(attune.rx_int(v));
        END IF;
        x := attune.rx_int(v) * scale;
        IF abs(x) > 9007199254740992 THEN
            PERFORM attune.rx_defer('round() of a large integer');
        END IF;
        RETURN attune.rx_ff(x::float8 / scale::float8);
    END IF;
    f := attune.rx_f8(v);
    IF method = 'common' THEN
        x := attune.rx_exact(f) * scale;
        r := trunc(x);
        IF abs(x - r) > 0.5 OR (abs(x - r) = 0.5 AND mod(r, 2) <> 0) THEN
            r := r + sign(x);
        END IF;
        RETURN attune.rx_ff((r::text || 'e-' || p)::numeric::float8);
    END IF;
    IF abs(f) > 1e280 THEN
        PERFORM attune.rx_defer('round() of a huge float');
    END IF;
    f := f * scale::float8;
    f := CASE WHEN method = 'ceil' THEN ceil(f) ELSE floor(f) END;
    IF abs(f) > 9007199254740992 THEN
        PERFORM attune.rx_defer('round() of a large float');
    END IF;
    RETURN attune.rx_ff(f / scale::float8);
END $$;

CREATE FUNCTION attune.rx_f_join(v jsonb, sep text) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT to_jsonb(attune.rx_textlen(coalesce(string_agg(attune.rx_str(e), sep ORDER BY n), '')))
      FROM jsonb_array_elements(attune.rx_iter(v, 'join')) WITH ORDINALITY AS a(e, n)
$$;

-- Tests that look at the type only (`is defined`, `is number`, ...).
CREATE FUNCTION attune.rx_is(v jsonb, test text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    k text := attune.rx_kind(v);
BEGIN
    CASE test
    WHEN 'defined' THEN RETURN k <> 'undefined';
    WHEN 'undefined' THEN RETURN k = 'undefined';
    WHEN 'none' THEN RETURN k = 'none';
    WHEN 'boolean' THEN RETURN k = 'bool';
    WHEN 'true' THEN RETURN k = 'bool' AND v = 'true';
    WHEN 'false' THEN RETURN k = 'bool' AND v = 'false';
    WHEN 'integer' THEN RETURN k = 'int';
    WHEN 'float' THEN RETURN k = 'float';
    WHEN 'number' THEN RETURN k IN ('int', 'float', 'bool');
    WHEN 'string' THEN RETURN k = 'str';
    WHEN 'mapping' THEN RETURN k = 'dict';
    WHEN 'sequence' THEN RETURN k IN ('str', 'list', 'dict');
    WHEN 'iterable' THEN
        PERFORM attune.rx_need(v, 'is iterable');
        RETURN k IN ('str', 'list', 'dict');
    END CASE;
    RETURN NULL;
END $$;

-- `is even` / `is odd`: value % 2 == 0 / == 1.
CREATE FUNCTION attune.rx_parity(v jsonb, odd int) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    f float8;
BEGIN
    IF attune.rx_kind(v) = 'float' THEN
        f := attune.rx_f8(v);
        IF f <> trunc(f) THEN
            RETURN false;
        ELSIF abs(f) >= 9007199254740992 THEN
            RETURN odd = 0;
        END IF;
        RETURN abs(mod(trunc(f)::bigint, 2)) = odd;
    END IF;
    RETURN (attune.rx_intdiv('%', v, '2'::jsonb) #>> '{}')::int = odd;
END $$;

CREATE FUNCTION attune.rx_divisible(v jsonb, num jsonb) RETURNS boolean
LANGUAGE sql AS $$ SELECT (attune.rx_intdiv('%', v, num) #>> '{}')::numeric = 0 $$;

-- ---------------------------------------------------------------- evaluating a rule

-- One rule against one event's scope: 'skip', 'fire' (with the parameters), 'error' (the
-- condition or a template failed: why) or 'defer' (a value only Python treats exactly).
-- match_sql/params_sql come from attune.rule, written by registration (the owner): this
-- function is the owner's alone (no grant), called by emit_event.
CREATE FUNCTION attune.rule_evaluate(
    rule_ref text, match_sql text, params_sql text, args jsonb, scope jsonb,
    OUT outcome text, OUT parameters jsonb, OUT error jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    stage text := 'conditions';
    hit boolean;
BEGIN
    IF match_sql IS NOT NULL THEN
        EXECUTE 'SELECT ' || match_sql INTO hit USING scope, args;
        IF NOT hit THEN
            outcome := 'skip';
            RETURN;
        END IF;
    END IF;
    stage := 'action_params';
    EXECUTE 'SELECT ' || params_sql INTO parameters USING scope, args;
    outcome := 'fire';
EXCEPTION
    WHEN SQLSTATE 'AT001' THEN
        outcome := 'defer';
        parameters := NULL;
        error := jsonb_build_object('type', 'Deferred', 'message', SQLERRM);
    WHEN OTHERS THEN
        outcome := 'error';
        parameters := NULL;
        error := jsonb_build_object(
            'type', CASE WHEN stage = 'conditions' THEN 'ConditionError' ELSE 'TemplateError' END,
            'message', format('rule %L %s: %s', rule_ref, stage, SQLERRM));
END $$;

-- event.created as the Python engine writes it (datetime.isoformat() in UTC).
CREATE FUNCTION attune.iso_utc(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM t)::bigint % 1000000 <> 0
                THEN to_char(t AT TIME ZONE 'UTC', '.US') ELSE '' END
        || '+00:00'
$$;

-- Validate and store an event and, in the same transaction, give each matching enabled
-- rule its enforcement and execution. Rules on the worker path (and pairs deferred to
-- Python) are named in deferred_rules; the event is then `pending` until a worker has
-- matched them. Exactly once: each (rule, event) is decided here, by one path.
CREATE OR REPLACE FUNCTION attune.emit_event(trigger_ref text, payload jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    schema jsonb;
    problem text;
    new_id bigint;
    created timestamptz := now();
    ev jsonb;
    r record;
    res record;
    deferred text[] := '{}';
    xid bigint;
    made jsonb := '[]';  -- enforcements: [rule, execution, status, error]
    e record;
BEGIN
    SELECT t.output INTO schema FROM attune.trigger t WHERE t.ref = trigger_ref;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown trigger %', quote_literal(trigger_ref)
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'register its pack first: attune-pg packs register PATH';
    END IF;
    IF payload IS NULL OR jsonb_typeof(payload) <> 'object' THEN
        RAISE EXCEPTION 'trigger %: the payload must be a JSON object, got %',
            quote_literal(trigger_ref), coalesce(jsonb_typeof(payload), 'null')
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM attune.json_check(payload, format('payload of trigger %s', quote_literal(trigger_ref)));
    problem := attune.json_schema_error(schema, payload, 'payload');
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'trigger %: %', quote_literal(trigger_ref), problem
            USING ERRCODE = 'check_violation';
    END IF;
    new_id := nextval(pg_get_serial_sequence('attune.event', 'id'));
    ev := jsonb_build_object('id', new_id, 'trigger_ref', trigger_ref, 'payload', payload,
                             'created', attune.iso_utc(created));
    FOR r IN
        SELECT u.ref, u.action_ref, u.match_path, u.match_sql, u.params_sql, u.match_args,
               coalesce(p.config, '{}'::jsonb) AS config
          FROM attune.rule u JOIN attune.pack p ON p.ref = u.pack_ref
         WHERE u.enabled AND u.trigger_ref = trigger_ref
         ORDER BY u.ref
    LOOP
        IF r.match_path <> 'sql' THEN
            deferred := deferred || r.ref;
            CONTINUE;
        END IF;
        res := attune.rule_evaluate(r.ref, r.match_sql, r.params_sql, r.match_args,
                   jsonb_build_object('event', ev, 'trigger', ev, 'rule', jsonb_build_object('ref', r.ref),
                                      'pack', jsonb_build_object('config', r.config)));
        IF res.outcome = 'defer' THEN
            deferred := deferred || r.ref;
        ELSIF res.outcome = 'error' THEN
            made := made || jsonb_build_array(jsonb_build_array(r.ref, NULL, 'failed', res.error));
        ELSIF res.outcome = 'fire' THEN
            made := made || jsonb_build_array(jsonb_build_array(r.ref, r.action_ref, 'fire', res.parameters));
        END IF;
    END LOOP;
    INSERT INTO attune.event (id, trigger_ref, payload, status, processed_at, deferred_rules, created_at)
    OVERRIDING SYSTEM VALUE
    VALUES (new_id, trigger_ref, payload,
            CASE WHEN cardinality(deferred) = 0 THEN 'processed' ELSE 'pending' END,
            CASE WHEN cardinality(deferred) = 0 THEN created END, deferred, created);
    FOR e IN SELECT x ->> 0 AS rule, x ->> 1 AS action, x ->> 2 AS what, x -> 3 AS detail
               FROM jsonb_array_elements(made) x LOOP
        IF e.what = 'failed' THEN
            INSERT INTO attune.enforcement (rule_ref, event_id, status, error)
            VALUES (e.rule, new_id, 'failed', e.detail);
            CONTINUE;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM attune.workflow_definition d WHERE d.ref = e.action AND d.enabled)
           AND NOT EXISTS (SELECT 1 FROM attune.action a
                            WHERE a.ref = e.action AND a.enabled AND a.runner <> 'workflow') THEN
            INSERT INTO attune.enforcement (rule_ref, event_id, status, error)
            VALUES (e.rule, new_id, 'failed', jsonb_build_object('type', 'UnknownAction',
                    'message', format('rule %L: %L is not registered or is disabled', e.rule, e.action)));
            CONTINUE;
        END IF;
        BEGIN
            INSERT INTO attune.workflow_execution (workflow_ref, parameters, requested_by)
            VALUES (e.action, e.detail, 'rule:' || e.rule) RETURNING id INTO xid;
            INSERT INTO attune.enforcement (rule_ref, event_id, workflow_execution_id, status)
            VALUES (e.rule, new_id, xid, 'succeeded');
        EXCEPTION WHEN OTHERS THEN
            -- The execution was refused (e.g. parameters over the JSON limits): the rule
            -- did not start it, and says why; the event and the other rules stand.
            INSERT INTO attune.enforcement (rule_ref, event_id, status, error)
            VALUES (e.rule, new_id, 'failed', jsonb_build_object('type', 'StartError',
                    'message', format('rule %L: %s', e.rule, SQLERRM)));
        END;
    END LOOP;
    PERFORM pg_notify('attune_event', '');
    RETURN new_id;
END $$;

-- ---------------------------------------------------------------- slots in one order

-- A holder that ends no longer releases its slot at once (which locked the counters of a
-- batch in row order: two batches ending holders of keys a and b in crossed order
-- deadlocked). It queues the release; the queue is applied in (policy, key) order before
-- the transaction's next slot acquire, or at commit (a deferred constraint trigger), so
-- the counter rows a transaction releases are always locked in one global order.
CREATE FUNCTION attune.policy_release_later(p_ref text, p_key text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('attune.slot_releases',
        (coalesce(nullif(current_setting('attune.slot_releases', true), ''), '[]')::jsonb
         || jsonb_build_array(jsonb_build_array(p_ref, p_key)))::text, true);
END $$;

CREATE FUNCTION attune.policy_release_queued() RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    queue text := current_setting('attune.slot_releases', true);
    q record;
    n int := 0;
BEGIN
    IF queue IS NULL OR queue = '' OR queue = '[]' THEN
        RETURN 0;
    END IF;
    PERFORM set_config('attune.slot_releases', '', true);
    FOR q IN SELECT x ->> 0 AS ref, x ->> 1 AS key FROM jsonb_array_elements(queue::jsonb) x
              ORDER BY (x ->> 0) COLLATE "C", (x ->> 1) COLLATE "C" LOOP
        PERFORM attune.policy_release(q.ref, q.key);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION attune.policy_release_at_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM attune.policy_release_queued();
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER workflow_execution_90_slot_release
    AFTER UPDATE ON attune.workflow_execution DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.policy_slot AND NOT NEW.policy_slot)
    EXECUTE FUNCTION attune.policy_release_at_commit();
CREATE CONSTRAINT TRIGGER task_execution_90_slot_release
    AFTER UPDATE ON attune.task_execution DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.policy_slot AND NOT NEW.policy_slot)
    EXECUTE FUNCTION attune.policy_release_at_commit();

CREATE OR REPLACE FUNCTION attune.policy_acquire(p_ref text, p_key text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    limit_ int;
    got int;
BEGIN
    PERFORM attune.policy_release_queued();  -- this transaction's releases first, in order
    SELECT threshold INTO limit_ FROM attune.policy WHERE ref = p_ref AND enabled;
    IF NOT FOUND THEN
        RETURN true;  -- disabled or removed meanwhile: no limit
    END IF;
    INSERT INTO attune.concurrency_slot AS s (policy_ref, key, used) VALUES (p_ref, p_key, 1)
    ON CONFLICT (policy_ref, key) DO UPDATE SET used = s.used + 1 WHERE s.used < limit_
    RETURNING used INTO got;
    RETURN got IS NOT NULL;
END $$;

CREATE OR REPLACE FUNCTION attune.policy_track_workflow_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('succeeded', 'failed', 'canceled', 'timed_out') THEN
        NEW.delayed := false;
        IF OLD.policy_slot THEN
            NEW.policy_slot := false;
            PERFORM attune.policy_release_later(OLD.policy_ref, OLD.policy_key);
        END IF;
    ELSIF OLD.status IN ('succeeded', 'failed', 'canceled', 'timed_out') AND NOT OLD.policy_slot THEN
        IF NOT attune.policy_acquire(OLD.policy_ref, OLD.policy_key) THEN
            RAISE EXCEPTION 'execution %: concurrency policy % is at its threshold; retry it once another execution ends',
                NEW.id, OLD.policy_ref USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        NEW.policy_slot := true;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION attune.policy_track_task_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pol attune.policy;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT * INTO pol FROM attune.policy p WHERE p.ref = NEW.policy_ref AND p.enabled;
        IF NOT FOUND THEN
            NEW.policy_ref := NULL;
            RETURN NEW;
        END IF;
        NEW.policy_ref := pol.ref;
        NEW.policy_key := attune.policy_key(pol.attributes, NEW.input, '{}');
        NEW.policy_slot := false;
        NEW.delayed := false;
    ELSE
        IF OLD.policy_ref IS NULL OR OLD.status IS NOT DISTINCT FROM NEW.status THEN
            RETURN NEW;
        END IF;
        IF NEW.status NOT IN ('scheduled', 'running') THEN
            IF OLD.delayed THEN
                NEW.delayed := false;  -- e.g. held by a pause: it waits again on resume
                NEW.run_at := now();
            END IF;
            IF OLD.policy_slot THEN
                NEW.policy_slot := false;
                PERFORM attune.policy_release_later(OLD.policy_ref, OLD.policy_key);
            END IF;
            RETURN NEW;
        END IF;
        IF NEW.status <> 'scheduled' OR NEW.policy_slot OR NEW.delayed THEN
            RETURN NEW;
        END IF;
        SELECT * INTO pol FROM attune.policy p WHERE p.ref = NEW.policy_ref;
    END IF;
    IF NEW.status <> 'scheduled' THEN
        RETURN NEW;  -- pending: a slot is taken when it is scheduled
    END IF;
    IF attune.policy_acquire(NEW.policy_ref, NEW.policy_key) THEN
        NEW.policy_slot := true;
        IF NEW.run_at = 'infinity' THEN
            NEW.run_at := now();
        END IF;
    ELSIF pol.on_limit = 'delay' THEN
        NEW.delayed := true;
        NEW.run_at := 'infinity';
    ELSE
        NEW.error := jsonb_build_object(
            'type', 'ConcurrencyPolicy',
            'message', format('canceled by concurrency policy %s: %s tasks of %s%s are already running',
                              pol.ref, pol.threshold, NEW.action_ref,
                              CASE WHEN NEW.policy_key <> '' THEN ' with ' || NEW.policy_key ELSE '' END));
    END IF;
    RETURN NEW;
END $$;

-- After policies changed (registration) or by hand: recount every counter (0009), after
-- applying this transaction's queued releases (else they would be counted twice).
CREATE OR REPLACE FUNCTION attune.policy_repair() RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    released int := 0;
    n int;
    w record;
BEGIN
    PERFORM attune.policy_release_queued();  -- this transaction's releases, then the recount
    LOCK TABLE attune.concurrency_slot IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM attune.concurrency_slot;
    INSERT INTO attune.concurrency_slot (policy_ref, key, used)
    SELECT policy_ref, policy_key, count(*) FROM (
        SELECT policy_ref, policy_key FROM attune.workflow_execution
         WHERE policy_slot AND status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')
        UNION ALL
        SELECT policy_ref, policy_key FROM attune.task_execution
         WHERE policy_slot AND status IN ('scheduled', 'running')) held
     GROUP BY policy_ref, policy_key;
    -- Waiters of a policy that is no longer enabled are free to go.
    UPDATE attune.workflow_execution e SET delayed = false, policy_ref = NULL, policy_key = NULL
     WHERE e.delayed AND NOT EXISTS (SELECT 1 FROM attune.policy p WHERE p.ref = e.policy_ref AND p.enabled);
    GET DIAGNOSTICS n = ROW_COUNT;
    released := released + n;
    UPDATE attune.task_execution t SET delayed = false, policy_ref = NULL, policy_key = NULL, run_at = now()
     WHERE t.delayed AND NOT EXISTS (SELECT 1 FROM attune.policy p WHERE p.ref = t.policy_ref AND p.enabled);
    GET DIAGNOSTICS n = ROW_COUNT;
    released := released + n;
    -- Free slots (a raised threshold, a recount) go to the first waiters.
    FOR w IN
        SELECT 'workflow' AS kind, e.id, e.policy_ref, e.policy_key FROM attune.workflow_execution e
         WHERE e.delayed AND e.status = 'requested'
        UNION ALL
        SELECT 'task', t.id, t.policy_ref, t.policy_key FROM attune.task_execution t
         WHERE t.delayed AND t.status = 'scheduled'
        ORDER BY 1, 3, 4, 2
    LOOP
        IF attune.policy_acquire(w.policy_ref, w.policy_key) THEN
            IF w.kind = 'workflow' THEN
                UPDATE attune.workflow_execution SET delayed = false, policy_slot = true WHERE id = w.id;
            ELSE
                UPDATE attune.task_execution SET delayed = false, policy_slot = true, run_at = now() WHERE id = w.id;
            END IF;
            released := released + 1;
        END IF;
    END LOOP;
    IF released > 0 THEN
        PERFORM pg_notify('attune_start', '');
        PERFORM pg_notify('attune_work', '');
    END IF;
    RETURN released;
END $$;

-- ---------------------------------------------------------------- views, rights

CREATE OR REPLACE VIEW attune.rule_catalog AS
SELECT r.ref,
       r.pack_ref,
       r.label,
       r.description,
       r.trigger_ref,
       r.trigger_params,
       r.conditions,
       r.action_ref,
       r.action_params,
       r.enabled,
       r.source_file,
       r.updated_at,
       a.enforcements,
       a.executions,
       a.failures,
       a.last_fired_at,
       r.match_path,
       r.match_note
  FROM attune.rule r
  JOIN attune.rule_activity a ON a.rule_ref = r.ref;

-- Trigger functions run as their owner (see 0005/0009); the ones replaced above too.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'attune'::regnamespace
           AND p.prorettype = 'pg_catalog.trigger'::regtype
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp', fn);
    END LOOP;
    -- The helpers and the evaluator are the owner's: emit_event (SECURITY DEFINER) calls them.
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'attune'::regnamespace
           AND (p.proname LIKE 'rx\_%' OR p.proname IN ('rule_evaluate', 'iso_utc',
                'policy_release_later', 'policy_release_queued'))
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END $$;

ALTER FUNCTION attune.emit_event(text, jsonb)
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
ALTER FUNCTION attune.policy_repair()
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
ALTER FUNCTION attune.rule_evaluate(text, text, text, jsonb, jsonb)
    SET search_path = pg_catalog, attune, pg_temp;
