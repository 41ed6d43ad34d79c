CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    environment TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    permissions TEXT NOT NULL,
    lookup      TEXT NOT NULL UNIQUE,
    secret_hash BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE issuer_keys (
    id            TEXT PRIMARY KEY,
    environment   TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    state         TEXT NOT NULL CHECK (state IN ('pending', 'active', 'verify-only', 'retired')),
    private_pkcs8 BLOB NOT NULL,
    not_before    INTEGER NOT NULL,
    rotated_at    INTEGER,
    retired_at    INTEGER,
    created_at    INTEGER NOT NULL
);
-- At most one active key per environment, whoever tries to add another.
CREATE UNIQUE INDEX issuer_keys_one_active ON issuer_keys (environment) WHERE state = 'active';
CREATE TABLE idempotency (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    status      INTEGER,          -- NULL while the first request is in flight
    content_type TEXT,
    body        BLOB,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_created_at ON idempotency (created_at);
CREATE TABLE rate_limits (
    bucket       TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE relays (
    token              TEXT PRIMARY KEY,
    secret_hash        BLOB NOT NULL,
    environment        TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    claim_type         TEXT NOT NULL,
    encryption_key_der BLOB,
    created_at         INTEGER NOT NULL,
    result_passed      INTEGER,       -- NULL until a verifier records a result
    methodology        TEXT,
    result_at          INTEGER
);
-- Single spend: the primary key decides, in one atomic INSERT.
CREATE TABLE spent_tokens (
    key_id      TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    relay_token TEXT NOT NULL,
    spent_at    INTEGER NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
