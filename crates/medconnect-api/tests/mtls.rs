//! Storefront tokens bound to client certificates, against the real server on 127.0.0.1 with
//! a client CA, over real TLS handshakes, on both store backends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medconnect_api::testing::{ClientCertFiles, HttpResponse, HttpsClient, TestCa};
use medconnect_api::{PolicyInForce, Server, ServerConfig, Services, StorePool, TlsSource};
use medconnect_crypto::{hash_password, SecretToken};
use medconnect_domain::clock::SystemClock;
use medconnect_domain::model::Tenant;
use medconnect_domain::policy::Policy;
use medconnect_domain::ServiceTokenId;
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{
    CertificateFingerprint, NewServiceToken, NewUser, PgStore, Role, SqliteStore,
};
use rustls::HandshakeKind;
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery staple";

/// A store with one tenant and its admin, a test CA with two client certificates, a second
/// CA with one, and a server that verifies client certificates against the first CA.
struct Fixture {
    store: TestStore,
    northwind: Tenant,
    /// The Storefront's certificate, which its tokens are bound to.
    storefront: ClientCertFiles,
    /// Another certificate of the same CA.
    other_client: ClientCertFiles,
    /// A certificate of a CA the server does not trust.
    foreign_client: ClientCertFiles,
    /// An expired certificate of the trusted CA.
    expired_client: ClientCertFiles,
    server: RunningServer,
    _dir: TempDir,
}

struct RunningServer {
    addr: SocketAddr,
    cert: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Fixture {
    /// Starts the server with the test CA as its client CA.
    fn new(backend: Backend) -> Self {
        Fixture::start(backend, true)
    }

    /// Starts the server with or without a client CA.
    fn start(backend: Backend, with_client_ca: bool) -> Self {
        let mut store = backend.create(Box::new(SystemClock));
        let northwind = store.create_tenant("northwind", "Northwind", "test").expect("tenant");
        let hash = hash_password(PASSWORD).expect("hash");
        let admin = NewUser {
            tenant: Some(&northwind),
            username: "admin@northwind.test",
            role: Role::TenantAdmin,
            password_hash: &hash,
            patient: None,
        };
        store.create_user(&admin, "test").expect("user");

        let dir = tempfile::tempdir().expect("temporary folder");
        let ca = TestCa::create(dir.path(), "storefronts");
        let storefront = ca.issue_client("storefront-northwind");
        let other_client = ca.issue_client("storefront-other");
        let expired_client = ca.issue_expired_client("storefront-expired");
        let foreign_client =
            TestCa::create(dir.path(), "foreign").issue_client("storefront-foreign");
        let client_ca = with_client_ca.then(|| ca.cert.clone());
        let server = start_server(&store, dir.path(), client_ca);
        Fixture {
            store,
            northwind,
            storefront,
            other_client,
            foreign_client,
            expired_client,
            server,
            _dir: dir,
        }
    }

    /// Returns a client that offers `client_cert`, or none.
    fn client(&self, client_cert: Option<&ClientCertFiles>) -> HttpsClient {
        match client_cert {
            Some(files) => {
                HttpsClient::with_client_certificate(self.server.addr, &self.server.cert, files)
            }
            None => HttpsClient::new(self.server.addr, &self.server.cert),
        }
    }

    /// Creates a service token of northwind with `role`, bound to `client_cert`, and returns
    /// its id and text.
    fn token(
        &mut self,
        role: Role,
        client_cert: Option<CertificateFingerprint>,
    ) -> (ServiceTokenId, String) {
        let token = SecretToken::generate().expect("token");
        let new = NewServiceToken {
            tenant: &self.northwind,
            name: "storefront",
            role,
            token_hash: token.hash(),
            expires_at: None,
            client_cert,
        };
        let id = self.store.create_service_token(&new, "test").expect("service token");
        (id, token.expose().to_owned())
    }

    /// Creates a storefront token bound to the Storefront's certificate.
    fn storefront_token(&mut self) -> (ServiceTokenId, String) {
        let fingerprint = self.storefront.sha256;
        self.token(Role::Storefront, Some(fingerprint))
    }

    fn me(&self, client_cert: Option<&ClientCertFiles>, token: &str) -> HttpResponse {
        self.client(client_cert).get_with_token("/v1/me", token)
    }

    /// Returns the body of the 401 for a token that exists nowhere.
    fn unknown_token_body(&self) -> String {
        let unknown = SecretToken::generate().expect("token");
        let response = self.me(Some(&self.storefront), unknown.expose());
        assert_eq!(response.status, 401, "{}", response.text());
        response.text()
    }
}

fn start_server(store: &TestStore, dir: &Path, client_ca: Option<PathBuf>) -> RunningServer {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let tls = TlsSource::Development { dir: dir.join("tls") };
    let mut config = ServerConfig::new(listen, tls);
    config.client_ca = client_ca;
    config.lifecycle_interval = Duration::ZERO;
    let services = Services {
        pool: pool_for(store),
        policy: Arc::new(|| {
            Ok(PolicyInForce { file: PathBuf::from("policy.toml"), policy: Policy::builtin() })
        }),
        lifecycle: None,
        clock: Arc::new(SystemClock),
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
    RunningServer { addr, cert, runtime: Some(runtime), stop: Some(stop) }
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

fn storefront_with_bound_certificate(backend: Backend) {
    let mut fixture = Fixture::new(backend);
    let (id, token) = fixture.storefront_token();
    let me = fixture.me(Some(&fixture.storefront), &token);
    assert_eq!(me.status, 200, "{}", me.text());
    let json = me.json();
    assert_eq!(json["role"], "storefront");
    assert_eq!(json["credential"], "service_token");
    assert_eq!(json["service_token_id"], id.to_string());
    assert_eq!(json["tenant"]["slug"], "northwind");

    let northwind = fixture.northwind.clone();
    assert!(fixture.store.revoke_service_token(&northwind, id, "test").expect("revoke"));
    let revoked = fixture.me(Some(&fixture.storefront), &token);
    assert_eq!(revoked.status, 401, "a revoked token fails with the right certificate too");
}

fn storefront_without_certificate_rejected(backend: Backend) {
    let mut fixture = Fixture::new(backend);
    let (_, token) = fixture.storefront_token();
    let response = fixture.me(None, &token);
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(response.text(), fixture.unknown_token_body(), "same 401 as an unknown token");
    assert!(!response.text().contains(&token), "{}", response.text());
}

fn storefront_with_other_certificate_rejected(backend: Backend) {
    let mut fixture = Fixture::new(backend);
    let (_, token) = fixture.storefront_token();
    let response = fixture.me(Some(&fixture.other_client), &token);
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(response.text(), fixture.unknown_token_body(), "same 401 as an unknown token");

    // A token bound to the other certificate works only with that one.
    let other = fixture.other_client.sha256;
    let (_, other_token) = fixture.token(Role::Storefront, Some(other));
    assert_eq!(fixture.me(Some(&fixture.other_client), &other_token).status, 200);
    assert_eq!(fixture.me(Some(&fixture.storefront), &other_token).status, 401);
}

fn users_need_no_certificate(backend: Backend) {
    let mut fixture = Fixture::new(backend);
    let body =
        json!({ "tenant": "northwind", "username": "admin@northwind.test", "password": PASSWORD });
    let body = serde_json::to_vec(&body).expect("JSON");
    for client_cert in [None, Some(&fixture.storefront)] {
        let login = fixture.client(client_cert).request("POST", "/v1/login", &body);
        let login = login.expect("POST /v1/login");
        assert_eq!(login.status, 200, "{}", login.text());
        let session = login.json()["token"].as_str().expect("token").to_owned();
        let me = fixture.me(client_cert, &session);
        assert_eq!(me.status, 200, "{}", me.text());
        assert_eq!(me.json()["role"], "tenant_admin");
    }

    let (_, provider) = fixture.token(Role::Provider, None);
    let me = fixture.me(None, &provider);
    assert_eq!(me.status, 200, "a provider token needs no certificate: {}", me.text());
    assert_eq!(me.json()["role"], "provider");
}

#[test]
fn untrusted_certificates_fail_handshake() {
    let mut fixture = Fixture::new(Backend::Sqlite);
    let (_, token) = fixture.storefront_token();
    let server = &fixture.server;

    // In TLS 1.2 the server verifies the certificate before its Finished message, so the
    // handshake itself fails.
    let tls12 = HttpsClient::configured(
        server.addr,
        &server.cert,
        &[&rustls::version::TLS12],
        Some(&fixture.foreign_client),
    );
    let error = tls12.handshake().expect_err("TLS 1.2 handshake with a foreign certificate");
    assert!(error.to_string().contains("alert"), "{error}");

    // In TLS 1.3 the client finishes first, and the server's alert arrives instead of the
    // response.
    let tls13 = HttpsClient::configured(
        server.addr,
        &server.cert,
        &[&rustls::version::TLS13],
        Some(&fixture.foreign_client),
    );
    let authorization = format!("Bearer {token}");
    let result = tls13.request_with("GET", "/v1/me", &[("Authorization", &authorization)], b"");
    let error = result.expect_err("TLS 1.3 request with a foreign certificate");
    assert!(error.to_string().contains("alert"), "{error}");

    // An expired certificate of the trusted CA fails the handshake too.
    let expired = fixture.client(Some(&fixture.expired_client));
    let result = expired.request_with("GET", "/v1/me", &[("Authorization", &authorization)], b"");
    let error = result.expect_err("request with an expired certificate");
    assert!(error.to_string().contains("alert"), "{error}");

    // The server keeps serving the Storefront.
    assert_eq!(fixture.me(Some(&fixture.storefront), &token).status, 200);
}

#[test]
fn resumed_session_keeps_certificate() {
    let mut fixture = Fixture::new(Backend::Sqlite);
    let (_, token) = fixture.storefront_token();
    let server = &fixture.server;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One client reuses its session cache, so its second connection resumes the first
        // one's session, whose client certificate the server must still report.
        let client = HttpsClient::configured(
            server.addr,
            &server.cert,
            &[version],
            Some(&fixture.storefront),
        );
        let (first_kind, first) = client.get_with_token_and_handshake("/v1/me", &token);
        assert_eq!(first_kind, Some(HandshakeKind::Full), "{version:?}");
        assert_eq!(first.status, 200, "{version:?}: {}", first.text());
        let (second_kind, second) = client.get_with_token_and_handshake("/v1/me", &token);
        assert_eq!(second_kind, Some(HandshakeKind::Resumed), "{version:?}");
        assert_eq!(second.status, 200, "{version:?}: {}", second.text());
        assert_eq!(second.json()["role"], "storefront");
    }
}

#[test]
fn server_without_client_ca_rejects_storefront() {
    let mut fixture = Fixture::start(Backend::Sqlite, false);
    let (_, token) = fixture.storefront_token();
    // The server requests no client certificate, so the client sends none.
    let response = fixture.me(Some(&fixture.storefront), &token);
    assert_eq!(response.status, 401, "{}", response.text());
    let (_, provider) = fixture.token(Role::Provider, None);
    assert_eq!(fixture.me(Some(&fixture.storefront), &provider).status, 200);
}

#[test]
fn storefront_token_without_binding_rejected() {
    // A storefront token created before binding existed has no fingerprint. The store no
    // longer creates such tokens, so this one is written to the database directly.
    let mut fixture = Fixture::new(Backend::Sqlite);
    let (id, token) = fixture.storefront_token();
    let dir = fixture.store.data_dir().expect("SQLite store");
    let db = rusqlite_connection(&dir);
    let changed = db
        .execute(
            "UPDATE service_tokens SET client_cert_sha256 = NULL WHERE id = ?1",
            [id.to_string()],
        )
        .expect("binding removed");
    assert_eq!(changed, 1);
    let response = fixture.me(Some(&fixture.storefront), &token);
    assert_eq!(response.status, 401, "{}", response.text());
}

fn rusqlite_connection(dir: &Path) -> rusqlite::Connection {
    let path = dir.join(medconnect_store::sqlite::DATABASE_FILE);
    rusqlite::Connection::open(path).expect("opening the test database")
}

medconnect_store::backend_tests!(
    storefront_with_bound_certificate,
    storefront_without_certificate_rejected,
    storefront_with_other_certificate_rejected,
    users_need_no_certificate,
);
