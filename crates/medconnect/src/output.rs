//! Human-readable output. Scripts should use `--json`, whose shape is stable.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use medconnect_domain::model::{Category, HoldScope, ImportCounts, LegalHold, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use medconnect_domain::{PatientId, ServiceTokenId, UserId};
use medconnect_lifecycle::{Decision, Explanation, Plan, RunReport, SkipKind, Tally};
use medconnect_store::{
    CertificateFingerprint, CredentialState, Role, RunRecord, ServiceTokenSummary, UserSummary,
};
use serde::Serialize;

pub fn print_json(value: &impl Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn instant(value: DateTime<Utc>) -> String {
    value.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn print_policy(policy: &Policy, path: &Path) {
    let periods = policy.defaults;
    outln!("policy {} ({})", policy.version(), path.display());
    outln!(
        "  phi retention              {} years after the last medical encounter",
        periods.phi_years
    );
    outln!("  audit log                  at least {} years", periods.audit_log_years);
    outln!("  id verification photos     {} days after upload", periods.id_photo_days);
    outln!("  sessions                   {} days after they end", periods.session_days);
    outln!(
        "  storefront orders          {} years of tax retention",
        periods.storefront_order_tax_years
    );
    outln!("  offboarding export window  {} days", periods.offboarding_export_window_days);
    for slug in policy.tenants.keys() {
        let p = policy.periods_for(slug);
        outln!(
            "  tenant {slug}: phi {}y, audit {}y, id photos {}d, sessions {}d, orders {}y, export window {}d",
            p.phi_years, p.audit_log_years, p.id_photo_days, p.session_days, p.storefront_order_tax_years,
            p.offboarding_export_window_days
        );
    }
}

pub fn print_links(links: &[medconnect_store::LinkSummary], policy_version: &str) {
    if links.is_empty() {
        outln!("no patients");
        return;
    }
    outln!(
        "{:<36}  {:<20}  phi retention until (policy {policy_version})",
        "patient",
        "last encounter"
    );
    for link in links {
        let last = link.last_medical_encounter_at.map(instant).unwrap_or_else(|| "-".into());
        outln!("{:<36}  {:<20}  {}", link.patient_id, last, instant(link.phi_retention_until));
    }
}

pub fn print_profile(profile: &medconnect_store::PatientProfileView) {
    let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    outln!("patient     {}", profile.patient_id);
    outln!("name        {} {}", profile.given_name, profile.family_name);
    outln!("born        {}", profile.birth_date);
    outln!("died        {}", optional(&profile.death_date));
    outln!("sex         {}", profile.sex);
    outln!("ssn         {}", optional(&profile.ssn));
    outln!("phone       {}", optional(&profile.phone));
    outln!("email       {}", optional(&profile.email));
    outln!(
        "address     {}, {}, {} {}",
        profile.address_line,
        profile.city,
        profile.state,
        profile.postal_code
    );
}

pub fn print_import(tenant: &str, counts: &ImportCounts, elapsed: Duration) {
    outln!("imported into tenant {tenant} in {} ms:", elapsed.as_millis());
    outln!("  core profiles created  {}", counts.profiles_created);
    outln!(
        "  core profiles linked   {} (already known from another tenant)",
        counts.profiles_linked
    );
    outln!("  patient links          {}", counts.links_created);
    outln!("  providers              {}", counts.providers);
    outln!("  consultations          {}", counts.consultations);
    outln!("  prescriptions          {}", counts.prescriptions);
    outln!("  history entries        {}", counts.history_entries);
}

/// Prints the per-category table shared by plan and run output.
pub fn print_tally(tally: &Tally, purged_label: &str) {
    outln!(
        "  {:<16} {:>10} {:>8} {:>14} {:>12} {:>12}",
        "category",
        purged_label,
        "held",
        "other tenant",
        "no longer due",
        "already gone"
    );
    for category in Category::ALL {
        let skipped = |kind: SkipKind| {
            tally.skipped.get(&kind).and_then(|m| m.get(&category)).copied().unwrap_or(0)
        };
        outln!(
            "  {:<16} {:>10} {:>8} {:>14} {:>12} {:>12}",
            category.as_str(),
            tally.purged.get(&category).copied().unwrap_or(0),
            skipped(SkipKind::LegalHold),
            skipped(SkipKind::OtherTenantActive),
            skipped(SkipKind::NoLongerDue),
            skipped(SkipKind::AlreadyGone),
        );
    }
}

pub fn print_plan(plan: &Plan) {
    outln!(
        "plan as of {} under policy {} (nothing changed)",
        instant(plan.as_of),
        plan.policy_version
    );
    print_tally(&plan.tally, "would purge");
    outln!("  receipts that a run would write: {}", plan.tally.receipts);
    outln!(
        "  audit entries past audit_log_years that a run would remove: {}",
        plan.audit_entries_disposed
    );
    outln!(
        "  platform operator sessions past session_days that a run would purge: {}",
        plan.platform_sessions_due
    );
    let skips: Vec<_> = plan.actions.iter().filter(|a| a.decision == Decision::Skip).collect();
    if !skips.is_empty() {
        outln!("kept although expired:");
        for action in skips.iter().take(20) {
            let why = match (action.hold_id, action.blocked_by.first()) {
                (Some(hold), _) => format!("legal hold {hold}"),
                (None, Some(_)) => {
                    let tenants: Vec<String> = action
                        .blocked_by
                        .iter()
                        .map(|b| format!("{} until {}", b.tenant, instant(b.phi_retention_until)))
                        .collect();
                    format!("still linked to {}", tenants.join(", "))
                }
                (None, None) => "skipped".to_owned(),
            };
            outln!("  {} {}: {why}", action.category, action.record_id);
        }
        if skips.len() > 20 {
            outln!("  ... and {} more (use --json for all)", skips.len() - 20);
        }
    }
}

pub fn print_run(report: &RunReport) {
    outln!(
        "run {} as of {} under policy {}",
        report.run_id,
        instant(report.as_of),
        report.policy_version
    );
    print_tally(&report.tally, "purged");
    outln!("  disposal receipts written: {}", report.tally.receipts);
    outln!("  audit entries past audit_log_years removed: {}", report.audit_entries_disposed);
    outln!(
        "  platform operator sessions past session_days purged: {}",
        report.platform_sessions_purged
    );
    match report.audit_checkpoint_seq {
        Some(seq) => outln!("  audit checkpoint signed at entry {seq}"),
        None => outln!("  audit checkpoint not signed (see the warning above)"),
    }
}

pub fn print_runs(runs: &[RunRecord]) {
    for run in runs {
        let finished = run
            .finished_at
            .map(instant)
            .unwrap_or_else(|| "not finished (running or interrupted)".into());
        let node = run.node.as_deref().map(|node| format!("  node {node}")).unwrap_or_default();
        outln!(
            "{}  as of {}  {}  finished {}{node}",
            run.id,
            instant(run.as_of),
            run.status,
            finished
        );
    }
}

pub fn print_explanation(e: &Explanation) {
    outln!(
        "patient {} in tenant {} as of {} (policy {})",
        e.patient_id,
        e.tenant,
        instant(e.as_of),
        e.policy_version
    );
    let last = e.last_medical_encounter_at.map(instant).unwrap_or_else(|| "none recorded".into());
    outln!(
        "  rule                 {} ({} years after the last medical encounter)",
        e.rule,
        e.phi_years
    );
    outln!("  last encounter       {last}");
    outln!(
        "  phi retention until  {}{}",
        instant(e.phi_retention_until),
        if e.expired { " (passed)" } else { "" }
    );
    for hold in &e.holds {
        outln!(
            "  legal hold           {} placed {} by {}",
            hold.id,
            instant(hold.placed_at),
            hold.placed_by
        );
    }
    let c = e.counts;
    outln!(
        "  records              {} consultations, {} prescriptions, {} history entries, {} intake forms, {} id photos, {} sessions",
        c.consultations, c.prescriptions, c.history_entries, c.intake_forms, c.id_photos, c.sessions
    );
    for other in &e.other_tenants {
        let state = match (other.expired, other.held) {
            (_, true) => "held",
            (true, false) => "expired",
            (false, false) => "active",
        };
        outln!(
            "  other tenant         {} until {} ({state})",
            other.tenant,
            instant(other.phi_retention_until)
        );
    }
    let held = !e.holds.is_empty();
    for photo in &e.id_photos {
        outln!(
            "  id photo             {} kept until {}{}",
            photo.id,
            instant(photo.retention_until),
            passed_marker(photo.expired, held)
        );
    }
    for session in &e.sessions {
        outln!(
            "  session              {} kept until {}{}",
            session.id,
            instant(session.retention_until),
            passed_marker(session.expired, held)
        );
    }
    outln!("verdict: {}", e.verdict);
    outln!("core profile: {}", e.profile_verdict);
}

fn passed_marker(expired: bool, held: bool) -> &'static str {
    match (expired, held) {
        (true, true) => " (passed, held)",
        (true, false) => " (passed)",
        (false, _) => "",
    }
}

pub fn hold_scope(hold: &LegalHold, tenant_slug: &str) -> String {
    match hold.scope {
        HoldScope::WholeTenant => format!("all of tenant {tenant_slug}"),
        HoldScope::Patient(patient) => format!("patient {patient} of tenant {tenant_slug}"),
    }
}

pub fn print_holds(holds: &[LegalHold], tenants: &[Tenant]) {
    if holds.is_empty() {
        outln!("no legal holds");
    }
    for hold in holds {
        let slug = tenants.iter().find(|t| t.id == hold.tenant_id).map_or("?", |t| t.slug.as_str());
        let state = match hold.released_at {
            Some(at) => format!("released {}", instant(at)),
            None => "active".to_owned(),
        };
        outln!(
            "{}  {}  matter {:?}  placed {}  {state}",
            hold.id,
            hold_scope(hold, slug),
            hold.matter,
            instant(hold.placed_at)
        );
    }
}

/// One service token in `token list --json`. The field names are a stable contract and match
/// those of `token create --json`. Instants are RFC 3339 in UTC, to the second.
#[derive(Serialize)]
pub struct TokenJson<'a> {
    pub token_id: ServiceTokenId,
    /// Tenant slug.
    pub tenant: &'a str,
    pub name: &'a str,
    pub role: Role,
    /// `active`, `expired` or `revoked`, at the time of the listing.
    pub state: CredentialState,
    pub created_at: String,
    /// Null for a token that stays valid until revoked.
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// SHA-256 of the client certificate a storefront token is bound to, as lower-case hex
    /// pairs joined by `:`. Null for the other roles.
    pub client_cert_sha256: Option<CertificateFingerprint>,
}

/// Converts a tenant's service tokens to their `--json` form, with their state at `now`.
pub fn tokens_json<'a>(
    tokens: &'a [ServiceTokenSummary],
    tenant: &'a str,
    now: DateTime<Utc>,
) -> Vec<TokenJson<'a>> {
    let to_json = |token: &'a ServiceTokenSummary| TokenJson {
        token_id: token.id,
        tenant,
        name: &token.name,
        role: token.role,
        state: token.state(now),
        created_at: format_instant(token.created_at),
        expires_at: token.expires_at.map(format_instant),
        revoked_at: token.revoked_at.map(format_instant),
        client_cert_sha256: token.client_cert,
    };
    tokens.iter().map(to_json).collect()
}

pub fn print_tokens(tokens: &[ServiceTokenSummary], tenant: &str, now: DateTime<Utc>) {
    if tokens.is_empty() {
        outln!(
            "no service tokens in tenant {tenant}: create one with `medconnect token create \
             --tenant {tenant} --name NAME`"
        );
        return;
    }
    outln!(
        "{:<36}  {:<20}  {:<12}  {:<7}  {:<20}  {:<20}  client certificate sha256",
        "token id",
        "name",
        "role",
        "state",
        "created",
        "expires"
    );
    for token in tokens {
        let state = match token.state(now) {
            CredentialState::Revoked => "revoked",
            CredentialState::Expired => "expired",
            _ => "active",
        };
        let expires = token.expires_at.map_or("never".to_owned(), instant);
        let fingerprint = token.client_cert.map_or("-".to_owned(), |cert| cert.to_string());
        outln!(
            "{:<36}  {:<20}  {:<12}  {state:<7}  {:<20}  {expires:<20}  {fingerprint}",
            token.id,
            token.name,
            token.role.as_str(),
            instant(token.created_at)
        );
    }
}

/// One user account in `user list --json`. The field names are a stable contract and match
/// those of `user create --json`. Instants are RFC 3339 in UTC, to the second.
#[derive(Serialize)]
pub struct UserJson<'a> {
    pub user_id: UserId,
    /// Tenant slug, or null for a platform operator.
    pub tenant: Option<&'a str>,
    /// In lower case, as logins compare it. It may be an email address.
    pub username: &'a str,
    pub role: Role,
    /// The patient of a patient account, or null for the other roles.
    pub patient_id: Option<PatientId>,
    pub disabled: bool,
    pub created_at: String,
    pub last_login_at: Option<String>,
    /// Failed logins since the last successful one.
    pub failed_logins: u32,
    pub last_failed_login_at: Option<String>,
}

/// Converts user accounts of `tenant` (None: platform operators) to their `--json` form.
pub fn users_json<'a>(users: &'a [UserSummary], tenant: Option<&'a str>) -> Vec<UserJson<'a>> {
    let to_json = |user: &'a UserSummary| UserJson {
        user_id: user.id,
        tenant,
        username: &user.username,
        role: user.role,
        patient_id: user.patient,
        disabled: user.disabled,
        created_at: format_instant(user.created_at),
        last_login_at: user.last_login_at.map(format_instant),
        failed_logins: user.failed_logins,
        last_failed_login_at: user.last_failed_login_at.map(format_instant),
    };
    users.iter().map(to_json).collect()
}

pub fn print_users(users: &[UserSummary], tenant: Option<&str>) {
    if users.is_empty() {
        match tenant {
            Some(slug) => outln!(
                "no user accounts in tenant {slug}: create one with `medconnect user create \
                 --tenant {slug}`"
            ),
            None => outln!(
                "no platform operators: create one with `medconnect user create --username \
                 NAME --role platform_operator`"
            ),
        }
        return;
    }
    outln!("{:<36}  {:<17}  {:<8}  {:<20}  username", "user id", "role", "state", "last login");
    for user in users {
        let state = if user.disabled { "disabled" } else { "enabled" };
        let last_login = user.last_login_at.map_or("never".to_owned(), instant);
        outln!(
            "{:<36}  {:<17}  {state:<8}  {last_login:<20}  {}",
            user.id,
            user.role.as_str(),
            user.username
        );
    }
}

/// A progress line on standard error, redrawn at most every 200 ms, shown only on a terminal.
pub struct Progress {
    label: &'static str,
    enabled: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    pub fn new(label: &'static str, enabled: bool) -> Self {
        Progress {
            label,
            enabled: enabled && std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    pub fn update(&mut self, done: usize, total: usize) {
        if !self.enabled
            || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) && done < total
        {
            return;
        }
        self.last = Some(Instant::now());
        self.drawn = true;
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "\r{} {done}/{total}", self.label);
        let _ = stderr.flush();
    }

    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}
