-- name: kv_set
-- Create or replace a key, recording who changed it.
INSERT INTO attune.kv (key, value, secret) VALUES (%(key)s, %(value)s, %(secret)s)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, secret = EXCLUDED.secret,
       updated_by = current_user, updated_at = now()

-- name: kv_get
SELECT value, secret FROM attune.kv WHERE key = %(key)s

-- name: kv_list
-- Every row (whose key starts with `prefix`, if given), by key; secrets without value.
SELECT key, CASE WHEN secret THEN NULL ELSE value END AS value, secret, updated_by, updated_at
  FROM attune.kv WHERE %(prefix)s::text IS NULL OR starts_with(key, %(prefix)s)
 ORDER BY key

-- name: kv_delete
DELETE FROM attune.kv WHERE key = %(key)s

-- name: kv_secret_get
-- The value of a secret key (what a worker swaps a token for, just before the action).
SELECT value FROM attune.kv WHERE key = %(key)s AND secret
