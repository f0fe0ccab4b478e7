//! The floor of the patient read benchmark (`bench/api.sh`): a bare HTTPS server that serves
//! `GET /floor/patients/{id}` with the same data as `GET /v1/patients/{id}` of
//! `medconnect serve`, without authentication, audit entry or the server's middleware.
//!
//! It uses the same parts as the real server wherever the request does the same work. These
//! are the rustls configuration of [`medconnect_api::tls::load`], HTTP/1.1 through hyper, and
//! a [`StorePool`] with one SQLite connection per core on tokio's blocking threads. The reads
//! are the store's unaudited reads of the link (with its counts) and of the core profile,
//! which decrypt each field as the audited read does. It leaves out what the benchmark
//! measures: the token lookup, the role checks, the tenant lookup of each request (the floor
//! loads its tenant once at start), the write transaction with its hash-chained audit entry,
//! the request metrics and the JSON error layer.
//!
//! Built only with the `bench-floor` feature, so `cargo test` does not build it:
//!
//! ```sh
//! cargo build --release -p medconnect-api --example bench_floor --features bench-floor
//! target/release/examples/bench_floor DATA_DIR TENANT_SLUG 127.0.0.1:PORT
//! ```
//!
//! The store is opened with `DATA_DIR/keys/master.key`, and the development certificate
//! of `DATA_DIR/tls` is used, so start `medconnect serve` on the same data directory once
//! before this.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use medconnect_api::tls::{self, TlsSource};
use medconnect_api::{BoxError, StorePool};
use medconnect_crypto::{KeyFileProvider, KeyProvider as _};
use medconnect_domain::model::Tenant;
use medconnect_domain::PatientId;
use medconnect_store::{PatientRecord, SqliteStore, Store as _, StoreError};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Clone)]
struct FloorState {
    pool: StorePool,
    tenant: Tenant,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, tenant, listen] = args.as_slice() else {
        eprintln!("usage: bench_floor DATA_DIR TENANT_SLUG LISTEN_ADDR (such as 127.0.0.1:9443)");
        return ExitCode::from(2);
    };
    match run(Path::new(data_dir), tenant, listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_floor: {}", medconnect_api::error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

fn run(data_dir: &Path, tenant_slug: &str, listen: &str) -> Result<(), BoxError> {
    let listen: SocketAddr = listen.parse()?;
    let tenant = open_store(data_dir)?.tenant_by_slug(tenant_slug)?;
    let loaded = tls::load(&TlsSource::Development { dir: data_dir.join("tls") })?;
    // The same worker count and pool size as `medconnect serve`: one per core.
    let workers = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
    let dir = data_dir.to_owned();
    let pool = StorePool::new(workers, move || Ok(open_store(&dir)?));
    let router = Router::new()
        .route("/floor/patients/{id}", get(read_patient))
        .with_state(FloorState { pool, tenant });
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    runtime.block_on(serve(listen, TlsAcceptor::from(loaded.config), router))
}

/// Opens the SQLite store of `data_dir` with the master key in `DATA_DIR/keys/master.key`.
fn open_store(data_dir: &Path) -> Result<Box<SqliteStore>, BoxError> {
    let mut store = SqliteStore::open(data_dir)?;
    let key_file: PathBuf = data_dir.join("keys").join("master.key");
    store.set_master_key(KeyFileProvider::new(key_file).master_key()?)?;
    Ok(Box::new(store))
}

/// Accepts connections until the process is killed, each served on its own task.
async fn serve(listen: SocketAddr, acceptor: TlsAcceptor, router: Router) -> Result<(), BoxError> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("bench_floor: listening on https://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            let _ = connection.await;
        });
    }
}

/// Returns the link with its counts and the decrypted profile, as `GET /v1/patients/{id}`
/// does, with the same two store reads but outside any transaction.
async fn read_patient(
    State(state): State<FloorState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<PatientRecord>, StatusCode> {
    let patient = PatientId::parse(&id).map_err(|_| StatusCode::BAD_REQUEST)?;
    let tenant = state.tenant.clone();
    let read = state
        .pool
        .run(move |store| -> Result<PatientRecord, StoreError> {
            let link = store.patient_link(&tenant, patient)?;
            let profile = store.patient_profile(&tenant, patient)?;
            Ok(PatientRecord { link, profile })
        })
        .await;
    match read {
        Ok(Ok(record)) => Ok(Json(record)),
        Ok(Err(StoreError::PatientNotFound { .. })) => Err(StatusCode::NOT_FOUND),
        Ok(Err(_)) | Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
    }
}
