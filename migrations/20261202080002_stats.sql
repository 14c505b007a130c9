-- Issue 14: stats for people (request rate, error rate, duration
-- percentiles per step, per script and overall) and the event topology.
--
-- Managers aggregate the invocations they store (the records stream, the
-- commits, the dead letters) in memory and add them here about once a
-- second while there is traffic, so a query reads roll-ups, never the raw
-- records, and the commit path takes no shared row lock.
--
-- `step_s` is 60 (minute rows, kept 48 hours) or 3600 (hour rows, kept 30
-- days); `script` '' is every script together. `hist` counts durations in
-- 42 buckets of √2 width from 50 µs (see `manager::stats`).
CREATE TABLE invocation_stats (
    step_s          INTEGER NOT NULL,
    bucket          TIMESTAMPTZ NOT NULL,
    script          TEXT NOT NULL,
    requests        BIGINT NOT NULL,
    errors          BIGINT NOT NULL,
    duration_us_sum BIGINT NOT NULL,
    hist            BIGINT[] NOT NULL,
    PRIMARY KEY (step_s, script, bucket)
);
CREATE INDEX invocation_stats_by_time ON invocation_stats (step_s, bucket);

-- Events seen flowing: `emit` rows count the events a script emitted to a
-- topic (committed emits), `deliver` rows the jobs a topic's events made
-- for a subscribing script.
CREATE TABLE topic_flows (
    topic      TEXT NOT NULL,
    direction  TEXT NOT NULL CHECK (direction IN ('emit', 'deliver')),
    script     TEXT NOT NULL,
    count      BIGINT NOT NULL,
    last_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, direction, script)
);
