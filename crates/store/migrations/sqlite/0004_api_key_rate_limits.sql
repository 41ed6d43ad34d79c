-- Persona 2026-09-29: an API key may carry its own rate limit (requests per
-- minute), counted beside its environment's. NULL: only the environment's.
ALTER TABLE api_keys ADD COLUMN rate_limit_per_minute INTEGER CHECK (rate_limit_per_minute > 0);
