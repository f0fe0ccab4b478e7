//! Explaining why one patient's records are kept, and until when.

use chrono::{DateTime, Utc};
use medconnect_domain::model::{LegalHold, Tenant};
use medconnect_domain::policy::{Policy, Rule};
use medconnect_domain::time::format_instant;
use medconnect_domain::PatientId;
use medconnect_store::{LinkCounts, Store};
use serde::Serialize;

use crate::plan::HoldIndex;
use crate::Result;

/// An ID photo or session with its own retention.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimedRecord {
    pub id: String,
    pub rule: Rule,
    /// Upload time for photos; end or expiry for sessions.
    pub since: DateTime<Utc>,
    pub retention_until: DateTime<Utc>,
    pub expired: bool,
}

/// Another tenant the patient is linked to.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OtherTenant {
    pub tenant: String,
    pub phi_retention_until: DateTime<Utc>,
    pub expired: bool,
    pub held: bool,
}

/// Explanation of why one patient's records are kept, and until when.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(as = LifecycleExplanation)
)]
pub struct Explanation {
    pub tenant: String,
    pub patient_id: PatientId,
    pub as_of: DateTime<Utc>,
    pub policy_version: String,
    pub rule: Rule,
    /// PHI retention period in force for the tenant, in years.
    pub phi_years: u32,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_medical_encounter_at: Option<DateTime<Utc>>,
    pub phi_retention_until: DateTime<Utc>,
    pub expired: bool,
    pub holds: Vec<LegalHold>,
    pub counts: LinkCounts,
    pub other_tenants: Vec<OtherTenant>,
    pub id_photos: Vec<TimedRecord>,
    pub sessions: Vec<TimedRecord>,
    /// One sentence: what the next run does with these records and why.
    pub verdict: String,
    /// Fate of the shared core profile.
    pub profile_verdict: String,
}

/// Explains the retention of one patient's records in one tenant as of `as_of`.
pub fn explain(
    store: &dyn Store,
    policy: &Policy,
    tenant: &Tenant,
    patient: PatientId,
    as_of: DateTime<Utc>,
) -> Result<Explanation> {
    let detail = store.patient_link(tenant, patient)?;
    let holds_index = HoldIndex::load(store)?;
    let holds: Vec<LegalHold> = store
        .holds(Some(tenant.id), false)?
        .into_iter()
        .filter(|h| h.covers(tenant.id, Some(patient)))
        .collect();
    let link = &detail.link;
    let until = policy.phi_retention_until(&tenant.slug, link.retention_basis());
    let expired = until <= as_of;

    let other_tenants: Vec<OtherTenant> = store
        .links_of_patient(patient)?
        .into_iter()
        .filter(|l| l.tenant_id != tenant.id)
        .map(|l| {
            let until = policy.phi_retention_until(&l.tenant_slug, l.retention_basis());
            OtherTenant {
                expired: until <= as_of,
                held: holds_index.covering(l.tenant_id, Some(patient)).is_some(),
                tenant: l.tenant_slug,
                phi_retention_until: until,
            }
        })
        .collect();

    let timed = |records: &[medconnect_store::RecordCandidate], rule: Rule| -> Vec<TimedRecord> {
        records
            .iter()
            .map(|r| {
                let retention_until = match rule {
                    Rule::IdPhotoAfterUpload => policy.id_photo_until(&tenant.slug, r.since),
                    _ => policy.session_until(&tenant.slug, r.since),
                };
                TimedRecord {
                    id: r.id.clone(),
                    rule,
                    since: r.since,
                    retention_until,
                    expired: retention_until <= as_of,
                }
            })
            .collect()
    };

    let shown = format_instant(until);
    let verdict = match (expired, holds.first()) {
        (_, Some(hold)) if expired => {
            format!("kept: past retention since {shown}, but legal hold {} applies", hold.id)
        }
        (_, Some(hold)) => format!(
            "kept until {shown} by rule {}, and legal hold {} applies",
            Rule::PhiAfterLastEncounter,
            hold.id
        ),
        (true, None) => {
            format!("due: past retention since {shown}; the next run purges these records")
        }
        (false, None) => format!("kept until {shown} by rule {}", Rule::PhiAfterLastEncounter),
    };
    let blocking: Vec<&OtherTenant> =
        other_tenants.iter().filter(|o| !o.expired || o.held).collect();
    let profile_verdict = if other_tenants.is_empty() {
        "the core profile is removed together with these records".to_owned()
    } else if blocking.is_empty() {
        "the core profile is removed when the last tenant's records are purged".to_owned()
    } else {
        let names: Vec<String> = blocking
            .iter()
            .map(|o| format!("{} (until {})", o.tenant, format_instant(o.phi_retention_until)))
            .collect();
        format!(
            "the core profile is kept while other tenants still hold records: {}",
            names.join(", ")
        )
    };

    Ok(Explanation {
        tenant: tenant.slug.clone(),
        patient_id: patient,
        as_of,
        policy_version: policy.version(),
        rule: Rule::PhiAfterLastEncounter,
        phi_years: policy.periods_for(&tenant.slug).phi_years,
        last_medical_encounter_at: link.last_medical_encounter_at,
        phi_retention_until: until,
        expired,
        holds,
        counts: detail.counts,
        other_tenants,
        id_photos: timed(&detail.id_photos, Rule::IdPhotoAfterUpload),
        sessions: timed(&detail.sessions, Rule::SessionAfterEnd),
        verdict,
        profile_verdict,
    })
}
