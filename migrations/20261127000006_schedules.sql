-- Cron schedules: cron expression + IANA time zone -> script.
--
-- next_fire_at is the first instant not yet handled (NULL: the expression
-- has no instant left). A scheduler claims due rows with
-- SELECT ... FOR UPDATE SKIP LOCKED, writes the job into the outbox and
-- moves next_fire_at on in the same transaction, so every instant is
-- handled by exactly one scheduler.
CREATE TABLE schedules (
    id                  UUID PRIMARY KEY,
    script              TEXT NOT NULL,
    cron                TEXT NOT NULL,
    timezone            TEXT NOT NULL,
    catch_up            TEXT NOT NULL CHECK (catch_up IN ('fire_once', 'skip')),
    overlap             TEXT NOT NULL CHECK (overlap IN ('allow', 'skip')),
    enabled             BOOLEAN NOT NULL,
    max_attempts        INTEGER NOT NULL CHECK (max_attempts >= 1),
    next_fire_at        TIMESTAMPTZ,
    -- The scheduled instant of the last firing, its invocation id, and until
    -- when that firing counts as running (overlap 'skip').
    last_fired_at       TIMESTAMPTZ,
    last_invocation_id  UUID,
    busy_until          TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE enabled;
CREATE INDEX schedules_by_script ON schedules (script);

-- Wakes the schedulers (LISTEN picloud_schedules) when a schedule may now
-- fire earlier than they sleep for: a new one, or one re-enabled or moved
-- to an earlier instant. A firing only moves next_fire_at later, a delete or
-- a disable only removes work: neither needs a wake-up (a scheduler that
-- wakes for nothing finds nothing due), so firings cause no notifications.
CREATE FUNCTION picloud_schedules_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('picloud_schedules', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER schedules_notify_insert AFTER INSERT ON schedules
    FOR EACH STATEMENT EXECUTE FUNCTION picloud_schedules_notify();
CREATE TRIGGER schedules_notify_update AFTER UPDATE ON schedules
    FOR EACH ROW
    WHEN (NEW.enabled AND NEW.next_fire_at IS NOT NULL AND (
        NOT OLD.enabled
        OR OLD.next_fire_at IS NULL
        OR NEW.next_fire_at < OLD.next_fire_at))
    EXECUTE FUNCTION picloud_schedules_notify();
