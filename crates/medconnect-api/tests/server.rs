//! The real server on 127.0.0.1 with a port the system picks and a generated development
//! certificate, driven over real TLS connections: routes, error bodies, TLS versions,
//! metrics, the lifecycle scheduler and graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use medconnect_api::testing::{HttpResponse, HttpsClient};
use medconnect_api::{
    BoxError, LifecycleJob, PolicyInForce, PolicySource, Server, ServerConfig, Services, StorePool,
    TlsSource,
};
use medconnect_crypto::SecretToken;
use medconnect_domain::clock::SystemClock;
use medconnect_domain::policy::Policy;
use medconnect_lifecycle::{RunReport, Tally};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{NewServiceToken, PgStore, Role, SqliteStore};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// Times a test polls the metrics for a scheduled run before it fails.
const POLLS: u32 = 300;
const POLL_PAUSE: Duration = Duration::from_millis(50);

/// A server running on its own runtime, stopped when dropped.
struct TestServer {
    addr: SocketAddr,
    cert: PathBuf,
    fingerprint: String,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    finished: Option<mpsc::Receiver<()>>,
    _tls_dir: TempDir,
}

/// What a test changes about the server it starts.
struct Setup {
    services: Services,
    configure: Box<dyn FnOnce(&mut ServerConfig)>,
}

impl Setup {
    /// Returns a setup whose store cannot be opened and whose policy is the built-in one.
    fn new() -> Self {
        Setup {
            services: Services {
                pool: StorePool::new(2, || Err("no store in this test".into())),
                policy: builtin_policy(),
                lifecycle: None,
                clock: Arc::new(SystemClock),
                audit_public_key: None,
            },
            configure: Box::new(|_| {}),
        }
    }

    /// Uses a new SQLite store with one service token, and returns the store and the
    /// token, for the routes that require authentication.
    fn with_service_token(self) -> (Self, TestStore, String) {
        let mut store = Backend::Sqlite.create(Box::new(SystemClock));
        let tenant = store.create_tenant("northwind", "Northwind", "test").expect("tenant");
        let token = SecretToken::generate().expect("token");
        let new = NewServiceToken {
            tenant: &tenant,
            name: "test",
            role: Role::TenantAdmin,
            token_hash: token.hash(),
            expires_at: None,
            client_cert: None,
        };
        store.create_service_token(&new, "test").expect("service token");
        (self.pool(pool_for(&store)), store, token.expose().to_owned())
    }

    fn pool(mut self, pool: StorePool) -> Self {
        self.services.pool = pool;
        self
    }

    fn policy(mut self, policy: Arc<PolicySource>) -> Self {
        self.services.policy = policy;
        self
    }

    fn lifecycle(mut self, job: Arc<LifecycleJob>, interval: Duration) -> Self {
        self.services.lifecycle = Some(job);
        self.configure = Box::new(move |config| config.lifecycle_interval = interval);
        self
    }

    fn start(self) -> TestServer {
        let tls_dir = tempfile::tempdir().expect("temporary folder for the certificate");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut config =
            ServerConfig::new(listen, TlsSource::Development { dir: tls_dir.path().to_owned() });
        config.shutdown_timeout = Duration::from_secs(20);
        (self.configure)(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime");
        let bound = runtime.block_on(Server::bind(config, self.services)).expect("server binds");
        let (stop, stopped) = oneshot::channel::<()>();
        let (done, finished) = mpsc::channel();
        let addr = bound.local_addr();
        let cert = bound.cert_path().to_owned();
        let fingerprint = bound.fingerprint().to_owned();
        runtime.spawn(async move {
            bound
                .run(async {
                    let _ = stopped.await;
                })
                .await;
            let _ = done.send(());
        });
        TestServer {
            addr,
            cert,
            fingerprint,
            runtime: Some(runtime),
            stop: Some(stop),
            finished: Some(finished),
            _tls_dir: tls_dir,
        }
    }
}

impl TestServer {
    fn client(&self) -> HttpsClient {
        HttpsClient::new(self.addr, &self.cert)
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.client().get(path)
    }

    fn metrics(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "{}", response.text());
        response.text()
    }

    /// Starts the graceful shutdown and returns the receiver that fires when `run` returns.
    fn begin_shutdown(&mut self) -> mpsc::Receiver<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.finished.take().expect("shutdown begins once")
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

fn builtin_policy() -> Arc<PolicySource> {
    Arc::new(|| {
        Ok(PolicyInForce { file: PathBuf::from("/etc/policy.toml"), policy: Policy::builtin() })
    })
}

/// Returns a pool that opens stores on the same database as `store`.
fn pool_for(store: &TestStore) -> StorePool {
    match (store.data_dir(), store.pg_config()) {
        (Some(dir), _) => StorePool::new(2, move || Ok(Box::new(SqliteStore::open(&dir)?))),
        (None, Some(config)) => {
            let config = config.clone();
            StorePool::new(2, move || Ok(Box::new(PgStore::open(&config)?)))
        }
        (None, None) => panic!("a test store is either SQLite or PostgreSQL"),
    }
}

/// Asserts the JSON error shape and returns the code.
fn error_code(response: &HttpResponse) -> String {
    assert_eq!(response.header("content-type"), Some("application/json"), "{}", response.text());
    let json = response.json();
    let error = json.get("error").unwrap_or_else(|| panic!("no error object: {json}"));
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
    assert_eq!(json.as_object().map(|o| o.len()), Some(1), "only `error` at the top: {json}");
    error["code"].as_str().unwrap_or_else(|| panic!("no code: {json}")).to_owned()
}

/// Returns the value of the first metric line that starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<String> {
    text.lines().find_map(|line| line.strip_prefix(prefix)).map(|value| value.trim().to_owned())
}

#[test]
fn healthz_answers_without_store() {
    let server = Setup::new().start();
    let response = server.get("/healthz");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), serde_json::json!({ "status": "ok" }));
}

fn readyz_with_store(backend: Backend) {
    let store = backend.create(Box::new(SystemClock));
    let server = Setup::new().pool(pool_for(&store)).start();
    let response = server.get("/readyz");
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    assert_eq!(json["status"], "ready", "{json}");
    assert_eq!(json["backend"], backend.name(), "{json}");
}

medconnect_store::backend_tests!(readyz_with_store);

#[test]
fn readyz_503_when_store_cannot_open() {
    let pool = StorePool::new(1, || Err("password authentication failed for hunter2".into()));
    let server = Setup::new().pool(pool).start();
    let response = server.get("/readyz");
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(error_code(&response), "store_unavailable");
    assert!(!response.text().contains("hunter2"), "{}", response.text());
}

#[test]
fn policy_returns_policy_in_force() {
    let (setup, _store, token) = Setup::new().with_service_token();
    let server = setup.start();
    let response = server.client().get_with_token("/v1/policy", &token);
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    let builtin = Policy::builtin();
    assert_eq!(json["version"], builtin.version(), "{json}");
    assert!(json.get("file").is_none(), "only operators see the file: {json}");
    assert_eq!(json["policy"], serde_json::to_value(&builtin).expect("policy to JSON"), "{json}");
}

/// A tenant's caller sees the defaults and its own overrides, never another tenant's.
#[test]
fn policy_hides_other_tenants_overrides() {
    let text = format!(
        "{}\n[tenants.northwind]\nphi_years = 8\n[tenants.prairie]\nphi_years = 10\n",
        medconnect_domain::policy::DEFAULT_POLICY_TOML
    );
    let policy = Policy::from_toml(&text).expect("policy");
    let source: Arc<PolicySource> = Arc::new(move || {
        Ok(PolicyInForce { file: PathBuf::from("/etc/policy.toml"), policy: policy.clone() })
    });
    let (setup, _store, token) = Setup::new().with_service_token();
    let server = setup.policy(source).start();
    let response = server.client().get_with_token("/v1/policy", &token);
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    let tenants = json["policy"]["tenants"].as_object().expect("tenants");
    assert_eq!(tenants.keys().collect::<Vec<_>>(), ["northwind"], "{json}");
    assert_eq!(tenants["northwind"]["phi_years"], 8, "{json}");
    assert!(!response.text().contains("prairie"), "{json}");
    assert!(!response.text().contains("/etc/policy.toml"), "{json}");
}

#[test]
fn policy_load_failure_is_json_500() {
    let failing: Arc<PolicySource> = Arc::new(|| Err("policy file /secret/path not found".into()));
    let (setup, _store, token) = Setup::new().with_service_token();
    let server = setup.policy(failing).start();
    let response = server.client().get_with_token("/v1/policy", &token);
    assert_eq!(response.status, 500, "{}", response.text());
    assert_eq!(error_code(&response), "internal");
    assert!(!response.text().contains("/secret/path"), "{}", response.text());
}

/// Successful responses and errors both carry the headers that keep responses out of caches
/// and off plain HTTP.
#[test]
fn security_headers_on_every_response() {
    let server = Setup::new().start();
    for path in ["/healthz", "/v1/no-such-route", "/v1/me"] {
        let response = server.get(path);
        assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
        assert_eq!(
            response.header("strict-transport-security"),
            Some("max-age=31536000"),
            "{path}"
        );
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"), "{path}");
    }
}

#[test]
fn unknown_route_is_json_404() {
    let server = Setup::new().start();
    for path in ["/nope", "/v1/nope", "/v1/policy/extra", "/healthz/"] {
        let response = server.get(path);
        assert_eq!(response.status, 404, "{path}: {}", response.text());
        assert_eq!(error_code(&response), "not_found", "{path}");
    }
}

#[test]
fn wrong_method_is_json_405_with_allow() {
    let server = Setup::new().start();
    let response = server.client().request("POST", "/healthz", b"{}").expect("request");
    assert_eq!(response.status, 405, "{}", response.text());
    assert_eq!(error_code(&response), "method_not_allowed");
    let allow = response.header("allow").unwrap_or_default();
    assert!(allow.contains("GET"), "allow: {allow:?}");
}

#[test]
fn oversized_body_is_json_413() {
    let server = Setup::new().start();
    let limit = medconnect_api::server::DEFAULT_BODY_LIMIT;
    let body = vec![b'x'; limit + 1];
    let response = server.client().request("GET", "/healthz", &body).expect("request");
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(error_code(&response), "payload_too_large");
    assert!(!response.text().contains("xxxx"), "the body is never echoed");
}

#[test]
fn body_at_limit_accepted() {
    let server = Setup::new().start();
    let limit = medconnect_api::server::DEFAULT_BODY_LIMIT;
    let body = vec![b'x'; limit];
    let response = server.client().request("GET", "/healthz", &body).expect("request");
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn configured_body_limit_applies() {
    let mut setup = Setup::new();
    setup.configure = Box::new(|config| config.body_limit = 16);
    let server = setup.start();
    let small = server.client().request("GET", "/healthz", &[b'x'; 16]).expect("request");
    assert_eq!(small.status, 200, "{}", small.text());
    let large = server.client().request("GET", "/healthz", &[b'x'; 17]).expect("request");
    assert_eq!(large.status, 413, "{}", large.text());
}

#[test]
fn metrics_count_requests_by_route_template() {
    let server = Setup::new().start();
    server.get("/healthz");
    server.get("/healthz");
    server.get("/no/such/route");
    server.get("/readyz");
    let text = server.metrics();
    let value =
        |labels: &str| metric(&text, &format!("medconnect_http_requests_total{{{labels}}} "));
    assert_eq!(
        value("route=\"/healthz\",method=\"GET\",status=\"200\""),
        Some("2".into()),
        "{text}"
    );
    assert_eq!(
        value("route=\"unmatched\",method=\"GET\",status=\"404\""),
        Some("1".into()),
        "{text}"
    );
    assert_eq!(
        value("route=\"/readyz\",method=\"GET\",status=\"503\""),
        Some("1".into()),
        "{text}"
    );
    let count =
        metric(&text, "medconnect_http_request_duration_seconds_count{route=\"/healthz\"} ");
    assert_eq!(count, Some("2".into()), "{text}");
    assert!(text.contains("# TYPE medconnect_http_request_duration_seconds histogram"), "{text}");
}

#[test]
fn metrics_content_type_is_prometheus_text() {
    let server = Setup::new().start();
    let response = server.get("/metrics");
    assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
}

#[test]
fn tls12_and_tls13_handshakes_succeed() {
    let server = Setup::new().start();
    let cases = [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ];
    for (offered, expected) in cases {
        let client = HttpsClient::with_versions(server.addr, &server.cert, &[offered]);
        let negotiated = client.handshake().unwrap_or_else(|error| panic!("{expected:?}: {error}"));
        assert_eq!(negotiated, expected);
        let response = client.get("/healthz");
        assert_eq!(response.status, 200, "{expected:?}");
    }
}

/// Runs `openssl s_client` against the server with extra flags and returns whether it
/// succeeded and what it printed.
fn s_client(server: &TestServer, flags: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &server.addr.to_string(), "-servername", "localhost"])
        .arg("-CAfile")
        .arg(&server.cert)
        .args(flags)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl command line tool runs (install the openssl package)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn openssl_tls12_and_tls13_accepted() {
    let server = Setup::new().start();
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(&server, &[flag]);
        assert!(ok, "{flag} failed:\n{text}");
        assert!(text.contains(&format!("New, {protocol}, Cipher is ")), "{flag}:\n{text}");
        assert!(text.contains("Verify return code: 0 (ok)"), "{flag}:\n{text}");
    }
}

#[test]
fn openssl_tls11_and_tls10_rejected() {
    let server = Setup::new().start();
    // Security level 0 lets OpenSSL 3 offer these versions. Without it the client gives up
    // before sending anything, and the test would prove nothing about the server. `-msg`
    // prints each handshake message, so the output shows the version offered and the alert.
    for (flag, version) in [("-tls1_1", "TLS 1.1"), ("-tls1", "TLS 1.0")] {
        let (ok, text) = s_client(&server, &[flag, "-cipher", "DEFAULT@SECLEVEL=0", "-msg"]);
        assert!(!ok, "{flag} was accepted:\n{text}");
        let offered = format!(">>> {version}, Handshake");
        assert!(
            text.contains(&offered) && text.contains("ClientHello"),
            "{flag} offered no {version} hello:\n{text}"
        );
        assert!(
            text.contains(", Alert") && text.contains("fatal"),
            "{flag} got no fatal alert:\n{text}"
        );
        assert!(text.contains("Cipher is (NONE)"), "{flag} negotiated a cipher:\n{text}");
    }
}

#[test]
fn fingerprint_matches_certificate_file() {
    let server = Setup::new().start();
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&server.cert)
        .output()
        .expect("the openssl command line tool runs");
    let text = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    let printed = text.trim().rsplit('=').next().unwrap_or_default().to_owned();
    assert_eq!(printed, server.fingerprint);
}

/// Returns a lifecycle job that counts its runs, and fails each one when `fail` is set.
fn counting_job(runs: Arc<AtomicU32>, fail: bool) -> Arc<LifecycleJob> {
    Arc::new(move |_actor| -> Result<RunReport, BoxError> {
        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
        if fail {
            return Err("the store is locked".into());
        }
        Ok(RunReport {
            run_id: format!("run-{run}"),
            as_of: chrono::Utc::now(),
            policy_version: "test".to_owned(),
            tally: Tally::default(),
            resumed_file_deletions: 0,
            audit_entries_disposed: 0,
            platform_sessions_purged: 0,
            audit_checkpoint_seq: None,
        })
    })
}

/// Polls the metrics until `name` reaches `expected`, failing after [`POLLS`] tries.
fn wait_for_metric(server: &TestServer, name: &str, expected: &str) -> String {
    for _ in 0..POLLS {
        let text = server.metrics();
        if metric(&text, &format!("{name} ")).as_deref() == Some(expected) {
            return text;
        }
        std::thread::sleep(POLL_PAUSE);
    }
    panic!("{name} never reached {expected}:\n{}", server.metrics());
}

#[test]
fn scheduler_runs_job_and_counts_runs() {
    let runs = Arc::new(AtomicU32::new(0));
    let job = counting_job(Arc::clone(&runs), false);
    let server = Setup::new().lifecycle(job, Duration::from_secs(3600)).start();
    let text = wait_for_metric(&server, "medconnect_lifecycle_runs_total", "1");
    assert_eq!(metric(&text, "medconnect_lifecycle_failures_total "), Some("0".into()), "{text}");
    assert_eq!(metric(&text, "medconnect_lifecycle_interval_seconds "), Some("3600".into()));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the first run starts at once, the next an hour later"
    );
}

#[test]
fn scheduler_counts_failed_runs() {
    let runs = Arc::new(AtomicU32::new(0));
    let job = counting_job(Arc::clone(&runs), true);
    let server = Setup::new().lifecycle(job, Duration::from_millis(20)).start();
    let text = wait_for_metric(&server, "medconnect_lifecycle_failures_total", "3");
    let total: u64 =
        metric(&text, "medconnect_lifecycle_runs_total ").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(total >= 3, "{text}");
}

#[test]
fn scheduler_off_at_interval_zero() {
    let runs = Arc::new(AtomicU32::new(0));
    let job = counting_job(Arc::clone(&runs), false);
    let server = Setup::new().lifecycle(job, Duration::ZERO).start();
    let text = server.metrics();
    assert_eq!(metric(&text, "medconnect_lifecycle_interval_seconds "), Some("0".into()), "{text}");
    assert_eq!(metric(&text, "medconnect_lifecycle_runs_total "), Some("0".into()), "{text}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Returns a policy source that blocks until released, to hold a request in flight.
fn blocking_policy(entered: mpsc::Sender<()>, release: mpsc::Receiver<()>) -> Arc<PolicySource> {
    let entered = Mutex::new(entered);
    let release = Mutex::new(release);
    Arc::new(move || {
        let _ = entered.lock().expect("lock").send(());
        let _ = release.lock().expect("lock").recv();
        Ok(PolicyInForce { file: PathBuf::from("policy.toml"), policy: Policy::builtin() })
    })
}

#[test]
fn shutdown_finishes_request_in_flight() {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let (setup, _store, token) = Setup::new().with_service_token();
    let mut server = setup.policy(blocking_policy(entered_tx, release_rx)).start();
    let client = server.client();
    let request = std::thread::spawn(move || client.get_with_token("/v1/policy", &token));
    entered.recv_timeout(Duration::from_secs(30)).expect("the request reaches the handler");

    let finished = server.begin_shutdown();
    assert!(
        finished.recv_timeout(Duration::from_millis(200)).is_err(),
        "the server waits for the request in flight"
    );
    release.send(()).expect("release the handler");
    let response = request.join().expect("request thread");
    assert_eq!(response.status, 200, "{}", response.text());
    finished.recv_timeout(Duration::from_secs(30)).expect("the server stops after the request");
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "no new connections after shutdown"
    );
}

#[test]
fn certificate_in_data_folder() {
    let server = Setup::new().start();
    let dir: &Path = server.cert.parent().expect("folder");
    assert!(dir.join(medconnect_api::tls::DEV_KEY_FILE).is_file());
    assert_eq!(
        server.cert.file_name().and_then(|n| n.to_str()),
        Some(medconnect_api::tls::DEV_CERT_FILE)
    );
}
