-- Several controllers over one database (issue 12): who is alive, and who owns which
-- operation. Times that decide ownership are the database's own clock, in milliseconds since
-- the Unix epoch, never a controller's clock.

CREATE TABLE controllers (
    id           TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);

-- owner: the controller running the operation (NULL: nobody yet); epoch: bumped by every
-- claim, so that the writes of an earlier owner are refused (fencing); lease_until_ms: the
-- owner must renew before then, or any controller takes the operation over.
ALTER TABLE operations ADD COLUMN owner TEXT;
ALTER TABLE operations ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX operations_owner ON operations (owner);
