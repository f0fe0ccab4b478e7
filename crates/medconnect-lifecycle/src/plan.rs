//! Planning: what a run would dispose of and what it would keep.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use medconnect_domain::model::{Category, LegalHold};
use medconnect_domain::policy::{Policy, Rule};
use medconnect_domain::time::{add_days, sub_days, sub_years};
use medconnect_domain::{HoldId, PatientId, TenantId};
use medconnect_store::{rule_for, Disposal, LinkSummary, PhiCandidate, RecordCandidate, Store};
use serde::Serialize;

use crate::{Result, Tally};

/// Reason an expired record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// An active legal hold covers it.
    LegalHold,
    /// A core profile still referenced by another tenant's link.
    OtherTenantActive,
    /// Due when planned, but no longer due when checked in the run's transaction, for example
    /// because an encounter was recorded in between.
    NoLongerDue,
    /// Already disposed of by another run.
    AlreadyGone,
}

impl SkipKind {
    /// Returns the name used in JSON output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipKind::LegalHold => "legal_hold",
            SkipKind::OtherTenantActive => "other_tenant_active",
            SkipKind::NoLongerDue => "no_longer_due",
            SkipKind::AlreadyGone => "already_gone",
        }
    }

    pub const ALL: [SkipKind; 4] = [
        SkipKind::LegalHold,
        SkipKind::OtherTenantActive,
        SkipKind::NoLongerDue,
        SkipKind::AlreadyGone,
    ];
}

/// Plan decision for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Purge,
    Skip,
}

/// Another tenant whose link keeps a core profile alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Blocker {
    pub tenant_id: TenantId,
    pub tenant: String,
    pub phi_retention_until: DateTime<Utc>,
    /// The hold that keeps that link although it is expired, if any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub hold_id: Option<HoldId>,
}

/// One planned disposal or deliberate skip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Action {
    pub decision: Decision,
    pub category: Category,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub tenant_id: Option<TenantId>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub tenant: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub patient_id: Option<PatientId>,
    pub record_id: String,
    pub rule: Rule,
    pub retention_until: DateTime<Utc>,
    pub policy_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<SkipKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<HoldId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_by: Vec<Blocker>,
}

impl Action {
    /// Returns the store disposal for this action when it purges a record that is disposed of
    /// on its own. Core profiles go with their last link, so they return None.
    pub fn disposal(&self) -> Option<Disposal> {
        if self.decision != Decision::Purge || self.category == Category::PatientProfile {
            return None;
        }
        Some(Disposal {
            category: self.category,
            tenant_id: self.tenant_id?,
            patient_id: self.patient_id,
            record_id: self.record_id.clone(),
        })
    }
}

/// The result of planning.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = LifecyclePlan))]
pub struct Plan {
    pub as_of: DateTime<Utc>,
    pub policy_version: String,
    #[serde(flatten)]
    pub tally: Tally,
    /// Audit entries past `audit_log_years` that a run with the signing key would remove.
    pub audit_entries_disposed: u64,
    /// Sessions of platform operators that a run would purge. They belong to no tenant, so
    /// they get no actions and no receipts, and count in no category of the tally.
    pub platform_sessions_due: u64,
    pub actions: Vec<Action>,
}

/// Returns the cutoff of the platform session purge as of `as_of`. A platform operator's
/// session is due when its end (its logout, or its expiry if it never ended) is at or before
/// the cutoff. Such sessions belong to no tenant, so the policy's default `session_days`
/// applies and no tenant's override does.
pub(crate) fn platform_sessions_ended_before(
    policy: &Policy,
    as_of: DateTime<Utc>,
) -> DateTime<Utc> {
    sub_days(as_of, policy.defaults.session_days)
}

/// Active holds, loaded once per plan.
pub(crate) struct HoldIndex {
    holds: Vec<LegalHold>,
}

impl HoldIndex {
    pub(crate) fn load(store: &dyn Store) -> Result<Self> {
        Ok(HoldIndex { holds: store.holds(None, false)? })
    }

    /// Returns the first active hold covering a tenant's records of a patient.
    pub(crate) fn covering(
        &self,
        tenant: TenantId,
        patient: Option<PatientId>,
    ) -> Option<&LegalHold> {
        self.holds.iter().find(|hold| hold.covers(tenant, patient))
    }
}

/// Plans a run as of `as_of` under `policy`. Reads only.
pub fn plan(store: &dyn Store, policy: &Policy, as_of: DateTime<Utc>) -> Result<Plan> {
    let holds = HoldIndex::load(store)?;
    let version = policy.version();
    let mut planner = Planner {
        store,
        policy,
        holds: &holds,
        version: &version,
        as_of,
        actions: Vec::new(),
        tally: Tally::default(),
    };
    let purged_links = planner.plan_patient_records()?;
    let (photo_days, session_days) = policy.shortest_days();
    let photos = store.id_photo_candidates(sub_days(as_of, photo_days))?;
    planner.plan_records(Category::IdPhoto, photos, &purged_links);
    let sessions = store.session_candidates(sub_days(as_of, session_days))?;
    planner.plan_records(Category::Session, sessions, &purged_links);
    let audit_entries_disposed = store.audit_disposal_due(policy, as_of)?.entries;
    let platform_sessions_due =
        store.platform_sessions_due(platform_sessions_ended_before(policy, as_of))?;
    Ok(Plan {
        as_of,
        policy_version: version.clone(),
        tally: planner.tally,
        audit_entries_disposed,
        platform_sessions_due,
        actions: planner.actions,
    })
}

struct Planner<'a> {
    store: &'a dyn Store,
    policy: &'a Policy,
    holds: &'a HoldIndex,
    version: &'a str,
    as_of: DateTime<Utc>,
    actions: Vec<Action>,
    tally: Tally,
}

impl Planner<'_> {
    fn action(
        &self,
        category: Category,
        tenant: Option<(TenantId, &str)>,
        patient_id: Option<PatientId>,
        record_id: String,
        retention_until: DateTime<Utc>,
    ) -> Action {
        Action {
            decision: Decision::Purge,
            category,
            tenant_id: tenant.map(|t| t.0),
            tenant: tenant.map(|t| t.1.to_owned()),
            patient_id,
            record_id,
            rule: rule_for(category),
            retention_until,
            policy_version: self.version.to_owned(),
            skip_reason: None,
            hold_id: None,
            blocked_by: Vec::new(),
        }
    }

    fn push(&mut self, action: Action) {
        if action.decision == Decision::Skip {
            tracing::debug!(
                category = %action.category,
                record_id = %action.record_id,
                reason = action.skip_reason.map_or("none", SkipKind::as_str),
                hold_id = %action.hold_id.map(|id| id.to_string()).unwrap_or_default(),
                blocking_tenants = action.blocked_by.len(),
                "kept although expired"
            );
        }
        match (action.decision, action.skip_reason) {
            (Decision::Purge, _) => self.tally.add_purged(action.category),
            (Decision::Skip, Some(kind)) => self.tally.add_skipped(kind, action.category),
            (Decision::Skip, None) => {}
        }
        self.actions.push(action);
    }

    /// Returns a link's retention instant under the policy in force. The stored instant
    /// reflects the policy last applied, which a run brings up to date before it disposes.
    fn link_retention(&self, link: &LinkSummary) -> DateTime<Utc> {
        self.policy.phi_retention_until(&link.tenant_slug, link.retention_basis())
    }

    /// Plans PHI purges and returns the (tenant, patient) pairs whose records will go.
    fn plan_patient_records(&mut self) -> Result<HashSet<(TenantId, PatientId)>> {
        // Tenant overrides only lengthen periods, so the default period gives the earliest
        // possible due date; two days of slack cover the 29 February rule.
        let active_before = add_days(sub_years(self.as_of, self.policy.defaults.phi_years), 2);
        let candidates: Vec<PhiCandidate> = self
            .store
            .phi_candidates(active_before)?
            .into_iter()
            .filter(|c| self.link_retention(&c.link) <= self.as_of)
            .collect();
        let mut purged: HashSet<(TenantId, PatientId)> = HashSet::new();
        let mut shared: Vec<&PhiCandidate> = Vec::new();
        for candidate in &candidates {
            let link = &candidate.link;
            let mut action = self.action(
                Category::PatientRecords,
                Some((link.tenant_id, &link.tenant_slug)),
                Some(link.patient_id),
                link.patient_id.to_string(),
                self.link_retention(link),
            );
            if let Some(hold) = self.holds.covering(link.tenant_id, Some(link.patient_id)) {
                action.decision = Decision::Skip;
                action.skip_reason = Some(crate::SkipKind::LegalHold);
                action.hold_id = Some(hold.id);
                self.push(action);
                continue;
            }
            purged.insert((link.tenant_id, link.patient_id));
            self.push(action);
            if candidate.other_links == 0 {
                let profile = self.action(
                    Category::PatientProfile,
                    None,
                    Some(link.patient_id),
                    link.patient_id.to_string(),
                    self.link_retention(link),
                );
                self.push(profile);
            } else {
                shared.push(candidate);
            }
        }
        self.plan_shared_profiles(&shared, &purged)?;
        Ok(purged)
    }

    /// Decides, for each core profile linked to several tenants, whether this run removes
    /// its last link (then the profile goes too) or another tenant keeps it.
    fn plan_shared_profiles(
        &mut self,
        shared: &[&PhiCandidate],
        purged: &HashSet<(TenantId, PatientId)>,
    ) -> Result<()> {
        let mut seen: HashSet<PatientId> = HashSet::new();
        let mut links_by_patient: HashMap<PatientId, Vec<LinkSummary>> = HashMap::new();
        for candidate in shared {
            let patient = candidate.link.patient_id;
            if !seen.insert(patient) {
                continue;
            }
            let links = self.store.links_of_patient(patient)?;
            links_by_patient.insert(patient, links);
        }
        let mut decided: HashSet<PatientId> = HashSet::new();
        for candidate in shared {
            let patient = candidate.link.patient_id;
            if !decided.insert(patient) {
                continue;
            }
            let links = &links_by_patient[&patient];
            let blockers: Vec<Blocker> = links
                .iter()
                .filter(|l| !purged.contains(&(l.tenant_id, l.patient_id)))
                .map(|l| Blocker {
                    tenant_id: l.tenant_id,
                    tenant: l.tenant_slug.clone(),
                    phi_retention_until: self.link_retention(l),
                    hold_id: self.holds.covering(l.tenant_id, Some(patient)).map(|h| h.id),
                })
                .collect();
            let latest = links
                .iter()
                .map(|l| self.link_retention(l))
                .max()
                .unwrap_or_else(|| self.link_retention(&candidate.link));
            let mut action = self.action(
                Category::PatientProfile,
                None,
                Some(patient),
                patient.to_string(),
                latest,
            );
            if !blockers.is_empty() {
                action.decision = Decision::Skip;
                action.skip_reason = Some(crate::SkipKind::OtherTenantActive);
                action.blocked_by = blockers;
            }
            self.push(action);
        }
        Ok(())
    }

    fn plan_records(
        &mut self,
        category: Category,
        candidates: Vec<RecordCandidate>,
        purged_links: &HashSet<(TenantId, PatientId)>,
    ) {
        for record in candidates {
            let until = match category {
                Category::IdPhoto => self.policy.id_photo_until(&record.tenant_slug, record.since),
                _ => self.policy.session_until(&record.tenant_slug, record.since),
            };
            if until > self.as_of {
                continue;
            }
            // Records of a link purged in this run go with it, under its receipt.
            if record.patient_id.is_some_and(|p| purged_links.contains(&(record.tenant_id, p))) {
                continue;
            }
            let mut action = self.action(
                category,
                Some((record.tenant_id, &record.tenant_slug)),
                record.patient_id,
                record.id.clone(),
                until,
            );
            if let Some(hold) = self.holds.covering(record.tenant_id, record.patient_id) {
                action.decision = Decision::Skip;
                action.skip_reason = Some(crate::SkipKind::LegalHold);
                action.hold_id = Some(hold.id);
            }
            self.push(action);
        }
    }
}
