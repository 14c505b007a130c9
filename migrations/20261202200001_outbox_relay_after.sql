-- A commit's outbox rows are published by the manager that committed them,
-- right after the commit; a relay takes such a row only once `relay_after`
-- has passed (that manager died or could not publish). Every other row is
-- due at once.
ALTER TABLE outbox ADD COLUMN relay_after TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX outbox_by_due ON outbox (relay_after);
