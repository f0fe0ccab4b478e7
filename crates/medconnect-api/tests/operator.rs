//! Legal holds, lifecycle runs and the audit log through the real server on 127.0.0.1, over
//! real TLS connections. The tests cover roles, tenant isolation of holds, a hold placed
//! through the API that stops a run from purging, lifecycle bodies that match their schemas in
//! the OpenAPI document, `audit.read` entries, and bad input.

mod common;

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::schema::{mismatches, response_schema};
use common::{assert_error, create_users, import_patients, subjects};
use medconnect_api::openapi::document_json;
use medconnect_api::testing::phi::{self, PhiCorpus};
use medconnect_api::testing::{HttpResponse, HttpsClient, TestServer, TestServerOptions};
use medconnect_api::{BoxError, LifecycleJob};
use medconnect_crypto::{AuditSigningKey, MasterKey};
use medconnect_domain::checkpoint::AuditPublicKey;
use medconnect_domain::clock::SystemClock;
use medconnect_domain::model::{HoldScope, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::{HoldId, PatientId, UserId};
use medconnect_lifecycle::{RunOptions, RunReport, Tally};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{PgConfig, PgStore, Role, SqliteStore, Store};
use serde_json::{json, Value};

const MASTER: [u8; 32] = [9; 32];

/// The name every imported profile carries, searched for in responses and audit entries.
const GIVEN_NAME: &str = "Quillon";

fn master_key() -> MasterKey {
    MasterKey::from_bytes(1, &MASTER)
}

/// Where the test store lives, so that the lifecycle job can open it again on any thread.
#[derive(Clone)]
enum StoreSpec {
    Sqlite(PathBuf),
    Postgres(PgConfig),
}

impl StoreSpec {
    fn of(store: &TestStore) -> Self {
        match (store.data_dir(), store.pg_config()) {
            (Some(dir), _) => StoreSpec::Sqlite(dir),
            (None, Some(config)) => StoreSpec::Postgres(config.clone()),
            (None, None) => panic!("a test store is either SQLite or PostgreSQL"),
        }
    }

    /// Opens the store with the master key, as `medconnect serve` does.
    fn open(&self) -> Result<Box<dyn Store + Send>, BoxError> {
        match self {
            StoreSpec::Sqlite(dir) => {
                let mut store = SqliteStore::open(dir)?;
                store.set_master_keys(master_key(), None)?;
                Ok(Box::new(store))
            }
            StoreSpec::Postgres(config) => {
                let mut store = PgStore::open(config)?;
                Store::set_master_keys(&mut store, master_key(), None)?;
                Ok(Box::new(store))
            }
        }
    }
}

/// Returns the lifecycle job of the test server: a run under the built-in policy as of now,
/// as `medconnect serve` runs it, with the actor it is given.
fn real_job(spec: StoreSpec) -> Arc<LifecycleJob> {
    Arc::new(move |actor| -> Result<RunReport, BoxError> {
        let mut store = spec.open()?;
        let options =
            RunOptions { actor: actor.unwrap_or("lifecycle").to_owned(), ..RunOptions::default() };
        let policy = Policy::builtin();
        Ok(medconnect_lifecycle::run(&mut *store, &policy, Utc::now(), &options, &mut |_, _| {})?)
    })
}

/// Returns a profile whose given name is [`GIVEN_NAME`].
fn person(source_id: &str) -> NewPatientProfile {
    NewPatientProfile {
        source_system: "test".into(),
        source_id: source_id.into(),
        given_name: GIVEN_NAME.into(),
        family_name: format!("Maravelle{source_id}"),
        birth_date: "1961-04-05".into(),
        sex: "F".into(),
        address_line: "17 Birchwood Lane".into(),
        city: "Lincoln".into(),
        state: "NE".into(),
        postal_code: "68501".into(),
        ..NewPatientProfile::default()
    }
}

/// Two tenants with patients and user accounts, and a server on their store.
struct Fixture {
    server: Option<TestServer>,
    store: TestStore,
    clinic_a: Tenant,
    clinic_b: Tenant,
    /// Patients of clinic A: `a1`, whose last encounter was in 2000, so its retention has
    /// ended, and `a2`, imported now.
    a_patients: Vec<PatientId>,
    /// The patient of clinic B, whose last encounter was in 2000.
    b_patient: PatientId,
    admin_a: UserId,
    operator: UserId,
}

impl Fixture {
    /// Creates the store and starts a server whose lifecycle job is [`real_job`].
    fn new(backend: Backend) -> Self {
        Fixture::with(backend, None, None)
    }

    /// Creates the store and starts a server with `job` (or [`real_job`]) and the audit
    /// public key `key`.
    fn with(backend: Backend, job: Option<Arc<LifecycleJob>>, key: Option<AuditPublicKey>) -> Self {
        phi::capture_logs();
        let mut store = backend.create(Box::new(SystemClock));
        store.set_master_keys(master_key(), None).expect("master key");
        let clinic_a = store.create_tenant("clinic-a", "Clinic A", "test").expect("tenant");
        let clinic_b = store.create_tenant("clinic-b", "Clinic B", "test").expect("tenant");
        let long_ago: DateTime<Utc> = "2000-01-01T00:00:00Z".parse().expect("instant");
        let a_patients = import_patients(&mut store, &clinic_a, vec![person("a1"), person("a2")]);
        let b_patient = import_patients(&mut store, &clinic_b, vec![person("b1")])[0];
        let policy = Policy::builtin();
        for (tenant, patient) in [(&clinic_a, a_patients[0]), (&clinic_b, b_patient)] {
            store.record_encounter(tenant, patient, long_ago, &policy, "test").expect("encounter");
        }

        let users = create_users(
            &mut store,
            &[
                (Some(&clinic_a), "admin@a.test", Role::TenantAdmin, None),
                (Some(&clinic_a), "provider@a.test", Role::Provider, None),
                (Some(&clinic_a), "patient@a.test", Role::Patient, Some(a_patients[1])),
                (Some(&clinic_b), "admin@b.test", Role::TenantAdmin, None),
                (None, "ops", Role::PlatformOperator, None),
            ],
        );

        let job = job.unwrap_or_else(|| real_job(StoreSpec::of(&store)));
        let mut options = TestServerOptions::new(MASTER);
        options.lifecycle = Some(job);
        options.audit_public_key = Some(Arc::new(move || Ok(key)));
        let server = TestServer::start(&store, options);
        Fixture {
            server: Some(server),
            store,
            clinic_a,
            clinic_b,
            a_patients,
            b_patient,
            admin_a: users[0],
            operator: users[4],
        }
    }

    fn client(&self) -> HttpsClient {
        self.server.as_ref().expect("server running").client()
    }

    /// Logs in as `username` of `tenant` and returns the token.
    fn token_of(&self, tenant: Option<&str>, username: &str) -> String {
        common::login(&self.client(), tenant, username)
    }

    fn admin_a(&self) -> String {
        self.token_of(Some("clinic-a"), "admin@a.test")
    }

    fn operator(&self) -> String {
        self.token_of(None, "ops")
    }

    fn get(&self, path: &str, token: &str) -> HttpResponse {
        self.client().get_with_token(path, token)
    }

    fn post(&self, path: &str, token: &str, body: &[u8]) -> HttpResponse {
        self.client().post_with_token(path, token, body)
    }

    fn post_json(&self, path: &str, token: &str, body: &Value) -> HttpResponse {
        self.post(path, token, &serde_json::to_vec(body).expect("JSON"))
    }

    fn head(&self) -> i64 {
        common::audit_head(&self.store)
    }

    /// Returns the bodies of the entries with `action` written after `after`.
    fn entries_after(&self, after: i64, action: &str) -> Vec<Value> {
        common::audit_bodies_after(&self.store, after, |found| found == action)
    }

    fn active_holds(&self, tenant: &Tenant) -> usize {
        self.store.holds(Some(tenant.id), false).expect("holds").len()
    }

    fn is_linked(&self, tenant: &Tenant, patient: PatientId) -> bool {
        self.store.patient_links(tenant).expect("links").iter().any(|l| l.patient_id == patient)
    }
}

impl Drop for Fixture {
    /// Stops the server, then searches the captured logs and the audit log for the imported
    /// patients' PHI.
    fn drop(&mut self) {
        drop(self.server.take());
        let mut corpus = PhiCorpus::new();
        for source_id in ["a1", "a2", "b1"] {
            corpus.add_profile(&person(source_id));
        }
        common::assert_no_phi_logged(&self.store, &corpus);
    }
}

fn patient_hold(patient: PatientId) -> Value {
    json!({
        "scope": "patient",
        "patient_id": patient,
        "matter": "case 2026-cv-0042",
        "reason": "litigation: preserve the chart",
    })
}

fn admin_places_and_releases(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.admin_a();
    let patient = fixture.a_patients[0];
    let before = fixture.head();
    let placed = fixture.post_json("/v1/holds", &token, &patient_hold(patient));
    assert_eq!(placed.status, 201, "{}", placed.text());
    let hold = placed.json();
    let actor = format!("user:{}", fixture.admin_a);
    assert_eq!(hold["tenant_id"], fixture.clinic_a.id.to_string());
    assert_eq!(hold["scope"], json!({ "scope": "patient", "patient_id": patient }));
    assert_eq!(hold["matter"], "case 2026-cv-0042");
    assert_eq!(hold["reason"], "litigation: preserve the chart");
    assert_eq!(hold["placed_by"], actor);
    assert_eq!(hold["released_at"], Value::Null);
    let id = hold["id"].as_str().expect("hold id").to_owned();

    let entries = fixture.entries_after(before, "hold.place");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["actor"], actor);
    assert_eq!(entries[0]["tenant_id"], fixture.clinic_a.id.to_string());
    assert_eq!(entries[0]["outcome"], "success");
    assert_eq!(subjects(&entries[0]), vec![id.clone(), patient.to_string()]);

    let listed = fixture.get("/v1/holds", &token);
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json(), json!([hold]));

    let before = fixture.head();
    let released = fixture.post(&format!("/v1/holds/{id}/release"), &token, b"");
    assert_eq!(released.status, 200, "{}", released.text());
    assert_eq!(released.json()["id"], id);
    assert_eq!(released.json()["released_by"], actor);
    assert!(released.json()["released_at"].is_string(), "{}", released.text());
    let entries = fixture.entries_after(before, "hold.release");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["actor"], actor);
    assert_eq!(entries[0]["tenant_id"], fixture.clinic_a.id.to_string());
    assert_eq!(subjects(&entries[0]), vec![id.clone()]);
    assert_eq!(fixture.active_holds(&fixture.clinic_a), 0);

    let again = fixture.post(&format!("/v1/holds/{id}/release"), &token, b"");
    assert_error(&again, 409, "conflict");
    let active = fixture.get("/v1/holds", &token);
    assert_eq!(active.json(), json!([]));
    let all = fixture.get("/v1/holds?all=true", &token);
    assert_eq!(all.json().as_array().map(Vec::len), Some(1), "{}", all.text());
}

/// Checks that a tenant administrator of clinic A can neither see, place on nor release
/// clinic B's holds. Each attempt gets the response of a missing id, naming nothing of B.
fn admin_isolated_from_other_tenant(backend: Backend) {
    let mut fixture = Fixture::new(backend);
    let clinic_b = fixture.clinic_b.clone();
    let b_hold = fixture
        .store
        .place_hold(&clinic_b, HoldScope::WholeTenant, "b-matter", "b-reason", "test")
        .expect("hold of clinic B");
    let token = fixture.admin_a();
    let b_texts = [
        clinic_b.id.to_string(),
        "clinic-b".into(),
        fixture.b_patient.to_string(),
        b_hold.id.to_string(),
    ];

    let listed = fixture.get("/v1/holds", &token);
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json(), json!([]));
    let all = fixture.get("/v1/holds?all=true", &token);
    assert_eq!(all.json(), json!([]));
    let named = fixture.get("/v1/holds?tenant=clinic-b", &token);
    assert_error(&named, 400, "bad_request");

    let before = fixture.head();
    let theirs = fixture.post_json("/v1/holds", &token, &patient_hold(fixture.b_patient));
    let missing = fixture.post_json("/v1/holds", &token, &patient_hold(PatientId::new()));
    assert_error(&theirs, 404, "not_found");
    assert_eq!(theirs.text(), missing.text());
    let with_tenant = {
        let mut body = patient_hold(fixture.a_patients[0]);
        body["tenant"] = json!("clinic-b");
        fixture.post_json("/v1/holds", &token, &body)
    };
    let message = assert_error(&with_tenant, 422, "unprocessable_entity");
    assert!(message.contains("tenant"), "{message}");

    let theirs = fixture.post(&format!("/v1/holds/{}/release", b_hold.id), &token, b"");
    let missing = fixture.post(&format!("/v1/holds/{}/release", HoldId::new()), &token, b"");
    assert_error(&theirs, 404, "not_found");
    assert_eq!(theirs.text(), missing.text());

    for response in [&listed, &theirs, &with_tenant] {
        for text in &b_texts {
            assert!(!response.text().contains(text.as_str()), "{}", response.text());
        }
    }
    assert_eq!(fixture.active_holds(&fixture.clinic_a), 0);
    assert_eq!(fixture.active_holds(&clinic_b), 1);
    assert!(fixture.entries_after(before, "hold.place").is_empty());
    assert!(fixture.entries_after(before, "hold.release").is_empty());
    fixture.store.release_hold(None, b_hold.id, "test").expect("release by the operator");
}

/// Checks that a hold placed through the API keeps a patient whose retention has ended
/// through a run requested through the API, while that run purges an unheld patient of
/// another tenant.
fn hold_stops_purge(backend: Backend) {
    let fixture = Fixture::new(backend);
    let admin = fixture.admin_a();
    let held = fixture.a_patients[0];
    let placed = fixture.post_json("/v1/holds", &admin, &patient_hold(held));
    assert_eq!(placed.status, 201, "{}", placed.text());
    let hold_id = placed.json()["id"].as_str().expect("hold id").to_owned();

    let operator = fixture.operator();
    let plan = fixture.get("/v1/lifecycle/plan", &operator);
    assert_eq!(plan.status, 200, "{}", plan.text());
    let actions = plan.json()["actions"].clone();
    let action_of = |patient: PatientId, category: &str| -> Value {
        let found = actions.as_array().expect("actions").iter().find(|action| {
            action["patient_id"] == patient.to_string() && action["category"] == category
        });
        found.cloned().unwrap_or(Value::Null)
    };
    assert_eq!(action_of(held, "patient_records")["decision"], "skip", "{actions}");
    assert_eq!(action_of(held, "patient_records")["skip_reason"], "legal_hold", "{actions}");
    assert_eq!(action_of(held, "patient_records")["hold_id"], hold_id, "{actions}");
    assert_eq!(action_of(fixture.b_patient, "patient_records")["decision"], "purge", "{actions}");

    let explained = fixture.get(&format!("/v1/lifecycle/explain/{held}"), &operator);
    assert_eq!(explained.status, 200, "{}", explained.text());
    let explanation = explained.json();
    assert_eq!(explanation["tenant"], "clinic-a");
    assert_eq!(explanation["expired"], true);
    assert_eq!(explanation["holds"][0]["id"], hold_id);
    assert!(explanation["verdict"].as_str().expect("verdict").starts_with("kept"), "{explanation}");

    let before = fixture.head();
    let run = fixture.post("/v1/lifecycle/run", &operator, b"");
    assert_eq!(run.status, 200, "{}", run.text());
    let report = run.json();
    assert!(report["run_id"].is_string(), "{report}");
    assert_eq!(report["purged"]["patient_records"], 1, "{report}");
    assert_eq!(report["skipped"]["legal_hold"]["patient_records"], 1, "{report}");
    assert!(fixture.is_linked(&fixture.clinic_a, held), "the held patient was purged");
    assert!(fixture.is_linked(&fixture.clinic_a, fixture.a_patients[1]));
    assert!(!fixture.is_linked(&fixture.clinic_b, fixture.b_patient));
    let disposals = fixture.entries_after(before, "lifecycle.dispose");
    assert!(!disposals.is_empty());
    for entry in &disposals {
        assert_eq!(entry["actor"], format!("user:{}", fixture.operator), "{entry}");
        assert_ne!(entry["receipt"]["record_id"], held.to_string(), "{entry}");
    }
}

/// Checks the plan, explanation and run report that the server returns against their schemas
/// in the OpenAPI document. A held patient puts the optional `skip_reason` and `hold_id` of an
/// action, and a hold in the explanation, into the bodies.
fn lifecycle_bodies_match_schemas(backend: Backend) {
    let fixture = Fixture::new(backend);
    let held = fixture.a_patients[0];
    let placed = fixture.post_json("/v1/holds", &fixture.admin_a(), &patient_hold(held));
    assert_eq!(placed.status, 201, "{}", placed.text());
    let document: Value = serde_json::from_str(&document_json()).expect("the document is JSON");
    let operator = fixture.operator();

    let plan = fixture.get("/v1/lifecycle/plan", &operator);
    let explanation = fixture.get(&format!("/v1/lifecycle/explain/{held}"), &operator);
    let report = fixture.post("/v1/lifecycle/run", &operator, b"");
    let cases = [
        ("/v1/lifecycle/plan", "get", plan),
        ("/v1/lifecycle/explain/{patient_id}", "get", explanation),
        ("/v1/lifecycle/run", "post", report),
    ];
    let mut bodies = Vec::new();
    for (path, method, response) in cases {
        assert_eq!(response.status, 200, "{method} {path}: {}", response.text());
        let body = response.json();
        let schema = response_schema(&document, path, method, "200");
        let found = mismatches(&document, schema, &body);
        assert!(found.is_empty(), "{method} {path} body does not match its schema: {found:#?}");
        bodies.push(body);
    }

    let plan = &bodies[0];
    let skipped = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["skip_reason"] == "legal_hold" && action["hold_id"].is_string());
    assert!(skipped.is_some(), "no held action in the plan: {plan}");
    assert_eq!(bodies[1]["holds"].as_array().map(Vec::len), Some(1), "{}", bodies[1]);

    let plan_schema = response_schema(&document, "/v1/lifecycle/plan", "get", "200");
    let mut unknown = plan.clone();
    unknown["undocumented"] = json!(1);
    let found = mismatches(&document, plan_schema, &unknown);
    assert_eq!(found, vec!["$.undocumented: the schema names no such property"]);
    let mut incomplete = plan.clone();
    incomplete.as_object_mut().expect("object").remove("receipts");
    let found = mismatches(&document, plan_schema, &incomplete);
    assert_eq!(found, vec!["$: required property receipts is missing"]);
}

fn audit_read_recorded(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.operator();
    let head = fixture.head();
    assert!(head > 3, "the fixture wrote {head} entries");
    let response = fixture.get("/v1/audit?after_seq=1&limit=3", &token);
    assert_eq!(response.status, 200, "{}", response.text());
    let page = response.json();
    let seqs: Vec<i64> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(page["next_after_seq"], 4);
    assert_eq!(page["entries"][0]["body"]["seq"], 2);
    assert!(page["entries"][0]["hash"].is_string(), "{page}");
    assert!(!response.text().contains(GIVEN_NAME), "{}", response.text());

    let reads = fixture.entries_after(head, "audit.read");
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["actor"], format!("user:{}", fixture.operator));
    assert_eq!(reads[0]["tenant_id"], Value::Null);
    assert_eq!(reads[0]["outcome"], "success");
    let detail = reads[0]["detail"].as_str().expect("detail");
    assert!(detail.starts_with("role=platform_operator request="), "{detail}");
    assert!(detail.ends_with(" after_seq=1 limit=3 count=3"), "{detail}");

    let tail = fixture.get(&format!("/v1/audit?after_seq={}", head + 1), &token);
    assert_eq!(tail.status, 200, "{}", tail.text());
    assert_eq!(tail.json()["entries"], json!([]));
    assert_eq!(tail.json()["next_after_seq"], head + 1);

    let verify = fixture.get("/v1/audit/verify", &token);
    assert_eq!(verify.status, 200, "{}", verify.text());
    let report = verify.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["head_seq"], fixture.head(), "{report}");
    assert_eq!(report["signatures_checked"], false, "{report}");
}

/// The verify report checks checkpoint signatures with the server's public key.
#[test]
fn verify_checks_signatures() {
    let key_dir = tempfile::tempdir().expect("key folder");
    let signer = AuditSigningKey::create(key_dir.path().join("audit.key")).expect("signing key");
    let public = AuditPublicKey::from_hex(&signer.public_key_hex()).expect("public key");
    let mut fixture = Fixture::with(Backend::Sqlite, None, Some(public));
    let admin = fixture.admin_a();
    let placed = fixture.post_json("/v1/holds", &admin, &patient_hold(fixture.a_patients[1]));
    assert_eq!(placed.status, 201, "{}", placed.text());
    fixture.store.sign_audit_checkpoint(&signer).expect("checkpoint");
    let response = fixture.get("/v1/audit/verify", &fixture.operator());
    assert_eq!(response.status, 200, "{}", response.text());
    let report = response.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["signatures_checked"], true, "{report}");
    assert_eq!(report["checkpoints"], 1, "{report}");
}

/// An operator lists every tenant's holds or one tenant's, and places a hold on a tenant it
/// names.
#[test]
fn operator_manages_any_tenant() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.operator();
    let whole = json!({
        "scope": "tenant",
        "matter": "audit 7",
        "reason": "regulator request",
        "tenant": "clinic-b",
    });
    let placed = fixture.post_json("/v1/holds", &token, &whole);
    assert_eq!(placed.status, 201, "{}", placed.text());
    assert_eq!(placed.json()["tenant_id"], fixture.clinic_b.id.to_string());
    assert_eq!(placed.json()["scope"], json!({ "scope": "whole_tenant" }));
    assert_eq!(placed.json()["placed_by"], format!("user:{}", fixture.operator));
    let admin_hold =
        fixture.post_json("/v1/holds", &fixture.admin_a(), &patient_hold(fixture.a_patients[1]));
    assert_eq!(admin_hold.status, 201, "{}", admin_hold.text());

    let all = fixture.get("/v1/holds", &token);
    assert_eq!(all.json().as_array().map(Vec::len), Some(2), "{}", all.text());
    let only_b = fixture.get("/v1/holds?tenant=clinic-b", &token);
    assert_eq!(only_b.json(), json!([placed.json()]));
    let unknown = fixture.get("/v1/holds?tenant=clinic-z", &token);
    let message = assert_error(&unknown, 400, "bad_request");
    assert!(!message.contains("clinic-z"), "{message}");

    let without_tenant = {
        let mut body = whole.clone();
        body.as_object_mut().expect("object").remove("tenant");
        fixture.post_json("/v1/holds", &token, &body)
    };
    let message = assert_error(&without_tenant, 422, "unprocessable_entity");
    assert!(message.contains("tenant"), "{message}");

    let id = admin_hold.json()["id"].as_str().expect("id").to_owned();
    let released = fixture.post(&format!("/v1/holds/{id}/release"), &token, b"");
    assert_eq!(released.status, 200, "{}", released.text());
    assert_eq!(released.json()["released_by"], format!("user:{}", fixture.operator));
}

/// Every route rejects the roles that may not use it with 403, before any store change. A
/// storefront token needs a client certificate, so `tests/isolation.rs` checks that role.
#[test]
fn wrong_roles_get_403() {
    let fixture = Fixture::new(Backend::Sqlite);
    let hold =
        fixture.post_json("/v1/holds", &fixture.admin_a(), &patient_hold(fixture.a_patients[1]));
    assert_eq!(hold.status, 201, "{}", hold.text());

    let release = format!("/v1/holds/{}/release", hold.json()["id"].as_str().expect("id"));
    let explain = format!("/v1/lifecycle/explain/{}", fixture.a_patients[0]);
    let body = serde_json::to_vec(&patient_hold(fixture.a_patients[0])).expect("JSON");
    let routes: [(&str, &str, &[u8]); 8] = [
        ("GET", "/v1/holds", b""),
        ("POST", "/v1/holds", &body),
        ("POST", &release, b""),
        ("GET", "/v1/lifecycle/plan", b""),
        ("GET", &explain, b""),
        ("POST", "/v1/lifecycle/run", b""),
        ("GET", "/v1/audit", b""),
        ("GET", "/v1/audit/verify", b""),
    ];
    let operator_only =
        |path: &str| path.starts_with("/v1/lifecycle") || path.starts_with("/v1/audit");

    let before = fixture.head();
    let callers = [
        ("provider", fixture.token_of(Some("clinic-a"), "provider@a.test")),
        ("patient", fixture.token_of(Some("clinic-a"), "patient@a.test")),
        ("tenant_admin", fixture.admin_a()),
    ];
    for (role, token) in callers {
        let authorization = format!("Bearer {token}");
        for (method, path, body) in &routes {
            if role == "tenant_admin" && !operator_only(path) {
                continue;
            }
            let response = fixture
                .client()
                .request_with(method, path, &[("Authorization", &authorization)], body)
                .expect("request");
            let message = assert_error(&response, 403, "forbidden");
            assert!(message.contains("may not use this route"), "{role} {path}: {message}");
        }
    }

    let after = fixture.store.audit_entries(before, u32::MAX).expect("entries");
    let actions: Vec<&str> =
        after.iter().filter_map(|entry| entry.body["action"].as_str()).collect();
    assert!(
        actions.iter().all(|action| *action == "login.success" || *action == "session.login"),
        "{actions:?}"
    );
    assert_eq!(fixture.active_holds(&fixture.clinic_a), 1);
    assert!(fixture.is_linked(&fixture.clinic_a, fixture.a_patients[0]));
}

/// Bad hold bodies get 4xx errors that name the field and never echo the value, and store
/// nothing.
#[test]
fn bad_hold_input_rejected() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.admin_a();
    let patient = fixture.a_patients[0];
    let card = "4111 1111 1111 1111";
    let with = |field: &str, value: Value| {
        let mut body = patient_hold(patient);
        body[field] = value;
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("matter", json!(format!("card {card}"))), "matter"),
        (with("reason", json!(format!("paid with {card}"))), "reason"),
        (with("reason", json!("paid 4111\u{a0}1111\u{a0}1111\u{a0}1111")), "reason"),
        (with("matter", json!("case4111111111111111")), "matter"),
        (with("reason", json!("   ")), "reason"),
        (with("matter", json!("m".repeat(201))), "matter"),
        (with("reason", json!("line\u{0}break")), "reason"),
        (with("scope", json!("everything")), "scope"),
        (with("patient_id", json!("Quillon-Maravelle")), "patient_id"),
        (with("scope", json!("tenant")), "patient_id"),
        (with("nickname", json!("Quillon")), "unknown field"),
        (with("matter", json!(42)), "matter"),
        (json!({ "scope": "patient", "matter": "m", "reason": "r" }), "patient_id"),
        (json!({ "scope": "tenant", "reason": "r" }), "matter"),
        (json!([1, 2]), "object"),
    ];
    let before = fixture.head();
    for (body, field) in cases {
        let response = fixture.post_json("/v1/holds", &token, &body);
        let message = assert_error(&response, 422, "unprocessable_entity");
        assert!(message.contains(field), "{body}: {message}");
        for echoed in [card, "Quillon", "everything"] {
            assert!(!response.text().contains(echoed), "{body}: {}", response.text());
        }
    }
    let malformed = fixture.post("/v1/holds", &token, b"{\"scope\": \"Quillon");
    assert_error(&malformed, 400, "bad_request");
    assert!(!malformed.text().contains("Quillon"), "{}", malformed.text());
    let large = format!("{{\"matter\": \"{}\"}}", "x".repeat(17 * 1024));
    let too_large = fixture.post("/v1/holds", &token, large.as_bytes());
    assert_error(&too_large, 413, "payload_too_large");

    let bad_id = fixture.post("/v1/holds/Quillon-Maravelle/release", &token, b"");
    let message = assert_error(&bad_id, 400, "bad_request");
    assert!(message.contains("hold_id"), "{message}");
    assert!(!bad_id.text().contains("Quillon"), "{}", bad_id.text());
    let with_body = fixture.post(&format!("/v1/holds/{}/release", HoldId::new()), &token, b"{}");
    assert_error(&with_body, 413, "payload_too_large");

    assert_eq!(fixture.active_holds(&fixture.clinic_a), 0);
    assert!(fixture.entries_after(before, "hold.place").is_empty());
}

/// Bad query strings and path values of the operator routes get 400 without an echo.
#[test]
fn bad_operator_queries_rejected() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.operator();
    let before = fixture.head();
    for (path, parameter) in [
        ("/v1/audit?limit=0", "limit"),
        ("/v1/audit?limit=1001", "limit"),
        ("/v1/audit?limit=ten", "limit"),
        ("/v1/audit?after_seq=-1", "after_seq"),
        ("/v1/audit?after_seq=1&after_seq=2", "after_seq"),
        ("/v1/audit?Quillon=1", "after_seq, limit"),
        ("/v1/audit?after_seq=%ZZ", "after_seq"),
        ("/v1/audit?limit=%FF", "malformed"),
        ("/v1/holds?all=Quillon", "all"),
        ("/v1/lifecycle/plan?as_of=2030", "no query parameters"),
        ("/v1/lifecycle/explain/Quillon-Maravelle", "patient_id"),
        ("/v1/lifecycle/explain/Quillon-Maravelle?tenant=clinic-a", "patient_id"),
    ] {
        let response = fixture.get(path, &token);
        let message = assert_error(&response, 400, "bad_request");
        assert!(message.contains(parameter), "{path}: {message}");
        assert!(!response.text().contains("Quillon"), "{path}: {}", response.text());
    }
    assert!(fixture.entries_after(before, "audit.read").is_empty());
    assert!(fixture.entries_after(before, "lifecycle.explain").is_empty());

    let nobody = PatientId::new();
    let missing = fixture.get(&format!("/v1/lifecycle/explain/{nobody}"), &token);
    assert_error(&missing, 404, "not_found");
    let unknown_tenant = format!("/v1/lifecycle/explain/{}?tenant=clinic-z", fixture.a_patients[0]);
    assert_error(&fixture.get(&unknown_tenant, &token), 400, "bad_request");
    let named = format!("/v1/lifecycle/explain/{}?tenant=clinic-a", fixture.a_patients[1]);
    let explained = fixture.get(&named, &token);
    assert_eq!(explained.status, 200, "{}", explained.text());
    assert_eq!(explained.json()["expired"], false);
    assert!(!explained.text().contains(GIVEN_NAME), "{}", explained.text());

    // An explanation reads a patient's retention dates, so each one is audited.
    let explains = fixture.entries_after(before, "lifecycle.explain");
    assert_eq!(explains.len(), 2, "{explains:?}");
    assert_eq!(explains[0]["outcome"], "not_found");
    assert_eq!(subjects(&explains[0]), [nobody.to_string()]);
    assert_eq!(explains[1]["outcome"], "success");
    assert_eq!(explains[1]["tenant_id"], fixture.clinic_a.id.to_string());
    assert_eq!(subjects(&explains[1]), [fixture.a_patients[1].to_string()]);
}

/// A run requested while another is under way on the node gets 409, and the first run still
/// returns its report.
#[test]
fn concurrent_run_gets_409() {
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let started_tx = Mutex::new(started_tx);
    let release_rx = Mutex::new(release_rx);
    let job: Arc<LifecycleJob> = Arc::new(move |actor| -> Result<RunReport, BoxError> {
        started_tx.lock().expect("lock").send(()).expect("test waits");
        release_rx.lock().expect("lock").recv().expect("test releases the run");
        Ok(RunReport {
            run_id: format!("blocked-{}", actor.unwrap_or("scheduler")),
            as_of: Utc::now(),
            policy_version: "test".to_owned(),
            tally: Tally::default(),
            resumed_file_deletions: 0,
            audit_entries_disposed: 0,
            platform_sessions_purged: 0,
            audit_checkpoint_seq: None,
        })
    });
    let fixture = Fixture::with(Backend::Sqlite, Some(job), None);

    let authorization = format!("Bearer {}", fixture.operator());
    let client = fixture.client();
    let post_run = || {
        client
            .request_with("POST", "/v1/lifecycle/run", &[("Authorization", &authorization)], b"")
            .expect("POST /v1/lifecycle/run")
    };
    let first = std::thread::scope(|scope| {
        let first = scope.spawn(post_run);
        started_rx.recv_timeout(Duration::from_secs(30)).expect("the first run started");
        let second = post_run();
        let message = assert_error(&second, 409, "conflict");
        assert!(message.contains("already under way"), "{message}");
        release_tx.send(()).expect("the run waits");
        first.join().expect("first request")
    });

    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["run_id"], format!("blocked-user:{}", fixture.operator));
}

medconnect_store::backend_tests!(
    admin_places_and_releases,
    admin_isolated_from_other_tenant,
    hold_stops_purge,
    lifecycle_bodies_match_schemas,
    audit_read_recorded,
);
