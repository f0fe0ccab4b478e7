//! The retention policy: a versioned TOML file whose defaults are the published retention
//! table, with per-tenant overrides that may lengthen a period and never shorten one.
//!
//! Every retention decision records [`Policy::version`], which combines the version label
//! written in the file with a digest of the file's bytes, so two different files can never
//! be mistaken for one another in an audit.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::validate_slug;
use crate::time::{add_days, add_years};

/// The policy file that `medconnect init` writes.
pub const DEFAULT_POLICY_TOML: &str = r#"# MedConnect retention policy.
#
# Periods may be lengthened here or per tenant, never shortened below the published minimums.
# Change `version` whenever you edit this file; every retention decision records it.
version = "2026.04"

[defaults]
# PHI: years after the patient's last medical encounter (HIPAA).
phi_years = 7
# Audit log: minimum years an entry is kept (HIPAA).
audit_log_years = 6
# ID verification photos: days after upload.
id_photo_days = 90
# Sessions: days after the session ended or expired.
session_days = 90
# Storefront orders: tax retention years after the customer relationship ends.
storefront_order_tax_years = 7
# Offboarding export window in days, between 30 and 90.
offboarding_export_window_days = 30

# A tenant may lengthen any period, for example:
# [tenants.northwind]
# phi_years = 10
"#;

/// Retention periods, in the units their names give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Periods {
    pub phi_years: u32,
    pub audit_log_years: u32,
    pub id_photo_days: u32,
    pub session_days: u32,
    pub storefront_order_tax_years: u32,
    pub offboarding_export_window_days: u32,
}

/// The published minimums. A policy file may only lengthen these.
pub const MINIMUM_PERIODS: Periods = Periods {
    phi_years: 7,
    audit_log_years: 6,
    id_photo_days: 90,
    session_days: 90,
    storefront_order_tax_years: 7,
    offboarding_export_window_days: 30,
};

/// Maximum offboarding export window, in days.
pub const MAX_OFFBOARDING_WINDOW_DAYS: u32 = 90;

/// Upper bounds that catch typos such as an extra digit. They are far beyond any legal
/// requirement, and they keep every computed instant inside the calendar's range.
pub const MAXIMUM_PERIODS: Periods = Periods {
    phi_years: 100,
    audit_log_years: 100,
    id_photo_days: 3650,
    session_days: 3650,
    storefront_order_tax_years: 100,
    offboarding_export_window_days: MAX_OFFBOARDING_WINDOW_DAYS,
};

/// Per-tenant lengthening of some periods; absent fields inherit the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PeriodOverrides {
    pub phi_years: Option<u32>,
    pub audit_log_years: Option<u32>,
    pub id_photo_days: Option<u32>,
    pub session_days: Option<u32>,
    pub storefront_order_tax_years: Option<u32>,
    pub offboarding_export_window_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: String,
    defaults: Periods,
    #[serde(default)]
    tenants: BTreeMap<String, PeriodOverrides>,
}

/// Error returned for a policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file is not valid TOML or has unknown or missing keys.
    #[error("policy file is invalid: {0}")]
    Parse(String),
    /// The version label is empty.
    #[error("policy file is invalid: `version` must not be empty; set it to a label such as \"2026.04\"")]
    EmptyVersion,
    /// A period is shorter than the minimum it must respect.
    #[error(
        "policy {scope} sets {field} = {value}, shorter than the minimum {minimum}; \
         periods may be lengthened, never shortened"
    )]
    Shortened { scope: String, field: &'static str, value: u32, minimum: u32 },
    /// A period is longer than its upper bound.
    #[error(
        "policy {scope} sets {field} = {value}, longer than the maximum {maximum}; check for \
         a typo"
    )]
    TooLong { scope: String, field: &'static str, value: u32, maximum: u32 },
    /// The version label has characters that cannot appear in receipts.
    #[error(
        "policy file is invalid: `version` must be 1 to 40 letters, digits, dots, hyphens or \
         underscores, such as \"2026.04\""
    )]
    InvalidVersion,
    /// A tenant table is not named by a valid slug.
    #[error(
        "policy file is invalid: [tenants.{0}] is not a valid tenant slug (lowercase letters, \
         digits and hyphens)"
    )]
    InvalidTenantKey(String),
}

/// The retention rule behind a decision. Its name is stable and appears in receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// PHI kept `phi_years` after the last medical encounter.
    PhiAfterLastEncounter,
    /// ID photos kept `id_photo_days` after upload.
    IdPhotoAfterUpload,
    /// Sessions kept `session_days` after they ended or expired.
    SessionAfterEnd,
    /// A core profile is removed with the last tenant link that referenced it.
    ProfileAfterLastLink,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::PhiAfterLastEncounter => "phi_after_last_encounter",
            Rule::IdPhotoAfterUpload => "id_photo_after_upload",
            Rule::SessionAfterEnd => "session_after_end",
            Rule::ProfileAfterLastLink => "profile_after_last_link",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated retention policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Policy {
    /// The label written in the file.
    pub label: String,
    /// The first 12 hex digits of the SHA-256 of the file's bytes.
    pub digest: String,
    pub defaults: Periods,
    /// Overrides keyed by tenant slug.
    pub tenants: BTreeMap<String, PeriodOverrides>,
}

impl Policy {
    /// Parses and validates a policy file.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|err| PolicyError::Parse(err.message().to_owned()))?;
        let label = file.version.trim();
        if label.is_empty() {
            return Err(PolicyError::EmptyVersion);
        }
        let label_chars = label.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if label.len() > 40 || !label_chars {
            return Err(PolicyError::InvalidVersion);
        }
        if let Some(key) = file.tenants.keys().find(|key| validate_slug(key).is_err()) {
            return Err(PolicyError::InvalidTenantKey(key.clone()));
        }
        check_not_shorter("defaults", &file.defaults, &MINIMUM_PERIODS)?;
        for (slug, overrides) in &file.tenants {
            let merged = merge(&file.defaults, overrides);
            check_not_shorter(&format!("tenant {slug:?}"), &merged, &file.defaults)?;
        }
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(Policy {
            label: file.version.trim().to_owned(),
            digest: digest[..12].to_owned(),
            defaults: file.defaults,
            tenants: file.tenants,
        })
    }

    /// Returns the built-in default policy.
    pub fn builtin() -> Self {
        Self::from_toml(DEFAULT_POLICY_TOML).expect("the built-in policy is valid")
    }

    /// Returns the version recorded with every decision, `label+digest`.
    pub fn version(&self) -> String {
        format!("{}+{}", self.label, self.digest)
    }

    /// Returns the periods in force for a tenant.
    pub fn periods_for(&self, tenant_slug: &str) -> Periods {
        match self.tenants.get(tenant_slug) {
            Some(overrides) => merge(&self.defaults, overrides),
            None => self.defaults,
        }
    }

    /// Returns the instant at which a tenant's PHI for a patient becomes eligible for purge.
    pub fn phi_retention_until(
        &self,
        tenant_slug: &str,
        last_encounter: DateTime<Utc>,
    ) -> DateTime<Utc> {
        add_years(last_encounter, self.periods_for(tenant_slug).phi_years)
    }

    /// Returns the instant at which an ID photo becomes eligible for deletion.
    pub fn id_photo_until(&self, tenant_slug: &str, uploaded_at: DateTime<Utc>) -> DateTime<Utc> {
        add_days(uploaded_at, self.periods_for(tenant_slug).id_photo_days)
    }

    /// Returns the instant at which a session becomes eligible for purge.
    pub fn session_until(&self, tenant_slug: &str, ended_at: DateTime<Utc>) -> DateTime<Utc> {
        add_days(ended_at, self.periods_for(tenant_slug).session_days)
    }

    /// Returns the instant from which an audit entry written at `at` may be removed. An entry
    /// of a tenant follows that tenant's period. An entry of no tenant, or of a tenant this
    /// policy cannot name, follows the longest period of any tenant, so it is never removed
    /// early.
    pub fn audit_entry_until(&self, tenant_slug: Option<&str>, at: DateTime<Utc>) -> DateTime<Utc> {
        let years = match tenant_slug {
            Some(slug) => self.periods_for(slug).audit_log_years,
            None => self.longest_audit_log_years(),
        };
        add_years(at, years)
    }

    /// Returns the longest audit log period over the defaults and every tenant.
    pub fn longest_audit_log_years(&self) -> u32 {
        self.tenants
            .keys()
            .map(|slug| self.periods_for(slug).audit_log_years)
            .fold(self.defaults.audit_log_years, u32::max)
    }

    /// Returns the shortest ID photo and session periods across all tenants, used to bound
    /// candidate queries before the per-tenant check.
    pub fn shortest_days(&self) -> (u32, u32) {
        (self.defaults.id_photo_days, self.defaults.session_days)
    }
}

fn merge(defaults: &Periods, overrides: &PeriodOverrides) -> Periods {
    Periods {
        phi_years: overrides.phi_years.unwrap_or(defaults.phi_years),
        audit_log_years: overrides.audit_log_years.unwrap_or(defaults.audit_log_years),
        id_photo_days: overrides.id_photo_days.unwrap_or(defaults.id_photo_days),
        session_days: overrides.session_days.unwrap_or(defaults.session_days),
        storefront_order_tax_years: overrides
            .storefront_order_tax_years
            .unwrap_or(defaults.storefront_order_tax_years),
        offboarding_export_window_days: overrides
            .offboarding_export_window_days
            .unwrap_or(defaults.offboarding_export_window_days),
    }
}

/// Pairs each period of `periods` with the same period of `bounds`, by field name.
fn period_pairs(periods: &Periods, bounds: &Periods) -> [(&'static str, u32, u32); 6] {
    [
        ("phi_years", periods.phi_years, bounds.phi_years),
        ("audit_log_years", periods.audit_log_years, bounds.audit_log_years),
        ("id_photo_days", periods.id_photo_days, bounds.id_photo_days),
        ("session_days", periods.session_days, bounds.session_days),
        (
            "storefront_order_tax_years",
            periods.storefront_order_tax_years,
            bounds.storefront_order_tax_years,
        ),
        (
            "offboarding_export_window_days",
            periods.offboarding_export_window_days,
            bounds.offboarding_export_window_days,
        ),
    ]
}

fn check_not_shorter(scope: &str, periods: &Periods, floor: &Periods) -> Result<(), PolicyError> {
    for (field, value, minimum) in period_pairs(periods, floor) {
        if value < minimum {
            return Err(PolicyError::Shortened { scope: scope.to_owned(), field, value, minimum });
        }
    }
    for (field, value, maximum) in period_pairs(periods, &MAXIMUM_PERIODS) {
        if value > maximum {
            return Err(PolicyError::TooLong { scope: scope.to_owned(), field, value, maximum });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{format_instant, parse_instant};

    fn policy_with(extra: &str) -> Result<Policy, PolicyError> {
        Policy::from_toml(&format!("{DEFAULT_POLICY_TOML}\n{extra}"))
    }

    #[test]
    fn builtin_matches_published_table() {
        let policy = Policy::builtin();
        assert_eq!(policy.defaults, MINIMUM_PERIODS);
        assert_eq!(policy.label, "2026.04");
        assert_eq!(policy.version(), format!("2026.04+{}", policy.digest));
    }

    #[test]
    fn tenant_may_lengthen_phi() {
        let policy = policy_with("[tenants.northwind]\nphi_years = 10\n").expect("valid");
        let last = parse_instant("2020-02-29T08:00:00Z").expect("instant");
        assert_eq!(
            format_instant(policy.phi_retention_until("northwind", last)),
            "2030-03-01T08:00:00Z"
        );
        assert_eq!(
            format_instant(policy.phi_retention_until("other", last)),
            "2027-03-01T08:00:00Z"
        );
    }

    #[test]
    fn tenant_shortening_is_rejected() {
        let err = policy_with("[tenants.northwind]\nphi_years = 5\n").expect_err("shorter");
        let message = err.to_string();
        assert!(message.contains("tenant \"northwind\""), "{message}");
        assert!(message.contains("phi_years = 5"), "{message}");
        assert!(message.contains("minimum 7"), "{message}");
    }

    #[test]
    fn defaults_shortening_is_rejected() {
        let text = DEFAULT_POLICY_TOML.replace("session_days = 90", "session_days = 30");
        let err = Policy::from_toml(&text).expect_err("shorter");
        assert!(err.to_string().contains("session_days = 30"), "{err}");
    }

    #[test]
    fn tenant_cannot_go_below_lengthened_default() {
        let text = DEFAULT_POLICY_TOML.replace("phi_years = 7", "phi_years = 9");
        let err = Policy::from_toml(&format!("{text}\n[tenants.acme]\nphi_years = 8\n"))
            .expect_err("below file default");
        assert!(err.to_string().contains("minimum 9"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = policy_with("[tenants.acme]\nphi_yaers = 8\n").expect_err("typo");
        assert!(err.to_string().contains("phi_yaers"), "{err}");
    }

    #[test]
    fn offboarding_window_over_ninety_days_is_rejected() {
        let text = DEFAULT_POLICY_TOML
            .replace("offboarding_export_window_days = 30", "offboarding_export_window_days = 120");
        let err = Policy::from_toml(&text).expect_err("too long");
        assert!(err.to_string().contains("maximum 90"), "{err}");
    }

    #[test]
    fn overlong_periods_are_rejected() {
        let cases = [
            ("[tenants.acme]\nphi_years = 4294967295\n", "phi_years = 4294967295"),
            ("[tenants.acme]\nphi_years = 8000\n", "maximum 100"),
            ("[tenants.acme]\nid_photo_days = 4000000000\n", "maximum 3650"),
        ];
        for (extra, expected) in cases {
            let err = policy_with(extra).expect_err(extra);
            assert!(err.to_string().contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn tenant_key_must_be_a_slug() {
        let err = policy_with("[tenants.Northwind]\nphi_years = 10\n").expect_err("capital");
        assert!(err.to_string().contains("[tenants.Northwind]"), "{err}");
    }

    #[test]
    fn version_label_is_restricted() {
        let text = DEFAULT_POLICY_TOML.replace("version = \"2026.04\"", "version = \"Alice 2026\"");
        let err = Policy::from_toml(&text).expect_err("space and capital");
        assert!(matches!(err, PolicyError::InvalidVersion), "{err}");
    }

    #[test]
    fn edited_file_changes_version() {
        let edited = DEFAULT_POLICY_TOML.replace("phi_years = 7", "phi_years = 8");
        let a = Policy::builtin();
        let b = Policy::from_toml(&edited).expect("valid");
        assert_eq!(a.label, b.label);
        assert_ne!(a.version(), b.version());
    }
}
