//! The lifecycle scheduler: runs the lifecycle job at a fixed interval inside the server.
//!
//! Each run disposes of every record whose retention has ended and that no hold protects,
//! with a receipt per disposal, exactly as `medconnect lifecycle run` does. The binary
//! supplies the job. Runs never overlap: the next one starts an interval after the previous
//! one started, or right after it ended when it took longer. The first run starts at once.
//! A run requested through `POST /v1/lifecycle/run` shares the [`LifecycleRunner`]: a
//! scheduled run that falls due while it is under way is skipped, and a request made during
//! a scheduled run gets 409.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use medconnect_lifecycle::RunReport;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::metrics::Metrics;
use crate::{error_chain, BoxError};

/// One lifecycle run, called on a blocking thread. The argument is the actor its audit
/// entries name: None for the scheduler, which uses the actor the binary configured, or the
/// caller of `POST /v1/lifecycle/run`.
pub type LifecycleJob = dyn Fn(Option<&str>) -> Result<RunReport, BoxError> + Send + Sync;

/// Runs the lifecycle job of this node, one run at a time, for the scheduler and for
/// `POST /v1/lifecycle/run`.
pub struct LifecycleRunner {
    job: Arc<LifecycleJob>,
    running: Arc<AtomicBool>,
    metrics: Metrics,
}

/// Why [`LifecycleRunner::run`] returned no report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another run is under way on this node.
    #[error("a lifecycle run is already under way on this node")]
    Busy,
    /// The job failed. The text is the error's chain of causes.
    #[error("the lifecycle run failed: {0}")]
    Failed(String),
    /// The job panicked.
    #[error("the lifecycle run panicked")]
    Panicked,
}

/// Clears the running flag when the run ends, also when it panics.
struct RunningFlag(Arc<AtomicBool>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl LifecycleRunner {
    pub fn new(job: Arc<LifecycleJob>, metrics: Metrics) -> Self {
        LifecycleRunner { job, running: Arc::new(AtomicBool::new(false)), metrics }
    }

    /// Runs the job once on a blocking thread, or returns [`RunError::Busy`] at once while
    /// another run of this runner is under way. The run goes on to its end when the caller
    /// stops waiting, and no other run starts before then. Counts the run in the metrics.
    pub async fn run(&self, actor: Option<String>) -> Result<RunReport, RunError> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(RunError::Busy);
        }
        let flag = RunningFlag(Arc::clone(&self.running));
        let job = Arc::clone(&self.job);
        let outcome = tokio::task::spawn_blocking(move || {
            let _flag = flag;
            job(actor.as_deref())
        })
        .await;
        let result = match outcome {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(error)) => Err(RunError::Failed(error_chain(&*error))),
            Err(_) => Err(RunError::Panicked),
        };
        self.metrics.record_lifecycle_run(result.is_err());
        result
    }
}

/// Runs the runner's job every `interval` until `shutdown` turns true. A run under way when
/// shutdown starts is awaited, so callers bound this future with their shutdown timeout.
pub async fn run_schedule(
    runner: Arc<LifecycleRunner>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        run_once(&runner).await;
    }
}

/// Runs the job once and logs its outcome.
async fn run_once(runner: &LifecycleRunner) {
    tracing::info!("scheduled lifecycle run starting");
    match runner.run(None).await {
        Ok(report) => {
            let skipped: u64 =
                report.tally.skipped.values().flat_map(|counts| counts.values()).sum();
            tracing::info!(
                run_id = %report.run_id,
                purged = report.tally.purged_total(),
                receipts = report.tally.receipts,
                skipped,
                platform_sessions_purged = report.platform_sessions_purged,
                "scheduled lifecycle run finished"
            );
        }
        Err(RunError::Busy) => {
            tracing::info!(
                "scheduled lifecycle run skipped: a run requested through the API is under way"
            );
        }
        Err(RunError::Failed(cause)) => {
            tracing::error!(%cause, "scheduled lifecycle run failed; the next scheduled run retries");
        }
        Err(RunError::Panicked) => {
            tracing::error!("scheduled lifecycle run panicked; the next scheduled run retries");
        }
    }
}
