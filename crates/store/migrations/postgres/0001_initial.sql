CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    environment TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    permissions TEXT NOT NULL,
    lookup      TEXT NOT NULL UNIQUE,
    secret_hash BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE TABLE issuer_keys (
    id            TEXT PRIMARY KEY,
    environment   TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    state         TEXT NOT NULL CHECK (state IN ('pending', 'active', 'verify-only', 'retired')),
    private_pkcs8 BYTEA NOT NULL,
    not_before    BIGINT NOT NULL,
    rotated_at    BIGINT,
    retired_at    BIGINT,
    created_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX issuer_keys_one_active ON issuer_keys (environment) WHERE state = 'active';
CREATE TABLE idempotency (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    status       INTEGER,
    content_type TEXT,
    body         BYTEA,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_created_at ON idempotency (created_at);
CREATE TABLE rate_limits (
    bucket       TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE relays (
    token              TEXT PRIMARY KEY,
    secret_hash        BYTEA NOT NULL,
    environment        TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    claim_type         TEXT NOT NULL,
    encryption_key_der BYTEA,
    created_at         BIGINT NOT NULL,
    result_passed      BOOLEAN,
    methodology        TEXT,
    result_at          BIGINT
);
CREATE TABLE spent_tokens (
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    relay_token TEXT NOT NULL,
    spent_at    BIGINT NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
