-- Instances get an address on the cloud network that stays with them across hosts;
-- live migrations are recorded (and hold capacity on their target while they run).

ALTER TABLE instances ADD COLUMN ip TEXT;
ALTER TABLE instances ADD COLUMN mac TEXT;
CREATE UNIQUE INDEX instances_ip ON instances (ip);

CREATE TABLE migrations (
    id              TEXT PRIMARY KEY,
    instance_id     TEXT NOT NULL,
    source          TEXT NOT NULL,
    target          TEXT NOT NULL,
    state           TEXT NOT NULL,
    vcpus           BIGINT NOT NULL,
    memory_mib      BIGINT NOT NULL,
    disk_gib        BIGINT NOT NULL,
    max_downtime_ms BIGINT NOT NULL,
    stats           TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX migrations_target ON migrations (target, state);
CREATE INDEX migrations_instance ON migrations (instance_id);

ALTER TABLE hosts ADD COLUMN shared_storage TEXT;
