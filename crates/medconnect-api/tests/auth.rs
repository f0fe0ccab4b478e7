//! Login, logout, sessions and service tokens against the real server on 127.0.0.1, over real
//! TLS connections, on both store backends.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::{assert_error, PASSWORD};
use medconnect_api::testing::{HttpResponse, HttpsClient};
use medconnect_api::{
    LoginLimits, PolicyInForce, Server, ServerConfig, Services, StorePool, TlsSource,
};
use medconnect_crypto::{hash_password, SecretToken};
use medconnect_domain::clock::{Clock, SystemClock};
use medconnect_domain::model::Tenant;
use medconnect_domain::policy::Policy;
use medconnect_domain::{ServiceTokenId, UserId};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{NewServiceToken, NewUser, PgStore, Role, SqliteStore, UserRef};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A clock that tests move forward by hand.
struct TestClock(Mutex<DateTime<Utc>>);

impl TestClock {
    fn advance(&self, by: TimeDelta) {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// A store with two tenants, accounts in each and a platform operator, and a server on it.
struct Fixture {
    server: Option<RunningServer>,
    store: TestStore,
    clock: Arc<TestClock>,
    northwind: Tenant,
    contoso: Tenant,
    /// The tenant admin of northwind.
    admin: UserId,
    _tls_dir: TempDir,
}

struct RunningServer {
    addr: SocketAddr,
    cert: PathBuf,
    runtime: tokio::runtime::Runtime,
    stop: oneshot::Sender<()>,
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        Fixture::with_limits(backend, LoginLimits::default())
    }

    fn with_limits(backend: Backend, limits: LoginLimits) -> Self {
        let mut store = backend.create(Box::new(SystemClock));
        let northwind = store.create_tenant("northwind", "Northwind", "test").expect("tenant");
        let contoso = store.create_tenant("contoso", "Contoso", "test").expect("tenant");
        let hash = hash_password(PASSWORD).expect("hash");
        let mut user = |tenant: Option<&Tenant>, username: &str, role: Role| {
            let new = NewUser { tenant, username, role, password_hash: &hash, patient: None };
            store.create_user(&new, "test").expect("user")
        };
        let admin = user(Some(&northwind), "admin@northwind.test", Role::TenantAdmin);
        user(Some(&northwind), "disabled@northwind.test", Role::Provider);
        user(Some(&contoso), "admin@contoso.test", Role::TenantAdmin);
        user(None, "ops", Role::PlatformOperator);
        let disabled = store
            .user_for_login(Some("northwind"), "disabled@northwind.test")
            .expect("lookup")
            .expect("disabled user exists");
        store.set_user_disabled(disabled.user_ref(), true, "test").expect("disable");

        let clock = Arc::new(TestClock(Mutex::new(SystemClock.now())));
        let tls_dir = tempfile::tempdir().expect("temporary folder for the certificate");
        let server = start_server(&store, Arc::clone(&clock), &tls_dir, limits);
        Fixture { server: Some(server), store, clock, northwind, contoso, admin, _tls_dir: tls_dir }
    }

    fn client(&self) -> HttpsClient {
        let server = self.server.as_ref().expect("server running");
        HttpsClient::new(server.addr, &server.cert)
    }

    fn login(&self, body: &Value) -> HttpResponse {
        let body = serde_json::to_vec(body).expect("JSON");
        self.client().request("POST", "/v1/login", &body).expect("POST /v1/login")
    }

    /// Logs in as `username` of `tenant` and returns the token.
    fn token_of(&self, tenant: Option<&str>, username: &str) -> String {
        common::login(&self.client(), tenant, username)
    }

    fn me(&self, token: &str) -> HttpResponse {
        self.client().get_with_token("/v1/me", token)
    }

    /// Creates a provider service token of northwind and returns its id and text. Storefront
    /// tokens, which need a client certificate, are tested in `mtls.rs`.
    fn service_token(&mut self) -> (ServiceTokenId, String) {
        let token = SecretToken::generate().expect("token");
        let new = NewServiceToken {
            tenant: &self.northwind,
            name: "records",
            role: Role::Provider,
            token_hash: token.hash(),
            expires_at: None,
            client_cert: None,
        };
        let id = self.store.create_service_token(&new, "test").expect("service token");
        (id, token.expose().to_owned())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(());
            server.runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn start_server(
    store: &TestStore,
    clock: Arc<TestClock>,
    tls_dir: &TempDir,
    limits: LoginLimits,
) -> RunningServer {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut config =
        ServerConfig::new(listen, TlsSource::Development { dir: tls_dir.path().to_owned() });
    config.lifecycle_interval = Duration::ZERO;
    config.session_ttl = Duration::from_secs(60);
    config.login_limits = limits;
    let services = Services {
        pool: pool_for(store),
        policy: Arc::new(|| {
            Ok(PolicyInForce { file: PathBuf::from("policy.toml"), policy: Policy::builtin() })
        }),
        lifecycle: None,
        clock,
        audit_public_key: None,
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
    RunningServer { addr, cert, runtime, stop }
}

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

fn login_succeeds(backend: Backend) {
    let fixture = Fixture::new(backend);
    let before = fixture.clock.now();
    let response = fixture.login(
        &json!({ "tenant": "northwind", "username": "Admin@Northwind.test", "password": PASSWORD }),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    let token = json["token"].as_str().expect("token");
    assert_eq!(token.len(), 64, "{json}");
    assert_eq!(json["role"], "tenant_admin");
    assert_eq!(json["tenant"], "northwind");
    let expires: DateTime<Utc> =
        json["expires_at"].as_str().expect("expires_at").parse().expect("RFC 3339 time");
    assert_eq!(expires, before + TimeDelta::seconds(60));

    let cookie = response.header("set-cookie").expect("cookie set");
    assert!(cookie.starts_with(&format!("medconnect_session={token};")), "{cookie}");
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Max-Age=60"] {
        assert!(cookie.split("; ").any(|part| part == attribute), "{attribute}: {cookie}");
    }
    assert_eq!(response.header("cache-control"), Some("no-store"));

    let me = fixture.me(token);
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["user_id"], fixture.admin.to_string());
}

fn login_failures_look_alike(backend: Backend) {
    let fixture = Fixture::new(backend);
    let cases = [
        (
            "unknown tenant",
            json!({ "tenant": "nowhere", "username": "admin@northwind.test", "password": PASSWORD }),
        ),
        (
            "other tenant",
            json!({ "tenant": "contoso", "username": "admin@northwind.test", "password": PASSWORD }),
        ),
        (
            "unknown user",
            json!({ "tenant": "northwind", "username": "nobody", "password": PASSWORD }),
        ),
        (
            "wrong password",
            json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": "wrong password 1" }),
        ),
        (
            "disabled",
            json!({ "tenant": "northwind", "username": "disabled@northwind.test", "password": PASSWORD }),
        ),
        (
            "operator in a tenant",
            json!({ "tenant": "northwind", "username": "ops", "password": PASSWORD }),
        ),
        (
            "tenant user as operator",
            json!({ "username": "admin@northwind.test", "password": PASSWORD }),
        ),
    ];
    let mut bodies = Vec::new();
    for (case, body) in cases {
        let response = fixture.login(&body);
        assert_error(&response, 401, "unauthorized");
        assert!(response.header("set-cookie").is_none(), "{case}");
        bodies.push((case, response.text()));
    }
    for (case, body) in &bodies {
        assert_eq!(body, &bodies[0].1, "{case} differs from {}", bodies[0].0);
    }
}

fn login_records_failure_in_store(backend: Backend) {
    let fixture = Fixture::new(backend);
    let wrong = json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": "wrong password 1" });
    assert_eq!(fixture.login(&wrong).status, 401);
    let user = fixture
        .store
        .user_for_login(Some("northwind"), "admin@northwind.test")
        .expect("lookup")
        .expect("user");
    assert_eq!(user.failed_logins, 1);
}

#[test]
fn platform_operator_logs_in_without_tenant() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(None, "ops");
    let me = fixture.me(&token);
    assert_eq!(me.status, 200, "{}", me.text());
    let json = me.json();
    assert_eq!(json["role"], "platform_operator");
    assert_eq!(json["tenant"], Value::Null, "{json}");
}

#[test]
fn login_rejects_unknown_fields() {
    let fixture = Fixture::new(Backend::Sqlite);
    let body = json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": PASSWORD, "role": "platform_operator" });
    let response = fixture.login(&body);
    assert_eq!(response.status, 422, "{}", response.text());
    assert!(!response.text().contains(PASSWORD), "{}", response.text());
}

#[test]
fn login_body_limit_is_small() {
    let fixture = Fixture::new(Backend::Sqlite);
    let long = "x".repeat(medconnect_api::login::LOGIN_BODY_LIMIT);
    let body =
        json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": long });
    let response = fixture.login(&body);
    assert_error(&response, 413, "payload_too_large");
}

fn rate_limit_returns_429(backend: Backend) {
    let fixture = Fixture::new(backend);
    let wrong = json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": "wrong password 1" });
    for attempt in 1..=medconnect_api::limiter::ACCOUNT_MAX_FAILURES {
        let response = fixture.login(&wrong);
        assert_eq!(response.status, 401, "attempt {attempt}: {}", response.text());
    }
    let right =
        json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": PASSWORD });
    let locked = fixture.login(&right);
    assert_error(&locked, 429, "too_many_requests");
    assert_eq!(locked.header("retry-after"), Some("30"));
    let other = fixture.login(
        &json!({ "tenant": "contoso", "username": "admin@contoso.test", "password": PASSWORD }),
    );
    assert_eq!(other.status, 200, "another account from the same address: {}", other.text());
}

/// Guesses sent at once get no more password checks than guesses sent one after another:
/// the burst and the guesses after it together reach the lockout at the same count.
#[test]
fn concurrent_guesses_share_lockout() {
    let fixture = Fixture::new(Backend::Sqlite);
    let max = medconnect_api::limiter::ACCOUNT_MAX_FAILURES as usize;
    let guess = |n: usize| {
        let body = json!({
            "tenant": "northwind",
            "username": "admin@northwind.test",
            "password": format!("wrong {n}"),
        });
        serde_json::to_vec(&body).expect("JSON")
    };
    let burst = 4 * max;
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let logins: Vec<_> = (0..burst)
            .map(|n| {
                let client = fixture.client();
                let body = guess(n);
                scope.spawn(move || {
                    client.request("POST", "/v1/login", &body).expect("POST /v1/login").status
                })
            })
            .collect();
        logins.into_iter().map(|login| login.join().expect("login thread")).collect()
    });
    assert!(statuses.iter().all(|status| [401, 429].contains(status)), "{statuses:?}");
    let checked = statuses.iter().filter(|status| **status == 401).count();
    assert!((1..=max).contains(&checked), "{checked} of {burst} guesses checked: {statuses:?}");

    for n in checked..max {
        let response = fixture.client().request("POST", "/v1/login", &guess(burst + n));
        assert_eq!(response.expect("POST /v1/login").status, 401, "guess {n} after the burst");
    }
    let right =
        json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": PASSWORD });
    let locked = fixture.login(&right);
    assert_error(&locked, 429, "too_many_requests");
}

#[test]
fn address_rate_limit_spans_accounts() {
    let limits = LoginLimits { address_max_failures: 3, ..LoginLimits::default() };
    let fixture = Fixture::with_limits(Backend::Sqlite, limits);
    for n in 0..3 {
        let body =
            json!({ "tenant": "northwind", "username": format!("guess{n}"), "password": PASSWORD });
        assert_eq!(fixture.login(&body).status, 401);
    }
    let right =
        json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": PASSWORD });
    let locked = fixture.login(&right);
    assert_error(&locked, 429, "too_many_requests");
    let seconds: u64 = locked.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=30).contains(&seconds), "{seconds}");
}

fn logout_ends_session(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("northwind"), "admin@northwind.test");
    let authorization = format!("Bearer {token}");
    let logout = fixture
        .client()
        .request_with("POST", "/v1/logout", &[("Authorization", &authorization)], b"")
        .expect("POST /v1/logout");
    assert_eq!(logout.status, 204, "{}", logout.text());
    let cookie = logout.header("set-cookie").expect("cookie cleared");
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    assert_error(&fixture.me(&token), 401, "unauthorized");
    let again = fixture
        .client()
        .request_with("POST", "/v1/logout", &[("Authorization", &authorization)], b"")
        .expect("POST /v1/logout");
    assert_error(&again, 401, "unauthorized");
}

fn expired_session_rejected(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("northwind"), "admin@northwind.test");
    fixture.clock.advance(TimeDelta::seconds(59));
    assert_eq!(fixture.me(&token).status, 200, "valid until its expiry");
    fixture.clock.advance(TimeDelta::seconds(1));
    assert_error(&fixture.me(&token), 401, "unauthorized");
}

#[test]
fn session_cookie_authenticates() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("northwind"), "admin@northwind.test");
    let cookie = format!("theme=dark; medconnect_session={token}");
    let me = fixture.client().request_with("GET", "/v1/me", &[("Cookie", &cookie)], b"");
    let me = me.expect("GET /v1/me");
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["tenant"]["slug"], "northwind");
}

fn service_token_until_revoked(backend: Backend) {
    let mut fixture = Fixture::new(backend);
    let (id, token) = fixture.service_token();
    let me = fixture.me(&token);
    assert_eq!(me.status, 200, "{}", me.text());
    let json = me.json();
    assert_eq!(json["role"], "provider");
    assert_eq!(json["credential"], "service_token");
    assert_eq!(json["service_token_id"], id.to_string());
    assert_eq!(json["tenant"]["id"], fixture.northwind.id.to_string());

    let northwind = fixture.northwind.clone();
    assert!(fixture.store.revoke_service_token(&northwind, id, "test").expect("revoke"));
    assert_error(&fixture.me(&token), 401, "unauthorized");
}

fn tenant_comes_from_token(backend: Backend) {
    let fixture = Fixture::new(backend);
    let northwind = fixture.token_of(Some("northwind"), "admin@northwind.test");
    let contoso = fixture.token_of(Some("contoso"), "admin@contoso.test");
    let cases = [(&northwind, &fixture.northwind), (&contoso, &fixture.contoso)];
    for (token, tenant) in cases {
        let json = fixture.me(token).json();
        assert_eq!(json["tenant"]["id"], tenant.id.to_string(), "{json}");
        assert_eq!(json["tenant"]["slug"], tenant.slug, "{json}");
    }
}

#[test]
fn missing_or_bad_token_is_json_401() {
    let fixture = Fixture::new(Backend::Sqlite);
    let unknown = SecretToken::generate().expect("token");
    let cases = [
        ("no header", vec![]),
        ("unknown token", vec![("Authorization", format!("Bearer {}", unknown.expose()))]),
        ("malformed token", vec![("Authorization", "Bearer not-hex".to_owned())]),
        ("basic scheme", vec![("Authorization", "Basic YWRtaW46cGFzcw==".to_owned())]),
    ];
    for path in ["/v1/me", "/v1/policy"] {
        for (case, headers) in &cases {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
            let response = fixture.client().request_with("GET", path, &headers, b"");
            let response = response.expect("request");
            assert_eq!(response.status, 401, "{path} {case}: {}", response.text());
            assert_error(&response, 401, "unauthorized");
        }
    }
}

#[test]
fn policy_requires_authentication() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("northwind"), "admin@northwind.test");
    let response = fixture.client().get_with_token("/v1/policy", &token);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["version"], Policy::builtin().version());
}

#[test]
fn open_routes_need_no_token() {
    let fixture = Fixture::new(Backend::Sqlite);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = fixture.client().get(path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
}

#[test]
fn service_token_cannot_log_out() {
    let mut fixture = Fixture::new(Backend::Sqlite);
    let (_, token) = fixture.service_token();
    let authorization = format!("Bearer {token}");
    let response = fixture
        .client()
        .request_with("POST", "/v1/logout", &[("Authorization", &authorization)], b"")
        .expect("POST /v1/logout");
    assert_error(&response, 400, "bad_request");
    assert_eq!(fixture.me(&token).status, 200, "the token still works");
}

fn audit_holds_no_secrets(backend: Backend) {
    let mut fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("northwind"), "admin@northwind.test");
    let wrong = json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": "wrong password 1" });
    assert_eq!(fixture.login(&wrong).status, 401);
    let authorization = format!("Bearer {token}");
    let logout = fixture.client().request_with(
        "POST",
        "/v1/logout",
        &[("Authorization", &authorization)],
        b"",
    );
    assert_eq!(logout.expect("logout").status, 204);
    let (_, service_token) = fixture.service_token();
    assert_eq!(fixture.me(&service_token).status, 200);
    let admin = UserRef { id: fixture.admin, tenant_id: Some(fixture.northwind.id) };

    let entries = fixture.store.audit_entries(0, 10_000).expect("audit entries");
    let text: String = entries.iter().map(|entry| entry.body.to_string()).collect();
    for action in ["login.success", "login.failed", "session.login", "session.logout"] {
        assert!(text.contains(action), "no {action} in the audit log: {text}");
    }
    let secrets = [
        PASSWORD.to_owned(),
        "wrong password 1".to_owned(),
        token.clone(),
        service_token.clone(),
        medconnect_crypto::TokenHash::of_token(&token).expect("hash").to_hex(),
        "$argon2id$".to_owned(),
    ];
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret is in the audit log: {text}");
    }
    assert!(text.contains(&admin.id.to_string()), "entries name the user by id: {text}");
}

#[test]
fn forbidden_is_json_403() {
    let caller = medconnect_api::Caller {
        tenant_id: None,
        role: Role::Storefront,
        credential: medconnect_api::Credential::ServiceToken { token_id: ServiceTokenId::new() },
        patient: None,
    };
    let error = caller.require(&[Role::TenantAdmin]).expect_err("storefront rejected");
    let response = axum::response::IntoResponse::into_response(error);
    assert_eq!(response.status(), 403);
    let content_type = response.headers().get("content-type").map(|v| v.as_bytes().to_vec());
    assert_eq!(content_type.as_deref(), Some(b"application/json".as_slice()));
}

medconnect_store::backend_tests!(
    login_succeeds,
    login_failures_look_alike,
    login_records_failure_in_store,
    rate_limit_returns_429,
    logout_ends_session,
    expired_session_rejected,
    service_token_until_revoked,
    tenant_comes_from_token,
    audit_holds_no_secrets,
);
