-- What each host's agent can do beyond the base protocol (agent API `capability`), as a
-- JSON list of names, refreshed at every registration: the controller refuses up front an
-- operation that needs a capability the host lacks (e.g. moving an instance's snapshots to
-- a host whose agent is older than snapshot moves) instead of failing it midway.
-- NULL for a row written before this column or by an agent that reports none.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.
ALTER TABLE hosts ADD COLUMN capabilities TEXT;
