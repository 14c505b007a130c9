-- Scripts and their immutable versions.
CREATE TABLE scripts (
    name            TEXT PRIMARY KEY,
    active_version  INTEGER NOT NULL,
    latest_version  INTEGER NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE script_versions (
    script      TEXT NOT NULL REFERENCES scripts (name) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    source      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    limits      JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (script, version)
);

-- One row per invocation, written in batches by the manager.
CREATE TABLE invocations (
    id           UUID PRIMARY KEY,
    script       TEXT NOT NULL,
    version      INTEGER NOT NULL,
    trigger      TEXT NOT NULL,
    status       TEXT NOT NULL,
    http_status  INTEGER,
    started_at   TIMESTAMPTZ NOT NULL,
    duration_us  BIGINT NOT NULL,
    log          TEXT NOT NULL,
    error        TEXT,
    executor     TEXT NOT NULL,
    trace_id     UUID NOT NULL
);

CREATE INDEX invocations_by_time ON invocations (started_at DESC, id);
CREATE INDEX invocations_by_script ON invocations (script, started_at DESC);
