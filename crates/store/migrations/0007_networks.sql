-- Tenant networks: each project owns networks, each network a VXLAN segment id (VNI) unique in
-- the cloud; an instance has one port (NIC) per network it is on. Addresses are claimed by the
-- unique (network, ip) index, so two creates can never take the same address of a network,
-- while networks of different projects may overlap.
-- Portable DDL like 0001: runs unchanged on SQLite and PostgreSQL.

CREATE TABLE networks (
    vni         BIGINT PRIMARY KEY,
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    cidr        TEXT NOT NULL,
    gateway     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX networks_name ON networks (project, name);

CREATE TABLE ports (
    instance_id TEXT NOT NULL,
    nic         BIGINT NOT NULL,
    network_vni BIGINT NOT NULL,
    ip          TEXT NOT NULL,
    mac         TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (instance_id, nic)
);
CREATE UNIQUE INDEX ports_ip ON ports (network_vni, ip);
CREATE UNIQUE INDEX ports_mac ON ports (network_vni, mac);

-- Every existing project gets its "default" network on the former flat network's prefix
-- (10.200.0.0/16, `nimbus controller --network`'s default), VNIs from 4201 on.
INSERT INTO networks (vni, project, name, cidr, gateway, created_at)
    SELECT 4200 + ROW_NUMBER() OVER (ORDER BY name), name, 'default', '10.200.0.0/16',
           '10.200.0.1', created_at
    FROM projects;

-- Existing instances move to their project's default network with their IP and MAC.
INSERT INTO ports (instance_id, nic, network_vni, ip, mac, created_at)
    SELECT i.id, 0, n.vni, i.ip, i.mac, i.created_at
    FROM instances i JOIN networks n ON n.project = i.project AND n.name = 'default'
    WHERE i.ip IS NOT NULL AND i.mac IS NOT NULL;

-- Addresses are unique per network now, not across the cloud; instances.ip/mac mirror the
-- first port for listings.
DROP INDEX instances_ip;
