-- Tokens with a lifecycle: an optional expiry set at creation, and revocation (when, and by
-- whom). NULL means never expires / not revoked, so tokens issued before keep working.
ALTER TABLE tokens ADD COLUMN expires_ms BIGINT;
ALTER TABLE tokens ADD COLUMN revoked_ms BIGINT;
ALTER TABLE tokens ADD COLUMN revoked_by TEXT;
