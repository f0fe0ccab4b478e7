//! The OpenAPI document: the checked-in copy at `docs/openapi.json` matches the one the code
//! generates, the server serves it without authentication, and every documented operation
//! is routed and responds with a status that its entry lists.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medconnect_api::openapi::document_json;
use medconnect_api::testing::HttpsClient;
use medconnect_api::{PolicyInForce, Server, ServerConfig, Services, StorePool, TlsSource};
use medconnect_domain::clock::SystemClock;
use medconnect_domain::policy::Policy;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// Set to 1 to rewrite `docs/openapi.json` from the code instead of comparing.
const UPDATE_VARIABLE: &str = "MEDCONNECT_UPDATE_OPENAPI";

fn checked_in_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

fn document() -> Value {
    serde_json::from_str(&document_json()).expect("the document is JSON")
}

#[test]
fn checked_in_document_is_current() {
    let path = checked_in_path();
    let generated = document_json();
    if std::env::var(UPDATE_VARIABLE).as_deref() == Ok("1") {
        std::fs::write(&path, &generated).expect("writing docs/openapi.json");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from the document the handlers generate; rewrite it with \
         `{UPDATE_VARIABLE}=1 cargo test -p medconnect-api --test openapi` and commit it"
    );
}

#[test]
fn document_names_crate_version_and_schemes() {
    let document = document();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["session_cookie"]["type"], "apiKey");
    assert_eq!(schemes["session_cookie"]["in"], "cookie");
    assert_eq!(schemes["session_cookie"]["name"], "medconnect_session");
}

#[test]
fn patient_id_parameter_is_uuid() {
    let document = document();
    let parameters = &document["paths"]["/v1/patients/{id}"]["get"]["parameters"];
    let id = parameters
        .as_array()
        .and_then(|list| list.iter().find(|parameter| parameter["name"] == "id"))
        .unwrap_or_else(|| panic!("no id parameter: {parameters}"));
    assert_eq!(id["in"], "path");
    assert_eq!(id["required"], true);
    assert_eq!(id["schema"]["format"], "uuid");
}

#[test]
fn error_schema_lists_every_code() {
    let document = document();
    let codes = &document["components"]["schemas"]["ErrorCode"]["enum"];
    let codes: Vec<&str> =
        codes.as_array().expect("enum").iter().filter_map(Value::as_str).collect();
    for code in medconnect_api::ErrorCode::ALL {
        assert!(codes.contains(&code.as_str()), "{} missing from {codes:?}", code.as_str());
    }
    let body = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(body["required"], serde_json::json!(["error"]), "{body}");
}

/// Every operation lists 413, and every operation that requires a caller lists 401 and 503.
#[test]
fn layer_responses_on_every_operation() {
    let document = document();
    for (path, method, operation) in operations(&document) {
        let responses = &operation["responses"];
        assert!(responses.get("413").is_some(), "{method} {path} lacks 413");
        let secured = operation["security"].as_array().is_some_and(|list| !list.is_empty());
        if secured {
            assert!(responses.get("401").is_some(), "{method} {path} lacks 401");
            assert!(responses.get("503").is_some(), "{method} {path} lacks 503");
        }
    }
}

#[test]
fn every_operation_is_routed() {
    let server = TestServer::start();
    let client = server.client();
    let document = document();
    let operations = operations(&document);
    assert!(operations.len() >= 10, "{} operations", operations.len());
    for (path, method, operation) in operations {
        let concrete = path.replace("{id}", "3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab");
        let response = client
            .request(&method.to_ascii_uppercase(), &concrete, b"")
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
        let status = response.status.to_string();
        assert!(
            operation["responses"].get(&status).is_some(),
            "{method} {path} answered {status}, which its entry does not list: {}",
            response.text()
        );
    }
}

#[test]
fn served_document_matches_generated() {
    let server = TestServer::start();
    let response = server.client().get("/v1/openapi.json");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.text(), document_json());
}

/// Returns every (path, method, operation) of the document.
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let paths = document["paths"].as_object().expect("paths");
    let mut list = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            list.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    list
}

/// A server whose store cannot be opened, so that every route responds without reading data.
struct TestServer {
    addr: SocketAddr,
    cert: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    _tls_dir: TempDir,
}

impl TestServer {
    fn start() -> Self {
        let services = Services {
            pool: StorePool::new(1, || Err("no store in this test".into())),
            policy: Arc::new(|| {
                Ok(PolicyInForce {
                    file: PathBuf::from("/etc/policy.toml"),
                    policy: Policy::builtin(),
                })
            }),
            lifecycle: None,
            clock: Arc::new(SystemClock),
        };
        let tls_dir = tempfile::tempdir().expect("temporary folder for the certificate");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let config =
            ServerConfig::new(listen, TlsSource::Development { dir: tls_dir.path().to_owned() });
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
        TestServer { addr, cert, runtime: Some(runtime), stop: Some(stop), _tls_dir: tls_dir }
    }

    fn client(&self) -> HttpsClient {
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
