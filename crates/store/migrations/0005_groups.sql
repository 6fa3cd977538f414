-- Scaling groups (issue 6): identical instances of a project kept at a desired size by a
-- policy, their events (decisions with their reasons), and group membership of instances.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

CREATE TABLE scaling_groups (
    id             TEXT PRIMARY KEY,
    project        TEXT NOT NULL,
    name           TEXT NOT NULL,
    flavor         TEXT NOT NULL,
    image          TEXT NOT NULL,
    min_size       BIGINT NOT NULL,
    max_size       BIGINT NOT NULL,
    desired        BIGINT NOT NULL,
    target_cpu     BIGINT NOT NULL,
    policy         TEXT NOT NULL,
    steps          TEXT NOT NULL,
    window_secs    BIGINT NOT NULL,
    cooldown_secs  BIGINT NOT NULL,
    state          TEXT NOT NULL,
    replacements   BIGINT NOT NULL DEFAULT 0,
    last_scaled_at TEXT,
    generation     BIGINT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    UNIQUE (project, name)
);

CREATE TABLE scaling_group_events (
    id       TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    at       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL,
    delta    BIGINT NOT NULL
);
CREATE INDEX scaling_group_events_group ON scaling_group_events (group_id, at);

ALTER TABLE instances ADD COLUMN group_id TEXT;
CREATE INDEX instances_group ON instances (group_id);
