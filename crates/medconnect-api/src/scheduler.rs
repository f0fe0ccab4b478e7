//! The lifecycle scheduler: runs the lifecycle job at a fixed interval inside the server.
//!
//! Each run disposes of every record whose retention has ended and that no hold protects,
//! with a receipt per disposal, exactly as `medconnect lifecycle run` does. The binary
//! supplies the job. Runs never overlap: the next one starts an interval after the previous
//! one started, or right after it ended when it took longer. The first run starts at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::metrics::Metrics;
use crate::{error_chain, BoxError};

/// One lifecycle run, called on a blocking thread.
pub type LifecycleJob = dyn Fn() -> Result<LifecycleOutcome, BoxError> + Send + Sync;

/// Ids and counts of a finished run, for the log.
#[derive(Debug, Clone)]
pub struct LifecycleOutcome {
    pub run_id: String,
    /// Records disposed of, all categories together.
    pub purged: u64,
    /// Disposal receipts written.
    pub receipts: u64,
    /// Records kept although expired, all reasons together.
    pub skipped: u64,
}

/// Runs `job` every `interval` until `shutdown` turns true. A run under way when shutdown
/// starts is awaited, so callers bound this future with their shutdown timeout.
pub async fn run_schedule(
    job: Arc<LifecycleJob>,
    interval: Duration,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        run_once(Arc::clone(&job), &metrics).await;
    }
}

/// Runs the job once on a blocking thread, logs its outcome and counts it.
async fn run_once(job: Arc<LifecycleJob>, metrics: &Metrics) {
    tracing::info!("scheduled lifecycle run starting");
    let outcome = tokio::task::spawn_blocking(move || job()).await;
    match outcome {
        Ok(Ok(outcome)) => {
            metrics.record_lifecycle_run(false);
            tracing::info!(
                run_id = %outcome.run_id,
                purged = outcome.purged,
                receipts = outcome.receipts,
                skipped = outcome.skipped,
                "scheduled lifecycle run finished"
            );
        }
        Ok(Err(error)) => {
            metrics.record_lifecycle_run(true);
            tracing::error!(
                cause = %error_chain(&*error),
                "scheduled lifecycle run failed; the next scheduled run retries"
            );
        }
        Err(_) => {
            metrics.record_lifecycle_run(true);
            tracing::error!("scheduled lifecycle run panicked; the next scheduled run retries");
        }
    }
}
