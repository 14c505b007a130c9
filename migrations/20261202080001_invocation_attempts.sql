-- Issue 13: every attempt of an invocation is visible, not only the last.
-- `invocations` holds an invocation's latest report; when a later report
-- (another attempt, a replay's reset, a run that could not be committed
-- then one that was) overwrites a finished one, the overwritten report is
-- kept here. A trigger catches every writer (the batched upsert, the
-- commit's own upsert, a replay), and costs nothing on the first-report
-- path (sync calls are COPYed in: an INSERT, not an UPDATE).
CREATE TABLE invocation_attempts (
    invocation_id UUID NOT NULL REFERENCES invocations (id) ON DELETE CASCADE,
    seq           BIGSERIAL,
    attempt       INTEGER NOT NULL,
    status        TEXT NOT NULL,
    http_status   INTEGER,
    started_at    TIMESTAMPTZ NOT NULL,
    duration_us   BIGINT NOT NULL,
    error         TEXT,
    executor      TEXT NOT NULL,
    PRIMARY KEY (invocation_id, seq)
);

CREATE FUNCTION keep_invocation_attempt() RETURNS trigger AS $$
BEGIN
    IF OLD.status <> 'queued'
       AND (OLD.attempt, OLD.started_at, OLD.status)
           IS DISTINCT FROM (NEW.attempt, NEW.started_at, NEW.status) THEN
        INSERT INTO invocation_attempts
            (invocation_id, attempt, status, http_status, started_at, duration_us, error, executor)
        VALUES
            (OLD.id, OLD.attempt, OLD.status, OLD.http_status, OLD.started_at,
             OLD.duration_us, OLD.error, OLD.executor);
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER invocations_keep_attempts
    AFTER UPDATE ON invocations
    FOR EACH ROW EXECUTE FUNCTION keep_invocation_attempt();
