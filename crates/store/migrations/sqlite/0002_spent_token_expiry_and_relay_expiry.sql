-- A spent record lives until its token can no longer be accepted anywhere
-- (expires_at, the expiry of the challenge the token answers, plus the prune
-- margin), never shorter. expires_at is a function of the token itself, so
-- it is part of the key without weakening single spend. The record keeps the
-- claim payload so that a redemption whose answer was lost can be retried.
CREATE TABLE spent_tokens_v2 (
    key_id        TEXT NOT NULL,
    nonce         BLOB NOT NULL,
    expires_at    INTEGER NOT NULL,
    relay_token   TEXT NOT NULL,
    spent_at      INTEGER NOT NULL,
    claim_payload TEXT,
    PRIMARY KEY (key_id, nonce, expires_at)
);
INSERT INTO spent_tokens_v2 (key_id, nonce, expires_at, relay_token, spent_at)
    SELECT key_id, nonce, spent_at + 7200, relay_token, spent_at FROM spent_tokens;
DROP TABLE spent_tokens;
ALTER TABLE spent_tokens_v2 RENAME TO spent_tokens;
CREATE INDEX spent_tokens_expires_at ON spent_tokens (expires_at);
-- Relays expire; an expired relay answers like an unknown one and is pruned.
ALTER TABLE relays ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
UPDATE relays SET expires_at = created_at + 86400;
CREATE INDEX relays_expires_at ON relays (expires_at);
