-- Spent records are partitioned by day of the token's expiry (a function of
-- the token, so part of the key without weakening single spend): pruning
-- drops whole partitions instead of running large DELETEs. Rows whose day has
-- no partition yet land in the default partition and are deleted row-wise.
ALTER TABLE spent_tokens RENAME TO spent_tokens_v1;
CREATE TABLE spent_tokens (
    key_id        TEXT NOT NULL,
    nonce         BYTEA NOT NULL,
    expires_at    BIGINT NOT NULL,
    relay_token   TEXT NOT NULL,
    spent_at      BIGINT NOT NULL,
    claim_payload TEXT,
    PRIMARY KEY (key_id, nonce, expires_at)
) PARTITION BY RANGE (expires_at);
CREATE TABLE spent_tokens_default PARTITION OF spent_tokens DEFAULT;
INSERT INTO spent_tokens (key_id, nonce, expires_at, relay_token, spent_at)
    SELECT key_id, nonce, spent_at + 7200, relay_token, spent_at FROM spent_tokens_v1;
DROP TABLE spent_tokens_v1;
CREATE INDEX spent_tokens_default_expires_at ON spent_tokens_default (expires_at);
ALTER TABLE relays ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
UPDATE relays SET expires_at = created_at + 86400;
CREATE INDEX relays_expires_at ON relays (expires_at);
