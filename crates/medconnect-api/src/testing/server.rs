//! A server on a test store, on 127.0.0.1 with a development certificate, for integration
//! tests that talk to it over real TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medconnect_crypto::MasterKey;
use medconnect_domain::clock::{Clock, SystemClock};
use medconnect_domain::policy::Policy;
use medconnect_store::testing::TestStore;
use medconnect_store::{PgStore, SqliteStore, Store};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::HttpsClient;
use crate::{
    AuditKeySource, LifecycleJob, PolicyInForce, Server, ServerConfig, Services, StorePool,
    TlsSource,
};

/// A running server. Dropping it stops the server and waits up to five seconds for it.
pub struct TestServer {
    addr: SocketAddr,
    cert: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    _tls_dir: TempDir,
}

/// Settings of a [`TestServer`] beyond its store.
pub struct TestServerOptions {
    /// Bytes of master key version 1, which every store of the pool opens with.
    pub master_key: [u8; 32],
    pub policy: Policy,
    pub clock: Arc<dyn Clock>,
    /// The job that `POST /v1/lifecycle/run` runs, or None for a server without one.
    pub lifecycle: Option<Arc<LifecycleJob>>,
    /// The loader of the public key that `GET /v1/audit/verify` checks checkpoint signatures
    /// with, or None for a server without one.
    pub audit_public_key: Option<Arc<AuditKeySource>>,
    /// Adjusts the server configuration before it binds.
    pub configure: Box<dyn FnOnce(&mut ServerConfig)>,
}

impl TestServerOptions {
    /// Returns options with this master key, the built-in policy, the system clock, the
    /// lifecycle scheduler off, and neither a lifecycle job nor an audit public key.
    pub fn new(master_key: [u8; 32]) -> Self {
        TestServerOptions {
            master_key,
            policy: Policy::builtin(),
            clock: Arc::new(SystemClock),
            lifecycle: None,
            audit_public_key: None,
            configure: Box::new(|_| {}),
        }
    }
}

impl TestServer {
    /// Starts a server whose pool opens `store` again with the master key, as
    /// `medconnect serve` does.
    pub fn start(store: &TestStore, options: TestServerOptions) -> Self {
        let tls_dir = tempfile::tempdir().expect("temporary folder for the certificate");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut config =
            ServerConfig::new(listen, TlsSource::Development { dir: tls_dir.path().to_owned() });
        config.lifecycle_interval = Duration::ZERO;
        (options.configure)(&mut config);
        let policy = options.policy;
        let services = Services {
            pool: pool_for(store, options.master_key, Arc::clone(&options.clock)),
            policy: Arc::new(move || {
                Ok(PolicyInForce { file: PathBuf::from("policy.toml"), policy: policy.clone() })
            }),
            lifecycle: options.lifecycle,
            clock: options.clock,
            audit_public_key: options.audit_public_key,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime");
        let bound = runtime.block_on(Server::bind(config, services)).expect("server binds");
        let addr = bound.local_addr();
        let cert = bound.cert_path().to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        runtime.spawn(bound.run(async {
            let _ = stopped.await;
        }));
        TestServer { addr, cert, runtime: Some(runtime), stop: Some(stop), _tls_dir: tls_dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the server's certificate file, which clients trust.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// Returns a client that trusts the server's certificate.
    pub fn client(&self) -> HttpsClient {
        HttpsClient::new(self.addr, &self.cert)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Returns a pool of two stores opened on the test store with master key version 1 of these
/// bytes and `clock`.
pub fn pool_for(store: &TestStore, master_key: [u8; 32], clock: Arc<dyn Clock>) -> StorePool {
    let shared = move |mut store: Box<dyn Store + Send>| -> Result<_, crate::BoxError> {
        store.set_master_keys(MasterKey::from_bytes(1, &master_key), None)?;
        store.set_clock(Box::new(SharedClock(Arc::clone(&clock))));
        Ok(store)
    };
    match (store.data_dir(), store.pg_config()) {
        (Some(dir), _) => StorePool::new(2, move || shared(Box::new(SqliteStore::open(&dir)?))),
        (None, Some(config)) => {
            let config = config.clone();
            StorePool::new(2, move || shared(Box::new(PgStore::open(&config)?)))
        }
        (None, None) => panic!("a test store is either SQLite or PostgreSQL"),
    }
}

/// A clock shared by the server and its stores.
struct SharedClock(Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.now()
    }
}
