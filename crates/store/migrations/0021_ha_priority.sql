-- HA restart priorities (issue 14): when a host dies its HA instances are restarted higher
-- priority first (0 to 1000; high 900, medium 500, low 100). Portable DDL: runs unchanged on
-- SQLite and PostgreSQL.

ALTER TABLE instances ADD COLUMN ha_priority BIGINT NOT NULL DEFAULT 500;
