-- Host failure (issue 14 part 4): when the controller declared a host down (NULL while it
-- reports), how many HA instances were restarted elsewhere since, and each instance's HA
-- policy ('restart' or NULL). Portable DDL: runs unchanged on SQLite and PostgreSQL.

ALTER TABLE hosts ADD COLUMN down_since TEXT;
ALTER TABLE hosts ADD COLUMN ha_restarted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN ha TEXT;
