//! Tenant isolation across every tenant-scoped route and every role, on both store backends,
//! over real TLS, with patients of the Synthea sample in two tenants.
//!
//! For each route of [`ROUTES`] and each role, a caller of tenant A sends the request twice:
//! once with ids of tenant B and once with ids that exist nowhere. Both responses must be the
//! same status and the same body, byte for byte, so the response cannot tell whether B has the
//! record. Roles the route serves get 404; the others get 403. No response names an id, the
//! slug or a patient of B, and B's records and audit entries are the same afterwards.
//!
//! A last check compares [`ROUTES`] and [`UNSCOPED`] with the operations of the OpenAPI
//! document, so a route added without a row here fails this test.

use std::collections::BTreeSet;

use medconnect_api::testing::phi::{self, PhiCorpus};
use medconnect_api::testing::{
    ClientCertFiles, HttpResponse, HttpsClient, TestCa, TestServer, TestServerOptions,
};
use medconnect_crypto::{hash_password, SecretToken};
use medconnect_domain::model::{HoldScope, ImportBatch, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::PatientId;
use medconnect_import::synthea::{self, ReadOptions};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{NewServiceToken, NewUser, Role};

const PASSWORD: &str = "correct horse battery staple";
const MASTER: [u8; 32] = [11; 32];
/// Patients of the sample per tenant.
const PATIENTS_PER_TENANT: usize = 3;

/// A tenant-scoped route. Placeholders in `path` and in a UTF-8 `body` are replaced by ids:
/// `{patient}`, `{photo}` and `{hold}`.
struct Route {
    method: &'static str,
    path: &'static str,
    /// JSON with placeholders, or the raw bytes of an upload, sent as `content_type`.
    body: &'static [u8],
    content_type: &'static str,
    /// Roles the route serves. They get 404 for ids of another tenant; the others get 403.
    serves: &'static [Role],
}

const JSON: &str = "application/json";

/// A PNG signature and the start of its header chunk, which pass the photo upload's type
/// check.
const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, b'I'];

const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/v1/patients/{patient}",
        body: b"",
        content_type: JSON,
        serves: &[Role::TenantAdmin, Role::Provider],
    },
    Route {
        method: "POST",
        path: "/v1/patients/{patient}/intake-forms",
        body: br#"{"form": "intake", "answers": {"reason": "follow-up"}}"#,
        content_type: JSON,
        serves: &[Role::Provider, Role::Storefront],
    },
    Route {
        method: "GET",
        path: "/v1/patients/{patient}/intake-forms",
        body: b"",
        content_type: JSON,
        serves: &[Role::Provider],
    },
    Route {
        method: "POST",
        path: "/v1/patients/{patient}/id-photos",
        body: PNG,
        content_type: "image/png",
        serves: &[Role::Provider, Role::Storefront],
    },
    Route {
        method: "GET",
        path: "/v1/patients/{patient}/id-photos",
        body: b"",
        content_type: JSON,
        serves: &[Role::Provider],
    },
    Route {
        method: "GET",
        path: "/v1/patients/{patient}/id-photos/{photo}",
        body: b"",
        content_type: JSON,
        serves: &[Role::Provider],
    },
    Route {
        method: "POST",
        path: "/v1/patients/{patient}/encounters",
        body: br#"{"at":"2024-06-01T09:00:00Z","encounter_class":"virtual"}"#,
        content_type: JSON,
        serves: &[Role::Provider],
    },
    Route {
        method: "GET",
        path: "/v1/patients/{patient}/consultations",
        body: b"",
        content_type: JSON,
        serves: &[Role::Provider],
    },
    Route {
        method: "POST",
        path: "/v1/patients/{patient}/consultations",
        body: br#"{"status":"completed","encounter_class":"virtual","reason":"follow-up",
            "started_at":"2024-06-01T09:00:00Z"}"#,
        content_type: JSON,
        serves: &[Role::Provider],
    },
    Route {
        method: "GET",
        path: "/v1/patients/{patient}/prescriptions",
        body: b"",
        content_type: JSON,
        serves: &[Role::Provider],
    },
    Route {
        method: "POST",
        path: "/v1/patients/{patient}/prescriptions",
        body: br#"{"code":"308182","description":"Amoxicillin 250 MG Oral Capsule",
            "dispenses":1,"controlled":false,"started_at":"2024-06-01T09:00:00Z"}"#,
        content_type: JSON,
        serves: &[Role::Provider],
    },
    Route {
        method: "POST",
        path: "/v1/holds",
        body: br#"{"scope":"patient","patient_id":"{patient}","matter":"m-1","reason":"held"}"#,
        content_type: JSON,
        serves: &[Role::TenantAdmin],
    },
    Route {
        method: "POST",
        path: "/v1/holds/{hold}/release",
        body: b"",
        content_type: JSON,
        serves: &[Role::TenantAdmin],
    },
    Route {
        method: "GET",
        path: "/v1/lifecycle/explain/{patient}",
        body: b"",
        content_type: JSON,
        serves: &[],
    },
];

/// Routes of [`ROUTES`] on which a platform operator acts on any tenant by design, so the
/// matrix checks them for the roles of tenant A only. `tests/operator.rs` checks the operator.
const OPERATOR_ACROSS_TENANTS: &[&str] =
    &["/v1/holds", "/v1/holds/{hold}/release", "/v1/lifecycle/explain/{patient}"];

/// Routes without a tenant-scoped id in the path or body, which the matrix leaves out: their
/// tenant comes from the caller alone, and their own tests check them.
const UNSCOPED: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/login"),
    ("POST", "/v1/logout"),
    ("GET", "/v1/me"),
    ("GET", "/v1/policy"),
    ("GET", "/v1/patients"),
    ("GET", "/v1/holds"),
    ("GET", "/v1/lifecycle/plan"),
    ("POST", "/v1/lifecycle/run"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
];

/// The roles of tenant A, each with a token.
const ROLES: [Role; 5] =
    [Role::PlatformOperator, Role::TenantAdmin, Role::Provider, Role::Patient, Role::Storefront];

/// Ids substituted into a route.
#[derive(Clone)]
struct Ids {
    patient: String,
    photo: String,
    hold: String,
}

impl Ids {
    /// Ids that no tenant has.
    fn missing() -> Self {
        Ids {
            patient: PatientId::new().to_string(),
            photo: uuid::Uuid::new_v4().to_string(),
            hold: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("{patient}", &self.patient)
            .replace("{photo}", &self.photo)
            .replace("{hold}", &self.hold)
    }
}

struct Fixture {
    server: TestServer,
    store: TestStore,
    clinic_b: Tenant,
    /// A token per role of tenant A.
    tokens: Vec<(Role, String)>,
    /// The client certificate that A's storefront token is bound to.
    storefront_cert: ClientCertFiles,
    _cert_dir: tempfile::TempDir,
    b_ids: Ids,
    /// Strings of tenant B that no response to A may contain: ids, slug and tenant id.
    b_strings: Vec<String>,
    /// The PHI of B's patients.
    b_phi: PhiCorpus,
    /// The PHI of every imported patient, for the log and audit search.
    all_phi: PhiCorpus,
}

/// Returns the sample's first `2 * PATIENTS_PER_TENANT` patients with their records, split
/// into two batches.
fn sample_batches() -> (ImportBatch, ImportBatch) {
    let (batch, _) =
        synthea::read_dir(&phi::synthea_sample_dir(), &ReadOptions::default()).expect("sample");
    let ids: Vec<String> = batch
        .patients
        .iter()
        .take(PATIENTS_PER_TENANT * 2)
        .map(|patient| patient.source_id.clone())
        .collect();
    let part = |wanted: &[String]| ImportBatch {
        source_system: batch.source_system.clone(),
        patients: batch
            .patients
            .iter()
            .filter(|p| wanted.contains(&p.source_id))
            .cloned()
            .collect(),
        providers: batch.providers.clone(),
        consultations: batch
            .consultations
            .iter()
            .filter(|c| wanted.contains(&c.patient_source_id))
            .cloned()
            .collect(),
        prescriptions: batch
            .prescriptions
            .iter()
            .filter(|p| wanted.contains(&p.patient_source_id))
            .cloned()
            .collect(),
        history: batch
            .history
            .iter()
            .filter(|h| wanted.contains(&h.patient_source_id))
            .cloned()
            .collect(),
    };
    let (a, b) = ids.split_at(PATIENTS_PER_TENANT);
    (part(a), part(b))
}

fn corpus_of(profiles: &[NewPatientProfile]) -> PhiCorpus {
    let mut corpus = PhiCorpus::new();
    for profile in profiles {
        corpus.add_profile(profile);
    }
    corpus
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        phi::capture_logs();
        let mut store = backend.create(Box::new(medconnect_domain::clock::SystemClock));
        store
            .set_master_keys(medconnect_crypto::MasterKey::from_bytes(1, &MASTER), None)
            .expect("master key");
        let clinic_a = store.create_tenant("clinic-a", "Clinic A", "test").expect("tenant");
        let clinic_b = store.create_tenant("clinic-b", "Clinic B", "test").expect("tenant");
        let policy = Policy::builtin();
        let (batch_a, batch_b) = sample_batches();
        store.import(&clinic_a, &batch_a, &policy, "test").expect("import A");
        store.import(&clinic_b, &batch_b, &policy, "test").expect("import B");
        let find = |store: &TestStore, tenant: &Tenant, source_id: &str| {
            store.find_patient(tenant, "synthea", source_id).expect("find").expect("imported")
        };
        let a_patient = find(&store, &clinic_a, &batch_a.patients[0].source_id);
        let b_patient = find(&store, &clinic_b, &batch_b.patients[0].source_id);

        let photo = store
            .add_id_photo(&clinic_b, b_patient, b"\xff\xd8\xff photo", chrono::Utc::now(), "test")
            .expect("photo of B");
        let hold = store
            .place_hold(&clinic_b, HoldScope::Patient(b_patient), "matter-b", "review", "test")
            .expect("hold of B");
        let b_ids = Ids {
            patient: b_patient.to_string(),
            photo: photo.to_string(),
            hold: hold.id.to_string(),
        };

        let hash = hash_password(PASSWORD).expect("hash");
        for (tenant, username, role, patient) in [
            (None, "ops", Role::PlatformOperator, None),
            (Some(&clinic_a), "admin@a.test", Role::TenantAdmin, None),
            (Some(&clinic_a), "provider@a.test", Role::Provider, None),
            (Some(&clinic_a), "patient@a.test", Role::Patient, Some(a_patient)),
            (Some(&clinic_b), "provider@b.test", Role::Provider, None),
        ] {
            let new = NewUser { tenant, username, role, password_hash: &hash, patient };
            store.create_user(&new, "test").expect("user");
        }
        let cert_dir = tempfile::tempdir().expect("temporary folder");
        let ca = TestCa::create(cert_dir.path(), "storefronts");
        let storefront_cert = ca.issue_client("storefront-a");
        let storefront = SecretToken::generate().expect("token");
        let new = NewServiceToken {
            tenant: &clinic_a,
            name: "storefront",
            role: Role::Storefront,
            token_hash: storefront.hash(),
            expires_at: None,
            client_cert: Some(storefront_cert.sha256),
        };
        store.create_service_token(&new, "test").expect("storefront token");

        let mut options = TestServerOptions::new(MASTER);
        let client_ca = ca.cert.clone();
        options.configure = Box::new(move |config| config.client_ca = Some(client_ca));
        let server = TestServer::start(&store, options);
        let login = |tenant: Option<&str>, username: &str| -> String {
            let body = serde_json::json!({
                "tenant": tenant, "username": username, "password": PASSWORD
            });
            let body = serde_json::to_vec(&body).expect("JSON");
            let response = server.client().request("POST", "/v1/login", &body).expect("login");
            assert_eq!(response.status, 200, "{}", response.text());
            response.json()["token"].as_str().expect("token").to_owned()
        };
        let tokens = vec![
            (Role::PlatformOperator, login(None, "ops")),
            (Role::TenantAdmin, login(Some("clinic-a"), "admin@a.test")),
            (Role::Provider, login(Some("clinic-a"), "provider@a.test")),
            (Role::Patient, login(Some("clinic-a"), "patient@a.test")),
            (Role::Storefront, storefront.expose().to_owned()),
        ];
        assert_eq!(tokens.iter().map(|(role, _)| *role).collect::<Vec<_>>(), ROLES);

        let mut b_strings = vec![
            b_ids.patient.clone(),
            b_ids.photo.clone(),
            b_ids.hold.clone(),
            clinic_b.id.to_string(),
            clinic_b.slug.clone(),
        ];
        b_strings.extend(
            store
                .patient_links(&clinic_b)
                .expect("B's links")
                .iter()
                .map(|l| l.patient_id.to_string()),
        );
        let b_phi = corpus_of(&batch_b.patients);
        let mut all = batch_a.patients.clone();
        all.extend(batch_b.patients.iter().cloned());
        Fixture {
            server,
            store,
            clinic_b,
            tokens,
            storefront_cert,
            _cert_dir: cert_dir,
            b_ids,
            b_strings,
            b_phi,
            all_phi: corpus_of(&all),
        }
    }

    /// Sends a request as `role` with its token, over a connection with the storefront's
    /// client certificate when the role is storefront.
    fn send(&self, route: &Route, ids: &Ids, role: Role, token: &str) -> HttpResponse {
        let path = ids.fill(route.path);
        let body = match std::str::from_utf8(route.body) {
            Ok(text) => ids.fill(text).into_bytes(),
            Err(_) => route.body.to_vec(),
        };
        let authorization = format!("Bearer {token}");
        let headers =
            [("Authorization", authorization.as_str()), ("Content-Type", route.content_type)];
        let client = match role {
            Role::Storefront => HttpsClient::with_client_certificate(
                self.server.addr(),
                self.server.cert(),
                &self.storefront_cert,
            ),
            _ => self.server.client(),
        };
        client
            .request_with(route.method, &path, &headers, &body)
            .unwrap_or_else(|error| panic!("{} {}: {error}", route.method, route.path))
    }

    /// Returns what tenant B holds, to compare before and after: its links with their counts,
    /// its holds, and the audit entries that name it.
    fn b_state(&self) -> String {
        let links = self.store.patient_links(&self.clinic_b).expect("links");
        let details: Vec<String> = links
            .iter()
            .map(|link| {
                let detail =
                    self.store.patient_link(&self.clinic_b, link.patient_id).expect("link");
                serde_json::to_string(&detail).expect("JSON")
            })
            .collect();
        let holds = self.store.holds(Some(self.clinic_b.id), true).expect("holds");
        let tenant = self.clinic_b.id.to_string();
        let entries = self.store.audit_entries(0, u32::MAX).expect("entries");
        let b_entries = entries.iter().filter(|entry| entry.body.to_string().contains(&tenant));
        format!(
            "{}\n{}\n{}",
            details.join("\n"),
            serde_json::to_string(&holds).expect("JSON"),
            b_entries.map(|entry| entry.hash.as_str()).collect::<Vec<_>>().join(",")
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let audit = self.store.audit_entries(0, u32::MAX).expect("entries");
        phi::assert_no_phi(&self.all_phi, &audit);
    }
}

fn cross_tenant_requests_look_missing(backend: Backend) {
    let fixture = Fixture::new(backend);
    let before = fixture.b_state();
    let mut checked = 0;
    for route in ROUTES {
        for (role, token) in &fixture.tokens {
            if *role == Role::PlatformOperator && OPERATOR_ACROSS_TENANTS.contains(&route.path) {
                continue;
            }
            let label = format!("{} {} as {role}", route.method, route.path);
            let of_b = fixture.send(route, &fixture.b_ids, *role, token);
            let missing = fixture.send(route, &Ids::missing(), *role, token);
            let expected = if route.serves.contains(role) { 404 } else { 403 };
            assert_eq!(of_b.status, expected, "{label}: {}", of_b.text());
            assert_eq!(missing.status, of_b.status, "{label}: {}", missing.text());
            assert_eq!(missing.body, of_b.body, "{label}: bodies differ");
            let text = of_b.text();
            for value in &fixture.b_strings {
                assert!(!text.contains(value.as_str()), "{label}: the response names B's {value}");
            }
            assert!(fixture.b_phi.find(&text).is_empty(), "{label}: the response has B's PHI");
            checked += 1;
        }
    }
    let operator_rows =
        ROUTES.iter().filter(|route| OPERATOR_ACROSS_TENANTS.contains(&route.path)).count();
    assert_eq!(checked, ROUTES.len() * ROLES.len() - operator_rows);
    assert_eq!(fixture.b_state(), before, "tenant B changed");
}

fn provider_of_b_still_reads_its_patient(backend: Backend) {
    // The matrix would also pass if every request failed; B's own provider must succeed.
    let fixture = Fixture::new(backend);
    let body = serde_json::json!({
        "tenant": "clinic-b", "username": "provider@b.test", "password": PASSWORD
    });
    let body = serde_json::to_vec(&body).expect("JSON");
    let response = fixture.server.client().request("POST", "/v1/login", &body).expect("login");
    let token = response.json()["token"].as_str().expect("token").to_owned();
    let route = &ROUTES[0];
    let response = fixture.send(route, &fixture.b_ids, Role::Provider, &token);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["link"]["link"]["patient_id"], fixture.b_ids.patient);
}

medconnect_store::backend_tests!(
    cross_tenant_requests_look_missing,
    provider_of_b_still_reads_its_patient
);

#[test]
fn every_route_in_matrix() {
    let document: serde_json::Value =
        serde_json::from_str(&medconnect_api::openapi::document_json()).expect("document");
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            // The matrix names the path parameter of a patient `{patient}`, of a photo
            // `{photo}` and of a hold `{hold}`.
            let path = path
                .replace("{id}", "{patient}")
                .replace("{patient_id}", "{patient}")
                .replace("{photo_id}", "{photo}")
                .replace("{hold_id}", "{hold}");
            documented.insert((method.to_ascii_uppercase(), path));
        }
    }
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|route| (route.method, route.path))
        .chain(UNSCOPED.iter().copied())
        .map(|(method, path)| (method.to_owned(), path.to_owned()))
        .collect();
    let unchecked: Vec<_> = documented.difference(&listed).collect();
    assert!(unchecked.is_empty(), "routes without an isolation check: {unchecked:?}");
    let stale: Vec<_> = listed.difference(&documented).collect();
    assert!(stale.is_empty(), "rows for routes that do not exist: {stale:?}");
}
