-- Accounts, login sessions and service tokens of the HTTPS API, equal in content to the
-- embedded schema at version 5.
--
-- A platform operator belongs to no tenant: its user_accounts row and its sessions have a
-- NULL tenant_id. Row-level security never shows such rows to medconnect_app, so they are
-- written and read on the operator connection. Every other role belongs to exactly one
-- tenant. A patient account names its patient link, so purging the link deletes the account
-- and its sessions with it. Passwords are stored as argon2id PHC strings, and session and
-- service tokens only as the SHA-256 of the token (64 hex digits), never the token itself.
--
-- Accounts written before this version have no password: they are carried over disabled,
-- and a row that breaks the new constraints stops the migration.

ALTER TABLE user_accounts
    ALTER COLUMN tenant_id DROP NOT NULL,
    ADD COLUMN link_id BIGINT,
    ADD COLUMN password_hash TEXT NOT NULL DEFAULT '',
    ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT true,
    -- Failed logins since the last successful one, for lockout decisions.
    ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_failed_login_at TEXT,
    ADD COLUMN last_login_at TEXT,
    ADD CONSTRAINT user_accounts_role
        CHECK (role IN ('platform_operator', 'tenant_admin', 'provider', 'patient')),
    ADD CONSTRAINT user_accounts_platform CHECK ((role = 'platform_operator') = (tenant_id IS NULL)),
    ADD CONSTRAINT user_accounts_patient CHECK ((role = 'patient') = (link_id IS NOT NULL)),
    ADD FOREIGN KEY (link_id, tenant_id) REFERENCES patient_links (id, tenant_id);
ALTER TABLE user_accounts
    ALTER COLUMN password_hash DROP DEFAULT,
    ALTER COLUMN disabled SET DEFAULT false;
-- The unique constraint of 0001 treats NULL tenants as distinct, so platform accounts need
-- their own.
CREATE UNIQUE INDEX user_accounts_platform_username ON user_accounts (username)
    WHERE tenant_id IS NULL;
CREATE INDEX user_accounts_link ON user_accounts (link_id);
-- The target of the (user_id, tenant_id) foreign key of sessions.
ALTER TABLE user_accounts ADD CONSTRAINT user_accounts_id_tenant UNIQUE (id, tenant_id);

-- A session's user must belong to the session's tenant. With a NULL tenant the foreign key
-- is not checked, so the CHECK keeps patient links out of platform sessions and the store
-- writes platform sessions only for platform accounts.
ALTER TABLE sessions
    ALTER COLUMN tenant_id DROP NOT NULL,
    ADD COLUMN token_hash TEXT UNIQUE,
    ADD CONSTRAINT sessions_platform
        CHECK (tenant_id IS NOT NULL OR (link_id IS NULL AND user_id IS NOT NULL)),
    ADD FOREIGN KEY (user_id) REFERENCES user_accounts (id),
    ADD FOREIGN KEY (user_id, tenant_id) REFERENCES user_accounts (id, tenant_id);
CREATE INDEX sessions_user ON sessions (user_id);

-- Bearer tokens of machine clients such as the Storefront, one tenant each.
CREATE TABLE service_tokens (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('tenant_admin', 'provider', 'storefront')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    -- NULL: the token does not expire and stays valid until revoked.
    expires_at TEXT,
    revoked_at TEXT
);
CREATE INDEX service_tokens_tenant ON service_tokens (tenant_id);

-- The application role creates tenant accounts, sessions and tokens, and changes only the
-- login bookkeeping, the disabled flag, the end of a session and the revocation of a token.
-- The operator role does the same for platform accounts, looks sessions and tokens up by
-- hash across tenants, and deletes patient accounts when their link is purged.
GRANT SELECT, INSERT ON service_tokens TO medconnect_app;
GRANT UPDATE (disabled, failed_logins, last_failed_login_at, last_login_at) ON user_accounts
    TO medconnect_app, medconnect_operator;
GRANT UPDATE (ended_at) ON sessions TO medconnect_app;
GRANT UPDATE (revoked_at) ON service_tokens TO medconnect_app;
GRANT INSERT, DELETE ON user_accounts TO medconnect_operator;
GRANT INSERT ON sessions TO medconnect_operator;
GRANT SELECT ON service_tokens TO medconnect_operator;

ALTER TABLE service_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE service_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY service_tokens_app ON service_tokens TO medconnect_app
    USING (tenant_id = current_tenant()) WITH CHECK (tenant_id = current_tenant());
CREATE POLICY service_tokens_operator ON service_tokens TO medconnect_operator
    USING (true) WITH CHECK (true);
