//! The listener: accepts TCP connections, completes the TLS handshake, serves HTTP/1.1 with
//! the router, runs the lifecycle scheduler, and shuts down gracefully.
//!
//! On shutdown the server stops accepting, lets each open connection finish the request it is
//! serving (idle keep-alive connections close at once), stops the scheduler after the run
//! under way, and gives all of that at most [`ServerConfig::shutdown_timeout`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower_http::add_extension::AddExtension;

use crate::limiter::{LoginLimiter, LoginLimits};
use crate::login::{ClientAddr, DEFAULT_SESSION_TTL};
use crate::metrics::Metrics;
use crate::pool::StorePool;
use crate::reads::PatientReads;
use crate::routes::{self, AppState, AuditKeySource, PolicySource};
use crate::scheduler::{self, LifecycleJob, LifecycleRunner};
use crate::tls::{self, ClientCertificate, TlsError, TlsSource};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default request body limit of every route, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Settings of the listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: TlsSource,
    /// PEM file of the CAs that issue client certificates. With it the server requests a
    /// client certificate, and storefront tokens can authenticate. None: no client
    /// certificates, so every storefront token gets 401.
    pub client_ca: Option<std::path::PathBuf>,
    /// Largest request body of every route but the ID photo upload, which accepts
    /// [`crate::id_photos::ID_PHOTO_BODY_LIMIT`], in bytes.
    pub body_limit: usize,
    /// Time between scheduled lifecycle runs; zero turns the scheduler off.
    pub lifecycle_interval: Duration,
    /// How long shutdown waits for requests in flight and a lifecycle run under way.
    pub shutdown_timeout: Duration,
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take to send the request headers.
    pub header_timeout: Duration,
    /// How long `/readyz` waits for a store.
    pub readiness_timeout: Duration,
    /// Connections served at once; further ones are closed on accept.
    pub max_connections: usize,
    /// Lifetime of a session that `POST /v1/login` starts.
    pub session_ttl: Duration,
    /// Lockout after failed logins.
    pub login_limits: LoginLimits,
    /// Batches of patient reads that run at once (see [`crate::reads`]). One suits SQLite,
    /// which lets one transaction write at a time; PostgreSQL runs reads in parallel.
    pub concurrent_read_batches: usize,
}

impl ServerConfig {
    /// Creates a configuration with the defaults for everything but the address and the
    /// certificate.
    pub fn new(listen: SocketAddr, tls: TlsSource) -> Self {
        ServerConfig {
            listen,
            tls,
            client_ca: None,
            body_limit: DEFAULT_BODY_LIMIT,
            lifecycle_interval: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            readiness_timeout: Duration::from_secs(5),
            max_connections: 1024,
            session_ttl: DEFAULT_SESSION_TTL,
            login_limits: LoginLimits::default(),
            concurrent_read_batches: 1,
        }
    }
}

/// Steps the binary supplies: opening stores (inside the pool), loading the policy, the
/// lifecycle job, and the clock.
pub struct Services {
    pub pool: StorePool,
    pub policy: Arc<PolicySource>,
    /// Dates sessions and decides whether tokens have expired: the system clock in production.
    pub clock: Arc<dyn medconnect_domain::clock::Clock>,
    /// The job the scheduler and `POST /v1/lifecycle/run` run, or None where another process
    /// runs the lifecycle.
    pub lifecycle: Option<Arc<LifecycleJob>>,
    /// Loads the public key that audit checkpoints must be signed with, for
    /// `GET /v1/audit/verify`, or None when no key is configured.
    pub audit_public_key: Option<Arc<AuditKeySource>>,
}

/// Errors starting the server. Errors after start are logged, not returned.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate or key could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("listening on {address} failed: {source}; pick another address with --listen")]
    Bind { address: SocketAddr, source: std::io::Error },
}

/// Entry point: [`Server::bind`] loads the certificate and binds the address.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Loads or creates the certificate and binds the listen address. Call it inside a tokio
    /// runtime.
    pub async fn bind(
        config: ServerConfig,
        services: Services,
    ) -> Result<BoundServer, ServerError> {
        let loaded = tls::load_with_client_ca(&config.tls, config.client_ca.as_deref())?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind { address: config.listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { address: config.listen, source })?;
        Ok(BoundServer {
            listener,
            local_addr,
            acceptor: TlsAcceptor::from(loaded.config),
            cert_path: loaded.cert_path,
            fingerprint: loaded.fingerprint,
            generated: loaded.generated,
            client_cas: loaded.client_cas,
            metrics: Metrics::new(),
            config,
            services,
        })
    }
}

/// A server with its certificate loaded and its address bound, ready to run.
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    acceptor: TlsAcceptor,
    cert_path: std::path::PathBuf,
    fingerprint: String,
    generated: bool,
    client_cas: usize,
    metrics: Metrics,
    config: ServerConfig,
    services: Services,
}

impl BoundServer {
    /// Returns the address the listener is bound to, with the port the system chose for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the certificate file in use.
    pub fn cert_path(&self) -> &std::path::Path {
        &self.cert_path
    }

    /// SHA-256 fingerprint of the server certificate, lowercase hex pairs joined by `:`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Returns whether a development certificate was generated on this start.
    pub fn generated_certificate(&self) -> bool {
        self.generated
    }

    /// Returns the number of CA certificates that client certificates are verified against,
    /// 0 when the server requests no client certificate.
    pub fn client_ca_certificates(&self) -> usize {
        self.client_cas
    }

    /// Serves until `shutdown` completes, then shuts down gracefully within the shutdown
    /// timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let BoundServer { listener, acceptor, metrics, config, services, .. } = self;
        let lifecycle =
            services.lifecycle.map(|job| Arc::new(LifecycleRunner::new(job, metrics.clone())));
        let state = AppState {
            pool: services.pool.clone(),
            metrics: metrics.clone(),
            policy: services.policy,
            readiness_timeout: config.readiness_timeout,
            clock: services.clock,
            session_ttl: config.session_ttl,
            limiter: Arc::new(LoginLimiter::new(config.login_limits)),
            reads: PatientReads::start(services.pool.clone(), config.concurrent_read_batches),
            lifecycle: lifecycle.clone(),
            audit_public_key: services.audit_public_key,
        };
        let router = routes::router(state, config.body_limit);
        let (stop_scheduler, scheduler_stopping) = watch::channel(false);
        let scheduler = start_scheduler(&config, lifecycle, &metrics, scheduler_stopping);
        let connections = Connections {
            acceptor,
            router,
            graceful: GracefulShutdown::new(),
            slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
            handshake_timeout: config.handshake_timeout,
            header_timeout: config.header_timeout,
        };

        let graceful = accept_until(listener, connections, shutdown).await;
        tracing::info!(connections = graceful.count(), "shutting down: no new connections");
        let _ = stop_scheduler.send(true);
        let drained = async {
            graceful.shutdown().await;
            if let Some(scheduler) = scheduler {
                let _ = scheduler.await;
            }
        };
        if tokio::time::timeout(config.shutdown_timeout, drained).await.is_err() {
            tracing::warn!(
                timeout_s = config.shutdown_timeout.as_secs(),
                "shutdown timed out: open requests are cut off, and a lifecycle run under way \
                 stops with the process; its committed disposals stay, and the next run \
                 resumes the rest"
            );
        }
        services.pool.close().await;
        tracing::info!("server stopped");
    }
}

/// Starts the scheduler unless the interval is zero or there is no job.
fn start_scheduler(
    config: &ServerConfig,
    runner: Option<Arc<LifecycleRunner>>,
    metrics: &Metrics,
    stopping: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let interval = config.lifecycle_interval;
    let runner = runner.filter(|_| !interval.is_zero());
    let Some(runner) = runner else {
        metrics.set_lifecycle_interval(Duration::ZERO);
        tracing::info!("lifecycle scheduler off: run `medconnect lifecycle run` elsewhere");
        return None;
    };
    metrics.set_lifecycle_interval(interval);
    tracing::info!(interval_s = interval.as_secs(), "lifecycle scheduler on");
    let task = scheduler::run_schedule(runner, interval, stopping);
    Some(tokio::spawn(task))
}

/// Shared parts that each accepted connection uses.
struct Connections {
    acceptor: TlsAcceptor,
    router: axum::Router,
    graceful: GracefulShutdown,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    header_timeout: Duration,
}

/// Accepts connections until `shutdown` completes, then returns the tracker of the
/// connections still open.
async fn accept_until(
    listener: TcpListener,
    connections: Connections,
    shutdown: impl Future<Output = ()> + Send,
) -> GracefulShutdown {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return connections.graceful,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => connections.spawn(stream, peer),
            Err(error) => {
                // Running out of file descriptors fails every accept until a connection
                // closes, so the loop pauses instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Connections {
    /// Serves one connection on its own task, or closes it when every slot is taken.
    fn spawn(&self, stream: TcpStream, peer: SocketAddr) {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached: closing a new connection");
            return;
        };
        let acceptor = self.acceptor.clone();
        let router = self.router.clone();
        let watcher = self.graceful.watcher();
        let (handshake_timeout, header_timeout) = (self.handshake_timeout, self.header_timeout);
        tokio::spawn(async move {
            let _slot: OwnedSemaphorePermit = slot;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client_certificate = ClientCertificate::of_connection(tls.get_ref().1);
            if let Some(certificate) = client_certificate {
                tracing::debug!(%peer, sha256 = %certificate.sha256, "client certificate verified");
            }
            // Each request of the connection carries the client's address, for the login
            // lockout, and the client certificate, which storefront tokens are bound to.
            let service = TowerToHyperService::new(AddExtension::new(
                AddExtension::new(router, ClientAddr(peer)),
                client_certificate,
            ));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}
