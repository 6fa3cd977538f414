-- Host liveness on the database's clock (issue 12): when a host last reported, in
-- milliseconds since the Unix epoch by the database's clock (as the leases of 0017 and
-- 0022), so that a controller whose own clock is off never judges a live host silent.
-- NULL for a row written before this column: such a host counts as silent until its agent
-- reports again (within seconds).
ALTER TABLE hosts ADD COLUMN last_seen_ms BIGINT;
