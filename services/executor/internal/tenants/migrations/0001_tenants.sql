-- Tenants and their tiers, as in the tenants file: each tenant has a policy
-- (a policy document in the policy file format, YAML), a mode and limits; a
-- tier's policy, when set, narrows its tenant's, and its limits only lower
-- the tenant's. max_timeout and max_memory use the file's syntax ('30s',
-- '512MiB'); 0 or NULL is no limit.
CREATE TABLE sandpit_tenants (
	tenant text PRIMARY KEY,
	mode text NOT NULL DEFAULT 'enforce' CHECK (mode IN ('enforce', 'audit')),
	policy text NOT NULL,
	max_concurrent integer NOT NULL DEFAULT 0 CHECK (max_concurrent >= 0),
	executions_per_minute integer NOT NULL DEFAULT 0 CHECK (executions_per_minute >= 0),
	max_timeout text,
	max_memory text,
	max_requests integer NOT NULL DEFAULT 0 CHECK (max_requests >= 0)
);

CREATE TABLE sandpit_tiers (
	tenant text NOT NULL REFERENCES sandpit_tenants ON DELETE CASCADE,
	tier text NOT NULL,
	policy text,
	max_concurrent integer NOT NULL DEFAULT 0 CHECK (max_concurrent >= 0),
	executions_per_minute integer NOT NULL DEFAULT 0 CHECK (executions_per_minute >= 0),
	max_timeout text,
	max_memory text,
	max_requests integer NOT NULL DEFAULT 0 CHECK (max_requests >= 0),
	PRIMARY KEY (tenant, tier)
);

-- Every change, once per statement, wakes the executors that LISTEN.
CREATE FUNCTION sandpit_tenants_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('sandpit_tenants', TG_TABLE_NAME);
	RETURN NULL;
END;
$$;

CREATE TRIGGER sandpit_tenants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON sandpit_tenants
	FOR EACH STATEMENT EXECUTE FUNCTION sandpit_tenants_changed();
CREATE TRIGGER sandpit_tiers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON sandpit_tiers
	FOR EACH STATEMENT EXECUTE FUNCTION sandpit_tenants_changed();
