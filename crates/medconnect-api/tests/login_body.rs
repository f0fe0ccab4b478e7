//! Invalid request bodies of `POST /v1/login`: not JSON, the wrong content type, a missing or
//! unknown field, or a value of the wrong type. Each gets a 4xx JSON error that names the
//! field and never repeats a value. None reaches the store or the login limiter. The tests
//! run against the real server on 127.0.0.1 with a real SQLite store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use medconnect_api::testing::{HttpResponse, HttpsClient};
use medconnect_api::{
    LoginLimits, PolicyInForce, Server, ServerConfig, Services, StorePool, TlsSource,
};
use medconnect_crypto::hash_password;
use medconnect_domain::clock::SystemClock;
use medconnect_domain::policy::Policy;
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{NewUser, Role, SqliteStore};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery staple";
const USERNAME: &str = "admin@northwind.test";

/// A value that must never appear in a response, as PHI pasted into the wrong field would.
const SENSITIVE: &str = "Jane Roe 1970-01-31";

struct Fixture {
    store: TestStore,
    addr: SocketAddr,
    cert: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    _tls_dir: TempDir,
}

impl Fixture {
    /// Starts a server on a new SQLite store with one tenant admin. The account locks after
    /// two failed logins, so a rejected body that counted as a failure would show.
    fn start() -> Self {
        let mut store = Backend::Sqlite.create(Box::new(SystemClock));
        let northwind = store.create_tenant("northwind", "Northwind", "test").expect("tenant");
        let hash = hash_password(PASSWORD).expect("hash");
        let new = NewUser {
            tenant: Some(&northwind),
            username: USERNAME,
            role: Role::TenantAdmin,
            password_hash: &hash,
            patient: None,
        };
        store.create_user(&new, "test").expect("user");

        let dir = store.data_dir().expect("a SQLite store has a data directory");
        let services = Services {
            pool: StorePool::new(2, move || Ok(Box::new(SqliteStore::open(&dir)?))),
            policy: Arc::new(|| {
                Ok(PolicyInForce {
                    file: PathBuf::from("/etc/policy.toml"),
                    policy: Policy::builtin(),
                })
            }),
            lifecycle: None,
            audit_public_key: None,
            clock: Arc::new(SystemClock),
        };

        let tls_dir = tempfile::tempdir().expect("temporary folder for the certificate");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut config =
            ServerConfig::new(listen, TlsSource::Development { dir: tls_dir.path().to_owned() });
        config.login_limits =
            LoginLimits { account_max_failures: 2, address_max_failures: 2, ..Default::default() };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime");

        let bound = runtime.block_on(Server::bind(config, services)).expect("server binds");
        let (stop, stopped) = oneshot::channel::<()>();
        let addr = bound.local_addr();
        let cert = bound.cert_path().to_owned();
        runtime.spawn(bound.run(async {
            let _ = stopped.await;
        }));
        Fixture { store, addr, cert, runtime: Some(runtime), stop: Some(stop), _tls_dir: tls_dir }
    }

    /// Posts `body` to the login with `content_type`, or with no `Content-Type` when None.
    fn login(&self, content_type: Option<&str>, body: &str) -> HttpResponse {
        HttpsClient::new(self.addr, &self.cert)
            .request_typed("POST", "/v1/login", content_type, &[], body.as_bytes())
            .expect("login request")
    }

    fn login_json(&self, body: &str) -> HttpResponse {
        self.login(Some("application/json"), body)
    }

    fn failed_logins(&self) -> u32 {
        let user = self.store.user_for_login(Some("northwind"), USERNAME).expect("lookup");
        user.expect("the account exists").failed_logins
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Asserts a JSON error of `status` and `code` whose message repeats nothing sensitive, and
/// returns the message.
fn error_message(response: &HttpResponse, status: u16, code: &str) -> String {
    let text = response.text();
    assert_eq!(response.status, status, "{text}");
    assert_eq!(response.header("content-type"), Some("application/json"), "{text}");
    assert!(!text.contains(SENSITIVE), "the value is echoed: {text}");
    let json: Value = response.json();
    assert_eq!(json["error"]["code"], code, "{text}");
    json["error"]["message"].as_str().expect("message").to_owned()
}

#[test]
fn malformed_json_is_bad_request() {
    let fixture = Fixture::start();
    let bodies = [
        "",
        "{",
        &format!(r#"{{"tenant": "northwind", "username": "{SENSITIVE}""#),
        &format!(r#"{{"username": '{SENSITIVE}'}}"#),
        &format!(r#"{{"tenant": null, "username": "a", "password": "b"}} {SENSITIVE}"#),
    ];
    for body in bodies {
        let message = error_message(&fixture.login_json(body), 400, "bad_request");
        assert!(message.contains("JSON"), "{body:?}: {message}");
    }
}

#[test]
fn wrong_content_type_is_415() {
    let fixture = Fixture::start();
    let body = format!(r#"{{"tenant": "northwind", "username": "{USERNAME}", "password": "x"}}"#);
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let response = fixture.login(content_type, &body);
        let message = error_message(&response, 415, "unsupported_media_type");
        assert!(message.contains("application/json"), "{content_type:?}: {message}");
    }
}

#[test]
fn missing_field_named() {
    let fixture = Fixture::start();
    let response = fixture.login_json(&format!(r#"{{"username": "{SENSITIVE}"}}"#));
    let message = error_message(&response, 422, "unprocessable_entity");
    assert!(message.contains("missing field `password`"), "{message}");
}

#[test]
fn unknown_field_rejected_unnamed() {
    let fixture = Fixture::start();
    let body = format!(
        r#"{{"username": "{USERNAME}", "password": "x", "patient_ssn_999": "{SENSITIVE}"}}"#
    );
    let message = error_message(&fixture.login_json(&body), 422, "unprocessable_entity");
    assert!(message.contains("unknown field"), "{message}");
    assert!(!message.contains("patient_ssn_999"), "the unknown key is echoed: {message}");
    assert!(message.contains("`tenant`, `username`, `password`"), "{message}");
}

#[test]
fn wrong_type_names_field() {
    let fixture = Fixture::start();
    let cases = [
        (r#"{"username": 19700131, "password": "x"}"#.to_owned(), "username", "19700131"),
        (format!(r#"{{"username": "a", "password": ["{SENSITIVE}"]}}"#), "password", SENSITIVE),
        (r#"{"tenant": 42, "username": "a", "password": "b"}"#.to_owned(), "tenant", "42"),
    ];
    for (body, field, value) in cases {
        let message = error_message(&fixture.login_json(&body), 422, "unprocessable_entity");
        assert!(message.contains(&format!("`{field}`")), "{body}: {message}");
        assert!(message.contains("expected"), "{body}: {message}");
        assert!(!message.contains(value), "{body}: the value is echoed: {message}");
    }
}

#[test]
fn non_object_body_rejected() {
    let fixture = Fixture::start();
    for body in [format!(r#"["{SENSITIVE}"]"#), format!(r#""{SENSITIVE}""#), "null".to_owned()] {
        error_message(&fixture.login_json(&body), 422, "unprocessable_entity");
    }
}

/// A rejected body never reaches the store or the limiter: after more rejected bodies than
/// the lockout allows, the account has no failed login and the right password still works.
#[test]
fn rejected_bodies_not_counted() {
    let fixture = Fixture::start();
    let bodies = [
        "{".to_owned(),
        format!(r#"{{"tenant": "northwind", "username": "{USERNAME}"}}"#),
        format!(r#"{{"tenant": "northwind", "username": "{USERNAME}", "password": 1}}"#),
        format!(r#"{{"tenant": "northwind", "username": "{USERNAME}", "password": "x", "a": 1}}"#),
    ];
    for body in &bodies {
        let response = fixture.login_json(body);
        assert!(matches!(response.status, 400 | 422), "{body}: {}", response.text());
    }
    assert_eq!(fixture.failed_logins(), 0);
    let body =
        format!(r#"{{"tenant": "northwind", "username": "{USERNAME}", "password": "{PASSWORD}"}}"#);
    let response = fixture.login_json(&body);
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    assert_eq!(json["role"], "tenant_admin");
    assert_eq!(json["tenant"], "northwind");
    assert!(json["token"].as_str().is_some_and(|token| !token.is_empty()), "{json}");
}

/// A well-formed body with a wrong password is a failed login, unlike a rejected body.
#[test]
fn wrong_password_counts_as_failure() {
    let fixture = Fixture::start();
    let body = format!(r#"{{"tenant": "northwind", "username": "{USERNAME}", "password": "no"}}"#);
    let message = error_message(&fixture.login_json(&body), 401, "unauthorized");
    assert!(message.contains("login failed"), "{message}");
    assert_eq!(fixture.failed_logins(), 1);
}
