-- Tenants' secrets for credential brokering: the bytes the egress proxy
-- places into a tenant's allowed requests (a policy binding names the
-- secret). A name is a secret name (policy.IsSecretName); a value holds 1 to
-- 16384 bytes (secrets.MaxValueBytes). A value with a control character
-- (but tab) is refused when the executor reads it, which keeps the last good
-- version in force. A tenant's secrets go with it.
CREATE TABLE sandpit_secrets (
	tenant text NOT NULL REFERENCES sandpit_tenants ON DELETE CASCADE,
	name text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
	value bytea NOT NULL CHECK (octet_length(value) BETWEEN 1 AND 16384),
	PRIMARY KEY (tenant, name)
);

CREATE TRIGGER sandpit_secrets_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON sandpit_secrets
	FOR EACH STATEMENT EXECUTE FUNCTION sandpit_tenants_changed();
