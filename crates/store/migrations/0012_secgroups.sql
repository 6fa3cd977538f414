-- Security groups (EC2 semantics): per-project sets of allow rules, stateful; an instance is in
-- one or more groups of its project. Ids are numbers allocated in the insert transaction under
-- the project lock (like network VNIs), so the DDL stays portable between SQLite and PostgreSQL.
-- A rule names either a CIDR or a group of the same project (its members' addresses).

CREATE TABLE secgroups (
    id          BIGINT PRIMARY KEY,
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX secgroups_name ON secgroups (project, name);

CREATE TABLE secgroup_rules (
    id              BIGINT PRIMARY KEY,
    group_id        BIGINT NOT NULL,
    direction       TEXT NOT NULL,
    protocol        TEXT NOT NULL,
    port_min        BIGINT,
    port_max        BIGINT,
    cidr            TEXT,
    remote_group_id BIGINT,
    created_at      TEXT NOT NULL
);
CREATE INDEX secgroup_rules_group ON secgroup_rules (group_id);

CREATE TABLE instance_secgroups (
    instance_id TEXT NOT NULL,
    group_id    BIGINT NOT NULL,
    PRIMARY KEY (instance_id, group_id)
);
CREATE INDEX instance_secgroups_group ON instance_secgroups (group_id);

-- Every existing project gets its "default" group: inbound from its own members, all outbound.
INSERT INTO secgroups (id, project, name, created_at)
    SELECT ROW_NUMBER() OVER (ORDER BY name), name, 'default', created_at FROM projects;
INSERT INTO secgroup_rules (id, group_id, direction, protocol, remote_group_id, created_at)
    SELECT 2 * id - 1, id, 'ingress', 'any', id, created_at FROM secgroups;
INSERT INTO secgroup_rules (id, group_id, direction, protocol, cidr, created_at)
    SELECT 2 * id, id, 'egress', 'any', '0.0.0.0/0', created_at FROM secgroups;

-- Existing instances join their project's default group.
INSERT INTO instance_secgroups (instance_id, group_id)
    SELECT i.id, g.id FROM instances i JOIN secgroups g ON g.project = i.project
    WHERE g.name = 'default';
