-- Shared modules, versioned like scripts; a script version pins the module
-- versions (its whole import closure) that were current when it was deployed.
CREATE TABLE modules (
    name            TEXT PRIMARY KEY,
    latest_version  INTEGER NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE module_versions (
    module      TEXT NOT NULL REFERENCES modules (name) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    source      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    -- Names this version imports (for cycle checks and pinning).
    imports     JSONB NOT NULL DEFAULT '[]',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (module, version)
);

-- {"module name": version, ...}
ALTER TABLE script_versions ADD COLUMN modules JSONB NOT NULL DEFAULT '{}';
