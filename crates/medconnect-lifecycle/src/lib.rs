//! Lifecycle jobs: PHI purge, ID photo cleanup and session purge.
//!
//! [`plan`] lists what a run would dispose of and what it would keep, and why; it changes
//! nothing. [`run`] executes a fresh plan through [`Store::dispose`], which checks each
//! record again inside its transaction, so a hold placed or an encounter recorded after
//! planning still wins. [`explain`] reports why one patient's records are kept, and until
//! when.
//!
//! A run also removes audit entries past `audit_log_years`, keeping a signed checkpoint where
//! the log now starts, and signs a checkpoint at the head when it ends. Both need the audit
//! signing key ([`run_with_signer`]); without it they are skipped with a warning, and the
//! run disposes of everything else as usual.
//!
//! Sessions of platform operators belong to no tenant, so they get no disposals and no
//! receipts. A run purges them after the policy's default `session_days` through
//! [`Store::purge_platform_sessions`], which records one audit entry for all of them.
//!
//! Every job is idempotent: a record's deletion and its receipt commit together, so running
//! again after a crash disposes of what is left and nothing twice.

mod explain;
mod plan;
mod run;

pub use explain::{explain, Explanation, OtherTenant, TimedRecord};
pub use plan::{plan, Action, Blocker, Decision, Plan, SkipKind};
pub use run::{run, run_with_signer, RunOptions, RunReport};

use std::collections::BTreeMap;

use medconnect_domain::model::Category;
use serde::Serialize;

/// Error returned by a lifecycle job.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] medconnect_store::StoreError),
}

pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// Counts per category and per skip reason, in the shape both `plan --json` and
/// `run --json` print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tally {
    /// Records disposed of (or, in a plan, to be disposed of), per category.
    pub purged: BTreeMap<Category, u64>,
    /// Records kept although expired, per reason and then per category.
    pub skipped: BTreeMap<SkipKind, BTreeMap<Category, u64>>,
    /// Disposal receipts written (or to be written).
    pub receipts: u64,
    /// Records still held by another node when the run stopped waiting for them, per
    /// category. That node is disposing of them, or a later run will. Always 0 in a plan, and
    /// on the embedded store.
    pub claimed_elsewhere: BTreeMap<Category, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        let per_category = || Category::ALL.iter().map(|c| (*c, 0)).collect::<BTreeMap<_, _>>();
        Tally {
            purged: per_category(),
            skipped: SkipKind::ALL.iter().map(|k| (*k, per_category())).collect(),
            receipts: 0,
            claimed_elsewhere: per_category(),
        }
    }
}

impl Tally {
    pub(crate) fn add_purged(&mut self, category: Category) {
        *self.purged.entry(category).or_default() += 1;
        self.receipts += 1;
    }

    pub(crate) fn add_skipped(&mut self, kind: SkipKind, category: Category) {
        *self.skipped.entry(kind).or_default().entry(category).or_default() += 1;
    }

    pub(crate) fn add_claimed_elsewhere(&mut self, category: Category) {
        *self.claimed_elsewhere.entry(category).or_default() += 1;
    }

    /// Returns the number of records left to other nodes, over all categories.
    pub fn claimed_elsewhere_total(&self) -> u64 {
        self.claimed_elsewhere.values().sum()
    }

    /// Returns the number of records skipped for one reason, over all categories.
    pub fn skipped_total(&self, kind: SkipKind) -> u64 {
        self.skipped.get(&kind).map_or(0, |m| m.values().sum())
    }

    /// Returns the number of records disposed of, over all categories.
    pub fn purged_total(&self) -> u64 {
        self.purged.values().sum()
    }
}
