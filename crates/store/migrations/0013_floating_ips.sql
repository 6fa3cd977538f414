-- Floating IPs: addresses of the operator's external pool, allocated to a project, attached
-- to at most one instance (its first NIC) and an instance has at most one. The address is the
-- key: an address is allocated once in the whole cloud. Projects get a quota on them.

CREATE TABLE floating_ips (
    address     TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    instance_id TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX floating_ips_project ON floating_ips (project);
CREATE UNIQUE INDEX floating_ips_instance ON floating_ips (instance_id);

ALTER TABLE quotas ADD COLUMN floating_ips BIGINT;
