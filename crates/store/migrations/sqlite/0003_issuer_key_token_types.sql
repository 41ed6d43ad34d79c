-- Issuer keys of several token types: 2 (Blind RSA), 1 (VOPRF P-384) and
-- 5 (VOPRF ristretto255). Every existing key is type 2. The lifecycle
-- (one active key, rotation, promotion) is per environment and token type;
-- private_pkcs8 holds PKCS#8 DER for type 2 and SerializeScalar for types
-- 1 and 5, sealed under the key-encryption key when one is configured.
ALTER TABLE issuer_keys ADD COLUMN token_type INTEGER NOT NULL DEFAULT 2 CHECK (token_type IN (1, 2, 5));
DROP INDEX issuer_keys_one_active;
CREATE UNIQUE INDEX issuer_keys_one_active ON issuer_keys (environment, token_type) WHERE state = 'active';
