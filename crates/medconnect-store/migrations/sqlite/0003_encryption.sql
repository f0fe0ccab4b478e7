-- Encryption at rest. PHI columns hold AES-256-GCM ciphertexts (BLOB values in the existing
-- columns) sealed under data keys. Each data key is stored here wrapped by the master key;
-- deleting its row crypto-shreds every ciphertext sealed under it.
CREATE TABLE data_keys (
    id             TEXT PRIMARY KEY,
    -- 'tenant', 'profile' or 'link'
    scope          TEXT NOT NULL,
    -- tenant id, patient id, or the integer key of a patient link
    owner          TEXT NOT NULL,
    version        INTEGER NOT NULL,
    wrapped        BLOB NOT NULL,
    master_version INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    UNIQUE (scope, owner, version)
);

-- Source ids are identifiers of the patient, so the column now holds a keyed blind index
-- (HMAC-SHA256) of the source id instead of the id itself.
ALTER TABLE patient_profiles RENAME COLUMN source_id TO source_index;
