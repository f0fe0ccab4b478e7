//! Intake forms and ID photos under `/v1/patients/{id}` against the real server on 127.0.0.1,
//! over real TLS, on both store backends: values, tenant isolation, roles, bad input, body
//! limits and audit entries.

mod common;

use common::{subjects, TwoClinics};
use medconnect_api::testing::phi::{self, PhiCorpus};
use medconnect_api::testing::{
    ClientCertFiles, HttpResponse, HttpsClient, TestCa, TestServer, TestServerOptions,
};
use medconnect_crypto::{MasterKey, SecretToken};
use medconnect_domain::clock::SystemClock;
use medconnect_domain::model::Tenant;
use medconnect_domain::{PatientId, ServiceTokenId, UserId};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{NewServiceToken, Role};
use serde_json::{json, Value};

const MASTER: [u8; 32] = [13; 32];
/// An answer that must appear in no log line, audit entry or error message.
const SECRET_ANSWER: &str = "recurring chest pain after the marathon";
const CARD: &str = "4111 1111 1111 1111";
const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, b'I'];
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00];

/// Two tenants, accounts of every role in clinic A, and a server on their store.
struct Fixture {
    server: TestServer,
    store: TestStore,
    clinic_b: Tenant,
    /// Patients of clinic A: `a1`, whose patient account exists, and `a2`.
    a1: PatientId,
    a2: PatientId,
    /// The patient of clinic B.
    b1: PatientId,
    provider: UserId,
    patient_user: UserId,
    storefront_id: ServiceTokenId,
    tokens: Vec<(Role, String)>,
    b_token: String,
    /// The client certificate that the storefront token is bound to.
    storefront_cert: ClientCertFiles,
    corpus: PhiCorpus,
    _cert_dir: tempfile::TempDir,
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        phi::capture_logs();
        let mut store = backend.create(Box::new(SystemClock));
        store.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect("master key");
        let clinics = TwoClinics::create(&mut store);
        let corpus = TwoClinics::phi_corpus();
        let clinic_a = clinics.clinic_a;
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
        let storefront_id = store.create_service_token(&new, "test").expect("storefront");

        let mut options = TestServerOptions::new(MASTER);
        let client_ca = ca.cert.clone();
        options.configure = Box::new(move |config| config.client_ca = Some(client_ca));
        let server = TestServer::start(&store, options);
        let login = |tenant: Option<&str>, username: &str| {
            common::login(&server.client(), tenant, username)
        };
        let tokens = vec![
            (Role::PlatformOperator, login(None, "ops")),
            (Role::TenantAdmin, login(Some("clinic-a"), "admin@a.test")),
            (Role::Provider, login(Some("clinic-a"), "provider@a.test")),
            (Role::Patient, login(Some("clinic-a"), "patient@a.test")),
            (Role::Storefront, storefront.expose().to_owned()),
        ];
        let b_token = login(Some("clinic-b"), "provider@b.test");
        Fixture {
            server,
            store,
            clinic_b: clinics.clinic_b,
            a1: clinics.a_patients[0],
            a2: clinics.a_patients[1],
            b1: clinics.b_patient,
            provider: clinics.provider,
            patient_user: clinics.patient_user,
            storefront_id,
            tokens,
            b_token,
            storefront_cert,
            corpus,
            _cert_dir: cert_dir,
        }
    }

    /// Returns a client for `token`: with the storefront's client certificate for the
    /// storefront token, which authenticates only with it.
    fn client_for(&self, token: &str) -> HttpsClient {
        if token == self.token(Role::Storefront) {
            let (addr, cert) = (self.server.addr(), self.server.cert());
            return HttpsClient::with_client_certificate(addr, cert, &self.storefront_cert);
        }
        self.server.client()
    }

    fn token(&self, role: Role) -> &str {
        let found = self.tokens.iter().find(|(r, _)| *r == role);
        &found.expect("a token per role").1
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        content_type: &str,
        body: &[u8],
    ) -> HttpResponse {
        let authorization = format!("Bearer {token}");
        let headers = [("Authorization", authorization.as_str()), ("Content-Type", content_type)];
        self.client_for(token)
            .request_with(method, path, &headers, body)
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
    }

    fn post_form(&self, patient: PatientId, token: &str, body: &Value) -> HttpResponse {
        let path = format!("/v1/patients/{patient}/intake-forms");
        self.send("POST", &path, token, "application/json", body.to_string().as_bytes())
    }

    fn post_photo(
        &self,
        patient: PatientId,
        token: &str,
        kind: &str,
        bytes: &[u8],
    ) -> HttpResponse {
        self.send("POST", &format!("/v1/patients/{patient}/id-photos"), token, kind, bytes)
    }

    fn get(&self, path: &str, token: &str) -> HttpResponse {
        self.client_for(token).get_with_token(path, token)
    }

    fn head(&self) -> i64 {
        common::audit_head(&self.store)
    }

    /// Returns the `intake_form.*` and `id_photo.*` entries written after `after`.
    fn entries_after(&self, after: i64) -> Vec<Value> {
        common::audit_bodies_after(&self.store, after, |action| {
            action.starts_with("intake_form.") || action.starts_with("id_photo.")
        })
    }

    /// Returns the number of intake forms and ID photos of each patient, clinic B's included.
    fn stored_counts(&self) -> Vec<(u64, u64)> {
        let mut counts = Vec::new();
        for link in self.store.links_of_patient(self.a1).expect("a1").iter().chain(
            self.store
                .links_of_patient(self.a2)
                .expect("a2")
                .iter()
                .chain(self.store.links_of_patient(self.b1).expect("b1").iter()),
        ) {
            let tenant = self.store.tenant(link.tenant_id).expect("tenant");
            let detail = self.store.patient_link(&tenant, link.patient_id).expect("link");
            counts.push((detail.counts.intake_forms, detail.counts.id_photos));
        }
        counts
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let audit = self.store.audit_entries(0, u32::MAX).expect("entries");
        phi::assert_no_phi(&self.corpus, &audit);
        let logs = phi::captured_logs();
        assert!(!logs.contains(SECRET_ANSWER), "an answer reached the log");
        assert!(!logs.contains(CARD), "a card number reached the log");
        for entry in &audit {
            let text = entry.body.to_string();
            assert!(!text.contains(SECRET_ANSWER), "an answer reached the audit log");
        }
    }
}

fn check_entry(entry: &Value, action: &str, actor: &str, role: &str, outcome: &str) {
    assert_eq!(entry["action"], action);
    assert_eq!(entry["actor"], actor);
    assert_eq!(entry["outcome"], outcome);
    let detail = entry["detail"].as_str().expect("detail");
    assert!(detail.starts_with(&format!("role={role} request=")), "{detail}");
}

fn intake_forms_round_trip(backend: Backend) {
    let fixture = Fixture::new(backend);
    let provider = fixture.token(Role::Provider).to_owned();
    let older = json!({
        "form": "medical-history",
        "answers": { "symptoms": SECRET_ANSWER, "weight_kg": 71.5, "smoker": false },
        "submitted_at": "2026-01-10T09:30:00+01:00",
    });
    let newer = json!({ "form": "consent", "answers": { "agreed": true } });

    let before = fixture.head();
    let response = fixture.post_form(fixture.a1, fixture.token(Role::Patient), &older);
    assert_eq!(response.status, 201, "{}", response.text());
    let first = response.json();
    assert_eq!(first["form"], "medical-history");
    assert_eq!(first["submitted_at"], "2026-01-10T08:30:00Z");
    assert!(first.get("answers").is_none(), "the response does not repeat the answers");
    let entries = fixture.entries_after(before);
    assert_eq!(entries.len(), 1);
    let patient_actor = format!("user:{}", fixture.patient_user);
    check_entry(&entries[0], "intake_form.submit", &patient_actor, "patient", "success");
    let first_id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(subjects(&entries[0]), vec![fixture.a1.to_string(), first_id.clone()]);

    let before = fixture.head();
    let response = fixture.post_form(fixture.a1, fixture.token(Role::Storefront), &newer);
    assert_eq!(response.status, 201, "{}", response.text());
    let second_id = response.json()["id"].as_str().expect("id").to_owned();
    let entries = fixture.entries_after(before);
    let storefront_actor = format!("token:{}", fixture.storefront_id);
    check_entry(&entries[0], "intake_form.submit", &storefront_actor, "storefront", "success");
    let response = fixture.post_form(fixture.a2, &provider, &newer);
    assert_eq!(response.status, 201, "{}", response.text());

    let before = fixture.head();
    let response = fixture.get(&format!("/v1/patients/{}/intake-forms", fixture.a1), &provider);
    assert_eq!(response.status, 200, "{}", response.text());
    let forms = response.json()["intake_forms"].as_array().expect("forms").clone();
    let ids: Vec<&str> = forms.iter().map(|form| form["id"].as_str().expect("id")).collect();
    assert_eq!(ids, vec![second_id.as_str(), first_id.as_str()], "newest first");
    assert_eq!(forms[1]["answers"], older["answers"]);
    assert_eq!(forms[1]["submitted_at"], "2026-01-10T08:30:00Z");
    assert_eq!(forms[0]["answers"], json!({ "agreed": true }));
    let entries = fixture.entries_after(before);
    assert_eq!(entries.len(), 1);
    let provider_actor = format!("user:{}", fixture.provider);
    check_entry(&entries[0], "intake_form.list", &provider_actor, "provider", "success");
    assert!(entries[0]["detail"].as_str().expect("detail").ends_with(" count=2"));

    let own = fixture
        .get(&format!("/v1/patients/{}/intake-forms", fixture.a1), fixture.token(Role::Patient));
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json()["intake_forms"].as_array().expect("forms").len(), 2);
}

fn id_photos_round_trip(backend: Backend) {
    let fixture = Fixture::new(backend);
    let provider = fixture.token(Role::Provider).to_owned();

    let before = fixture.head();
    let response = fixture.post_photo(fixture.a1, fixture.token(Role::Patient), "image/png", PNG);
    assert_eq!(response.status, 201, "{}", response.text());
    let uploaded = response.json();
    assert_eq!(uploaded["content_type"], "image/png");
    assert!(uploaded["bytes"].as_u64().expect("bytes") > PNG.len() as u64);
    assert_eq!(uploaded["sha256"].as_str().expect("sha256").len(), 64);
    assert!(uploaded["uploaded_at"].as_str().expect("uploaded_at").ends_with('Z'));
    let photo = uploaded["id"].as_str().expect("id").to_owned();
    let entries = fixture.entries_after(before);
    assert_eq!(entries.len(), 1);
    let patient_actor = format!("user:{}", fixture.patient_user);
    check_entry(&entries[0], "id_photo.upload", &patient_actor, "patient", "success");
    assert_eq!(subjects(&entries[0]), vec![fixture.a1.to_string(), photo.clone()]);

    let jpeg = fixture.post_photo(fixture.a1, fixture.token(Role::Storefront), "image/jpeg", JPEG);
    assert_eq!(jpeg.status, 201, "{}", jpeg.text());
    let by_provider = fixture.post_photo(fixture.a2, &provider, "image/jpeg", JPEG);
    assert_eq!(by_provider.status, 201, "{}", by_provider.text());

    let before = fixture.head();
    let listed = fixture.get(&format!("/v1/patients/{}/id-photos", fixture.a1), &provider);
    assert_eq!(listed.status, 200, "{}", listed.text());
    let photos = listed.json()["id_photos"].as_array().expect("photos").clone();
    assert_eq!(photos.len(), 2);
    let png_entry = photos.iter().find(|p| p["id"] == photo.as_str()).expect("listed");
    assert_eq!(png_entry, &uploaded);
    let entries = fixture.entries_after(before);
    let provider_actor = format!("user:{}", fixture.provider);
    check_entry(&entries[0], "id_photo.list", &provider_actor, "provider", "success");
    assert!(entries[0]["detail"].as_str().expect("detail").ends_with(" count=2"));

    let path = format!("/v1/patients/{}/id-photos/{photo}", fixture.a1);
    for role in [Role::Provider, Role::Patient] {
        let before = fixture.head();
        let image = fixture.get(&path, fixture.token(role));
        assert_eq!(image.status, 200, "{role}: {}", image.text());
        assert_eq!(image.body, PNG);
        assert_eq!(image.header("content-type"), Some("image/png"));
        assert_eq!(image.header("cache-control"), Some("no-store"));
        assert_eq!(image.header("x-content-type-options"), Some("nosniff"));
        let entries = fixture.entries_after(before);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["action"], "id_photo.read");
        assert_eq!(entries[0]["outcome"], "success");
        assert_eq!(subjects(&entries[0]), vec![fixture.a1.to_string(), photo.clone()]);
    }
}

/// Checks that every route responds to a patient of clinic B exactly as to a patient that
/// exists nowhere, names nothing of B, and stores nothing for B.
fn other_tenant_patient_looks_missing(backend: Backend) {
    let fixture = Fixture::new(backend);
    let provider = fixture.token(Role::Provider).to_owned();
    let b_photo = fixture.post_photo(fixture.b1, &fixture.b_token, "image/png", PNG);
    assert_eq!(b_photo.status, 201, "{}", b_photo.text());
    let b_photo = b_photo.json()["id"].as_str().expect("id").to_owned();
    let counts = fixture.stored_counts();
    let form = json!({ "form": "intake", "answers": { "symptoms": SECRET_ANSWER } });
    let missing = PatientId::new();

    let send = |patient: PatientId, route: usize| -> HttpResponse {
        match route {
            0 => fixture.post_form(patient, &provider, &form),
            1 => fixture.get(&format!("/v1/patients/{patient}/intake-forms"), &provider),
            2 => fixture.post_photo(patient, &provider, "image/png", PNG),
            3 => fixture.get(&format!("/v1/patients/{patient}/id-photos"), &provider),
            _ => fixture.get(&format!("/v1/patients/{patient}/id-photos/{b_photo}"), &provider),
        }
    };
    for route in 0..5 {
        let before = fixture.head();
        let of_b = send(fixture.b1, route);
        let nowhere = send(missing, route);
        assert_eq!(of_b.status, 404, "route {route}: {}", of_b.text());
        assert_eq!(nowhere.status, 404, "route {route}: {}", nowhere.text());
        assert_eq!(of_b.body, nowhere.body, "route {route}: bodies differ");
        let text = of_b.text();
        for value in [fixture.b1.to_string(), b_photo.clone(), fixture.clinic_b.slug.clone()] {
            assert!(!text.contains(&value), "route {route} names {value}");
        }
        let entries = fixture.entries_after(before);
        assert_eq!(entries.len(), 2, "route {route}: one not_found entry per request");
        for entry in &entries {
            assert_eq!(entry["outcome"], "not_found");
            assert_eq!(
                entry["tenant_id"],
                fixture.store.tenant_by_slug("clinic-a").expect("a").id.to_string()
            );
        }
    }
    assert_eq!(fixture.stored_counts(), counts, "nothing was stored for B");

    // A photo of another patient of the same tenant, and B's photo, under a1's path.
    let a2_photo = fixture.post_photo(fixture.a2, &provider, "image/png", PNG);
    let a2_photo = a2_photo.json()["id"].as_str().expect("id").to_owned();
    let missing_photo = fixture
        .get(&format!("/v1/patients/{}/id-photos/{}", fixture.a1, uuid::Uuid::new_v4()), &provider);
    assert_eq!(missing_photo.status, 404);
    for photo in [a2_photo, b_photo] {
        let before = fixture.head();
        let response =
            fixture.get(&format!("/v1/patients/{}/id-photos/{photo}", fixture.a1), &provider);
        assert_eq!(response.status, 404, "{}", response.text());
        assert_eq!(response.body, missing_photo.body);
        let entries = fixture.entries_after(before);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["outcome"], "not_found");
    }
}

fn roles_outside_route_get_403(backend: Backend) {
    let fixture = Fixture::new(backend);
    let counts = fixture.stored_counts();
    let form = json!({ "form": "intake", "answers": { "a": 1 } });
    let (a1, a2) = (fixture.a1, fixture.a2);
    let photo = uuid::Uuid::new_v4();
    // (role, method, path) that must get 403 before any store call.
    let mut cases: Vec<(Role, &str, String)> = Vec::new();
    for role in [Role::PlatformOperator, Role::TenantAdmin] {
        for patient in [a1, a2] {
            cases.push((role, "POST", format!("/v1/patients/{patient}/intake-forms")));
            cases.push((role, "GET", format!("/v1/patients/{patient}/intake-forms")));
            cases.push((role, "POST", format!("/v1/patients/{patient}/id-photos")));
            cases.push((role, "GET", format!("/v1/patients/{patient}/id-photos")));
            cases.push((role, "GET", format!("/v1/patients/{patient}/id-photos/{photo}")));
        }
    }
    cases.push((Role::Storefront, "GET", format!("/v1/patients/{a1}/intake-forms")));
    cases.push((Role::Storefront, "GET", format!("/v1/patients/{a1}/id-photos")));
    cases.push((Role::Storefront, "GET", format!("/v1/patients/{a1}/id-photos/{photo}")));
    cases.push((Role::Patient, "POST", format!("/v1/patients/{a2}/intake-forms")));
    cases.push((Role::Patient, "GET", format!("/v1/patients/{a2}/intake-forms")));
    cases.push((Role::Patient, "POST", format!("/v1/patients/{a2}/id-photos")));
    cases.push((Role::Patient, "GET", format!("/v1/patients/{a1}/id-photos")));
    cases.push((Role::Patient, "GET", format!("/v1/patients/{a2}/id-photos/{photo}")));
    cases.push((Role::Patient, "POST", format!("/v1/patients/{}/intake-forms", fixture.b1)));

    let before = fixture.head();
    for (role, method, path) in &cases {
        let (kind, body) = if path.ends_with("id-photos") {
            ("image/png", PNG.to_vec())
        } else {
            ("application/json", form.to_string().into_bytes())
        };
        let body = if *method == "POST" { body } else { Vec::new() };
        let response = fixture.send(method, path, fixture.token(*role), kind, &body);
        assert_eq!(response.status, 403, "{method} {path} as {role}: {}", response.text());
        assert_eq!(response.json()["error"]["code"], "forbidden");
        assert!(!response.text().contains(&a2.to_string()), "{method} {path} as {role}");
    }
    assert!(fixture.entries_after(before).is_empty(), "a 403 reaches no store method");
    assert_eq!(fixture.stored_counts(), counts);
}

fn bad_input_stores_nothing(backend: Backend) {
    let fixture = Fixture::new(backend);
    let provider = fixture.token(Role::Provider).to_owned();
    let counts = fixture.stored_counts();
    let before = fixture.head();

    let cases = [
        (
            json!({ "form": "intake", "answers": { "notes": format!("use {CARD}") } }),
            "answers.notes",
        ),
        (json!({ "form": "intake", "answers": { "a": 1 }, "patient_name": "Givena1" }), "field"),
        (
            json!({
                "form": "intake", "answers": { "a": 1 }, "submitted_at": "2099-01-01T00:00:00Z"
            }),
            "submitted_at",
        ),
        (json!({ "form": "intake", "answers": { "a": [SECRET_ANSWER] } }), "answers.a"),
    ];
    for (body, field) in &cases {
        let response = fixture.post_form(fixture.a1, &provider, body);
        assert_eq!(response.status, 422, "{body}: {}", response.text());
        let error = response.json()["error"].clone();
        assert_eq!(error["code"], "unprocessable_entity");
        let message = error["message"].as_str().expect("message");
        assert!(message.contains(field), "{message:?} does not name {field}");
        for echoed in ["4111", "Givena1", SECRET_ANSWER, "2099"] {
            assert!(!message.contains(echoed), "{message:?} echoes the body");
        }
    }

    let path = format!("/v1/patients/{}/intake-forms", fixture.a1);
    let form = json!({ "form": "intake", "answers": { "a": 1 } }).to_string();
    let as_text = fixture.send("POST", &path, &provider, "text/plain", form.as_bytes());
    assert_eq!(as_text.status, 415, "{}", as_text.text());
    let oversized = format!(r#"{{"form":"intake","answers":{{"a":"{}"}}}}"#, "x".repeat(64 * 1024));
    let too_large =
        fixture.send("POST", &path, &provider, "application/json", oversized.as_bytes());
    assert_eq!(too_large.status, 413, "{}", too_large.text());
    assert_eq!(too_large.json()["error"]["code"], "payload_too_large");

    let photo_cases: [(&str, &[u8]); 4] = [
        ("image/jpeg", PNG),
        ("image/png", b"GIF89a not a png"),
        ("image/gif", b"GIF89a"),
        ("application/json", b"{}"),
    ];
    for (kind, bytes) in photo_cases {
        let response = fixture.post_photo(fixture.a1, &provider, kind, bytes);
        assert_eq!(response.status, 415, "{kind}: {}", response.text());
        assert_eq!(response.json()["error"]["code"], "unsupported_media_type");
    }
    let mut large = PNG.to_vec();
    large.resize(5 * 1024 * 1024 + 1, 0);
    let response = fixture.post_photo(fixture.a1, &provider, "image/png", &large);
    assert_eq!(response.status, 413, "{}", response.text());
    let mut largest = PNG.to_vec();
    largest.resize(5 * 1024 * 1024, 0);
    let response = fixture.post_photo(fixture.a1, &provider, "image/png", &largest);
    assert_eq!(response.status, 201, "5 MiB is accepted: {}", response.text());

    let photo_counts: Vec<(u64, u64)> = fixture.stored_counts();
    let expected: Vec<(u64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(index, &(forms, photos))| (forms, photos + u64::from(index == 0)))
        .collect();
    assert_eq!(photo_counts, expected, "only the 5 MiB photo was stored");
    let entries = fixture.entries_after(before);
    assert_eq!(entries.len(), 1, "only the stored photo has an entry");
    assert_eq!(entries[0]["action"], "id_photo.upload");
}

medconnect_store::backend_tests!(
    intake_forms_round_trip,
    id_photos_round_trip,
    other_tenant_patient_looks_missing,
    roles_outside_route_get_403,
    bad_input_stores_nothing,
);
