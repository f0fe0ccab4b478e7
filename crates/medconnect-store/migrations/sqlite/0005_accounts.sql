-- Accounts, login sessions and service tokens of the HTTPS API.
--
-- A platform operator belongs to no tenant: its user_accounts row and its sessions have a
-- NULL tenant_id. Every other role belongs to exactly one tenant. A patient account names
-- its patient link, so purging the link deletes the account and its sessions with it.
-- Passwords are stored as argon2id PHC strings, and session and service tokens only as the
-- SHA-256 of the token (64 hex digits), never the token itself.
--
-- SQLite cannot drop a NOT NULL constraint, so user_accounts and sessions are rebuilt.
-- Accounts written before this version have no password: they are carried over disabled,
-- and a row that breaks the new constraints stops the migration.

CREATE TABLE user_accounts_new (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT REFERENCES tenants (id),
    username             TEXT NOT NULL,
    role                 TEXT NOT NULL
        CHECK (role IN ('platform_operator', 'tenant_admin', 'provider', 'patient')),
    link_id              INTEGER REFERENCES patient_links (id),
    password_hash        TEXT NOT NULL,
    disabled             INTEGER NOT NULL DEFAULT 0,
    -- Failed logins since the last successful one, for lockout decisions.
    failed_logins        INTEGER NOT NULL DEFAULT 0,
    last_failed_login_at TEXT,
    last_login_at        TEXT,
    created_at           TEXT NOT NULL,
    CHECK ((role = 'platform_operator') = (tenant_id IS NULL)),
    CHECK ((role = 'patient') = (link_id IS NOT NULL))
);
INSERT INTO user_accounts_new (id, tenant_id, username, role, password_hash, disabled, created_at)
    SELECT id, tenant_id, username, role, '', 1, created_at FROM user_accounts;
DROP TABLE user_accounts;
ALTER TABLE user_accounts_new RENAME TO user_accounts;
CREATE UNIQUE INDEX user_accounts_tenant_username ON user_accounts (tenant_id, username)
    WHERE tenant_id IS NOT NULL;
CREATE UNIQUE INDEX user_accounts_platform_username ON user_accounts (username)
    WHERE tenant_id IS NULL;
CREATE INDEX user_accounts_link ON user_accounts (link_id);

-- Login sessions of users (user_id) and of patients (link_id, also set for patient users).
CREATE TABLE sessions_new (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT REFERENCES tenants (id),
    user_id    TEXT REFERENCES user_accounts (id),
    link_id    INTEGER REFERENCES patient_links (id),
    token_hash TEXT UNIQUE,
    started_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    ended_at   TEXT,
    ends_at    TEXT GENERATED ALWAYS AS (coalesce(ended_at, expires_at)) VIRTUAL,
    CHECK (tenant_id IS NOT NULL OR (link_id IS NULL AND user_id IS NOT NULL))
);
INSERT INTO sessions_new (id, tenant_id, user_id, link_id, started_at, expires_at, ended_at)
    SELECT id, tenant_id, user_id, link_id, started_at, expires_at, ended_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_new RENAME TO sessions;
CREATE INDEX sessions_link ON sessions (link_id);
CREATE INDEX sessions_ends ON sessions (ends_at);
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
