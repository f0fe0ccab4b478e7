-- Initial schema of the embedded store.
--
-- Instants are TEXT in the fixed-width form YYYY-MM-DDTHH:MM:SSZ (UTC), so comparing the
-- strings orders them in time. Tenant-owned rows carry tenant_id so that every query can be
-- scoped to one tenant. Child rows of a patient link reference the link's integer key, which
-- keeps per-link deletes on a compact index.

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

-- One row per person, shared by every tenant the person is a patient of.
CREATE TABLE patient_profiles (
    id            TEXT PRIMARY KEY,
    source_system TEXT NOT NULL,
    source_id     TEXT NOT NULL,
    given_name    TEXT NOT NULL,
    family_name   TEXT NOT NULL,
    birth_date    TEXT NOT NULL,
    death_date    TEXT,
    sex           TEXT NOT NULL,
    ssn           TEXT,
    phone         TEXT,
    email         TEXT,
    address_line  TEXT NOT NULL,
    city          TEXT NOT NULL,
    state         TEXT NOT NULL,
    postal_code   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    UNIQUE (source_system, source_id)
);

-- A patient's relationship with one tenant, and the retention of everything the tenant
-- holds for that patient.
CREATE TABLE patient_links (
    id                        INTEGER PRIMARY KEY,
    tenant_id                 TEXT NOT NULL REFERENCES tenants (id),
    patient_id                TEXT NOT NULL REFERENCES patient_profiles (id),
    created_at                TEXT NOT NULL,
    last_medical_encounter_at TEXT,
    phi_retention_until       TEXT NOT NULL,
    UNIQUE (tenant_id, patient_id)
);
CREATE INDEX patient_links_retention ON patient_links (phi_retention_until);
CREATE INDEX patient_links_patient ON patient_links (patient_id);

CREATE TABLE providers (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    source_id      TEXT,
    name           TEXT NOT NULL,
    specialty      TEXT NOT NULL,
    organization   TEXT NOT NULL,
    license_number TEXT,
    license_state  TEXT NOT NULL,
    dea_number     TEXT,
    UNIQUE (tenant_id, source_id)
);

CREATE TABLE consultations (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    link_id         INTEGER NOT NULL REFERENCES patient_links (id),
    provider_id     TEXT,
    source_id       TEXT,
    status          TEXT NOT NULL,
    encounter_class TEXT NOT NULL,
    reason          TEXT NOT NULL,
    notes           TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    ended_at        TEXT
);
CREATE INDEX consultations_link ON consultations (link_id);

CREATE TABLE prescriptions (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    link_id         INTEGER NOT NULL REFERENCES patient_links (id),
    consultation_id TEXT,
    code            TEXT NOT NULL,
    description     TEXT NOT NULL,
    dispenses       INTEGER NOT NULL,
    controlled      INTEGER NOT NULL,
    started_at      TEXT NOT NULL,
    stopped_at      TEXT
);
CREATE INDEX prescriptions_link ON prescriptions (link_id);

-- Conditions, allergies, immunizations, procedures and care plans.
CREATE TABLE medical_history (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    link_id         INTEGER NOT NULL REFERENCES patient_links (id),
    consultation_id TEXT,
    kind            TEXT NOT NULL,
    code            TEXT NOT NULL,
    description     TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    stopped_at      TEXT
);
CREATE INDEX medical_history_link ON medical_history (link_id);

CREATE TABLE intake_forms (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    link_id      INTEGER NOT NULL REFERENCES patient_links (id),
    form         TEXT NOT NULL,
    answers_json TEXT NOT NULL,
    submitted_at TEXT NOT NULL
);
CREATE INDEX intake_forms_link ON intake_forms (link_id);

-- Metadata of ID verification photos; the bytes live in a file under the data directory.
CREATE TABLE id_photos (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    link_id     INTEGER NOT NULL REFERENCES patient_links (id),
    file_name   TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    uploaded_at TEXT NOT NULL
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

-- Login sessions of staff users (user_id) or patients (link_id).
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    user_id    TEXT,
    link_id    INTEGER REFERENCES patient_links (id),
    started_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    ended_at   TEXT,
    ends_at    TEXT GENERATED ALWAYS AS (coalesce(ended_at, expires_at)) VIRTUAL
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

-- Append-only, hash-chained audit log. `body` is the canonical JSON that `hash` commits to.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    action    TEXT NOT NULL,
    tenant_id TEXT,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq);

-- Files whose rows were purged in a committed transaction but not yet unlinked. The next
-- run unlinks them first, so a crash between commit and unlink leaves no orphan behind.
CREATE TABLE pending_file_deletions (
    path TEXT PRIMARY KEY
);

-- One row per lifecycle run, so an operator can see what ran, when, and whether it finished.
CREATE TABLE lifecycle_runs (
    id          TEXT PRIMARY KEY,
    as_of       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL,
    summary     TEXT
);
