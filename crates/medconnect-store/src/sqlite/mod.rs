//! The embedded backend: one SQLite database in WAL mode plus a folder of blobs, both under
//! the data directory.

mod access;
pub(crate) mod accounts;
mod audit;
mod clinical;
mod intake;
mod keys;
mod ledger;
mod lifecycle;
mod records;
mod rotation;
mod snapshot;
pub(crate) mod values;

use std::fs;
use std::path::{Path, PathBuf};

use audit::AuditAppender;
use chrono::{DateTime, Utc};
use medconnect_domain::audit::AuditEvent;
use medconnect_domain::clock::{Clock, SystemClock};
use medconnect_domain::time::format_instant;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::keys::Keys;
use crate::{ClockMode, Result, StoreError, StoreInfo};
pub use snapshot::{Snapshot, SnapshotFacts};
use values::parse_stored_instant;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "medconnect.db";

/// Folder of blob files inside the data directory.
pub const BLOB_DIR: &str = "blobs";

/// Schema migrations in order. The version of each is its position plus one.
const MIGRATIONS: &[(&str, &str)] = &[
    ("initial", include_str!("../../migrations/sqlite/0001_initial.sql")),
    ("link_activity_index", include_str!("../../migrations/sqlite/0002_link_activity_index.sql")),
    ("encryption", include_str!("../../migrations/sqlite/0003_encryption.sql")),
    ("audit_checkpoints", include_str!("../../migrations/sqlite/0004_audit_checkpoints.sql")),
    ("accounts", include_str!("../../migrations/sqlite/0005_accounts.sql")),
    ("token_client_cert", include_str!("../../migrations/sqlite/0006_token_client_cert.sql")),
    (
        "id_photo_content_type",
        include_str!("../../migrations/sqlite/0007_id_photo_content_type.sql"),
    ),
];

/// The first schema version whose PHI columns hold ciphertexts.
const ENCRYPTED_SCHEMA: i64 = 3;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A store in one data directory.
pub struct SqliteStore {
    conn: Connection,
    data_dir: PathBuf,
    clock: Box<dyn Clock>,
    clock_mode: ClockMode,
    /// The master key, set by callers that read or write PHI.
    keys: Option<Keys>,
}

impl SqliteStore {
    /// Creates a new store in `data_dir`, which may exist but must not hold a store.
    pub fn create(data_dir: &Path, clock_mode: ClockMode, clock: Box<dyn Clock>) -> Result<Self> {
        let db_path = data_dir.join(DATABASE_FILE);
        if db_path.exists() {
            return Err(StoreError::AlreadyInitialized(data_dir.to_owned()));
        }
        fs::create_dir_all(data_dir.join(BLOB_DIR)).map_err(|e| StoreError::io(data_dir, e))?;
        let mut conn = open_connection(&db_path)?;
        migrate(&mut conn)?;
        let now = clock.now();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('clock_mode', ?1), ('created_at', ?2)",
            (clock_mode.as_str(), format_instant(now)),
        )?;
        // The first entry makes an emptied log detectable.
        let mut audit = AuditAppender::begin(&tx, now, clock_mode == ClockMode::Simulated)?;
        let event = AuditEvent::new("medconnect", "store.create")
            .detail(format!("{} clock, schema version {SCHEMA_VERSION}", clock_mode.as_str()));
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(SqliteStore { conn, data_dir: data_dir.to_owned(), clock, clock_mode, keys: None })
    }

    /// Opens the store in `data_dir`, applying pending migrations.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let db_path = data_dir.join(DATABASE_FILE);
        if !db_path.is_file() {
            return Err(StoreError::NotInitialized(data_dir.to_owned()));
        }
        let mut conn = open_connection(&db_path)?;
        migrate(&mut conn)?;
        let clock_mode = match meta_value(&conn, "clock_mode")?.as_deref() {
            Some("simulated") => ClockMode::Simulated,
            Some("production") => ClockMode::Production,
            other => return Err(StoreError::Corrupt(format!("unknown clock mode {other:?}"))),
        };
        Ok(SqliteStore {
            conn,
            data_dir: data_dir.to_owned(),
            clock: Box::new(SystemClock),
            clock_mode,
            keys: None,
        })
    }

    /// Sets the master key. Commands that write or read PHI fail with
    /// [`StoreError::MasterKeyRequired`] until it is set.
    pub fn set_master_key(&mut self, master: medconnect_crypto::MasterKey) -> Result<()> {
        self.set_master_keys(master, None)
    }

    /// Sets the master key and, while a master key rotation is under way, the next one.
    /// Data keys wrapped by either open, and new data keys are wrapped by the next one.
    pub fn set_master_keys(
        &mut self,
        master: medconnect_crypto::MasterKey,
        next: Option<medconnect_crypto::MasterKey>,
    ) -> Result<()> {
        let now = self.now();
        self.keys = Some(Keys::load(&self.conn, master, next, now)?);
        Ok(())
    }

    fn keys(&self) -> Result<&Keys> {
        self.keys.as_ref().ok_or(StoreError::MasterKeyRequired)
    }

    /// Replaces the clock that stamps audit entries and new records.
    pub fn set_clock(&mut self, clock: Box<dyn Clock>) {
        self.clock = clock;
    }

    pub fn clock_mode(&self) -> ClockMode {
        self.clock_mode
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn simulated(&self) -> bool {
        self.clock_mode == ClockMode::Simulated
    }

    fn blob_path(&self, relative: &str) -> PathBuf {
        self.data_dir.join(BLOB_DIR).join(relative)
    }

    fn write_tx(&mut self) -> Result<rusqlite::Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    fn read_info(&self) -> Result<StoreInfo> {
        let created = meta_value(&self.conn, "created_at")?
            .ok_or_else(|| StoreError::Corrupt("store_meta has no created_at".into()))?;
        Ok(StoreInfo {
            schema_version: schema_version(&self.conn)?,
            clock: self.clock_mode,
            created_at: parse_stored_instant(&created)?,
            backend: "sqlite",
            location: self.data_dir.display().to_string(),
        })
    }
}

/// Prepared statements kept per connection. rusqlite keeps 16 by default, fewer than the
/// distinct statements of one authenticated patient read with its audit entry, so each read
/// would parse its SQL again.
const STATEMENT_CACHE_CAPACITY: usize = 64;

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // FULL sync makes each commit durable before files named in it are unlinked. Secure
    // delete overwrites the content of deleted rows, wrapped keys included, with zeros.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;
         PRAGMA busy_timeout = 60000;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(conn)
}

fn meta_value(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM store_meta WHERE key = ?1", [key], |row| row.get(0))
        .optional()?)
}

fn schema_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let found = schema_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    if found > 0 && found < ENCRYPTED_SCHEMA {
        let profiles: i64 =
            conn.query_row("SELECT count(*) FROM patient_profiles", [], |row| row.get(0))?;
        if profiles > 0 {
            return Err(StoreError::PlaintextStore { found });
        }
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        tracing::info!(version, migration = name, "applying schema migration");
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
    }
    tx.commit()?;
    Ok(())
}

impl crate::Store for SqliteStore {
    fn info(&self) -> Result<StoreInfo> {
        self.read_info()
    }

    fn set_master_keys(
        &mut self,
        master: medconnect_crypto::MasterKey,
        next: Option<medconnect_crypto::MasterKey>,
    ) -> Result<()> {
        SqliteStore::set_master_keys(self, master, next)
    }

    fn set_clock(&mut self, clock: Box<dyn Clock>) {
        SqliteStore::set_clock(self, clock)
    }

    fn create_tenant(
        &mut self,
        slug: &str,
        name: &str,
        actor: &str,
    ) -> Result<medconnect_domain::model::Tenant> {
        self.create_tenant_impl(slug, name, actor)
    }

    fn tenant_by_slug(&self, slug: &str) -> Result<medconnect_domain::model::Tenant> {
        self.tenant_by_slug_impl(slug)
    }

    fn tenant(&self, id: medconnect_domain::TenantId) -> Result<medconnect_domain::model::Tenant> {
        self.tenant_impl(id)
    }

    fn tenants(&self) -> Result<Vec<medconnect_domain::model::Tenant>> {
        self.tenants_impl()
    }

    fn import(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        batch: &medconnect_domain::model::ImportBatch,
        policy: &medconnect_domain::policy::Policy,
        actor: &str,
    ) -> Result<medconnect_domain::model::ImportCounts> {
        self.import_impl(tenant, batch, policy, actor)
    }

    fn record_encounter(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        at: DateTime<Utc>,
        policy: &medconnect_domain::policy::Policy,
        actor: &str,
    ) -> Result<DateTime<Utc>> {
        self.record_encounter_impl(tenant, patient, at, policy, actor)
    }

    fn add_id_photo(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        bytes: &[u8],
        uploaded_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<medconnect_domain::PhotoId> {
        self.add_id_photo_impl(tenant, patient, bytes, uploaded_at, actor)
    }

    fn add_session(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: Option<medconnect_domain::PatientId>,
        times: crate::SessionTimes,
    ) -> Result<medconnect_domain::SessionId> {
        self.add_session_impl(tenant, patient, times)
    }

    fn patient_links(
        &self,
        tenant: &medconnect_domain::model::Tenant,
    ) -> Result<Vec<crate::LinkSummary>> {
        self.patient_links_impl(tenant)
    }

    fn patient_link(
        &self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
    ) -> Result<crate::LinkDetail> {
        self.patient_link_impl(tenant, patient)
    }

    fn patient_profile(
        &self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
    ) -> Result<crate::PatientProfileView> {
        self.patient_profile_impl(tenant, patient)
    }

    fn read_id_photo(
        &self,
        tenant: &medconnect_domain::model::Tenant,
        photo: medconnect_domain::PhotoId,
    ) -> Result<Vec<u8>> {
        self.read_id_photo_impl(tenant, photo)
    }

    fn providers(
        &self,
        tenant: &medconnect_domain::model::Tenant,
    ) -> Result<Vec<crate::ProviderView>> {
        self.providers_impl(tenant)
    }

    fn find_patient(
        &self,
        tenant: &medconnect_domain::model::Tenant,
        source_system: &str,
        source_id: &str,
    ) -> Result<Option<medconnect_domain::PatientId>> {
        self.find_patient_impl(tenant, source_system, source_id)
    }

    fn receipts_for(&self, record_id: &str) -> Result<Vec<crate::AuditRecord>> {
        self.receipts_for_impl(record_id)
    }

    fn read_patient_links(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        access: &crate::Access,
    ) -> Result<Vec<crate::LinkSummary>> {
        self.read_patient_links_impl(tenant, access)
    }

    fn read_patient(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<crate::PatientRecord> {
        self.read_patient_impl(tenant, patient, access)
    }

    fn read_patients(
        &mut self,
        reads: &[crate::PatientRead],
    ) -> Result<Vec<Result<crate::PatientRecord>>> {
        self.read_patients_impl(reads)
    }

    fn read_id_photo_audited(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        photo: medconnect_domain::PhotoId,
        access: &crate::Access,
    ) -> Result<Vec<u8>> {
        self.read_id_photo_audited_impl(tenant, photo, access)
    }

    fn submit_intake_form(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        form: &crate::NewIntakeForm,
        access: &crate::Access,
    ) -> Result<crate::IntakeFormInfo> {
        self.submit_intake_form_impl(tenant, patient, form, access)
    }

    fn read_intake_forms(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<Vec<crate::IntakeForm>> {
        self.read_intake_forms_impl(tenant, patient, access)
    }

    fn upload_id_photo(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        photo: &crate::NewIdPhoto,
        access: &crate::Access,
    ) -> Result<crate::IdPhotoInfo> {
        self.upload_id_photo_impl(tenant, patient, photo, access)
    }

    fn read_id_photos(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<Vec<crate::IdPhotoInfo>> {
        self.read_id_photos_impl(tenant, patient, access)
    }

    fn read_patient_id_photo(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        photo: medconnect_domain::PhotoId,
        access: &crate::Access,
    ) -> Result<crate::IdPhotoContent> {
        self.read_patient_id_photo_impl(tenant, patient, photo, access)
    }

    fn record_encounter_audited(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        encounter: &crate::NewEncounter<'_>,
        policy: &medconnect_domain::policy::Policy,
        access: &crate::Access,
        action: &str,
    ) -> Result<crate::EncounterRecorded> {
        self.record_encounter_audited_impl(tenant, patient, encounter, policy, access, action)
    }

    fn read_consultations(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<Vec<crate::ConsultationRecord>> {
        self.read_consultations_impl(tenant, patient, access)
    }

    fn create_prescription(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        prescription: &crate::NewPrescriptionEntry<'_>,
        access: &crate::Access,
    ) -> Result<crate::PrescriptionRecord> {
        self.create_prescription_impl(tenant, patient, prescription, access)
    }

    fn read_prescriptions(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<Vec<crate::PrescriptionRecord>> {
        self.read_prescriptions_impl(tenant, patient, access)
    }

    fn links_of_patient(
        &self,
        patient: medconnect_domain::PatientId,
    ) -> Result<Vec<crate::LinkSummary>> {
        self.links_of_patient_impl(patient)
    }

    fn place_hold(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        scope: medconnect_domain::model::HoldScope,
        matter: &str,
        reason: &str,
        actor: &str,
    ) -> Result<medconnect_domain::model::LegalHold> {
        self.place_hold_impl(tenant, scope, matter, reason, actor)
    }

    fn release_hold(
        &mut self,
        tenant: Option<medconnect_domain::TenantId>,
        id: medconnect_domain::HoldId,
        actor: &str,
    ) -> Result<medconnect_domain::model::LegalHold> {
        self.release_hold_impl(tenant, id, actor)
    }

    fn holds(
        &self,
        tenant: Option<medconnect_domain::TenantId>,
        include_released: bool,
    ) -> Result<Vec<medconnect_domain::model::LegalHold>> {
        self.holds_impl(tenant, include_released)
    }

    fn phi_candidates(&self, active_before: DateTime<Utc>) -> Result<Vec<crate::PhiCandidate>> {
        self.phi_candidates_impl(active_before)
    }

    fn id_photo_candidates(
        &self,
        uploaded_before: DateTime<Utc>,
    ) -> Result<Vec<crate::RecordCandidate>> {
        self.id_photo_candidates_impl(uploaded_before)
    }

    fn session_candidates(
        &self,
        ended_before: DateTime<Utc>,
    ) -> Result<Vec<crate::RecordCandidate>> {
        self.session_candidates_impl(ended_before)
    }

    fn platform_sessions_due(&self, ended_before: DateTime<Utc>) -> Result<u64> {
        self.platform_sessions_due_impl(ended_before)
    }

    fn purge_platform_sessions(
        &mut self,
        ended_before: DateTime<Utc>,
        actor: &str,
        run_id: &str,
    ) -> Result<u64> {
        self.purge_platform_sessions_impl(ended_before, actor, run_id)
    }

    fn dispose(
        &mut self,
        disposals: &[crate::Disposal],
        context: &crate::DisposalContext<'_>,
    ) -> Result<Vec<crate::DisposalOutcome>> {
        self.dispose_impl(disposals, context)
    }

    fn finish_file_deletions(&mut self) -> Result<u64> {
        self.finish_file_deletions_impl()
    }

    fn apply_policy(
        &mut self,
        policy: &medconnect_domain::policy::Policy,
        actor: &str,
        allow_shorter: bool,
    ) -> Result<crate::PolicyApplied> {
        self.apply_policy_impl(policy, actor, allow_shorter)
    }

    fn applied_policy_version(&self) -> Result<Option<String>> {
        self.applied_policy_version_impl()
    }

    fn master_key_version(&self) -> Result<u32> {
        self.master_key_version_impl()
    }

    fn master_rotation_target(&self) -> Result<Option<u32>> {
        self.master_rotation_target_impl()
    }

    fn begin_master_rotation(&mut self, next_version: u32, actor: &str) -> Result<()> {
        self.begin_master_rotation_impl(next_version, actor)
    }

    fn rewrap_data_keys(&mut self, limit: u32) -> Result<u64> {
        self.rewrap_data_keys_impl(limit)
    }

    fn finish_master_rotation(&mut self, actor: &str) -> Result<u32> {
        self.finish_master_rotation_impl(actor)
    }

    fn rotate_tenant_key(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        actor: &str,
    ) -> Result<u32> {
        self.rotate_tenant_key_impl(tenant, actor)
    }

    fn append_audit(&mut self, event: medconnect_domain::audit::AuditEvent) -> Result<i64> {
        self.append_audit_impl(event)
    }

    fn verify_audit_with_key(
        &self,
        public_key: Option<&medconnect_domain::checkpoint::AuditPublicKey>,
    ) -> Result<medconnect_domain::audit::VerifyReport> {
        self.verify_audit_impl(public_key)
    }

    fn sign_audit_checkpoint(
        &mut self,
        signer: &dyn medconnect_crypto::AuditSigner,
    ) -> Result<crate::CheckpointSigned> {
        self.sign_audit_checkpoint_impl(signer)
    }

    fn audit_checkpoints(&self) -> Result<Vec<medconnect_domain::checkpoint::Checkpoint>> {
        self.audit_checkpoints_impl()
    }

    fn export_audit(
        &self,
        public_key: Option<&medconnect_domain::checkpoint::AuditPublicKey>,
        write: &mut dyn FnMut(&medconnect_domain::checkpoint::ExportLine) -> Result<()>,
    ) -> Result<crate::AuditExported> {
        self.export_audit_impl(public_key, write)
    }

    fn audit_disposal_due(
        &self,
        policy: &medconnect_domain::policy::Policy,
        as_of: DateTime<Utc>,
    ) -> Result<crate::AuditCut> {
        self.audit_disposal_due_impl(policy, as_of)
    }

    fn dispose_audit(
        &mut self,
        policy: &medconnect_domain::policy::Policy,
        as_of: DateTime<Utc>,
        signer: &dyn medconnect_crypto::AuditSigner,
        actor: &str,
    ) -> Result<crate::AuditCut> {
        self.dispose_audit_impl(policy, as_of, signer, actor)
    }

    fn audit_entries(&self, after_seq: i64, limit: u32) -> Result<Vec<crate::AuditRecord>> {
        self.audit_entries_impl(after_seq, limit)
    }

    fn read_audit_entries(
        &mut self,
        after_seq: i64,
        limit: u32,
        access: &crate::Access,
    ) -> Result<Vec<crate::AuditRecord>> {
        self.read_audit_entries_impl(after_seq, limit, access)
    }

    fn audit_tail_start(&self, count: u32) -> Result<i64> {
        self.audit_tail_start_impl(count)
    }

    fn start_run(&mut self, as_of: DateTime<Utc>) -> Result<String> {
        self.start_run_impl(as_of)
    }

    fn finish_run(&mut self, run_id: &str, status: &str, summary: &str) -> Result<()> {
        self.finish_run_impl(run_id, status, summary)
    }

    fn runs(&self, limit: u32) -> Result<Vec<crate::RunRecord>> {
        self.runs_impl(limit)
    }

    fn reapply_disposal(&mut self, entry: &crate::LedgerEntry) -> Result<crate::ReapplyOutcome> {
        self.reapply_disposal_impl(entry)
    }

    fn create_user(
        &mut self,
        user: &crate::NewUser<'_>,
        actor: &str,
    ) -> Result<medconnect_domain::UserId> {
        self.create_user_impl(user, actor)
    }

    fn user_for_login(
        &self,
        tenant_slug: Option<&str>,
        username: &str,
    ) -> Result<Option<crate::LoginUser>> {
        self.user_for_login_impl(tenant_slug, username)
    }

    fn record_login_failure(&mut self, user: crate::UserRef) -> Result<u32> {
        self.record_login_failure_impl(user)
    }

    fn record_login_success(&mut self, user: crate::UserRef) -> Result<()> {
        self.record_login_success_impl(user)
    }

    fn list_users(
        &self,
        tenant: Option<&medconnect_domain::model::Tenant>,
    ) -> Result<Vec<crate::UserSummary>> {
        self.list_users_impl(tenant)
    }

    fn set_user_disabled(
        &mut self,
        user: crate::UserRef,
        disabled: bool,
        actor: &str,
    ) -> Result<()> {
        self.set_user_disabled_impl(user, disabled, actor)
    }

    fn create_session(
        &mut self,
        user: crate::UserRef,
        token_hash: &medconnect_crypto::TokenHash,
        started_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<medconnect_domain::SessionId> {
        self.create_session_impl(user, token_hash, started_at, expires_at)
    }

    fn session_by_token_hash(
        &self,
        token_hash: &medconnect_crypto::TokenHash,
    ) -> Result<Option<crate::SessionInfo>> {
        self.session_by_token_hash_impl(token_hash)
    }

    fn end_session(
        &mut self,
        tenant: Option<medconnect_domain::TenantId>,
        session: medconnect_domain::SessionId,
    ) -> Result<bool> {
        self.end_session_impl(tenant, session)
    }

    fn create_service_token(
        &mut self,
        token: &crate::NewServiceToken<'_>,
        actor: &str,
    ) -> Result<medconnect_domain::ServiceTokenId> {
        self.create_service_token_impl(token, actor)
    }

    fn service_token_by_hash(
        &self,
        token_hash: &medconnect_crypto::TokenHash,
    ) -> Result<Option<crate::ServiceTokenInfo>> {
        self.service_token_by_hash_impl(token_hash)
    }

    fn list_service_tokens(
        &self,
        tenant: &medconnect_domain::model::Tenant,
    ) -> Result<Vec<crate::ServiceTokenSummary>> {
        self.list_service_tokens_impl(tenant)
    }

    fn revoke_service_token(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        token: medconnect_domain::ServiceTokenId,
        actor: &str,
    ) -> Result<bool> {
        self.revoke_service_token_impl(tenant, token, actor)
    }
}
