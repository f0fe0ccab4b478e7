//! Values the store returns and accepts, shared by every backend.

use chrono::{DateTime, Utc};
use medconnect_domain::audit::DisposalReceipt;
use medconnect_domain::model::Category;
use medconnect_domain::policy::{Policy, Rule};
use medconnect_domain::{HoldId, PatientId, TenantId};
use serde::Serialize;

/// Clock mode of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// Real time only. `lifecycle run --as-of` is rejected, because a future instant would
    /// purge records before their retention ends.
    Production,
    /// Demo and test stores: runs accept `--as-of`, and every audit entry is marked
    /// `simulated_clock`.
    Simulated,
}

impl ClockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockMode::Production => "production",
            ClockMode::Simulated => "simulated",
        }
    }
}

/// Facts about a store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreInfo {
    pub schema_version: i64,
    pub clock: ClockMode,
    pub created_at: DateTime<Utc>,
    pub backend: &'static str,
    pub location: String,
}

/// Start, expiry and optional end of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// A patient's link to one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkSummary {
    pub tenant_id: TenantId,
    pub tenant_slug: String,
    pub patient_id: PatientId,
    pub last_medical_encounter_at: Option<DateTime<Utc>>,
    /// Retention instant as stored, computed under the policy last applied.
    pub phi_retention_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl LinkSummary {
    /// Returns the instant PHI retention counts from: the last medical encounter, or the
    /// link's creation when no encounter was recorded.
    pub fn retention_basis(&self) -> DateTime<Utc> {
        self.last_medical_encounter_at.unwrap_or(self.created_at)
    }
}

/// Counts of what a tenant holds for one patient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkCounts {
    pub consultations: u64,
    pub prescriptions: u64,
    pub history_entries: u64,
    pub intake_forms: u64,
    pub id_photos: u64,
    pub sessions: u64,
}

/// A link with counts, plus its ID photos and sessions with their own retention inputs.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkDetail {
    pub link: LinkSummary,
    pub counts: LinkCounts,
    /// The patient's ID photos in this tenant. `since` is the upload time.
    pub id_photos: Vec<RecordCandidate>,
    /// The sessions of the patient's account in this tenant. `since` is when each session
    /// ended or will expire, the instant its retention counts from, not when it started.
    pub sessions: Vec<RecordCandidate>,
}

/// Result of applying a policy to the stored retention instants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PolicyApplied {
    /// Links whose retention instant moved later.
    pub lengthened: u64,
    /// Links whose retention instant moved earlier.
    pub shortened: u64,
}

/// A patient link that may be due for PHI purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhiCandidate {
    pub link: LinkSummary,
    /// How many other tenants the patient is linked to.
    pub other_links: u32,
}

/// An ID photo or session that may be due for deletion. `since` is its upload or end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordCandidate {
    pub id: String,
    pub tenant_id: TenantId,
    pub tenant_slug: String,
    pub patient_id: Option<PatientId>,
    /// The instant its retention counts from: an ID photo's upload, or a session's end (its
    /// logout, or its expiry when it was never ended).
    pub since: DateTime<Utc>,
}

/// One disposal to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disposal {
    pub category: Category,
    pub tenant_id: TenantId,
    pub patient_id: Option<PatientId>,
    /// The patient id for patient records, else the photo or session id.
    pub record_id: String,
}

/// Shared inputs of one [`crate::Store::dispose`] call.
pub struct DisposalContext<'a> {
    pub policy: &'a Policy,
    pub as_of: DateTime<Utc>,
    pub actor: &'a str,
    pub run_id: &'a str,
}

/// Reason a disposal did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SkipReason {
    /// An active legal hold covers the record.
    LegalHold { hold_id: HoldId },
    /// The record is not yet past retention (for example a new encounter arrived mid-run).
    NotExpired { retention_until: DateTime<Utc> },
    /// The record no longer exists: another run purged it first.
    AlreadyGone,
    /// Another transaction holds the record's row, usually another node disposing of it, so
    /// it was left alone instead of waited for. A later attempt finds it gone, or disposes of
    /// it if that transaction rolled back. Only the PostgreSQL backend returns it.
    Claimed,
}

/// Outcome of one disposal. `receipts` contains one receipt per disposed unit, because a
/// patient records purge that removes the last link also disposes of the core profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisposalOutcome {
    Disposed { receipts: Vec<DisposalReceipt> },
    Skipped(SkipReason),
}

/// An audit entry as listed to an operator.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    pub seq: i64,
    pub hash: String,
    /// The entry's body as hashed: actor, action, tenant, subjects, outcome and detail.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub body: serde_json::Value,
}

/// A checkpoint signed at an entry of the audit log, or the one found there already.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointSigned {
    #[serde(flatten)]
    pub checkpoint: medconnect_domain::checkpoint::Checkpoint,
    /// False when a checkpoint by the same key already covered that entry and was reused.
    pub created: bool,
}

/// Audit entries past retention: the longest run of entries from the start of the log that
/// are all past their period. Entries can only go from the start, because each one commits
/// to the one before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditCut {
    /// Number of entries removed (or, in a plan, to be removed).
    pub entries: u64,
    /// Sequence number of the last of them, where the kept checkpoint is.
    pub through_seq: Option<i64>,
}

/// Counts and sequence numbers of a written audit export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditExported {
    pub entries: u64,
    pub checkpoints: u64,
    pub first_seq: Option<i64>,
    pub head_seq: Option<i64>,
    /// Sequence number of the latest checkpoint.
    pub signed_seq: Option<i64>,
}

/// A lifecycle run as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub as_of: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: String,
    pub summary: Option<serde_json::Value>,
    /// Node that ran it, on PostgreSQL; None on the embedded store, which has one node.
    pub node: Option<String>,
}

/// Returns the rule that governs a category.
pub fn rule_for(category: Category) -> Rule {
    match category {
        Category::PatientRecords => Rule::PhiAfterLastEncounter,
        Category::PatientProfile => Rule::ProfileAfterLastLink,
        Category::IdPhoto => Rule::IdPhotoAfterUpload,
        Category::Session => Rule::SessionAfterEnd,
    }
}

/// A decrypted core profile, as `patient show` prints it. It contains PHI, so it has no `Debug`.
#[derive(Clone, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(description = "A patient's decrypted core profile.")
)]
pub struct PatientProfileView {
    pub patient_id: PatientId,
    pub given_name: String,
    pub family_name: String,
    pub birth_date: String,
    pub death_date: Option<String>,
    pub sex: String,
    pub ssn: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub address_line: String,
    pub city: String,
    pub state: String,
    pub postal_code: String,
}

/// A provider with its decrypted name. License and DEA numbers stay sealed.
#[derive(Clone, Serialize)]
pub struct ProviderView {
    pub id: String,
    pub name: String,
    pub specialty: String,
    pub license_state: String,
}
