-- Events, async jobs, per-script kv and the transactional outbox.

-- Per-script key-value state. Versions come from one sequence and are never
-- reused, so an unchanged version means an unchanged value (the commit's
-- serializability check relies on it).
CREATE SEQUENCE kv_version;
CREATE TABLE kv (
    script      TEXT NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    value       JSONB NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (script, key)
);

-- topic pattern (NATS wildcards) -> script.
CREATE TABLE subscriptions (
    id            UUID PRIMARY KEY,
    script        TEXT NOT NULL,
    topic         TEXT NOT NULL,
    max_attempts  INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_by_script ON subscriptions (script);

-- Messages that must reach NATS because a transaction committed. The relay
-- publishes each with Nats-Msg-Id = id and deletes it.
--   kind 'job':   target = script, payload = Job      -> {p}.jobs.{script}
--   kind 'event': target = topic,  payload = EventMessage -> {p}.events.{topic}
CREATE TABLE outbox (
    id          UUID PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('job', 'event')),
    target      TEXT NOT NULL,
    payload     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_by_age ON outbox (created_at);

-- Wakes the relays (LISTEN picloud_outbox) when a transaction that inserted
-- outbox rows commits; once per statement, not per row.
CREATE FUNCTION picloud_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('picloud_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION picloud_outbox_notify();

-- Jobs that failed their last attempt. At most one open (not replayed)
-- dead letter per invocation, so a redelivered report is not counted twice.
CREATE TABLE dead_letters (
    id               UUID PRIMARY KEY,
    invocation_id    UUID NOT NULL,
    script           TEXT NOT NULL,
    subscription_id  UUID,
    job              JSONB NOT NULL,
    error            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at      TIMESTAMPTZ
);
CREATE INDEX dead_letters_by_time ON dead_letters (created_at DESC);
CREATE UNIQUE INDEX dead_letters_open ON dead_letters (invocation_id) WHERE replayed_at IS NULL;

-- Idempotency-Key of async HTTP calls (kept 24 h).
CREATE TABLE idempotency_keys (
    script         TEXT NOT NULL,
    key            TEXT NOT NULL,
    invocation_id  UUID NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (script, key)
);

ALTER TABLE invocations
    ADD COLUMN attempt    INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN parent_id  UUID,
    ADD COLUMN response   JSONB,
    ADD COLUMN public     BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX invocations_by_parent ON invocations (parent_id) WHERE parent_id IS NOT NULL;
