-- Snapshots replicated off their host (issue 14, part 4): the controller copies the snapshots
-- of HA instances with a local disk into its content-addressed store, so that an HA restart
-- can restore the latest one on another host. `replicated_at` is set once the replica is
-- complete (NULL: not replicated, or not yet); `replica_bytes` is what that replication sent.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

ALTER TABLE snapshots ADD COLUMN replicated_at TEXT;
ALTER TABLE snapshots ADD COLUMN replica_bytes BIGINT NOT NULL DEFAULT 0;
