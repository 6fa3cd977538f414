-- Host failure (issue 14 part 4): when the controller declared a host down (NULL while it
-- reports), and the instances' HA policy ('restart' or NULL). Portable DDL: runs unchanged on SQLite and PostgreSQL.

ALTER TABLE hosts ADD COLUMN down_since TEXT;
ALTER TABLE instances ADD COLUMN ha TEXT;
