-- Which controllers hold a complete replica of which snapshot (issue 12, with issue 14's
-- replicas, 0025): each controller keeps its own replica store, as it keeps its own copies
-- of image bytes (0031); one that lacks a replicated snapshot copies it from a live holder,
-- so that an HA restart from a replica works through any live controller after the one that
-- received it from the host is gone. Rows of controllers or snapshots that are gone are
-- forgotten by the copy pass.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

CREATE TABLE replica_holders (
    snapshot_id TEXT NOT NULL,
    controller  TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, controller)
);
CREATE INDEX replica_holders_controller ON replica_holders (controller);
