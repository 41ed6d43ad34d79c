-- Persona 2026-09-29: a relay created with `encryption-key-jwk` delivers its
-- claim as a compact JWE (RSA-OAEP-256 + A256GCM) instead of one RSA-OAEP
-- block; `jwe_kid` is the JWK's kid, echoed in the JWE header. Existing
-- relays keep the RSA-OAEP format.
ALTER TABLE relays ADD COLUMN claim_format TEXT NOT NULL DEFAULT 'oaep' CHECK (claim_format IN ('oaep', 'jwe'));
ALTER TABLE relays ADD COLUMN jwe_kid TEXT;
