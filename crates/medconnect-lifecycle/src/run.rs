//! Running the lifecycle: plan, then dispose in batches.
//!
//! Several nodes may run at once on one PostgreSQL store. A record whose row another node
//! has locked is skipped as claimed. After its pass the run plans again and retries those
//! records with backoff until each is disposed of (by this node or by the one that held it)
//! or no longer due, or until [`RunOptions::claim_wait`] runs out.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use medconnect_crypto::AuditSigner;
use medconnect_domain::audit::AuditEvent;
use medconnect_domain::model::Category;
use medconnect_domain::policy::Policy;
use medconnect_domain::time::format_instant;
use medconnect_domain::TenantId;
use medconnect_store::{Disposal, DisposalContext, DisposalOutcome, SkipReason, Store, StoreError};
use serde::Serialize;

use crate::plan::{plan, platform_sessions_ended_before, Action, Decision};
use crate::{Result, SkipKind, Tally};

/// Wait before the first retry of claimed records. It doubles for each retry after that.
const FIRST_CLAIM_BACKOFF: Duration = Duration::from_millis(200);

/// Maximum wait between two retries of claimed records.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(10);

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Disposals per transaction. Smaller batches commit more often.
    pub batch_size: usize,
    /// The actor recorded in audit entries.
    pub actor: String,
    /// How long, in all, the run retries records that another node holds before it reports
    /// them in [`Tally::claimed_elsewhere`] and ends.
    pub claim_wait: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch_size: 500,
            actor: "lifecycle".to_owned(),
            // Longer than the 60 s after which the server ends a transaction left idle, so
            // the rows of a node that hangs mid-disposal come free while the run waits.
            claim_wait: Duration::from_secs(180),
        }
    }
}

/// Report of one run, serialized as the JSON that `lifecycle run --json` prints.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = LifecycleRunReport))]
pub struct RunReport {
    pub run_id: String,
    pub as_of: DateTime<Utc>,
    pub policy_version: String,
    #[serde(flatten)]
    pub tally: Tally,
    /// Files of earlier runs that were unlinked before this run started.
    pub resumed_file_deletions: u64,
    /// Audit entries removed because they were past `audit_log_years`.
    pub audit_entries_disposed: u64,
    /// Sessions of platform operators purged, past the policy's default `session_days`. They
    /// belong to no tenant, so they have no receipts and count in no category of the tally.
    pub platform_sessions_purged: u64,
    /// Sequence number of the entry the checkpoint signed at the end of the run covers, or
    /// None when no signing key was available.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub audit_checkpoint_seq: Option<i64>,
}

/// Disposes of everything expired as of `as_of` that no hold protects, without the audit
/// signing key: audit retention and the closing checkpoint are skipped with a warning.
pub fn run(
    store: &mut dyn Store,
    policy: &Policy,
    as_of: DateTime<Utc>,
    options: &RunOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RunReport> {
    run_with_signer(store, policy, as_of, options, None, progress)
}

/// Disposes of everything expired as of `as_of` that no hold protects, then removes audit
/// entries past `audit_log_years` and signs a checkpoint at the head. `progress` is called
/// after each batch with the number of disposals done and the total.
///
/// Without `signer` the two audit steps are skipped with a warning, and records are disposed
/// of as usual. A chain that fails verification skips them too, with a logged error, because
/// signing would vouch for a damaged log.
pub fn run_with_signer(
    store: &mut dyn Store,
    policy: &Policy,
    as_of: DateTime<Utc>,
    options: &RunOptions,
    signer: Option<&dyn AuditSigner>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RunReport> {
    let resumed_file_deletions = store.finish_file_deletions()?;
    store.apply_policy(policy, &options.actor, false)?;
    let plan = plan(store, policy, as_of)?;
    let run_id = store.start_run(as_of)?;
    let span = tracing::info_span!("lifecycle_run", run_id = %run_id);
    let _guard = span.enter();
    tracing::info!(as_of = %format_instant(as_of), policy = %plan.policy_version, planned = plan.actions.len(), "lifecycle run started");

    let mut tally = Tally::default();
    for action in plan.actions.iter().filter(|a| a.decision == Decision::Skip) {
        if let Some(kind) = action.skip_reason {
            tally.add_skipped(kind, action.category);
        }
    }
    let disposals: Vec<_> = plan.actions.iter().filter_map(Action::disposal).collect();
    let context = DisposalContext { policy, as_of, actor: &options.actor, run_id: &run_id };
    let mut claimed = Vec::new();
    let mut done = 0;
    for batch in disposals.chunks(options.batch_size.max(1)) {
        claimed.extend(dispose_batch(store, batch, &context, &mut tally)?);
        done += batch.len();
        progress(done, disposals.len());
    }
    if !claimed.is_empty() {
        let attempted = disposals.iter().map(DisposalKey::of).collect();
        let left = retry_claimed(store, &context, options, attempted, claimed, &mut tally)?;
        for disposal in &left {
            tally.add_claimed_elsewhere(disposal.category);
        }
        if !left.is_empty() {
            tracing::warn!(
                claimed = left.len(),
                waited_secs = options.claim_wait.as_secs(),
                "records still held by another node, left to it or to a later run"
            );
        }
    }

    let ended_before = platform_sessions_ended_before(policy, as_of);
    let platform_sessions_purged =
        store.purge_platform_sessions(ended_before, &options.actor, &run_id)?;

    let audit_entries_disposed = match signer {
        Some(signer) => {
            let cut = store.dispose_audit(policy, as_of, signer, &options.actor);
            tolerate_broken_chain(cut, "audit entries past retention kept")?
                .map_or(0, |c| c.entries)
        }
        None => {
            if plan.audit_entries_disposed > 0 {
                tracing::warn!(
                    entries = plan.audit_entries_disposed,
                    "audit entries past audit_log_years kept: no audit signing key, and removing \
                     them needs a signed checkpoint"
                );
            }
            0
        }
    };

    let summary = serde_json::to_string(&tally).unwrap_or_default();
    let mut detail = format!(
        "run {run_id} as of {}: {} disposed, {} receipts, {} held, {} kept for another tenant, \
         {platform_sessions_purged} platform sessions purged, \
         {audit_entries_disposed} audit entries disposed",
        format_instant(as_of),
        tally.purged_total(),
        tally.receipts,
        tally.skipped_total(SkipKind::LegalHold),
        tally.skipped_total(SkipKind::OtherTenantActive),
    );
    if tally.claimed_elsewhere_total() > 0 {
        detail
            .push_str(&format!(", {} still held by another node", tally.claimed_elsewhere_total()));
    }
    store.append_audit(
        AuditEvent::new(&options.actor, "lifecycle.run").subject(&run_id).detail(detail),
    )?;
    store.finish_run(&run_id, "completed", &summary)?;
    let audit_checkpoint_seq = match signer {
        Some(signer) => {
            let signed = store.sign_audit_checkpoint(signer);
            tolerate_broken_chain(signed, "audit checkpoint not signed")?.map(|s| s.checkpoint.seq)
        }
        None => {
            tracing::warn!("audit checkpoint not signed: no audit signing key");
            None
        }
    };
    tracing::info!(
        purged = tally.purged_total(),
        receipts = tally.receipts,
        platform_sessions_purged,
        audit_entries_disposed,
        "lifecycle run finished"
    );
    Ok(RunReport {
        run_id,
        as_of,
        policy_version: plan.policy_version,
        tally,
        resumed_file_deletions,
        audit_entries_disposed,
        platform_sessions_purged,
        audit_checkpoint_seq,
    })
}

/// Identifies a disposal across plans.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DisposalKey {
    category: Category,
    tenant_id: TenantId,
    record_id: String,
}

impl DisposalKey {
    fn of(disposal: &Disposal) -> Self {
        DisposalKey {
            category: disposal.category,
            tenant_id: disposal.tenant_id,
            record_id: disposal.record_id.clone(),
        }
    }
}

/// Executes one batch, counts its outcomes and returns the disposals whose rows another
/// node held.
fn dispose_batch(
    store: &mut dyn Store,
    batch: &[Disposal],
    context: &DisposalContext<'_>,
    tally: &mut Tally,
) -> Result<Vec<Disposal>> {
    let outcomes = store.dispose(batch, context)?;
    let mut claimed = Vec::new();
    for (disposal, outcome) in batch.iter().zip(outcomes) {
        if outcome == DisposalOutcome::Skipped(SkipReason::Claimed) {
            claimed.push(disposal.clone());
        } else {
            count_outcome(tally, disposal.category, outcome);
        }
    }
    Ok(claimed)
}

/// Retries disposals whose rows other nodes held, waiting with backoff between rounds for at
/// most `options.claim_wait` in all. Each round plans again and adds the disposals this run
/// has not tried yet, such as the photos and sessions of a claimed link that turned out no
/// longer due. Returns the disposals still held when the time ran out.
fn retry_claimed(
    store: &mut dyn Store,
    context: &DisposalContext<'_>,
    options: &RunOptions,
    mut attempted: HashSet<DisposalKey>,
    mut pending: Vec<Disposal>,
    tally: &mut Tally,
) -> Result<Vec<Disposal>> {
    let deadline = Instant::now() + options.claim_wait;
    let mut wait = FIRST_CLAIM_BACKOFF;
    while !pending.is_empty() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        if left.is_zero() {
            break;
        }
        tracing::info!(
            claimed = pending.len(),
            wait_ms = wait.min(left).as_millis() as u64,
            "records held by another node, retrying after a wait"
        );
        std::thread::sleep(wait.min(left));
        wait = (wait * 2).min(MAX_CLAIM_BACKOFF);

        // Every claimed record is tried again, so that the store reports whether each is
        // gone, no longer due, under a hold or still claimed.
        let fresh = plan(store, context.policy, context.as_of)?;
        let mut targets = std::mem::take(&mut pending);
        for disposal in fresh.actions.iter().filter_map(Action::disposal) {
            if attempted.insert(DisposalKey::of(&disposal)) {
                targets.push(disposal);
            }
        }
        for batch in targets.chunks(options.batch_size.max(1)) {
            pending.extend(dispose_batch(store, batch, context, tally)?);
        }
    }
    Ok(pending)
}

/// Turns a chain that fails verification into None with a logged error, so the run goes on;
/// other errors stay errors.
fn tolerate_broken_chain<T>(
    result: std::result::Result<T, StoreError>,
    what: &str,
) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err @ StoreError::AuditBroken { .. }) => {
            tracing::error!(error = %err, "{what}");
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

fn count_outcome(tally: &mut Tally, category: Category, outcome: DisposalOutcome) {
    match outcome {
        DisposalOutcome::Disposed { receipts } => {
            for receipt in receipts {
                tally.add_purged(receipt.category);
            }
        }
        DisposalOutcome::Skipped(reason) => {
            let kind = match reason {
                SkipReason::LegalHold { .. } => SkipKind::LegalHold,
                SkipReason::NotExpired { .. } => SkipKind::NoLongerDue,
                SkipReason::AlreadyGone => SkipKind::AlreadyGone,
                SkipReason::Claimed => {
                    tally.add_claimed_elsewhere(category);
                    return;
                }
            };
            tracing::debug!(category = %category, reason = kind.as_str(), "disposal skipped in transaction");
            tally.add_skipped(kind, category);
        }
    }
}
