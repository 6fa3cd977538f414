-- Portable DDL: runs unchanged on SQLite and PostgreSQL. Timestamps are RFC 3339 UTC text,
-- booleans are 0/1 integers, JSON is text.

CREATE TABLE hosts (
    name          TEXT PRIMARY KEY,
    agent_url     TEXT NOT NULL,
    enabled       BIGINT NOT NULL DEFAULT 1,
    cpus          BIGINT NOT NULL,
    memory_mib    BIGINT NOT NULL,
    disk_gib      BIGINT NOT NULL,
    accelerator   TEXT NOT NULL,
    qemu_version  TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    last_seen     TEXT NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE flavors (
    name       TEXT PRIMARY KEY,
    vcpus      BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_gib   BIGINT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE images (
    name         TEXT PRIMARY KEY,
    kernel       TEXT,
    initrd       TEXT,
    cmdline      TEXT,
    disk         TEXT,
    ready_marker TEXT,
    size_bytes   BIGINT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE instances (
    id               TEXT PRIMARY KEY,
    project          TEXT NOT NULL,
    name             TEXT NOT NULL,
    flavor           TEXT NOT NULL,
    image            TEXT NOT NULL,
    vcpus            BIGINT NOT NULL,
    memory_mib       BIGINT NOT NULL,
    disk_gib         BIGINT NOT NULL,
    host             TEXT,
    state            TEXT NOT NULL,
    reason           TEXT,
    operation_id     TEXT,
    generation       BIGINT NOT NULL,
    agent_generation BIGINT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (project, name)
);
CREATE INDEX instances_host ON instances (host);

CREATE TABLE operations (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    project          TEXT NOT NULL,
    target_id        TEXT NOT NULL,
    target_name      TEXT NOT NULL,
    state            TEXT NOT NULL,
    params           TEXT NOT NULL,
    message          TEXT,
    error            TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX operations_state ON operations (state);

CREATE TABLE operation_steps (
    operation_id TEXT NOT NULL,
    idx          BIGINT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    PRIMARY KEY (operation_id, idx)
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    project    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
