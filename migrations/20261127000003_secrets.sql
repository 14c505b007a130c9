-- Secrets, encrypted at rest (AES-256-GCM; the secret's name is the
-- associated data, so a ciphertext cannot be moved to another name).
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
