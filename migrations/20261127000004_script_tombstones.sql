-- A deleted script keeps its row (and so its version counter): deploying the
-- name again continues the numbering, so no (script, version) ever names two
-- different sources, and executors' caches keyed by it never serve old code.
ALTER TABLE scripts ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false;
