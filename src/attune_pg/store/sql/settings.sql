-- name: setting_list
-- Every setting (attune.setting): the limits the owner configures.
SELECT name, value FROM attune.setting ORDER BY name
