//! `medconnect serve`: the HTTPS API and the lifecycle scheduler on a tokio runtime.
//!
//! This module supplies what `medconnect-api` leaves to the binary: stores opened as the CLI
//! opens them (SQLite or PostgreSQL, with the master key), the policy in force, and the
//! lifecycle run with the CLI's signing key and ledger sync.

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use medconnect_api::{
    LifecycleJob, LifecycleOutcome, PolicyInForce, PolicySource, Server, ServerConfig, Services,
    StorePool, TlsFiles, TlsSource,
};
use medconnect_crypto::AuditSigner;
use medconnect_domain::clock::SystemClock;
use medconnect_lifecycle::RunOptions;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cli::ServeArgs;
use crate::{as_of_or_now, Context};

/// Folder of the development certificate inside the data directory.
pub const TLS_DIR: &str = "tls";

/// How long the runtime waits for its blocking threads once the server has stopped. The
/// server's own shutdown timeout has already passed by then, so this only bounds the exit.
const RUNTIME_EXIT_WAIT: Duration = Duration::from_secs(1);

/// Runs the server until SIGINT or SIGTERM.
pub fn run(context: Context, args: ServeArgs) -> Result<ExitCode> {
    let tls = tls_source(&context, &args)?;
    check_store_and_policy(&context)?;
    let workers = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("medconnect-serve")
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let mut config = ServerConfig::new(args.listen, tls);
    config.client_ca = args.client_ca.clone();
    config.body_limit = args.body_limit;
    config.lifecycle_interval = args.lifecycle_interval;
    config.shutdown_timeout = args.shutdown_timeout;
    config.session_ttl = args.session_ttl;
    let context = Arc::new(context);
    let services = Services {
        pool: store_pool(&context, workers),
        policy: policy_source(&context),
        lifecycle: Some(lifecycle_job(&context)),
        clock: Arc::new(SystemClock),
    };

    runtime.block_on(serve(config, services))?;
    runtime.shutdown_timeout(RUNTIME_EXIT_WAIT);
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: ServerConfig, services: Services) -> Result<()> {
    let signals = ShutdownSignals::install()?;
    let client_ca = config.client_ca.clone();
    let server = Server::bind(config, services).await?;
    if server.generated_certificate() {
        tracing::info!(
            cert = %server.cert_path().display(),
            "generated a self-signed development certificate"
        );
    }
    tracing::info!(
        cert = %server.cert_path().display(),
        sha256 = %server.fingerprint(),
        "TLS certificate loaded"
    );
    match &client_ca {
        Some(path) => tracing::info!(
            client_ca = %path.display(),
            certificates = server.client_ca_certificates(),
            "client certificates are verified against the client CA file; clients without one \
             still connect"
        ),
        None => tracing::warn!(
            "no --client-ca given: the server requests no client certificate, so storefront \
             tokens cannot authenticate"
        ),
    }
    tracing::info!("listening on https://{}", server.local_addr());
    server.run(signals.wait()).await;
    Ok(())
}

/// Returns the certificate files from --tls-cert and --tls-key, or the development
/// certificate's folder when neither is given.
fn tls_source(context: &Context, args: &ServeArgs) -> Result<TlsSource> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Ok(TlsSource::Files(TlsFiles { cert: cert.clone(), key: key.clone() }))
        }
        (None, None) => {
            tracing::warn!(
                "no --tls-cert and --tls-key given: using a self-signed development certificate, \
                 which clients do not trust; pass a real certificate in production"
            );
            Ok(TlsSource::Development { dir: context.data_dir.join(TLS_DIR) })
        }
        (Some(_), None) => bail!(
            "--tls-cert (MEDCONNECT_TLS_CERT) is given without --tls-key (MEDCONNECT_TLS_KEY): \
             pass both, or neither for the development certificate"
        ),
        (None, Some(_)) => bail!(
            "--tls-key (MEDCONNECT_TLS_KEY) is given without --tls-cert (MEDCONNECT_TLS_CERT): \
             pass both, or neither for the development certificate"
        ),
    }
}

/// Opens the store with its keys and loads the policy once before listening, so that a
/// missing store, key or policy stops the start with the CLI's error instead of a server
/// that is never ready.
fn check_store_and_policy(context: &Context) -> Result<()> {
    let store = context.open_store_with_key()?;
    let info = store.info()?;
    context.load_policy()?;
    tracing::info!(backend = info.backend, schema_version = info.schema_version, "store opened");
    Ok(())
}

/// Returns a pool of `size` stores opened as the CLI opens them, with the master key.
fn store_pool(context: &Arc<Context>, size: usize) -> StorePool {
    let context = Arc::clone(context);
    StorePool::new(size, move || Ok(context.open_store_with_key()?))
}

/// Returns the loader of the policy in force, read again for each request.
fn policy_source(context: &Arc<Context>) -> Arc<PolicySource> {
    let context = Arc::clone(context);
    Arc::new(move || {
        let policy = context.load_policy()?;
        Ok(PolicyInForce { file: context.policy_path(), policy })
    })
}

/// Returns the scheduled lifecycle run. It disposes of every record whose retention has
/// ended and that no hold protects, as `medconnect lifecycle run` does, with the same policy,
/// signing key, actor and ledger.
fn lifecycle_job(context: &Arc<Context>) -> Arc<LifecycleJob> {
    let context = Arc::clone(context);
    Arc::new(move || Ok(run_lifecycle(&context)?))
}

fn run_lifecycle(context: &Context) -> Result<LifecycleOutcome> {
    let mut store = context.open_store()?;
    let policy = context.load_policy()?;
    let signer = match context.load_signing_key() {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::warn!(
                cause = %format!("{error:#}"),
                "this run neither removes audit entries past retention nor signs a checkpoint"
            );
            None
        }
    };
    let options = RunOptions { actor: context.actor.clone(), ..RunOptions::default() };
    let report = medconnect_lifecycle::run_with_signer(
        &mut *store,
        &policy,
        as_of_or_now(None)?,
        &options,
        signer.as_ref().map(|key| key as &dyn AuditSigner),
        &mut |_, _| {},
    )?;
    crate::backup::sync_ledger_after_run(context, &*store)?;
    let skipped = report.tally.skipped.values().flat_map(|counts| counts.values()).sum();
    Ok(LifecycleOutcome {
        run_id: report.run_id,
        purged: report.tally.purged.values().sum(),
        receipts: report.tally.receipts,
        skipped,
    })
}

/// The signals that start a graceful shutdown, installed before the listener opens so that
/// a signal sent right after start is not lost.
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    fn install() -> Result<Self> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Completes on the first SIGINT or SIGTERM.
    async fn wait(mut self) {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutdown requested");
    }
}
