-- Issue 12 §4. An Idempotency-Key returns the earlier invocation only for
-- the same request: the key keeps a SHA-256 fingerprint (hex) of the
-- request's method, path and query, body and credential headers (never the
-- credentials themselves). Keys stored before this column existed have no
-- fingerprint and match no request (422 until they expire, within 24 h).
ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT;

-- Per-version setting: async jobs of this version keep the caller's
-- Authorization, Cookie and Proxy-Authorization headers (default: dropped
-- before the job is queued).
ALTER TABLE script_versions ADD COLUMN keep_credentials BOOLEAN NOT NULL DEFAULT false;
