-- Measured service: usage samples pushed by the agents, and the overcommit each host accepts.
--
-- A sample belongs to a meter (one VM incarnation on one host: from when the guest starts
-- running there until it stops running there; or, kind 'snapshot', one snapshot's storage).
-- Counters (running_ms, cpu_ns, net_*, storage_kib_s: storage x time) are cumulative since
-- the meter opened; usage over an interval is derived from two consecutive samples of a
-- meter, and totals from each meter's last sample. (meter_id, seq) identifies a sample: a resent sample is
-- stored once. Times are Unix milliseconds (integers: the arithmetic needs them).
-- `project` is the instance's project when the sample arrived.

CREATE TABLE usage_samples (
    meter_id        TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    instance_name   TEXT NOT NULL,
    project         TEXT NOT NULL,
    host            TEXT NOT NULL,
    started_ms      BIGINT NOT NULL,
    sampled_ms      BIGINT NOT NULL,
    vcpus           BIGINT NOT NULL,
    memory_mib      BIGINT NOT NULL,
    running_ms      BIGINT NOT NULL,
    cpu_ns          BIGINT NOT NULL,
    net_rx_bytes    BIGINT NOT NULL,
    net_tx_bytes    BIGINT NOT NULL,
    rss_bytes       BIGINT NOT NULL,
    storage_bytes   BIGINT NOT NULL,
    storage_kib_s   BIGINT NOT NULL,
    is_last         BIGINT NOT NULL,
    received_at     TEXT NOT NULL,
    PRIMARY KEY (meter_id, seq)
);
CREATE INDEX usage_samples_time ON usage_samples (sampled_ms);
CREATE INDEX usage_samples_project ON usage_samples (project, sampled_ms);

ALTER TABLE hosts ADD COLUMN cpu_allocation_ratio DOUBLE PRECISION;
ALTER TABLE hosts ADD COLUMN ram_allocation_ratio DOUBLE PRECISION;
ALTER TABLE hosts ADD COLUMN ksm TEXT;
