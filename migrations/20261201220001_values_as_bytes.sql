-- Postgres jsonb and text cannot hold U+0000, which any string a script or
-- caller hands us may contain. Values that must round-trip exactly (kv
-- values, outbox messages with their emitted payloads, a dead letter's job,
-- an async call's stored response) are stored as their JSON bytes instead;
-- the store encodes and decodes them.
ALTER TABLE kv ALTER COLUMN value TYPE BYTEA USING convert_to(value::text, 'UTF8');
ALTER TABLE outbox ALTER COLUMN payload TYPE BYTEA USING convert_to(payload::text, 'UTF8');
ALTER TABLE dead_letters ALTER COLUMN job TYPE BYTEA USING convert_to(job::text, 'UTF8');
ALTER TABLE invocations ALTER COLUMN response TYPE BYTEA USING convert_to(response::text, 'UTF8');
