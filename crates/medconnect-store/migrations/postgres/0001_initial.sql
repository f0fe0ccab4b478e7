-- Schema of the PostgreSQL backend, equal in content to the embedded schema at version 4.
--
-- The migration runs as the owner of the schema, with search_path set to it. The roles
-- medconnect_app and medconnect_operator exist before it runs.
--
-- Instants are TEXT in the fixed-width form YYYY-MM-DDTHH:MM:SSZ (UTC), as in the embedded
-- store, so both backends share one parser and comparing the strings orders them in time.
--
-- Row-level security is the second wall behind the application's own tenant checks. Every
-- tenant-owned table lets medconnect_app see and change only the rows of the tenant named
-- by the transaction setting medconnect.tenant; without it, the tables read empty.
-- medconnect_operator, which runs jobs that span tenants, sees every row.

CREATE FUNCTION current_tenant() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('medconnect.tenant', true), '') $$;

CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'active',
    created_at TEXT NOT NULL
);

-- One row per person, shared by every tenant the person is a patient of. PHI columns hold
-- AES-256-GCM ciphertexts; source_index is a keyed blind index of the source id.
CREATE TABLE patient_profiles (
    id            TEXT PRIMARY KEY,
    source_system TEXT NOT NULL,
    source_index  TEXT NOT NULL,
    given_name    BYTEA NOT NULL,
    family_name   BYTEA NOT NULL,
    birth_date    BYTEA NOT NULL,
    death_date    BYTEA,
    sex           BYTEA NOT NULL,
    ssn           BYTEA,
    phone         BYTEA,
    email         BYTEA,
    address_line  BYTEA NOT NULL,
    city          BYTEA NOT NULL,
    state         BYTEA NOT NULL,
    postal_code   BYTEA NOT NULL,
    created_at    TEXT NOT NULL,
    UNIQUE (source_system, source_index)
);

CREATE TABLE patient_links (
    id                        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id                 TEXT NOT NULL REFERENCES tenants (id),
    patient_id                TEXT NOT NULL REFERENCES patient_profiles (id),
    created_at                TEXT NOT NULL,
    last_medical_encounter_at TEXT,
    phi_retention_until       TEXT NOT NULL,
    UNIQUE (tenant_id, patient_id),
    -- The target of the (link_id, tenant_id) foreign keys below.
    UNIQUE (id, tenant_id)
);
CREATE INDEX patient_links_retention ON patient_links (phi_retention_until);
CREATE INDEX patient_links_patient ON patient_links (patient_id);
CREATE INDEX patient_links_activity
    ON patient_links ((coalesce(last_medical_encounter_at, created_at)));

CREATE TABLE providers (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    source_id      TEXT,
    name           BYTEA NOT NULL,
    specialty      TEXT NOT NULL,
    organization   TEXT NOT NULL,
    license_number BYTEA,
    license_state  TEXT NOT NULL,
    dea_number     BYTEA,
    UNIQUE (tenant_id, source_id)
);

-- Foreign key checks ignore row-level security. Rows under a patient link therefore
-- reference it together with their own tenant_id, so that no row hangs off another tenant's
-- link.
CREATE TABLE consultations (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    link_id         BIGINT NOT NULL,
    provider_id     TEXT,
    source_id       TEXT,
    status          TEXT NOT NULL,
    encounter_class TEXT NOT NULL,
    reason          BYTEA NOT NULL,
    notes           BYTEA NOT NULL,
    started_at      TEXT NOT NULL,
    ended_at        TEXT,
    FOREIGN KEY (link_id, tenant_id) REFERENCES patient_links (id, tenant_id)
);
CREATE INDEX consultations_link ON consultations (link_id);

CREATE TABLE prescriptions (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    link_id         BIGINT NOT NULL,
    consultation_id TEXT,
    code            BYTEA NOT NULL,
    description     BYTEA NOT NULL,
    dispenses       BIGINT NOT NULL,
    controlled      BOOLEAN NOT NULL,
    started_at      TEXT NOT NULL,
    stopped_at      TEXT,
    FOREIGN KEY (link_id, tenant_id) REFERENCES patient_links (id, tenant_id)
);
CREATE INDEX prescriptions_link ON prescriptions (link_id);

CREATE TABLE medical_history (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    link_id         BIGINT NOT NULL,
    consultation_id TEXT,
    kind            TEXT NOT NULL,
    code            BYTEA NOT NULL,
    description     BYTEA NOT NULL,
    started_at      TEXT NOT NULL,
    stopped_at      TEXT,
    FOREIGN KEY (link_id, tenant_id) REFERENCES patient_links (id, tenant_id)
);
CREATE INDEX medical_history_link ON medical_history (link_id);

CREATE TABLE intake_forms (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    link_id      BIGINT NOT NULL,
    form         TEXT NOT NULL,
    answers_json BYTEA NOT NULL,
    submitted_at TEXT NOT NULL,
    FOREIGN KEY (link_id, tenant_id) REFERENCES patient_links (id, tenant_id)
);
CREATE INDEX intake_forms_link ON intake_forms (link_id);

-- ID verification photos. Several nodes share no file system, so the sealed bytes are kept
-- in the row.
CREATE TABLE id_photos (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    link_id     BIGINT NOT NULL,
    content     BYTEA NOT NULL,
    bytes       BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    uploaded_at TEXT NOT NULL,
    FOREIGN KEY (link_id, tenant_id) REFERENCES patient_links (id, tenant_id)
);
CREATE INDEX id_photos_link ON id_photos (link_id);
CREATE INDEX id_photos_uploaded ON id_photos (uploaded_at);

CREATE TABLE user_accounts (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    username   TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, username)
);

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    user_id    TEXT,
    link_id    BIGINT,
    started_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    ended_at   TEXT,
    ends_at    TEXT GENERATED ALWAYS AS (coalesce(ended_at, expires_at)) STORED,
    FOREIGN KEY (link_id, tenant_id) REFERENCES patient_links (id, tenant_id)
);
CREATE INDEX sessions_link ON sessions (link_id);
CREATE INDEX sessions_ends ON sessions (ends_at);

CREATE TABLE legal_holds (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    patient_id  TEXT,
    matter      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    placed_at   TEXT NOT NULL,
    placed_by   TEXT NOT NULL,
    released_at TEXT,
    released_by TEXT
);
CREATE INDEX legal_holds_active ON legal_holds (tenant_id, patient_id) WHERE released_at IS NULL;

-- Data keys, each wrapped by the master key. Deleting a row crypto-shreds every ciphertext
-- sealed under it. tenant_id is set for tenant and link keys; profile keys belong to every
-- tenant the profile is linked to, and the index key to the whole store.
CREATE TABLE data_keys (
    id             TEXT PRIMARY KEY,
    scope          TEXT NOT NULL CHECK (scope IN ('tenant', 'profile', 'link', 'index')),
    owner          TEXT NOT NULL,
    tenant_id      TEXT REFERENCES tenants (id),
    version        BIGINT NOT NULL,
    wrapped        BYTEA NOT NULL,
    master_version BIGINT NOT NULL,
    created_at     TEXT NOT NULL,
    UNIQUE (scope, owner, version),
    CHECK ((scope IN ('tenant', 'link')) = (tenant_id IS NOT NULL))
);

-- Append-only, hash-chained audit log. `body` is the canonical JSON that `hash` commits to.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        TEXT NOT NULL,
    action    TEXT NOT NULL,
    tenant_id TEXT,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq);

-- The head of the audit chain: one row. Every writer locks it (SELECT … FOR UPDATE) before
-- appending, which orders appends from all nodes into one chain.
CREATE TABLE audit_head (
    id   BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE audit_checkpoints (
    seq        BIGINT PRIMARY KEY,
    head_hash  TEXT NOT NULL,
    at         TEXT NOT NULL,
    entries    BIGINT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);

-- One row per lifecycle run of any node.
CREATE TABLE lifecycle_runs (
    id          TEXT PRIMARY KEY,
    as_of       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL,
    summary     TEXT,
    node        TEXT NOT NULL DEFAULT ''
);

-- Finds the core profile of a person by source system and blind index, across tenants, so
-- an import links a person who is already a patient elsewhere instead of copying them. It
-- returns only the id: the profile's fields stay invisible until a link to the caller's
-- tenant exists.
CREATE FUNCTION profile_by_source(p_system text, p_index text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT id FROM @SCHEMA@.patient_profiles
          WHERE source_system = p_system AND source_index = p_index $$;
REVOKE ALL ON FUNCTION profile_by_source(text, text) FROM PUBLIC;

-- Privileges, each role only what its code paths use. The application role never deletes,
-- never changes a stored record except a link's retention inputs, and cannot choose a link's
-- id or move a link to another profile; disposal, hold release and audit maintenance run
-- as the operator role.
GRANT USAGE ON SCHEMA @SCHEMA@ TO medconnect_app, medconnect_operator;
GRANT SELECT ON store_meta, tenants TO medconnect_app;
GRANT SELECT, INSERT ON patient_profiles, providers, consultations, prescriptions,
    medical_history, intake_forms, id_photos, user_accounts, sessions, legal_holds, data_keys,
    audit_log TO medconnect_app;
GRANT SELECT ON patient_links TO medconnect_app;
GRANT INSERT (tenant_id, patient_id, created_at, last_medical_encounter_at, phi_retention_until)
    ON patient_links TO medconnect_app;
GRANT UPDATE (last_medical_encounter_at, phi_retention_until) ON patient_links
    TO medconnect_app;
-- TODO: appends go through these two grants, so a tenant that runs its own SQL could write
-- rows ahead of the chain head and block other tenants' writes; an append function owned
-- by another role would close that.
GRANT SELECT, UPDATE ON audit_head TO medconnect_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON store_meta TO medconnect_operator;
GRANT SELECT, INSERT ON tenants TO medconnect_operator;
GRANT SELECT ON providers, user_accounts TO medconnect_operator;
GRANT SELECT, DELETE ON consultations, prescriptions, medical_history, intake_forms
    TO medconnect_operator;
-- UPDATE only for the row locks (FOR UPDATE) that disposals take.
GRANT SELECT, UPDATE, DELETE ON patient_profiles, id_photos, sessions TO medconnect_operator;
GRANT SELECT, UPDATE, DELETE ON patient_links TO medconnect_operator;
GRANT SELECT, UPDATE ON legal_holds, audit_head TO medconnect_operator;
GRANT SELECT, INSERT, UPDATE, DELETE ON data_keys, audit_checkpoints TO medconnect_operator;
GRANT SELECT, INSERT, DELETE ON audit_log TO medconnect_operator;
GRANT SELECT, INSERT, UPDATE ON lifecycle_runs TO medconnect_operator;
GRANT EXECUTE ON FUNCTION profile_by_source(text, text) TO medconnect_app, medconnect_operator;

-- Row-level security. FORCE applies the policies to the owner too, so only a superuser or
-- a role with BYPASSRLS sees past them, and the application checks at connect time that it
-- is neither.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenants_app ON tenants TO medconnect_app
    USING (id = current_tenant());
CREATE POLICY tenants_operator ON tenants TO medconnect_operator
    USING (true) WITH CHECK (true);

-- Not forced: profile_by_source runs as the owner and must see every profile.
ALTER TABLE patient_profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY patient_profiles_app_read ON patient_profiles FOR SELECT TO medconnect_app
    USING (EXISTS (SELECT 1 FROM patient_links l
                   WHERE l.patient_id = patient_profiles.id AND l.tenant_id = current_tenant()));
CREATE POLICY patient_profiles_app_insert ON patient_profiles FOR INSERT TO medconnect_app
    WITH CHECK (current_tenant() IS NOT NULL);
CREATE POLICY patient_profiles_operator ON patient_profiles TO medconnect_operator
    USING (true) WITH CHECK (true);

ALTER TABLE data_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE data_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY data_keys_app ON data_keys TO medconnect_app
    USING (tenant_id = current_tenant()
           OR (current_tenant() IS NOT NULL AND scope = 'index')
           OR (scope = 'profile' AND EXISTS (
                   SELECT 1 FROM patient_links l
                   WHERE l.patient_id = data_keys.owner AND l.tenant_id = current_tenant())))
    WITH CHECK ((scope = 'tenant' AND tenant_id = current_tenant() AND owner = current_tenant())
                OR (scope = 'link' AND tenant_id = current_tenant() AND EXISTS (
                        SELECT 1 FROM patient_links l
                        WHERE l.id::text = data_keys.owner AND l.tenant_id = current_tenant()))
                -- TODO: a new profile's key is written before its link exists, so any tenant
                -- may add a key version to any profile.
                OR (current_tenant() IS NOT NULL AND scope = 'profile'));
CREATE POLICY data_keys_operator ON data_keys TO medconnect_operator
    USING (true) WITH CHECK (true);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_log_app ON audit_log TO medconnect_app
    USING (tenant_id = current_tenant()) WITH CHECK (tenant_id = current_tenant());
CREATE POLICY audit_log_operator ON audit_log TO medconnect_operator
    USING (true) WITH CHECK (true);

-- Tables whose rows carry tenant_id get the same pair of policies.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['patient_links', 'providers', 'consultations', 'prescriptions',
                             'medical_history', 'intake_forms', 'id_photos', 'user_accounts',
                             'sessions', 'legal_holds']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON %I TO medconnect_app
                            USING (tenant_id = current_tenant())
                            WITH CHECK (tenant_id = current_tenant())', t || '_app', t);
        EXECUTE format('CREATE POLICY %I ON %I TO medconnect_operator
                            USING (true) WITH CHECK (true)', t || '_operator', t);
    END LOOP;
END
$$;
