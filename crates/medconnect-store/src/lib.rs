//! Storage for MedConnect: the [`Store`] trait every backend implements, and the embedded
//! SQLite backend.
//!
//! Invariants every backend keeps:
//! - every query on tenant-owned data takes a tenant id;
//! - every destructive operation runs in one transaction together with the audit entries
//!   that record it, so a crash leaves either both or neither. The exception is
//!   [`Store::reapply_disposal`], which runs only on a restored store before it takes its final
//!   name, and whose caller records one audit entry for all the entries it re-applied;
//! - the audit log is only ever appended to, through the hash chain in
//!   [`medconnect_domain::audit`], except that retention removes entries from its start,
//!   keeping a signed checkpoint at the last removed entry.

mod access;
mod accounts;
mod clinical;
mod error;
mod intake;
mod keys;
pub mod ledger;
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

pub use access::{Access, InvalidRequestId, PatientRead, PatientRecord, MAX_REQUEST_ID_CHARS};
pub use accounts::{
    CertificateFingerprint, CredentialState, InvalidRole, LoginUser, NewServiceToken, NewUser,
    Role, ServiceTokenInfo, ServiceTokenSummary, SessionInfo, UserRef, UserSummary,
    MAX_TOKEN_NAME_CHARS, MAX_USERNAME_CHARS,
};
pub use clinical::{
    ConsultationRecord, EncounterRecorded, NewEncounter, NewPrescriptionEntry, PrescriptionRecord,
    CONSULTATION_STATUSES, ENCOUNTER_CLASSES,
};
pub use error::StoreError;
pub use intake::{
    sniff_image, IdPhotoContent, IdPhotoInfo, IntakeForm, IntakeFormInfo, InvalidIdPhoto,
    NewIdPhoto, NewIntakeForm, ID_PHOTO_CONTENT_TYPES, UNKNOWN_PHOTO_CONTENT_TYPE,
};
pub use ledger::{LedgerEntry, ReapplyOutcome};
pub use postgres::{PgConfig, PgStore};
pub use sqlite::SqliteStore;
pub use types::*;

use chrono::{DateTime, Utc};
use medconnect_crypto::{AuditSigner, TokenHash};
use medconnect_domain::audit::{AuditEvent, VerifyReport};
use medconnect_domain::checkpoint::{AuditPublicKey, Checkpoint, ExportLine};
use medconnect_domain::model::{HoldScope, ImportBatch, ImportCounts, LegalHold, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::{HoldId, PatientId, PhotoId, ServiceTokenId, SessionId, TenantId, UserId};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The operations MedConnect needs from a storage backend.
///
/// Methods that write take `&mut self` and commit before they return. Methods named for a
/// tenant only ever read or change that tenant's rows.
pub trait Store {
    /// Returns facts about the store: schema version, clock mode, creation time.
    fn info(&self) -> Result<StoreInfo>;

    /// Sets the master key and, while a master key rotation is under way, the next one.
    /// Data keys wrapped by either open, and new data keys are wrapped by the next one.
    /// Commands that write or read PHI fail with [`StoreError::MasterKeyRequired`] until
    /// it is set.
    fn set_master_keys(
        &mut self,
        master: medconnect_crypto::MasterKey,
        next: Option<medconnect_crypto::MasterKey>,
    ) -> Result<()>;

    /// Replaces the clock that stamps audit entries and new records.
    fn set_clock(&mut self, clock: Box<dyn medconnect_domain::clock::Clock>);

    /// Creates a tenant. Fails if the slug is taken.
    fn create_tenant(&mut self, slug: &str, name: &str, actor: &str) -> Result<Tenant>;

    /// Returns the tenant with this slug, or [`StoreError::TenantNotFound`].
    fn tenant_by_slug(&self, slug: &str) -> Result<Tenant>;

    /// Returns the tenant with this id, or [`StoreError::TenantNotFound`].
    fn tenant(&self, id: TenantId) -> Result<Tenant>;

    /// Lists all tenants ordered by slug.
    fn tenants(&self) -> Result<Vec<Tenant>>;

    /// Writes an import batch into one tenant in a single transaction: all of it or nothing.
    /// Profiles that already exist (same source system and id) are linked, not duplicated.
    fn import(
        &mut self,
        tenant: &Tenant,
        batch: &ImportBatch,
        policy: &Policy,
        actor: &str,
    ) -> Result<ImportCounts>;

    /// Records a new medical encounter for a linked patient and recomputes the link's
    /// `phi_retention_until`. Returns the new retention instant.
    fn record_encounter(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        at: DateTime<Utc>,
        policy: &Policy,
        actor: &str,
    ) -> Result<DateTime<Utc>>;

    /// Stores an ID verification photo for a linked patient.
    fn add_id_photo(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        bytes: &[u8],
        uploaded_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<PhotoId>;

    /// Stores a login session of a linked patient, or of a staff user when `patient` is None.
    fn add_session(
        &mut self,
        tenant: &Tenant,
        patient: Option<PatientId>,
        times: SessionTimes,
    ) -> Result<SessionId>;

    /// Lists the patients linked to a tenant with their retention, ordered by patient id.
    fn patient_links(&self, tenant: &Tenant) -> Result<Vec<LinkSummary>>;

    /// Returns one patient's link to a tenant with counts of what it holds, or
    /// [`StoreError::PatientNotFound`].
    fn patient_link(&self, tenant: &Tenant, patient: PatientId) -> Result<LinkDetail>;

    /// Returns the patient linked to a tenant under a source system's id, if any.
    fn find_patient(
        &self,
        tenant: &Tenant,
        source_system: &str,
        source_id: &str,
    ) -> Result<Option<PatientId>>;

    /// Lists the audit entries whose disposal receipt names `record_id`, oldest first.
    fn receipts_for(&self, record_id: &str) -> Result<Vec<AuditRecord>>;

    /// Returns a linked patient's core profile, decrypted. Needs the master key.
    fn patient_profile(&self, tenant: &Tenant, patient: PatientId) -> Result<PatientProfileView>;

    /// Returns the decrypted bytes of one of a tenant's ID photos. Needs the master key.
    fn read_id_photo(&self, tenant: &Tenant, photo: PhotoId) -> Result<Vec<u8>>;

    /// Lists a tenant's providers with decrypted names, ordered by id. Needs the master key.
    fn providers(&self, tenant: &Tenant) -> Result<Vec<ProviderView>>;

    /// Lists the patients linked to a tenant, as [`Store::patient_links`] does, for `access`,
    /// and appends `patient.list` (with the count) in the same transaction.
    fn read_patient_links(&mut self, tenant: &Tenant, access: &Access) -> Result<Vec<LinkSummary>>;

    /// Returns one linked patient, link detail and decrypted profile, for `access`, and
    /// appends `patient.read` naming the patient in the same transaction. A patient missing
    /// from the tenant, or linked only to another tenant, returns
    /// [`StoreError::PatientNotFound`] and commits a `not_found` entry in `tenant`. Fails
    /// with [`StoreError::MasterKeyRequired`], writing no entry, when no master key is set.
    fn read_patient(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<PatientRecord>;

    /// Reads several patients as [`Store::read_patient`] does and returns one result per
    /// read, in order. Each read that returns data or finds nothing appends its own
    /// `patient.read` entry in the transaction of that read. A backend may run several reads
    /// in one transaction so that one commit covers them: the outer error is the failure of
    /// such a transaction, and then none of its reads and entries committed. The default runs
    /// each read in a transaction of its own.
    fn read_patients(&mut self, reads: &[PatientRead]) -> Result<Vec<Result<PatientRecord>>> {
        let read_one =
            |read: &PatientRead| self.read_patient(&read.tenant, read.patient, &read.access);
        Ok(reads.iter().map(read_one).collect())
    }

    /// Returns the decrypted bytes of one of a tenant's ID photos for `access`, and appends
    /// `id_photo.read` naming the photo in the same transaction. A photo missing from the
    /// tenant returns [`StoreError::PhotoNotFound`] and commits a `not_found` entry; no
    /// master key fails as [`Store::read_patient`] does.
    fn read_id_photo_audited(
        &mut self,
        tenant: &Tenant,
        photo: PhotoId,
        access: &Access,
    ) -> Result<Vec<u8>>;

    /// Stores an intake form of a linked patient for `access`, its answers sealed under the
    /// link's data key, and appends `intake_form.submit` naming the patient and the form in
    /// the same transaction. A patient missing from the tenant, or linked only to another
    /// tenant, stores nothing, returns [`StoreError::PatientNotFound`] and commits a
    /// `not_found` entry. No master key fails as [`Store::read_patient`] does.
    fn submit_intake_form(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        form: &NewIntakeForm,
        access: &Access,
    ) -> Result<IntakeFormInfo>;

    /// Lists a linked patient's intake forms with decrypted answers, newest `submitted_at`
    /// first, for `access`, and appends `intake_form.list` (with the count) in the same
    /// transaction. A missing patient fails as [`Store::submit_intake_form`] does.
    fn read_intake_forms(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<IntakeForm>>;

    /// Stores an ID photo of a linked patient for `access`, sealed as
    /// [`Store::add_id_photo`] seals it, with its media type, and appends `id_photo.upload`
    /// naming the patient and the photo in the same transaction. A missing patient fails as
    /// [`Store::submit_intake_form`] does, and a failed write leaves no file behind.
    fn upload_id_photo(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        photo: &NewIdPhoto,
        access: &Access,
    ) -> Result<IdPhotoInfo>;

    /// Lists the metadata of a linked patient's ID photos, newest first, for `access`, and
    /// appends `id_photo.list` (with the count) in the same transaction. A missing patient
    /// fails as [`Store::submit_intake_form`] does.
    fn read_id_photos(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<IdPhotoInfo>>;

    /// Returns the decrypted image of one ID photo of a linked patient for `access`, and
    /// appends `id_photo.read` naming the patient and the photo in the same transaction. A
    /// missing patient fails as [`Store::submit_intake_form`] does. A photo missing from the
    /// tenant, or belonging to another patient, returns [`StoreError::PhotoNotFound`] and
    /// commits a `not_found` entry.
    fn read_patient_id_photo(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        photo: PhotoId,
        access: &Access,
    ) -> Result<IdPhotoContent>;

    /// Stores a consultation for a linked patient as [`Store::record_encounter`] does, for
    /// `access`, and appends `action` naming the patient and the consultation in the same
    /// transaction. The link's last encounter never moves earlier, and its
    /// `phi_retention_until` is recomputed under `policy` from the later instant, also while a
    /// legal hold is active. A patient missing from the tenant returns
    /// [`StoreError::PatientNotFound`], stores nothing and commits a `not_found` entry. Needs
    /// the master key. `action` is `encounter.record` or `consultation.create`.
    fn record_encounter_audited(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        encounter: &NewEncounter<'_>,
        policy: &Policy,
        access: &Access,
        action: &str,
    ) -> Result<EncounterRecorded>;

    /// Lists a linked patient's consultations with decrypted reason and notes, newest start
    /// first, for `access`, and appends `consultation.list` (with the count) in the same
    /// transaction. A missing patient is handled as [`Store::read_patient`] handles it.
    fn read_consultations(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<ConsultationRecord>>;

    /// Stores a prescription for a linked patient, sealed as the import seals it, for
    /// `access`, and appends `prescription.create` naming the patient and the prescription in
    /// the same transaction. A `consultation_id` that is not a consultation of this patient in
    /// this tenant fails with [`StoreError::ConsultationNotFound`], storing nothing and
    /// writing no entry. A missing patient is handled as
    /// [`Store::record_encounter_audited`] handles it.
    fn create_prescription(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        prescription: &NewPrescriptionEntry<'_>,
        access: &Access,
    ) -> Result<PrescriptionRecord>;

    /// Lists a linked patient's prescriptions with decrypted code and description, newest
    /// start first, for `access`, and appends `prescription.list` (with the count) in the same
    /// transaction. A missing patient is handled as [`Store::read_patient`] handles it.
    fn read_prescriptions(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<PrescriptionRecord>>;

    /// Lists every tenant link of a patient, across tenants. Only lifecycle jobs, which
    /// decide cross-tenant protection, may call this.
    fn links_of_patient(&self, patient: PatientId) -> Result<Vec<LinkSummary>>;

    /// Places a legal hold. A patient-scoped hold requires the patient to be linked.
    fn place_hold(
        &mut self,
        tenant: &Tenant,
        scope: HoldScope,
        matter: &str,
        reason: &str,
        actor: &str,
    ) -> Result<LegalHold>;

    /// Releases an active hold of `tenant`, or of any tenant when it is None. A hold of
    /// another tenant fails with [`StoreError::HoldNotFound`], as a missing one does.
    fn release_hold(
        &mut self,
        tenant: Option<TenantId>,
        id: HoldId,
        actor: &str,
    ) -> Result<LegalHold>;

    /// Lists holds, optionally of one tenant, optionally including released ones.
    fn holds(&self, tenant: Option<TenantId>, include_released: bool) -> Result<Vec<LegalHold>>;

    /// Lists patient links whose last activity (last medical encounter, or creation when
    /// none was recorded) is at or before `active_before`, oldest first. Callers decide which
    /// are due under the policy in force.
    fn phi_candidates(&self, active_before: DateTime<Utc>) -> Result<Vec<PhiCandidate>>;

    /// Lists ID photos uploaded at or before `uploaded_before`.
    fn id_photo_candidates(&self, uploaded_before: DateTime<Utc>) -> Result<Vec<RecordCandidate>>;

    /// Lists the tenant sessions that ended or expired at or before `ended_before`. Sessions
    /// of platform operators have no tenant, so they are not listed, and
    /// [`Store::purge_platform_sessions`] deletes them.
    fn session_candidates(&self, ended_before: DateTime<Utc>) -> Result<Vec<RecordCandidate>>;

    /// Counts the sessions of platform operators that [`Store::purge_platform_sessions`]
    /// would delete with the same `ended_before`. Reads only.
    fn platform_sessions_due(&self, ended_before: DateTime<Utc>) -> Result<u64>;

    /// Deletes the sessions of platform operators that ended or expired at or before
    /// `ended_before`, and returns how many. When it deletes any, one `session.purge` entry
    /// with no tenant, naming the run and each deleted session, commits in the same
    /// transaction. When none is due it writes nothing. On PostgreSQL a session that another
    /// transaction has locked is left for that transaction or a later call, so nodes purging
    /// at once never count a session twice.
    fn purge_platform_sessions(
        &mut self,
        ended_before: DateTime<Utc>,
        actor: &str,
        run_id: &str,
    ) -> Result<u64>;

    /// Executes disposals. Each disposal is checked again inside the transaction (record
    /// still present, still expired under `policy` at `as_of`, no active hold), and its
    /// deletion commits together with its receipt. One transaction covers the whole slice.
    fn dispose(
        &mut self,
        disposals: &[Disposal],
        context: &DisposalContext<'_>,
    ) -> Result<Vec<DisposalOutcome>>;

    /// Unlinks files whose rows were purged by a committed transaction. Returns how many.
    fn finish_file_deletions(&mut self) -> Result<u64>;

    /// Recomputes every link's `phi_retention_until` under `policy` when the policy changed
    /// since it was last applied. Fails with [`StoreError::PolicyShortens`], changing
    /// nothing, when an instant would move earlier and `allow_shorter` is false, and with
    /// [`StoreError::PolicyUnknownTenant`] when the policy names a tenant that does not exist.
    fn apply_policy(
        &mut self,
        policy: &Policy,
        actor: &str,
        allow_shorter: bool,
    ) -> Result<PolicyApplied>;

    /// Returns the version of the policy last applied, if any.
    fn applied_policy_version(&self) -> Result<Option<String>>;

    /// Returns the version of the master key that wraps the data keys (1 for a new store).
    fn master_key_version(&self) -> Result<u32>;

    /// Returns the master key version a rotation under way moves to, if one is.
    fn master_rotation_target(&self) -> Result<Option<u32>>;

    /// Records that a master key rotation to `next_version` has started, so that it resumes
    /// after a crash.
    fn begin_master_rotation(&mut self, next_version: u32, actor: &str) -> Result<()>;

    /// Re-wraps up to `limit` data keys under the next master key. Returns how many remain.
    fn rewrap_data_keys(&mut self, limit: u32) -> Result<u64>;

    /// Makes the next master key current once every data key uses it. Returns its version.
    fn finish_master_rotation(&mut self, actor: &str) -> Result<u32>;

    /// Adds a tenant data key version for new writes. Returns the new version.
    fn rotate_tenant_key(&mut self, tenant: &Tenant, actor: &str) -> Result<u32>;

    /// Appends one entry to the audit log. Returns its sequence number.
    fn append_audit(&mut self, event: AuditEvent) -> Result<i64>;

    /// Verifies the whole audit chain, without checking checkpoint signatures.
    fn verify_audit(&self) -> Result<VerifyReport> {
        self.verify_audit_with_key(None)
    }

    /// Verifies the whole audit chain: from entry 1, or, once retention removed older
    /// entries, from the checkpoint kept at the last removed entry. Every checkpoint must
    /// match the entry it covers. With `public_key`, every checkpoint's signature must verify
    /// with it, so a checkpoint signed by another key fails.
    fn verify_audit_with_key(&self, public_key: Option<&AuditPublicKey>) -> Result<VerifyReport>;

    /// Signs a checkpoint at the last audit entry, after verifying the entries since the
    /// previous checkpoint. Returns the existing one when the same key already signed it.
    fn sign_audit_checkpoint(&mut self, signer: &dyn AuditSigner) -> Result<CheckpointSigned>;

    /// Lists the signed checkpoints, oldest first.
    fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>>;

    /// Writes the audit log as export lines from one consistent snapshot: the header (naming
    /// `public_key`), every entry, then every checkpoint.
    fn export_audit(
        &self,
        public_key: Option<&AuditPublicKey>,
        write: &mut dyn FnMut(&ExportLine) -> Result<()>,
    ) -> Result<AuditExported>;

    /// Counts the audit entries that [`Store::dispose_audit`] would remove at `as_of`.
    /// Reads only.
    fn audit_disposal_due(&self, policy: &Policy, as_of: DateTime<Utc>) -> Result<AuditCut>;

    /// Removes the audit entries past their `audit_log_years` at `as_of`: the longest run of
    /// due entries from the start of the log. In one transaction it signs (or reuses) a
    /// checkpoint at the last of them, deletes them, keeps that checkpoint and appends an
    /// `audit.dispose` entry.
    fn dispose_audit(
        &mut self,
        policy: &Policy,
        as_of: DateTime<Utc>,
        signer: &dyn AuditSigner,
        actor: &str,
    ) -> Result<AuditCut>;

    /// Returns audit entries after `after_seq`, oldest first, at most `limit`.
    fn audit_entries(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>>;

    /// Returns audit entries as [`Store::audit_entries`] does, for `access`, and appends
    /// `audit.read` (with `after_seq`, `limit` and the count returned, and no tenant) in the
    /// same transaction.
    fn read_audit_entries(
        &mut self,
        after_seq: i64,
        limit: u32,
        access: &Access,
    ) -> Result<Vec<AuditRecord>>;

    /// Returns the `after_seq` that lists the last `count` audit entries.
    fn audit_tail_start(&self, count: u32) -> Result<i64>;

    /// Records the start of a lifecycle run.
    fn start_run(&mut self, as_of: DateTime<Utc>) -> Result<String>;

    /// Records the end of a lifecycle run with its JSON summary.
    fn finish_run(&mut self, run_id: &str, status: &str, summary: &str) -> Result<()>;

    /// Lists recent lifecycle runs, newest first.
    fn runs(&self, limit: u32) -> Result<Vec<RunRecord>>;

    /// Re-applies one disposal ledger entry to a store restored from a backup, in one
    /// transaction: deletes the patient link and everything under it (and the core profile
    /// when no link remains), the core profile, or the ID photo (row and file) or session it
    /// names, and the data keys it lists. Checks no retention or hold, and writes no audit
    /// entry, because the caller records one for the whole ledger. Returns
    /// [`ReapplyOutcome::Absent`] when nothing it names is left.
    fn reapply_disposal(&mut self, entry: &LedgerEntry) -> Result<ReapplyOutcome>;

    /// Creates a user account and appends `user.create`. A patient account must name a
    /// patient linked to its tenant. Fails with [`StoreError::UserExists`] when the username,
    /// compared without regard to case, is taken in the tenant or among platform operators.
    fn create_user(&mut self, user: &NewUser<'_>, actor: &str) -> Result<UserId>;

    /// Returns the account a login names: a user of the tenant with slug `tenant_slug`, or a
    /// platform operator when it is None. A missing tenant, a user of another tenant and a
    /// missing user all return None, so the caller cannot tell them apart.
    fn user_for_login(
        &self,
        tenant_slug: Option<&str>,
        username: &str,
    ) -> Result<Option<LoginUser>>;

    /// Counts a failed login of an account and appends `login.failed`. Returns the failed
    /// logins since the last successful one.
    fn record_login_failure(&mut self, user: UserRef) -> Result<u32>;

    /// Resets an account's failed logins, records the login time and appends
    /// `login.success`.
    fn record_login_success(&mut self, user: UserRef) -> Result<()>;

    /// Lists the user accounts of `tenant`, or the platform operators when it is None,
    /// ordered by username. Disabled accounts are listed too. Password hashes are not read.
    fn list_users(&self, tenant: Option<&Tenant>) -> Result<Vec<UserSummary>>;

    /// Disables or enables an account and appends `user.disable` or `user.enable`. A
    /// disabled account's sessions stop resolving as active.
    fn set_user_disabled(&mut self, user: UserRef, disabled: bool, actor: &str) -> Result<()>;

    /// Stores a session of an enabled account under the hash of its token and appends
    /// `session.login`. A patient account's session also names the patient link, so the
    /// session purge and the PHI purge of the link dispose of it.
    fn create_session(
        &mut self,
        user: UserRef,
        token_hash: &TokenHash,
        started_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<SessionId>;

    /// Returns the session whose token has this hash, also when it expired or ended, or
    /// None. [`SessionInfo::state`] returns whether it may authenticate.
    fn session_by_token_hash(&self, token_hash: &TokenHash) -> Result<Option<SessionInfo>>;

    /// Ends a session of the tenant (None: of a platform operator) and appends
    /// `session.logout`. Returns false, writing nothing, when it had already ended.
    fn end_session(&mut self, tenant: Option<TenantId>, session: SessionId) -> Result<bool>;

    /// Stores a service token under its hash and appends `token.create`.
    fn create_service_token(
        &mut self,
        token: &NewServiceToken<'_>,
        actor: &str,
    ) -> Result<ServiceTokenId>;

    /// Returns the service token with this hash, also when it expired or was revoked, or
    /// None.
    fn service_token_by_hash(&self, token_hash: &TokenHash) -> Result<Option<ServiceTokenInfo>>;

    /// Lists the service tokens of the tenant, expired and revoked ones too, oldest first.
    /// Token hashes are not read.
    fn list_service_tokens(&self, tenant: &Tenant) -> Result<Vec<ServiceTokenSummary>>;

    /// Revokes a service token of the tenant and appends `token.revoke`. Returns false,
    /// writing nothing, when it was revoked before.
    fn revoke_service_token(
        &mut self,
        tenant: &Tenant,
        token: ServiceTokenId,
        actor: &str,
    ) -> Result<bool>;
}
