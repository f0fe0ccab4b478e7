//! `GET /v1/patients` and `GET /v1/patients/{id}` against the real server on 127.0.0.1, over
//! real TLS connections, on both store backends: tenant isolation, roles and audit entries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use medconnect_api::testing::phi::{self, PhiCorpus};
use medconnect_api::testing::{HttpResponse, HttpsClient};
use medconnect_api::{PolicyInForce, Server, ServerConfig, Services, StorePool, TlsSource};
use medconnect_crypto::{hash_password, MasterKey, SecretToken};
use medconnect_domain::clock::SystemClock;
use medconnect_domain::model::{ImportBatch, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::{PatientId, UserId};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{NewServiceToken, NewUser, PgStore, Role, SqliteStore, Store};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery staple";
const MASTER: [u8; 32] = [7; 32];

fn master_key() -> MasterKey {
    MasterKey::from_bytes(1, &MASTER)
}

/// Returns a profile whose names contain `source_id`, so a response can be searched for them.
fn person(source_id: &str) -> NewPatientProfile {
    NewPatientProfile {
        source_system: "test".into(),
        source_id: source_id.into(),
        given_name: format!("Given{source_id}"),
        family_name: format!("Family{source_id}"),
        birth_date: "1970-02-03".into(),
        sex: "F".into(),
        email: Some(format!("{source_id}@example.test")),
        address_line: "17 Birchwood Lane".into(),
        city: "Lincoln".into(),
        state: "NE".into(),
        postal_code: "68501".into(),
        ..NewPatientProfile::default()
    }
}

/// Two tenants with patients and accounts, and a server on their store.
struct Fixture {
    server: Option<RunningServer>,
    store: TestStore,
    clinic_a: Tenant,
    /// Patients of clinic A, imported as `a1` and `a2`.
    a_patients: Vec<PatientId>,
    /// The patient of clinic B, imported as `b1`.
    b_patient: PatientId,
    provider: UserId,
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
        phi::capture_logs();
        let mut store = backend.create(Box::new(SystemClock));
        store.set_master_keys(master_key(), None).expect("master key");
        let clinic_a = store.create_tenant("clinic-a", "Clinic A", "test").expect("tenant");
        let clinic_b = store.create_tenant("clinic-b", "Clinic B", "test").expect("tenant");
        let policy = Policy::builtin();
        let mut import = |tenant: &Tenant, source_ids: &[&str]| -> Vec<PatientId> {
            let batch = ImportBatch {
                source_system: "test".into(),
                patients: source_ids.iter().map(|id| person(id)).collect(),
                ..ImportBatch::default()
            };
            store.import(tenant, &batch, &policy, "test").expect("import");
            source_ids
                .iter()
                .map(|id| store.find_patient(tenant, "test", id).expect("find").expect("imported"))
                .collect()
        };
        let a_patients = import(&clinic_a, &["a1", "a2"]);
        let b_patient = import(&clinic_b, &["b1"])[0];

        let hash = hash_password(PASSWORD).expect("hash");
        let mut user = |tenant: Option<&Tenant>, username: &str, role, patient| {
            let new = NewUser { tenant, username, role, password_hash: &hash, patient };
            store.create_user(&new, "test").expect("user")
        };
        let provider = user(Some(&clinic_a), "provider@a.test", Role::Provider, None);
        user(Some(&clinic_a), "admin@a.test", Role::TenantAdmin, None);
        user(Some(&clinic_a), "patient@a.test", Role::Patient, Some(a_patients[0]));
        user(Some(&clinic_b), "provider@b.test", Role::Provider, None);
        user(None, "ops", Role::PlatformOperator, None);

        let tls_dir = tempfile::tempdir().expect("temporary folder for the certificate");
        let server = start_server(&store, &tls_dir);
        Fixture {
            server: Some(server),
            store,
            clinic_a,
            a_patients,
            b_patient,
            provider,
            _tls_dir: tls_dir,
        }
    }

    fn client(&self) -> HttpsClient {
        let server = self.server.as_ref().expect("server running");
        HttpsClient::new(server.addr, &server.cert)
    }

    /// Logs in as `username` of `tenant` and returns the token.
    fn token_of(&self, tenant: Option<&str>, username: &str) -> String {
        let body = json!({ "tenant": tenant, "username": username, "password": PASSWORD });
        let body = serde_json::to_vec(&body).expect("JSON");
        let response = self.client().request("POST", "/v1/login", &body).expect("login");
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()["token"].as_str().expect("token in the body").to_owned()
    }

    fn get(&self, path: &str, token: &str) -> HttpResponse {
        self.client().get_with_token(path, token)
    }

    fn head(&self) -> i64 {
        let entries = self.store.audit_entries(0, u32::MAX).expect("entries");
        entries.last().map_or(0, |entry| entry.seq)
    }

    /// Returns the `patient.*` entries written after `after`.
    fn patient_entries_after(&self, after: i64) -> Vec<Value> {
        let entries = self.store.audit_entries(after, u32::MAX).expect("entries");
        entries
            .into_iter()
            .map(|entry| entry.body)
            .filter(|body| body["action"].as_str().is_some_and(|a| a.starts_with("patient.")))
            .collect()
    }
}

impl Drop for Fixture {
    /// Stops the server, then searches the captured logs and the audit log for the imported
    /// patients' PHI.
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(());
            server.runtime.shutdown_timeout(Duration::from_secs(5));
        }
        if std::thread::panicking() {
            return;
        }
        let mut corpus = PhiCorpus::new();
        for source_id in ["a1", "a2", "b1"] {
            corpus.add_profile(&person(source_id));
        }
        let audit = self.store.audit_entries(0, u32::MAX).expect("entries");
        phi::assert_no_phi(&corpus, &audit);
    }
}

fn start_server(store: &TestStore, tls_dir: &TempDir) -> RunningServer {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut config =
        ServerConfig::new(listen, TlsSource::Development { dir: tls_dir.path().to_owned() });
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
    RunningServer { addr, cert, runtime, stop }
}

/// Opens stores with the master key, as `medconnect serve` does.
fn pool_for(store: &TestStore) -> StorePool {
    match (store.data_dir(), store.pg_config()) {
        (Some(dir), _) => StorePool::new(2, move || {
            let mut store = SqliteStore::open(&dir)?;
            store.set_master_keys(master_key(), None)?;
            Ok(Box::new(store))
        }),
        (None, Some(config)) => {
            let config = config.clone();
            StorePool::new(2, move || {
                let mut store = PgStore::open(&config)?;
                Store::set_master_keys(&mut store, master_key(), None)?;
                Ok(Box::new(store))
            })
        }
        (None, None) => panic!("a test store is either SQLite or PostgreSQL"),
    }
}

/// Asserts a JSON error with `status` and `code`, and returns its message.
fn assert_error(response: &HttpResponse, status: u16, code: &str) -> String {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"), "{}", response.text());
    let json = response.json();
    assert_eq!(json["error"]["code"], code, "{json}");
    json["error"]["message"].as_str().expect("message").to_owned()
}

/// Checks an entry's action, outcome, actor, tenant and subjects.
fn check_entry(entry: &Value, action: &str, outcome: &str, actor: UserId, tenant: &Tenant) {
    assert_eq!(entry["action"], action, "{entry}");
    assert_eq!(entry["outcome"], outcome, "{entry}");
    assert_eq!(entry["actor"], format!("user:{actor}"), "{entry}");
    assert_eq!(entry["tenant_id"], tenant.id.to_string(), "{entry}");
    let detail = entry["detail"].as_str().expect("detail");
    assert!(detail.starts_with("role=provider request="), "{detail}");
}

fn subjects(entry: &Value) -> Vec<String> {
    serde_json::from_value(entry["subjects"].clone()).expect("subjects")
}

fn provider_lists_own_tenant_only(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let before = fixture.head();
    let response = fixture.get("/v1/patients", &token);
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    let mut listed: Vec<String> = json["patients"]
        .as_array()
        .expect("patients array")
        .iter()
        .map(|link| link["patient_id"].as_str().expect("patient_id").to_owned())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = fixture.a_patients.iter().map(|p| p.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(!response.text().contains(&fixture.b_patient.to_string()), "{}", response.text());

    let entries = fixture.patient_entries_after(before);
    assert_eq!(entries.len(), 1, "{entries:?}");
    check_entry(&entries[0], "patient.list", "success", fixture.provider, &fixture.clinic_a);
    assert!(entries[0]["detail"].as_str().expect("detail").ends_with(" count=2"));
}

fn provider_reads_patient(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let patient = fixture.a_patients[0];
    let before = fixture.head();
    let response = fixture.get(&format!("/v1/patients/{patient}"), &token);
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    assert_eq!(json["profile"]["patient_id"], patient.to_string());
    assert_eq!(json["profile"]["given_name"], "Givena1");
    assert_eq!(json["profile"]["family_name"], "Familya1");
    assert_eq!(json["profile"]["birth_date"], "1970-02-03");
    assert_eq!(json["profile"]["email"], "a1@example.test");
    assert_eq!(json["link"]["link"]["patient_id"], patient.to_string());
    assert_eq!(json["link"]["link"]["tenant_id"], fixture.clinic_a.id.to_string());

    let entries = fixture.patient_entries_after(before);
    assert_eq!(entries.len(), 1, "{entries:?}");
    check_entry(&entries[0], "patient.read", "success", fixture.provider, &fixture.clinic_a);
    assert_eq!(subjects(&entries[0]), vec![patient.to_string()]);
    let text = entries[0].to_string();
    for phi in ["Givena1", "Familya1", "1970-02-03", "a1@example.test"] {
        assert!(!text.contains(phi), "entry {text} contains PHI");
    }
}

fn other_tenant_patient_looks_missing(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let theirs = fixture.b_patient;
    let missing = PatientId::new();

    let before = fixture.head();
    let other = fixture.get(&format!("/v1/patients/{theirs}"), &token);
    let absent = fixture.get(&format!("/v1/patients/{missing}"), &token);
    assert_error(&other, 404, "not_found");
    assert_eq!(other.status, absent.status);
    assert_eq!(other.text(), absent.text());
    for value in [theirs.to_string(), "Givenb1".into(), "Familyb1".into(), "clinic-b".into()] {
        assert!(!other.text().contains(&value), "{}", other.text());
    }

    let entries = fixture.patient_entries_after(before);
    assert_eq!(entries.len(), 2, "{entries:?}");
    for (entry, asked) in entries.iter().zip([theirs, missing]) {
        check_entry(entry, "patient.read", "not_found", fixture.provider, &fixture.clinic_a);
        assert_eq!(subjects(entry), vec![asked.to_string()]);
    }
}

/// A patient account reads its own record and gets 403 for any other id, of its tenant or
/// another, without a store read or an audit entry.
#[test]
fn patient_reads_only_itself() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("clinic-a"), "patient@a.test");
    let own = fixture.a_patients[0];
    let before = fixture.head();
    let response = fixture.get(&format!("/v1/patients/{own}"), &token);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["profile"]["given_name"], "Givena1");
    let entries = fixture.patient_entries_after(before);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["action"], "patient.read");
    assert_eq!(entries[0]["outcome"], "success");
    assert_eq!(entries[0]["tenant_id"], fixture.clinic_a.id.to_string());

    let before = fixture.head();
    let neighbour = fixture.get(&format!("/v1/patients/{}", fixture.a_patients[1]), &token);
    let foreign = fixture.get(&format!("/v1/patients/{}", fixture.b_patient), &token);
    assert_error(&neighbour, 403, "forbidden");
    assert_eq!(neighbour.text(), foreign.text());
    assert!(fixture.patient_entries_after(before).is_empty());

    let list = fixture.get("/v1/patients", &token);
    assert_error(&list, 403, "forbidden");
}

#[test]
fn invalid_id_is_400_without_echo() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let before = fixture.head();
    let response = fixture.get("/v1/patients/Quillon-Maravelle-1970", &token);
    let message = assert_error(&response, 400, "bad_request");
    assert!(message.contains("id"), "{message}");
    assert!(!response.text().contains("Quillon"), "{}", response.text());
    assert!(fixture.patient_entries_after(before).is_empty());
}

#[test]
fn caller_without_tenant_gets_403() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(None, "ops");
    assert_error(&fixture.get("/v1/patients", &token), 403, "forbidden");
    let path = format!("/v1/patients/{}", fixture.a_patients[0]);
    assert_error(&fixture.get(&path, &token), 403, "forbidden");
}

#[test]
fn tenant_admin_lists_and_reads() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("clinic-a"), "admin@a.test");
    let list = fixture.get("/v1/patients", &token);
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.json()["patients"].as_array().expect("array").len(), 2);
    let path = format!("/v1/patients/{}", fixture.a_patients[1]);
    let read = fixture.get(&path, &token);
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["profile"]["given_name"], "Givena2");
}

#[test]
fn other_tenant_provider_sees_own_patient_only() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("clinic-b"), "provider@b.test");
    let list = fixture.get("/v1/patients", &token);
    assert_eq!(list.status, 200, "{}", list.text());
    let patients = list.json()["patients"].clone();
    assert_eq!(patients.as_array().expect("array").len(), 1, "{patients}");
    assert_eq!(patients[0]["patient_id"], fixture.b_patient.to_string());
    let path = format!("/v1/patients/{}", fixture.a_patients[0]);
    assert_error(&fixture.get(&path, &token), 404, "not_found");
}

/// A service token's reads are audited under `token:ID` with the token's role.
#[test]
fn service_token_read_audited() {
    let mut fixture = Fixture::new(Backend::Sqlite);
    let secret = SecretToken::generate().expect("token");
    let new = NewServiceToken {
        tenant: &fixture.clinic_a,
        name: "records",
        role: Role::Provider,
        token_hash: secret.hash(),
        expires_at: None,
    };
    let token_id = fixture.store.create_service_token(&new, "test").expect("service token");
    let patient = fixture.a_patients[1];

    let before = fixture.head();
    let response = fixture.get(&format!("/v1/patients/{patient}"), secret.expose());
    assert_eq!(response.status, 200, "{}", response.text());
    let entries = fixture.patient_entries_after(before);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["action"], "patient.read");
    assert_eq!(entries[0]["outcome"], "success");
    assert_eq!(entries[0]["actor"], format!("token:{token_id}"));
    assert_eq!(entries[0]["tenant_id"], fixture.clinic_a.id.to_string());
    assert_eq!(subjects(&entries[0]), vec![patient.to_string()]);
    let detail = entries[0]["detail"].as_str().expect("detail");
    assert!(detail.starts_with("role=provider request="), "{detail}");
}

medconnect_store::backend_tests!(
    provider_lists_own_tenant_only,
    provider_reads_patient,
    other_tenant_patient_looks_missing,
);
