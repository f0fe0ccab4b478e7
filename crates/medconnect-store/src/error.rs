//! Errors of the storage layer.

use std::path::PathBuf;

/// Error returned by a [`crate::Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory contains no store yet.
    #[error("no MedConnect store in {0}: create one with `medconnect init --data-dir {0}`")]
    NotInitialized(PathBuf),
    /// `init` was asked to create a store where one exists.
    #[error("a MedConnect store already exists in {0}: use it, or choose another --data-dir")]
    AlreadyInitialized(PathBuf),
    /// The store was written by a newer MedConnect.
    #[error(
        "store schema version {found} is newer than this medconnect supports ({supported}): \
         upgrade medconnect"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    /// No tenant has this slug or id.
    #[error(
        "tenant {0:?} not found: list tenants with `medconnect tenant list` or create it with \
         `medconnect tenant create`"
    )]
    TenantNotFound(String),
    /// The slug is taken.
    #[error("tenant {0:?} already exists: choose another slug")]
    TenantExists(String),
    /// The patient is not linked to the tenant.
    #[error(
        "patient {patient} not found in tenant {tenant:?}: list its patients with \
         `medconnect patient list --tenant {tenant}`"
    )]
    PatientNotFound { tenant: String, patient: String },
    /// No ID photo of the tenant has this id.
    #[error("ID photo {photo} not found in tenant {tenant:?}")]
    PhotoNotFound { tenant: String, photo: String },
    /// No consultation of the patient in the tenant has this id.
    #[error("consultation {consultation} not found for this patient in tenant {tenant:?}")]
    ConsultationNotFound { tenant: String, consultation: String },
    /// No hold has this id.
    #[error("legal hold {0} not found: list holds with `medconnect hold list --all`")]
    HoldNotFound(String),
    /// The hold was released before.
    #[error("legal hold {0} is already released")]
    HoldAlreadyReleased(String),
    /// A tenant slug that cannot be used.
    #[error(transparent)]
    InvalidSlug(#[from] medconnect_domain::model::InvalidSlug),
    /// Applying the policy would move retention instants earlier.
    #[error(
        "policy {version} would shorten the retention of {count} patient links compared with \
         policy {applied}, applied before: if this policy file is out of date (on a shared \
         store, every node must use the same one), replace it; otherwise review the change, \
         then accept it with `medconnect policy apply --allow-shorter`"
    )]
    PolicyShortens { count: u64, version: String, applied: String },
    /// The policy names a tenant that does not exist.
    #[error(
        "policy has a [tenants.{0}] table but no tenant {0:?} exists: fix the slug or remove \
         the table (`medconnect tenant list` shows the slugs)"
    )]
    PolicyUnknownTenant(String),
    /// The import would link patients that the tenant already has.
    #[error(
        "{count} patients of this data set are already linked to tenant {tenant:?}: the data \
         set was imported before, so nothing was written"
    )]
    AlreadyImported { tenant: String, count: usize },
    /// Source ids of the batch match existing profiles of other people.
    #[error(
        "{count} patients of this data set share a source id with an existing core profile \
         whose name, birth date or SSN differ: nothing was imported; check that the data set \
         comes from the same source system"
    )]
    ProfileMismatch { count: usize },
    /// A row references something the batch does not contain.
    #[error("import batch is inconsistent: {0}")]
    InconsistentBatch(String),
    /// The database contains a value this version cannot read.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A file of the store could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A command needs the master key and none was given.
    #[error(
        "this command needs the master key: keep DATA_DIR/keys/master.key in place, or pass \
         --master-key-file FILE, or set MEDCONNECT_MASTER_KEY"
    )]
    MasterKeyRequired,
    /// A ciphertext does not open: altered, moved from another row, or its key is wrong or gone.
    #[error(
        "{table}.{column} of record {record} cannot be decrypted: it was altered, copied from \
         another row, or its key is wrong or destroyed ({source})"
    )]
    Unreadable {
        table: String,
        column: String,
        record: String,
        source: Box<medconnect_crypto::CryptoError>,
    },
    /// The data key a ciphertext names was destroyed: its records were disposed of.
    #[error(
        "{table}.{column} of record {record} cannot be decrypted: its data key was destroyed \
         when its records were disposed of"
    )]
    KeyDestroyed { table: String, column: String, record: String },
    /// The data key a ciphertext names is not visible: it was destroyed, or it belongs to
    /// another tenant, whose keys PostgreSQL row-level security hides.
    #[error(
        "{table}.{column} of record {record} cannot be decrypted: its data key was destroyed \
         when its records were disposed of, or belongs to another tenant because the value \
         was copied from another tenant's row"
    )]
    KeyUnavailable { table: String, column: String, record: String },
    /// A rotation step was asked for while no master key rotation is under way.
    #[error(
        "no master key rotation is under way: start one with `medconnect keys rotate --master`"
    )]
    NoRotation,
    /// A rotation was to be finished while data keys still use the old master key.
    #[error(
        "{remaining} data keys are still wrapped by the old master key: run \
         `medconnect keys rotate --master` again to finish"
    )]
    RotationIncomplete { remaining: u64 },
    /// Key material could not be created, wrapped or unwrapped.
    #[error(transparent)]
    Crypto(#[from] medconnect_crypto::CryptoError),
    /// The store predates encryption at rest and contains plaintext records.
    #[error(
        "this store (schema version {found}) holds plaintext patient records from a version \
         without encryption at rest: create a new store with `medconnect init` and import the \
         data again"
    )]
    PlaintextStore { found: i64 },
    /// Signing an audit checkpoint failed.
    #[error("signing the audit checkpoint failed: {0}")]
    Signing(Box<medconnect_crypto::CryptoError>),
    /// The audit chain does not verify, so signing its head would vouch for damage.
    #[error(
        "refusing to sign audit entry {seq}: {reason}. Run `medconnect audit verify` and \
         investigate before signing"
    )]
    AuditBroken { seq: i64, reason: String },
    /// The audit log has no entry, although the store writes one when it is created.
    #[error("the audit log is empty, although every store writes an entry when it is created")]
    AuditEmpty,
    /// A user account cannot be created as requested.
    #[error("invalid user account: {0}")]
    InvalidAccount(String),
    /// The username is taken in the tenant (or among platform operators). The message leaves
    /// the username out, because it may be an email address.
    #[error("a user with this username already exists in {scope}: choose another username")]
    UserExists { scope: String },
    /// No user account has this id in the tenant given.
    #[error("user {0} not found")]
    UserNotFound(String),
    /// A session was requested for a disabled account.
    #[error("user {0} is disabled: enable the account before it logs in")]
    UserDisabled(String),
    /// No session has this id in the tenant given.
    #[error("session {0} not found")]
    SessionNotFound(String),
    /// A service token cannot be created as requested.
    #[error("invalid service token: {0}")]
    InvalidServiceToken(String),
    /// No service token of the tenant has this id.
    #[error("service token {0} not found")]
    ServiceTokenNotFound(String),
    /// The database reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error. The text contains the SQLSTATE and the server's message,
    /// never the DETAIL line, which can quote stored values.
    #[error("database error (postgres): {message}")]
    Postgres { code: Option<String>, message: String },
    /// The PostgreSQL server could not be reached, or went away and did not come back.
    #[error(
        "cannot reach PostgreSQL at {target} after {attempts} attempts ({reason}): check \
         that the server runs and that {setting} names it"
    )]
    PostgresUnreachable { target: String, setting: String, attempts: u32, reason: String },
    /// `init` was requested for a schema that already contains a store.
    #[error(
        "PostgreSQL schema {0:?} already holds a MedConnect store: use it, or set another \
         database_schema"
    )]
    PostgresStoreExists(String),
    /// The schema contains no store yet.
    #[error(
        "PostgreSQL schema {0:?} holds no MedConnect store: create one with `medconnect init`"
    )]
    PostgresNotInitialized(String),
    /// The schema was written by an older MedConnect and needs migrating first.
    #[error(
        "PostgreSQL schema version {found} is older than this medconnect ({supported}): run \
         `medconnect db migrate` once, from one node, then start the nodes again"
    )]
    PostgresSchemaBehind { found: i64, supported: i64 },
    /// The configuration of the PostgreSQL backend cannot be used.
    #[error("PostgreSQL configuration: {0}")]
    PostgresConfig(String),
}

impl From<postgres::Error> for StoreError {
    fn from(error: postgres::Error) -> Self {
        match error.as_db_error() {
            Some(db) => StoreError::Postgres {
                code: Some(db.code().code().to_owned()),
                message: format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            },
            None => StoreError::Postgres { code: None, message: error.to_string() },
        }
    }
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }
}
