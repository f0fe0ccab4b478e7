//! End-to-end tests of `medconnect serve`: the real binary on 127.0.0.1 with a port the
//! system picks, its self-signed development certificate, real TLS connections, and SIGTERM.

#[allow(dead_code, reason = "the shared helpers serve several test files; this one uses some")]
mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::TestStore;
use medconnect_api::testing::{HttpResponse, HttpsClient, TestCa};
use medconnect_store::testing::{admin_url, database_url, postgres_available, unique_schema};
use medconnect_store::PgStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use serde_json::json;

/// How long a test waits for the server to log that it listens, or to exit, before failing.
/// Generous, because a debug build on a busy machine starts slowly.
const STARTUP_WAIT: Duration = Duration::from_secs(120);

/// Variables that would point the server elsewhere than the test's store and settings.
const ENVIRONMENT_REMOVED: [&str; 18] = [
    "MEDCONNECT_DATA_DIR",
    "MEDCONNECT_CONFIG",
    "MEDCONNECT_POLICY",
    "MEDCONNECT_LOG",
    "MEDCONNECT_LEDGER",
    "MEDCONNECT_MASTER_KEY",
    "MEDCONNECT_MASTER_KEY_FILE",
    "MEDCONNECT_AUDIT_SIGNING_KEY_FILE",
    "MEDCONNECT_DATABASE_URL",
    "MEDCONNECT_OPERATOR_DATABASE_URL",
    "MEDCONNECT_DATABASE_SCHEMA",
    "MEDCONNECT_LISTEN",
    "MEDCONNECT_TLS_CERT",
    "MEDCONNECT_TLS_KEY",
    "MEDCONNECT_CLIENT_CA",
    "MEDCONNECT_LIFECYCLE_INTERVAL",
    "MEDCONNECT_BODY_LIMIT",
    "MEDCONNECT_SESSION_TTL",
];

/// A running `medconnect serve` process, killed when dropped unless it already exited.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    /// Log lines read so far, and the channel that delivers the rest.
    log: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl ServeProcess {
    /// Starts `medconnect serve` on `data_dir` with `extra` arguments and waits for the line
    /// that names the address. Fails the test, with the log, when the server exits first.
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        ServeProcess::start_with(serve_command(data_dir, extra))
    }

    /// Starts `command` and waits for the line that names the address.
    fn start_with(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting medconnect serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let addr = loop {
            let Ok(line) = lines.recv_timeout(STARTUP_WAIT) else {
                let _ = child.kill();
                panic!("the server did not start listening:\n{}", log.join("\n"));
            };
            let addr = line.split("listening on https://").nth(1).map(str::trim).map(str::to_owned);
            log.push(line);
            if let Some(addr) = addr {
                break addr.parse().unwrap_or_else(|_| panic!("address in {}", log.join("\n")));
            }
        };
        ServeProcess { child, addr, log, lines }
    }

    fn client(&self, data_dir: &Path) -> HttpsClient {
        HttpsClient::new(self.addr, &dev_cert(data_dir))
    }

    /// Reads the log lines that have arrived so far.
    fn read_log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    /// Sends SIGTERM and returns the exit status and the whole log.
    fn terminate(mut self) -> (ExitStatus, String) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM failed");
        let status = self.wait_for_exit();
        while let Ok(line) = self.lines.recv_timeout(STARTUP_WAIT) {
            self.log.push(line);
        }
        (status, self.log.join("\n"))
    }

    /// Polls the child until it exits, failing the test after [`STARTUP_WAIT`].
    fn wait_for_exit(&mut self) -> ExitStatus {
        let polls = STARTUP_WAIT.as_millis() / 50;
        for _ in 0..polls {
            if let Some(status) = self.child.try_wait().expect("polling the server") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not exit after SIGTERM:\n{}", self.read_log());
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Returns the `medconnect serve` command for `data_dir` on port 0 with `extra` arguments,
/// with the developer's environment removed.
fn serve_command(data_dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_medconnect"));
    command.arg("--data-dir").arg(data_dir).args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
    for variable in ENVIRONMENT_REMOVED {
        command.env_remove(variable);
    }
    command
}

fn dev_cert(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("dev-cert.pem")
}

/// Returns the SHA-256 fingerprint of the first certificate in a PEM file, as the log
/// prints it.
fn fingerprint_of(cert: &Path) -> String {
    let der = CertificateDer::from_pem_file(cert).expect("reading the certificate");
    medconnect_api::tls::fingerprint(&der)
}

/// Returns the value of the first log field `name=` on a line that contains `message`.
fn log_field(log: &str, message: &str, name: &str) -> Option<String> {
    let line = log.lines().find(|line| line.contains(message))?;
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    Some(line[start..].split_whitespace().next().unwrap_or_default().to_owned())
}

/// Asserts the JSON error shape with `code`.
fn assert_json_error(response: &HttpResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let json = response.json();
    assert_eq!(json["error"]["code"], code, "{json}");
    assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
}

/// Polls /metrics until `line` appears, failing after about a minute.
fn wait_for_metrics_line(client: &HttpsClient, line: &str) -> String {
    for _ in 0..600 {
        let text = client.get("/metrics").text();
        if text.lines().any(|candidate| candidate == line) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("metrics never showed {line:?}:\n{}", client.get("/metrics").text());
}

/// Creates the tenant northwind and a tenant_admin service token of it, and returns the token.
fn service_token(store: &TestStore) -> String {
    store.run_ok(&["tenant", "create", "northwind"]);
    let args = ["token", "create", "--tenant", "northwind", "--name", "test", "--role"];
    let json = store.run_json(&[&args[..], &["tenant_admin", "--json"]].concat());
    json["token"].as_str().expect("token printed").to_owned()
}

#[test]
fn serve_answers_health_routes() {
    let store = TestStore::init(false);
    let server = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    let client = server.client(store.data_dir());

    let health = client.get("/healthz");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["status"], "ok");

    let ready = client.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["backend"], "sqlite");

    assert_json_error(&client.get("/v1/policy"), 401, "unauthorized");
    let token = service_token(&store);
    let policy = client.get_with_token("/v1/policy", &token);
    assert_eq!(policy.status, 200, "{}", policy.text());
    let mut cli = store.run_json(&["policy", "show", "--json"]);
    // A tenant's token gets the policy without the server's file path.
    cli.as_object_mut().expect("object").remove("file");
    assert_eq!(policy.json(), cli, "the API returns what `policy show --json` prints");

    let metrics = client.get("/metrics").text();
    let ready_line =
        "medconnect_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"200\"} 1";
    assert!(metrics.lines().any(|line| line == ready_line), "{metrics}");
    assert!(
        metrics.lines().any(|line| line == "medconnect_lifecycle_interval_seconds 0"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|line| line == "medconnect_lifecycle_runs_total 0"), "{metrics}");
}

#[test]
fn serve_errors_are_json() {
    let store = TestStore::init(false);
    let server = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    let client = server.client(store.data_dir());

    assert_json_error(&client.get("/v1/no-such-route"), 404, "not_found");
    let wrong_method = client.request("GET", "/v1/login", b"").expect("request");
    assert_json_error(&wrong_method, 405, "method_not_allowed");

    let secret = "Jane Roe 1962-03-01 ".repeat(4000);
    let oversized = client.request("POST", "/v1/login", secret.as_bytes()).expect("request");
    assert_json_error(&oversized, 413, "payload_too_large");
    assert!(!oversized.text().contains("Jane"), "the body is never echoed");
}

#[test]
fn serve_body_limit_flag_applies() {
    let store = TestStore::init(false);
    let server =
        ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0", "--body-limit", "10"]);
    let client = server.client(store.data_dir());
    let within = client.request("GET", "/healthz", b"0123456789").expect("request");
    assert_eq!(within.status, 200, "{}", within.text());
    let over = client.request("GET", "/healthz", b"0123456789A").expect("request");
    assert_json_error(&over, 413, "payload_too_large");
}

#[test]
fn serve_sigterm_exits_zero() {
    let store = TestStore::init(false);
    let server = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    assert_eq!(server.client(store.data_dir()).get("/healthz").status, 200);
    let addr = server.addr;
    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("signal=\"SIGTERM\""), "{log}");
    assert!(log.contains("server stopped"), "{log}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "the port is closed");
}

#[test]
fn serve_dev_certificate_created_then_reused() {
    let store = TestStore::init(false);
    let cert = dev_cert(store.data_dir());
    assert!(!cert.exists());

    let first = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    let (status, first_log) = first.terminate();
    assert_eq!(status.code(), Some(0), "{first_log}");
    assert!(first_log.contains("generated a self-signed development certificate"), "{first_log}");
    let logged = log_field(&first_log, "TLS certificate loaded", "sha256");
    assert_eq!(logged, Some(fingerprint_of(&cert)), "{first_log}");
    let key = store.data_dir().join("tls").join("dev-key.pem");
    let mode = std::fs::metadata(&key).expect("key file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let second = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    let (_, second_log) = second.terminate();
    assert!(!second_log.contains("generated a self-signed"), "{second_log}");
    let reused = log_field(&second_log, "TLS certificate loaded", "sha256");
    assert_eq!(reused, Some(fingerprint_of(&cert)), "{second_log}");
}

#[test]
fn serve_uses_given_certificate() {
    let store = TestStore::init(false);
    let other = tempfile::tempdir().expect("temporary folder");
    let source = medconnect_api::TlsSource::Development { dir: other.path().to_owned() };
    medconnect_api::tls::load(&source).expect("certificate for the test");
    let cert = other.path().join("dev-cert.pem");
    let key = other.path().join("dev-key.pem");
    let (cert_arg, key_arg) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));

    let mut server = ServeProcess::start(
        store.data_dir(),
        &["--lifecycle-interval", "0", "--tls-cert", cert_arg, "--tls-key", key_arg],
    );
    let client = HttpsClient::new(server.addr, &cert);
    assert_eq!(client.get("/healthz").status, 200);
    let log = server.read_log();
    assert_eq!(log_field(&log, "TLS certificate loaded", "sha256"), Some(fingerprint_of(&cert)));
    assert!(!dev_cert(store.data_dir()).exists(), "no development certificate is made");
}

#[test]
fn serve_client_ca_binds_storefront_token() {
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    let certificates = store.scratch_path("certificates");
    std::fs::create_dir_all(&certificates).expect("certificate folder");
    let ca = TestCa::create(&certificates, "storefronts");
    let storefront = ca.issue_client("storefront");
    let other = ca.issue_client("other");
    let cert_arg = storefront.cert.to_str().expect("utf-8");
    let args = ["token", "create", "--tenant", "northwind", "--name", "shop", "--json"];
    let json = store.run_json(&[&args[..], &["--client-cert", cert_arg]].concat());
    let token = json["token"].as_str().expect("token printed").to_owned();
    let token_id = json["token_id"].as_str().expect("token id").to_owned();

    let ca_arg = ca.cert.to_str().expect("utf-8");
    let server = ServeProcess::start(
        store.data_dir(),
        &["--lifecycle-interval", "0", "--client-ca", ca_arg],
    );
    let cert = dev_cert(store.data_dir());
    let bound = HttpsClient::with_client_certificate(server.addr, &cert, &storefront);
    let me = bound.get_with_token("/v1/me", &token);
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["role"], "storefront");

    let without = HttpsClient::new(server.addr, &cert).get_with_token("/v1/me", &token);
    assert_json_error(&without, 401, "unauthorized");
    let with_other = HttpsClient::with_client_certificate(server.addr, &cert, &other);
    assert_json_error(&with_other.get_with_token("/v1/me", &token), 401, "unauthorized");

    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("client certificates are verified"), "{log}");
    assert!(!log.contains("no --client-ca given"), "{log}");
    let rejections: Vec<&str> =
        log.lines().filter(|line| line.contains("storefront token rejected")).collect();
    assert_eq!(rejections.len(), 2, "{log}");
    assert!(rejections[0].contains("presented no client certificate"), "{log}");
    assert!(rejections[1].contains("other than the one the token is bound to"), "{log}");
    for line in &rejections {
        assert!(line.contains(&token_id), "the log names the token id: {line}");
        assert!(line.contains(&storefront.sha256.to_string()), "{line}");
    }
    assert!(log.contains(&other.sha256.to_string()), "the log names the presented one: {log}");
    assert!(!log.contains(&token), "the log never contains the token");
}

#[test]
fn serve_rejects_revoked_storefront_token() {
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    let certificates = store.scratch_path("certificates");
    std::fs::create_dir_all(&certificates).expect("certificate folder");
    let ca = TestCa::create(&certificates, "storefronts");
    let storefront = ca.issue_client("storefront");
    let cert_arg = storefront.cert.to_str().expect("utf-8");
    let args = ["token", "create", "--tenant", "northwind", "--name", "shop", "--json"];
    let json = store.run_json(&[&args[..], &["--client-cert", cert_arg]].concat());
    let token = json["token"].as_str().expect("token printed").to_owned();
    let token_id = json["token_id"].as_str().expect("token id").to_owned();

    let ca_arg = ca.cert.to_str().expect("utf-8");
    let server = ServeProcess::start(
        store.data_dir(),
        &["--lifecycle-interval", "0", "--client-ca", ca_arg],
    );
    let bound =
        HttpsClient::with_client_certificate(server.addr, &dev_cert(store.data_dir()), &storefront);
    let before = bound.get_with_token("/v1/me", &token);
    assert_eq!(before.status, 200, "{}", before.text());

    // The server reads the token's state on every request, so the revocation applies to the
    // next one.
    store.run_ok(&["token", "revoke", "--tenant", "northwind", &token_id]);
    let after = bound.get_with_token("/v1/me", &token);
    assert_json_error(&after, 401, "unauthorized");

    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains(&token), "the log never contains the token");
}

#[test]
fn serve_without_client_ca_says_so_once() {
    let store = TestStore::init(false);
    let server = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    assert_eq!(server.client(store.data_dir()).get("/healthz").status, 200);
    let (_, log) = server.terminate();
    let warnings = log.lines().filter(|line| line.contains("no --client-ca given")).count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains("storefront tokens cannot authenticate"), "{log}");
}

#[test]
fn serve_rejects_client_ca_without_certificate() {
    let store = TestStore::init(false);
    let not_pem = store.scratch_path("client-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let ca_arg = not_pem.to_str().expect("utf-8");
    let output =
        serve_command(store.data_dir(), &["--lifecycle-interval", "0", "--client-ca", ca_arg])
            .output()
            .expect("running medconnect serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("client CA file"), "{stderr}");
    assert!(stderr.contains("contains no PEM certificate"), "{stderr}");
    assert!(!stderr.contains("not a certificate"), "the file is not echoed: {stderr}");
}

#[test]
fn serve_rejects_certificate_without_key() {
    let store = TestStore::init(false);
    let output = serve_command(store.data_dir(), &["--tls-cert", "/nonexistent/cert.pem"])
        .output()
        .expect("running medconnect serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

#[test]
fn serve_without_store_fails_fast() {
    let store = TestStore::empty();
    let output = serve_command(store.data_dir(), &[]).output().expect("running medconnect serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("medconnect init"), "names the command that creates a store: {stderr}");
}

#[test]
fn serve_rejects_tls11() {
    let store = TestStore::init(false);
    let server = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &server.addr.to_string(), "-tls1_1", "-msg"])
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(Stdio::null())
        .output()
        .expect("the openssl command line tool runs (install the openssl package)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "TLS 1.1 accepted:\n{text}");
    assert!(text.contains(">>> TLS 1.1, Handshake"), "no TLS 1.1 hello offered:\n{text}");
    assert!(text.contains("Cipher is (NONE)"), "{text}");
}

#[test]
fn serve_runs_scheduled_lifecycle() {
    let store = TestStore::init(false);
    let server = ServeProcess::start(store.data_dir(), &[]);
    let client = server.client(store.data_dir());
    let metrics = wait_for_metrics_line(&client, "medconnect_lifecycle_runs_total 1");
    assert!(
        metrics.lines().any(|line| line == "medconnect_lifecycle_failures_total 0"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|line| line == "medconnect_lifecycle_interval_seconds 3600"));

    let runs = store.run_json(&["lifecycle", "status", "--json"]);
    let runs = runs.as_array().expect("a list of runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(!runs[0]["finished_at"].is_null(), "the scheduled run finished: {runs:?}");
    let verify = store.run_json(&["audit", "verify", "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
}

/// A PostgreSQL store chosen by DATA_DIR/medconnect.toml, its schema dropped at the end.
struct PostgresStore {
    store: TestStore,
    schema: String,
}

impl PostgresStore {
    fn init() -> Self {
        let store = TestStore::empty();
        let schema = unique_schema();
        std::fs::create_dir_all(store.data_dir()).expect("data dir");
        let config =
            format!("database_url = \"{}\"\ndatabase_schema = \"{schema}\"\n", database_url());
        std::fs::write(store.data_dir().join("medconnect.toml"), config).expect("medconnect.toml");
        let created = PostgresStore { store, schema };
        created.store.run_ok(&["init", "--admin-url", &admin_url()]);
        created
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Err(error) = PgStore::drop_schema(&admin_url(), &self.schema) {
            eprintln!("could not drop test schema {}: {error}", self.schema);
        }
    }
}

#[test]
fn serve_readyz_on_postgres() {
    if !postgres_available() {
        return;
    }
    let postgres = PostgresStore::init();
    let data_dir = postgres.store.data_dir();
    let server = ServeProcess::start(data_dir, &[]);
    let client = server.client(data_dir);

    let ready = client.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["backend"], "postgres");
    wait_for_metrics_line(&client, "medconnect_lifecycle_runs_total 1");
    let metrics = client.get("/metrics").text();
    assert!(
        metrics.lines().any(|line| line == "medconnect_lifecycle_failures_total 0"),
        "{metrics}"
    );

    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn serve_rejects_revoked_token_on_postgres() {
    if !postgres_available() {
        return;
    }
    let postgres = PostgresStore::init();
    let store = &postgres.store;
    let token = service_token(store);
    store.run_ok(&["tenant", "create", "prairie"]);
    let listed = store.run_json(&["token", "list", "--tenant", "northwind", "--json"]);
    let token_id = listed[0]["token_id"].as_str().expect("token id").to_owned();
    let server = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    let client = server.client(store.data_dir());
    assert_eq!(client.get_with_token("/v1/me", &token).status, 200);

    // Row-level security and the tenant id in the query both keep prairie from reaching it.
    let other_tenant = store.run(&["token", "revoke", "--tenant", "prairie", &token_id]);
    assert_eq!(other_tenant.status.code(), Some(1), "{other_tenant}");
    assert!(other_tenant.stderr.contains(&token_id), "{other_tenant}");
    assert_eq!(store.run_json(&["token", "list", "--tenant", "prairie", "--json"]), json!([]));
    assert_eq!(client.get_with_token("/v1/me", &token).status, 200, "still valid");

    store.run_ok(&["token", "revoke", "--tenant", "northwind", &token_id]);
    assert_json_error(&client.get_with_token("/v1/me", &token), 401, "unauthorized");
    let listed = store.run_json(&["token", "list", "--tenant", "northwind", "--json"]);
    assert_eq!(listed[0]["state"], "revoked", "{listed}");

    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
}

/// Runs `medconnect user create` with the password on standard input.
fn create_user(store: &TestStore, args: &[&str], password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_medconnect"))
        .arg("--data-dir")
        .arg(store.data_dir())
        .args(["user", "create"])
        .args(args)
        .env_remove("MEDCONNECT_DATA_DIR")
        .env_remove("MEDCONNECT_NEW_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting medconnect user create");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(format!("{password}\n").as_bytes()).expect("writing the password");
    drop(stdin);
    let output = child.wait_with_output().expect("waiting for user create");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn serve_login_keeps_secrets_out_of_log() {
    const PASSWORD: &str = "correct horse battery staple";
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    let user = ["--tenant", "northwind", "--username", "admin@northwind.test"];
    create_user(&store, &[&user[..], &["--role", "tenant_admin"]].concat(), PASSWORD);
    let mut command = serve_command(store.data_dir(), &["--lifecycle-interval", "0"]);
    command.env("MEDCONNECT_LOG", "debug").args(["--session-ttl", "30m"]);
    let server = ServeProcess::start_with(command);
    let client = server.client(store.data_dir());

    let wrong =
        r#"{"tenant":"northwind","username":"admin@northwind.test","password":"wrong password 1"}"#;
    let failed = client.request("POST", "/v1/login", wrong.as_bytes()).expect("login");
    assert_json_error(&failed, 401, "unauthorized");
    let right = format!(
        r#"{{"tenant":"northwind","username":"admin@northwind.test","password":"{PASSWORD}"}}"#
    );
    let login = client.request("POST", "/v1/login", right.as_bytes()).expect("login");
    assert_eq!(login.status, 200, "{}", login.text());
    let json = login.json();
    let token = json["token"].as_str().expect("token").to_owned();
    let cookie = login.header("set-cookie").expect("cookie");
    assert!(cookie.contains("Max-Age=1800"), "--session-ttl sets the cookie's age: {cookie}");
    let me = client.get_with_token("/v1/me", &token);
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["tenant"]["slug"], "northwind");
    let authorization = format!("Bearer {token}");
    let logout = client
        .request_with("POST", "/v1/logout", &[("Authorization", &authorization)], b"")
        .expect("logout");
    assert_eq!(logout.status, 204, "{}", logout.text());
    assert_json_error(&client.get_with_token("/v1/me", &token), 401, "unauthorized");

    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("login succeeded"), "{log}");
    let hash = medconnect_crypto::TokenHash::of_token(&token).expect("hash").to_hex();
    let secrets = [PASSWORD, "wrong password 1", token.as_str(), hash.as_str(), "$argon2id$"];
    for secret in secrets {
        assert!(!log.contains(secret), "a secret is in the server log:\n{log}");
    }
    assert!(!log.contains("admin@northwind.test"), "the username is in the server log:\n{log}");
    let audit: String = store.audit_entries().iter().map(|(_, _, body)| body.to_string()).collect();
    for secret in secrets {
        assert!(!audit.contains(secret), "a secret is in the audit log:\n{audit}");
    }
}

/// Sends a login to tenant northwind and returns the response.
fn login(client: &HttpsClient, username: &str, password: &str) -> HttpResponse {
    let body =
        format!(r#"{{"tenant":"northwind","username":"{username}","password":"{password}"}}"#);
    client.request("POST", "/v1/login", body.as_bytes()).expect("login")
}

#[test]
fn serve_rejects_sessions_of_disabled_user() {
    const PASSWORD: &str = "correct horse battery staple";
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    let user = ["--tenant", "northwind", "--username", "doctor@northwind.test"];
    create_user(&store, &[&user[..], &["--role", "provider"]].concat(), PASSWORD);
    let server = ServeProcess::start(store.data_dir(), &["--lifecycle-interval", "0"]);
    let client = server.client(store.data_dir());
    let session = login(&client, "doctor@northwind.test", PASSWORD);
    assert_eq!(session.status, 200, "{}", session.text());
    let token = session.json()["token"].as_str().expect("token").to_owned();
    assert_eq!(client.get_with_token("/v1/me", &token).status, 200);

    store.run_ok(&[&["user", "disable"], &user[..]].concat());
    assert_json_error(&client.get_with_token("/v1/me", &token), 401, "unauthorized");
    let rejected = login(&client, "doctor@northwind.test", PASSWORD);
    assert_json_error(&rejected, 401, "unauthorized");

    // Disabling ended the sessions, so enabling the account brings none of them back: a
    // stolen token stays useless. A new login works.
    store.run_ok(&[&["user", "enable"], &user[..]].concat());
    assert_json_error(&client.get_with_token("/v1/me", &token), 401, "unauthorized");
    let again = login(&client, "doctor@northwind.test", PASSWORD);
    assert_eq!(again.status, 200, "{}", again.text());

    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("doctor@northwind.test"), "the username is in the server log:\n{log}");
}

/// Sends the requests that read and touch patient data, as a provider of a tenant with the
/// Synthea sample, and returns how many patient reads succeeded.
fn exercise_patient_routes(client: &HttpsClient, token: &str) -> usize {
    let list = client.get_with_token("/v1/patients", token);
    assert_eq!(list.status, 200, "{}", list.text());
    let ids: Vec<String> = list.json()["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .map(|link| link["patient_id"].as_str().expect("patient id").to_owned())
        .collect();
    let mut read = 0;
    for id in ids.iter().take(20) {
        let response = client.get_with_token(&format!("/v1/patients/{id}"), token);
        assert_eq!(response.status, 200, "{}", response.text());
        read += 1;
    }
    for id in ids.iter().take(3) {
        exercise_record_routes(client, token, id);
    }
    let missing = client.get_with_token("/v1/patients/3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab", token);
    assert_eq!(missing.status, 404, "{}", missing.text());
    let invalid = client.get_with_token("/v1/patients/Alice368%20Gleason633", token);
    assert_eq!(invalid.status, 400, "{}", invalid.text());
    read
}

/// Writes and reads back one patient's encounter, consultation, prescription, intake form and
/// ID photo. The free text carries the patient's own name, email and street address, as a
/// provider's note might, so the log search that follows finds any route that logs it.
fn exercise_record_routes(client: &HttpsClient, token: &str, id: &str) {
    let profile =
        client.get_with_token(&format!("/v1/patients/{id}"), token).json()["profile"].clone();
    let text = |field: &str| profile[field].as_str().unwrap_or("none").to_owned();
    let note = format!(
        "{} {} asked to be reached at {} or {}",
        text("given_name"),
        text("family_name"),
        text("email"),
        text("address_line")
    );
    let authorization = format!("Bearer {token}");
    let post = |path: &str, body: &[u8], content_type: &str| {
        let headers = [("Authorization", authorization.as_str()), ("Content-Type", content_type)];
        let response = client
            .request_with("POST", &format!("/v1/patients/{id}/{path}"), &headers, body)
            .unwrap_or_else(|error| panic!("POST {path}: {error}"));
        assert_eq!(response.status, 201, "POST {path}: {}", response.text());
        response.json()
    };
    let json = |value: serde_json::Value| value.to_string().into_bytes();
    post(
        "encounters",
        &json(serde_json::json!({"at": "2024-02-29T12:00:00Z", "encounter_class": "virtual"})),
        "application/json",
    );
    let consultation = post(
        "consultations",
        &json(serde_json::json!({
            "status": "completed",
            "encounter_class": "virtual",
            "reason": note,
            "notes": note,
            "started_at": "2024-03-01T09:00:00+01:00",
        })),
        "application/json",
    );
    let prescription = serde_json::json!({
        "code": "308182",
        "description": note,
        "dispenses": 1,
        "controlled": false,
        "started_at": "2024-03-01T09:30:00Z",
        "consultation_id": consultation["consultation_id"],
    });
    post("prescriptions", &json(prescription), "application/json");
    let form = serde_json::json!({"form": "medical-history", "answers": {"history": note}});
    post("intake-forms", &json(form), "application/json");
    let png =
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, b'I', b'H', b'D', b'R'];
    let photo = post("id-photos", &png, "image/png");

    for path in ["consultations", "prescriptions", "intake-forms", "id-photos"] {
        let response = client.get_with_token(&format!("/v1/patients/{id}/{path}"), token);
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    }
    let consultations = client.get_with_token(&format!("/v1/patients/{id}/consultations"), token);
    let stored = &consultations.json()["consultations"];
    assert!(
        stored.as_array().expect("consultations").iter().any(|c| c["reason"] == note.as_str()),
        "the consultation's reason reads back decrypted"
    );
    let photo_id = photo["id"].as_str().expect("photo id");
    let image = client.get_with_token(&format!("/v1/patients/{id}/id-photos/{photo_id}"), token);
    assert_eq!(image.status, 200);
    assert_eq!(image.body, png, "the photo reads back byte for byte");
}

#[test]
fn serve_log_has_no_patient_phi() {
    const PASSWORD: &str = "correct horse battery staple";
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    let synthea = common::synthea_dir();
    let import = store.run_ok(&[
        "import",
        "synthea",
        synthea.to_str().expect("UTF-8 path"),
        "--tenant",
        "northwind",
    ]);
    let user = ["--tenant", "northwind", "--username", "provider@northwind.test"];
    create_user(&store, &[&user[..], &["--role", "provider"]].concat(), PASSWORD);
    let mut command = serve_command(store.data_dir(), &["--lifecycle-interval", "0"]);
    command.env("MEDCONNECT_LOG", "trace");
    let server = ServeProcess::start_with(command);
    let client = server.client(store.data_dir());
    let login = format!(
        r#"{{"tenant":"northwind","username":"provider@northwind.test","password":"{PASSWORD}"}}"#
    );
    let response = client.request("POST", "/v1/login", login.as_bytes()).expect("login");
    assert_eq!(response.status, 200, "{}", response.text());
    let token = response.json()["token"].as_str().expect("token").to_owned();

    let read = exercise_patient_routes(&client, &token);
    assert_eq!(read, 20);

    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "exit status");
    assert!(log.lines().count() > 20, "the trace log holds the requests");
    let corpus = medconnect_api::testing::phi::PhiCorpus::synthea_sample();
    let audit: Vec<_> = store
        .audit_entries()
        .into_iter()
        .map(|(seq, hash, body)| medconnect_store::AuditRecord { seq, hash, body })
        .collect();
    let output = format!("{}\n{}\n{log}", import.stdout, import.stderr);
    let findings = corpus.scan(&output, &audit);
    assert!(findings.is_empty(), "PHI in the import output, server log or audit log: {findings:?}");
}
