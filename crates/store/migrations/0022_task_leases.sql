-- Background work run by one controller at a time (issue 12 part 3): the reconciler, host
-- liveness, the autoscaler, the security-group push and retention each hold a lease here.
-- holder: the controller running the task (NULL: nobody yet); epoch: bumped whenever the
-- task changes holder, so that the writes of an earlier holder are refused (fencing);
-- lease_until_ms: the database's clock, like the operations' leases (0017).
CREATE TABLE task_leases (
    task           TEXT PRIMARY KEY,
    holder         TEXT,
    epoch          BIGINT NOT NULL DEFAULT 0,
    lease_until_ms BIGINT NOT NULL DEFAULT 0
);
