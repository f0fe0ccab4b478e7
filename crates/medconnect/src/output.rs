//! Human-readable output. Scripts should use `--json`, whose shape is stable.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use medconnect_domain::model::{Category, HoldScope, ImportCounts, LegalHold, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_lifecycle::{Decision, Explanation, Plan, RunReport, SkipKind, Tally};
use medconnect_store::RunRecord;
use serde::Serialize;

pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn instant(value: DateTime<Utc>) -> String {
    value.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn print_policy(policy: &Policy, path: &Path) {
    let periods = policy.defaults;
    println!("policy {} ({})", policy.version(), path.display());
    println!("  phi retention              {} years after the last medical encounter", periods.phi_years);
    println!("  audit log                  at least {} years", periods.audit_log_years);
    println!("  id verification photos     {} days after upload", periods.id_photo_days);
    println!("  sessions                   {} days after they end", periods.session_days);
    println!("  storefront orders          {} years of tax retention", periods.storefront_order_tax_years);
    println!("  offboarding export window  {} days", periods.offboarding_export_window_days);
    for (slug, _) in &policy.tenants {
        let p = policy.periods_for(slug);
        println!(
            "  tenant {slug}: phi {}y, audit {}y, id photos {}d, sessions {}d, orders {}y, export window {}d",
            p.phi_years, p.audit_log_years, p.id_photo_days, p.session_days, p.storefront_order_tax_years,
            p.offboarding_export_window_days
        );
    }
}

pub fn print_import(tenant: &str, counts: &ImportCounts, elapsed: Duration) {
    println!("imported into tenant {tenant} in {} ms:", elapsed.as_millis());
    println!("  core profiles created  {}", counts.profiles_created);
    println!("  core profiles linked   {} (already known from another tenant)", counts.profiles_linked);
    println!("  patient links          {}", counts.links_created);
    println!("  providers              {}", counts.providers);
    println!("  consultations          {}", counts.consultations);
    println!("  prescriptions          {}", counts.prescriptions);
    println!("  history entries        {}", counts.history_entries);
}

/// Prints the per-category table shared by plan and run output.
pub fn print_tally(tally: &Tally, purged_label: &str) {
    println!(
        "  {:<16} {:>10} {:>8} {:>14} {:>12} {:>12}",
        "category", purged_label, "held", "other tenant", "not expired", "already gone"
    );
    for category in Category::ALL {
        let skipped = |kind: SkipKind| tally.skipped.get(&kind).and_then(|m| m.get(&category)).copied().unwrap_or(0);
        println!(
            "  {:<16} {:>10} {:>8} {:>14} {:>12} {:>12}",
            category.as_str(),
            tally.purged.get(&category).copied().unwrap_or(0),
            skipped(SkipKind::LegalHold),
            skipped(SkipKind::OtherTenantActive),
            skipped(SkipKind::NotExpired),
            skipped(SkipKind::AlreadyGone),
        );
    }
}

pub fn print_plan(plan: &Plan) {
    println!("plan as of {} under policy {} (nothing changed)", instant(plan.as_of), plan.policy_version);
    print_tally(&plan.tally, "would purge");
    println!("  receipts that a run would write: {}", plan.tally.receipts);
    let skips: Vec<_> = plan.actions.iter().filter(|a| a.decision == Decision::Skip).collect();
    if !skips.is_empty() {
        println!("kept although expired:");
        for action in skips.iter().take(20) {
            let why = match (action.hold_id, action.blocked_by.first()) {
                (Some(hold), _) => format!("legal hold {hold}"),
                (None, Some(_)) => {
                    let tenants: Vec<String> = action.blocked_by.iter().map(|b| format!("{} until {}", b.tenant, instant(b.phi_retention_until))).collect();
                    format!("still linked to {}", tenants.join(", "))
                }
                (None, None) => "skipped".to_owned(),
            };
            println!("  {} {}: {why}", action.category, action.record_id);
        }
        if skips.len() > 20 {
            println!("  ... and {} more (use --json for all)", skips.len() - 20);
        }
    }
}

pub fn print_run(report: &RunReport) {
    println!("run {} as of {} under policy {}", report.run_id, instant(report.as_of), report.policy_version);
    print_tally(&report.tally, "purged");
    println!("  disposal receipts written: {}", report.tally.receipts);
}

pub fn print_runs(runs: &[RunRecord]) {
    for run in runs {
        let finished = run.finished_at.map(instant).unwrap_or_else(|| "not finished (running or interrupted)".into());
        println!("{}  as of {}  {}  finished {}", run.id, instant(run.as_of), run.status, finished);
    }
}

pub fn print_explanation(e: &Explanation) {
    println!("patient {} in tenant {} as of {} (policy {})", e.patient_id, e.tenant, instant(e.as_of), e.policy_version);
    let last = e.last_medical_encounter_at.map(instant).unwrap_or_else(|| "none recorded".into());
    println!("  rule                 {} ({} years after the last medical encounter)", e.rule, "policy");
    println!("  last encounter       {last}");
    println!("  phi retention until  {}{}", instant(e.phi_retention_until), if e.expired { " (passed)" } else { "" });
    for hold in &e.holds {
        println!("  legal hold           {} placed {} by {}", hold.id, instant(hold.placed_at), hold.placed_by);
    }
    let c = e.counts;
    println!(
        "  records              {} consultations, {} prescriptions, {} history entries, {} intake forms, {} id photos, {} sessions",
        c.consultations, c.prescriptions, c.history_entries, c.intake_forms, c.id_photos, c.sessions
    );
    for other in &e.other_tenants {
        let state = match (other.expired, other.held) {
            (_, true) => "held",
            (true, false) => "expired",
            (false, false) => "active",
        };
        println!("  other tenant         {} until {} ({state})", other.tenant, instant(other.phi_retention_until));
    }
    for photo in &e.id_photos {
        println!("  id photo             {} kept until {}{}", photo.id, instant(photo.retention_until), if photo.expired { " (passed)" } else { "" });
    }
    for session in &e.sessions {
        println!("  session              {} kept until {}{}", session.id, instant(session.retention_until), if session.expired { " (passed)" } else { "" });
    }
    println!("verdict: {}", e.verdict);
    println!("core profile: {}", e.profile_verdict);
}

pub fn hold_scope(hold: &LegalHold, tenant_slug: &str) -> String {
    match hold.scope {
        HoldScope::WholeTenant => format!("all of tenant {tenant_slug}"),
        HoldScope::Patient(patient) => format!("patient {patient} of tenant {tenant_slug}"),
    }
}

pub fn print_holds(holds: &[LegalHold], tenants: &[Tenant]) {
    if holds.is_empty() {
        println!("no legal holds");
    }
    for hold in holds {
        let slug = tenants.iter().find(|t| t.id == hold.tenant_id).map_or("?", |t| t.slug.as_str());
        let state = match hold.released_at {
            Some(at) => format!("released {}", instant(at)),
            None => "active".to_owned(),
        };
        println!("{}  {}  matter {:?}  placed {}  {state}", hold.id, hold_scope(hold, slug), hold.matter, instant(hold.placed_at));
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
        Progress { label, enabled: enabled && std::io::stderr().is_terminal(), last: None, drawn: false }
    }

    pub fn update(&mut self, done: usize, total: usize) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) && done < total {
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
