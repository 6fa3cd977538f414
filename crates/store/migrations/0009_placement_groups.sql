-- Placement groups (issue 14): members of a `spread` group run on distinct hosts, members of
-- a `pack` group together where they fit. Portable DDL: runs unchanged on SQLite and
-- PostgreSQL.

CREATE TABLE placement_groups (
    id         TEXT PRIMARY KEY,
    project    TEXT NOT NULL,
    name       TEXT NOT NULL,
    policy     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (project, name)
);

ALTER TABLE instances ADD COLUMN placement_group TEXT;
CREATE INDEX instances_placement_group ON instances (placement_group);
