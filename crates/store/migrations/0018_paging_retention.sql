-- Listings that stay fast as the cloud grows (issue 12 part 7).
--
-- Paging: every listing is read in pages ordered by a unique key (keyset pagination, see
-- store/src/page.rs); these indexes let a page start with an index seek, per project and
-- across projects, for the tables that grow without bound.
CREATE INDEX instances_page ON instances (project, created_at, id);
CREATE INDEX instances_page_all ON instances (created_at, id);
CREATE INDEX operations_page ON operations (project, created_at, id);
CREATE INDEX operations_page_all ON operations (created_at, id);
CREATE INDEX audit_log_page ON audit_log (project, at, id);
CREATE INDEX audit_log_page_all ON audit_log (at, id);
CREATE INDEX tokens_page ON tokens (project, created_at, id);
CREATE INDEX snapshots_page ON snapshots (project, created_at, id);

-- Retention (store/src/retention.rs): raw usage samples older than the retention are thinned
-- to the first and last sample of each meter in each clock hour (counters are cumulative,
-- so usage over whole hours is unchanged), hour by hour from `done_until_ms` (one row).
CREATE INDEX usage_samples_meter_time ON usage_samples (meter_id, sampled_ms);
CREATE TABLE usage_rollup (
    id             BIGINT PRIMARY KEY,
    done_until_ms  BIGINT NOT NULL
);
INSERT INTO usage_rollup (id, done_until_ms) VALUES (1, 0);
-- Finished operations and audit entries are deleted after their retention.
CREATE INDEX operations_finished ON operations (state, updated_at);
