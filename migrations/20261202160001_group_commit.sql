-- Group commit (issue #17): kv locks per key, and the subscriptions' epoch
-- that lets managers cache the subscriptions.

-- Takes the transaction-scoped advisory locks a batch of commits needs, in
-- one global order (by lock id), so batches on any number of managers never
-- wait for each other in a cycle. `names` are hashed; a name listed twice
-- is locked once, exclusively if any listing asks for it.
CREATE FUNCTION picloud_kv_lock(names TEXT[], exclusive BOOLEAN[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    l RECORD;
BEGIN
    FOR l IN
        SELECT hashtextextended(n, 0) AS id, bool_or(x) AS x
        FROM unnest(names, exclusive) AS t(n, x)
        GROUP BY 1 ORDER BY 1
    LOOP
        IF l.x THEN
            PERFORM pg_advisory_xact_lock(l.id);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(l.id);
        END IF;
    END LOOP;
END
$$;

-- Bumped by every statement that changes `subscriptions`, in the same
-- transaction: a manager's cached list is current while the epoch it was
-- read with is still the stored one, which a commit checks in its own
-- transaction (one row, no lock), so a subscription committed before an
-- emit's commit began always receives the event, on every manager.
CREATE TABLE subscriptions_epoch (
    one  BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    n    BIGINT NOT NULL
);
INSERT INTO subscriptions_epoch (one, n) VALUES (true, 0);

CREATE FUNCTION picloud_subscriptions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE subscriptions_epoch SET n = n + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER subscriptions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON subscriptions FOR EACH STATEMENT EXECUTE FUNCTION picloud_subscriptions_changed();
