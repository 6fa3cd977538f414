-- Trust between the parts (issue 11).
--
-- Tombstones: the instances nimbus deleted. A VM an agent still runs for one of them is the
-- leftover of that delete and may be removed; a VM the store knows nothing about is not.
CREATE TABLE tombstones (
    instance_id TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    host        TEXT,
    deleted_at  TEXT NOT NULL
);

-- Orphans: VMs a host runs that the store does not account for (`unknown`: no such
-- instance; `misplaced`: the instance is placed on another host). Written by the reconciler
-- on every pass; listed to the operator, never deleted without a command.
CREATE TABLE orphans (
    host       TEXT NOT NULL,
    vm_id      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    vm_state   TEXT NOT NULL,
    placed_on  TEXT,
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    PRIMARY KEY (host, vm_id)
);
