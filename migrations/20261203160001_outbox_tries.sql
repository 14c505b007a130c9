-- Publishes of a row that failed (no acknowledgement, or an error). A row
-- is published under `Nats-Msg-Id` = its id the first time and under
-- `<id>.<tries>` after a failed try: nats-server before 2.11 may keep the
-- id of a publish lost in a stream leader change in its dedup window and
-- acknowledge a retry under the same id as a duplicate without storing it.
ALTER TABLE outbox ADD COLUMN tries INT NOT NULL DEFAULT 0;
