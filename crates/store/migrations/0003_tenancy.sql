-- Tenancy: projects, token lifecycle (name, expiry, revocation), quotas, the audit log, and
-- the project of each migration (so migrations are scoped like instances and operations).
-- Portable DDL like 0001: runs unchanged on SQLite and PostgreSQL.

CREATE TABLE projects (
    name        TEXT PRIMARY KEY,
    description TEXT,
    created_at  TEXT NOT NULL
);
INSERT INTO projects (name, description, created_at)
    VALUES ('default', 'the operator''s project', '1970-01-01T00:00:00.000000Z');

ALTER TABLE tokens ADD COLUMN name TEXT;
ALTER TABLE tokens ADD COLUMN expires_at TEXT;
ALTER TABLE tokens ADD COLUMN revoked_at TEXT;
CREATE INDEX tokens_project ON tokens (project);

-- One row per project with limits; no row means unlimited (the "default" project). A NULL
-- limit is unlimited too. Creates lock the row (a no-op UPDATE) before counting, so that
-- concurrent creates at the edge of a quota are serialised on every backend.
CREATE TABLE quotas (
    project    TEXT PRIMARY KEY,
    instances  BIGINT,
    vcpus      BIGINT,
    memory_mib BIGINT,
    disk_gib   BIGINT,
    snapshots  BIGINT,
    updated_at TEXT NOT NULL
);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    at          TEXT NOT NULL,
    token_id    TEXT,
    token_name  TEXT,
    project     TEXT,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    status      BIGINT NOT NULL,
    client_ip   TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_project ON audit_log (project, at);

ALTER TABLE migrations ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
CREATE INDEX instances_project ON instances (project);
CREATE INDEX operations_project ON operations (project, created_at);
