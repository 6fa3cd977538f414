-- Snapshots (checkpoints) of instances, a tree per instance: a snapshot's parent is the
-- snapshot its instance's state descended from when it was taken. Snapshots live on their
-- instance's host. Figures are what the host measured; `stored_bytes` is what metering bills
-- (snapshot GiB-hours) and each row counts against its project's snapshot quota.

CREATE TABLE snapshots (
    id               TEXT PRIMARY KEY,
    project          TEXT NOT NULL,
    instance_id      TEXT NOT NULL,
    name             TEXT NOT NULL,
    parent_id        TEXT,
    memory           BIGINT NOT NULL,
    host             TEXT NOT NULL,
    state            TEXT NOT NULL,
    vm_pause_us      BIGINT NOT NULL DEFAULT 0,
    disk_layer_bytes BIGINT NOT NULL DEFAULT 0,
    memory_bytes     BIGINT NOT NULL DEFAULT 0,
    memory_new_bytes BIGINT NOT NULL DEFAULT 0,
    stored_bytes     BIGINT NOT NULL DEFAULT 0,
    operation_id     TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (project, name)
);
CREATE INDEX snapshots_instance ON snapshots (instance_id);
CREATE INDEX snapshots_parent ON snapshots (parent_id);

-- Where the instance is in its tree: the snapshot taken or restored last (NULL: none).
ALTER TABLE instances ADD COLUMN current_snapshot TEXT;
