//! The encounter, consultation and prescription routes against the real server on
//! 127.0.0.1, over real TLS connections: values, tenant isolation, roles, request body checks
//! and audit entries.

mod common;

use common::{assert_error, check_provider_entry, subjects, TwoClinics};
use medconnect_api::testing::phi::{self, PhiKind};
use medconnect_api::testing::{HttpResponse, HttpsClient, TestServer, TestServerOptions};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::SystemClock;
use medconnect_domain::model::{HoldScope, Tenant};
use medconnect_domain::{PatientId, UserId};
use medconnect_store::testing::{Backend, TestStore};
use serde_json::{json, Value};

const MASTER: [u8; 32] = [7; 32];

const ACTIONS: [&str; 5] = [
    "encounter.record",
    "consultation.list",
    "consultation.create",
    "prescription.list",
    "prescription.create",
];

/// Free text the tests send, and the imported names: none may reach an audit entry.
const PHI: [&str; 8] = [
    "Persistent Zephyrine cough",
    "Quorvex rash",
    "RX-Amoxivane",
    "Amoxivane 500 mg",
    "Givena1",
    "Familya1",
    "Givenb1",
    "1970-02-03",
];

/// A card number that passes the Luhn check.
const CARD: &str = "4111 1111 1111 1111";

/// Two clinics, and a server on their store.
struct Fixture {
    server: Option<TestServer>,
    store: TestStore,
    clinic_a: Tenant,
    /// Patients of clinic A, imported as `a1` and `a2`.
    a_patients: Vec<PatientId>,
    clinic_b: Tenant,
    /// The patient of clinic B, imported as `b1`.
    b_patient: PatientId,
    provider: UserId,
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        phi::capture_logs();
        let mut store = backend.create(Box::new(SystemClock));
        store.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect("master key");
        let clinics = TwoClinics::create(&mut store);
        let server = TestServer::start(&store, TestServerOptions::new(MASTER));
        Fixture {
            server: Some(server),
            store,
            clinic_a: clinics.clinic_a,
            a_patients: clinics.a_patients,
            clinic_b: clinics.clinic_b,
            b_patient: clinics.b_patient,
            provider: clinics.provider,
        }
    }

    fn client(&self) -> HttpsClient {
        self.server.as_ref().expect("server running").client()
    }

    /// Logs in as `username` of `tenant` and returns the token.
    fn token_of(&self, tenant: Option<&str>, username: &str) -> String {
        common::login(&self.client(), tenant, username)
    }

    fn get(&self, path: &str, token: &str) -> HttpResponse {
        self.client().get_with_token(path, token)
    }

    fn head(&self) -> i64 {
        common::audit_head(&self.store)
    }

    /// Returns the entries of the clinical routes written after `after`.
    fn clinical_entries_after(&self, after: i64) -> Vec<Value> {
        common::audit_bodies_after(&self.store, after, |action| ACTIONS.contains(&action))
    }

    fn post(&self, path: &str, token: &str, body: &Value) -> HttpResponse {
        let bytes = serde_json::to_vec(body).expect("JSON");
        self.post_raw(path, token, &bytes)
    }

    fn post_raw(&self, path: &str, token: &str, body: &[u8]) -> HttpResponse {
        self.client().post_with_token(path, token, body)
    }
}

impl Drop for Fixture {
    /// Stops the server, then searches the captured logs and the audit log for the imported
    /// patients' PHI and the free text the tests sent.
    fn drop(&mut self) {
        drop(self.server.take());
        let mut corpus = TwoClinics::phi_corpus();
        for text in PHI {
            corpus.add(PhiKind::FreeText, text);
        }
        common::assert_no_phi_logged(&self.store, &corpus);
    }
}

/// Checks that an entry contains none of the values the tests send or the patients have.
fn check_no_phi(entry: &Value) {
    let text = entry.to_string();
    for value in PHI {
        assert!(!text.contains(value), "entry {text} contains {value}");
    }
}

fn consultation_body() -> Value {
    json!({
        "status": "completed",
        "encounter_class": "ambulatory",
        "reason": "Persistent Zephyrine cough",
        "notes": "Quorvex rash since Monday",
        "started_at": "2024-05-01T09:00:00+02:00",
        "ended_at": "2024-05-01T09:45:00+02:00",
    })
}

fn prescription_body(consultation_id: Option<&str>) -> Value {
    json!({
        "code": "RX-Amoxivane-500",
        "description": "Amoxivane 500 mg oral capsule",
        "dispenses": 3,
        "controlled": false,
        "started_at": "2024-05-01T10:00:00Z",
        "stopped_at": "2024-05-15T10:00:00Z",
        "consultation_id": consultation_id,
    })
}

fn encounter_moves_retention_forward(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let patient = fixture.a_patients[0];
    let path = format!("/v1/patients/{patient}/encounters");

    // A leap-day encounter: seven years later is a common year, so retention ends on 1 March.
    let before = fixture.head();
    let leap = json!({ "at": "2024-02-29T12:00:00+02:00", "encounter_class": "ambulatory" });
    let response = fixture.post(&path, &token, &leap);
    assert_eq!(response.status, 201, "{}", response.text());
    let json = response.json();
    assert_eq!(json["last_medical_encounter_at"], "2024-02-29T10:00:00Z");
    assert_eq!(json["phi_retention_until"], "2031-03-01T10:00:00Z");
    let consultation = json["consultation_id"].as_str().expect("consultation_id").to_owned();
    let link = fixture.store.patient_link(&fixture.clinic_a, patient).expect("link");
    assert_eq!(link.link.phi_retention_until.to_rfc3339(), "2031-03-01T10:00:00+00:00");
    let entries = fixture.clinical_entries_after(before);
    assert_eq!(entries.len(), 1, "{entries:?}");
    check_provider_entry(
        &entries[0],
        "encounter.record",
        "success",
        fixture.provider,
        &fixture.clinic_a,
    );
    assert_eq!(subjects(&entries[0]), vec![patient.to_string(), consultation]);
    check_no_phi(&entries[0]);

    // An older encounter is stored but moves neither the last encounter nor retention.
    let older = json!({ "at": "2023-07-01T08:00:00Z", "encounter_class": "virtual" });
    let response = fixture.post(&path, &token, &older);
    assert_eq!(response.status, 201, "{}", response.text());
    let json = response.json();
    assert_eq!(json["last_medical_encounter_at"], "2024-02-29T10:00:00Z");
    assert_eq!(json["phi_retention_until"], "2031-03-01T10:00:00Z");

    let listed = fixture.get(&format!("/v1/patients/{patient}/consultations"), &token);
    assert_eq!(listed.status, 200, "{}", listed.text());
    let consultations = listed.json()["consultations"].clone();
    assert_eq!(consultations.as_array().expect("array").len(), 2, "{consultations}");
    assert_eq!(consultations[0]["started_at"], "2024-02-29T10:00:00Z");
    assert_eq!(consultations[0]["encounter_class"], "ambulatory");
    assert_eq!(consultations[1]["encounter_class"], "virtual");
}

fn consultations_and_prescriptions_round_trip(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let patient = fixture.a_patients[0];
    let consultations = format!("/v1/patients/{patient}/consultations");
    let prescriptions = format!("/v1/patients/{patient}/prescriptions");

    let before = fixture.head();
    let response = fixture.post(&consultations, &token, &consultation_body());
    assert_eq!(response.status, 201, "{}", response.text());
    let created = response.json();
    assert_eq!(created["last_medical_encounter_at"], "2024-05-01T07:45:00Z");
    assert_eq!(created["phi_retention_until"], "2031-05-01T07:45:00Z");
    let consultation = created["consultation_id"].as_str().expect("id").to_owned();

    let listed = fixture.get(&consultations, &token);
    assert_eq!(listed.status, 200, "{}", listed.text());
    let first = listed.json()["consultations"][0].clone();
    assert_eq!(first["id"], consultation);
    assert_eq!(first["reason"], "Persistent Zephyrine cough");
    assert_eq!(first["notes"], "Quorvex rash since Monday");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["started_at"], "2024-05-01T07:00:00Z");
    assert_eq!(first["ended_at"], "2024-05-01T07:45:00Z");

    let response = fixture.post(&prescriptions, &token, &prescription_body(Some(&consultation)));
    assert_eq!(response.status, 201, "{}", response.text());
    let stored = response.json();
    assert_eq!(stored["consultation_id"], consultation);
    assert_eq!(stored["dispenses"], 3);
    let prescription = stored["id"].as_str().expect("id").to_owned();
    let listed = fixture.get(&prescriptions, &token);
    assert_eq!(listed.status, 200, "{}", listed.text());
    let first = listed.json()["prescriptions"][0].clone();
    assert_eq!(first["id"], prescription);
    assert_eq!(first["code"], "RX-Amoxivane-500");
    assert_eq!(first["description"], "Amoxivane 500 mg oral capsule");
    assert_eq!(first["controlled"], false);
    assert_eq!(first["stopped_at"], "2024-05-15T10:00:00Z");

    let entries = fixture.clinical_entries_after(before);
    let actions: Vec<&str> =
        entries.iter().map(|entry| entry["action"].as_str().expect("action")).collect();
    let expected =
        ["consultation.create", "consultation.list", "prescription.create", "prescription.list"];
    assert_eq!(actions, expected);
    for entry in &entries {
        let action = entry["action"].as_str().expect("action");
        check_provider_entry(entry, action, "success", fixture.provider, &fixture.clinic_a);
        assert_eq!(subjects(entry)[0], patient.to_string());
        check_no_phi(entry);
    }
    assert_eq!(subjects(&entries[2]), vec![patient.to_string(), prescription]);
}

fn other_tenant_patient_looks_missing(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let theirs = fixture.b_patient;
    let missing = PatientId::new();
    let before_link = fixture.store.patient_link(&fixture.clinic_b, theirs).expect("link");
    let encounter = json!({ "at": "2024-06-01T09:00:00Z", "encounter_class": "virtual" });
    let calls: [(&str, &str, Option<Value>); 5] = [
        ("encounter.record", "encounters", Some(encounter)),
        ("consultation.list", "consultations", None),
        ("consultation.create", "consultations", Some(consultation_body())),
        ("prescription.list", "prescriptions", None),
        ("prescription.create", "prescriptions", Some(prescription_body(None))),
    ];
    for (action, resource, body) in calls {
        let before = fixture.head();
        let send = |patient: PatientId| {
            let path = format!("/v1/patients/{patient}/{resource}");
            match &body {
                Some(body) => fixture.post(&path, &token, body),
                None => fixture.get(&path, &token),
            }
        };
        let other = send(theirs);
        let absent = send(missing);
        assert_error(&other, 404, "not_found");
        assert_eq!(other.text(), absent.text(), "{action}");
        for value in [theirs.to_string(), "clinic-b".into(), "Givenb1".into(), "Familyb1".into()] {
            assert!(!other.text().contains(&value), "{action}: {}", other.text());
        }
        let entries = fixture.clinical_entries_after(before);
        assert_eq!(entries.len(), 2, "{action}: {entries:?}");
        for (entry, asked) in entries.iter().zip([theirs, missing]) {
            check_provider_entry(entry, action, "not_found", fixture.provider, &fixture.clinic_a);
            assert_eq!(subjects(entry), vec![asked.to_string()]);
            check_no_phi(entry);
        }
    }
    let after_link = fixture.store.patient_link(&fixture.clinic_b, theirs).expect("link");
    assert_eq!(after_link.counts, before_link.counts, "nothing stored for clinic B");
    assert_eq!(after_link.link, before_link.link, "clinic B's retention unchanged");
}

/// Returns every route of one patient, with a valid body for the writes.
fn routes(patient: PatientId) -> Vec<(String, Option<Value>)> {
    let base = format!("/v1/patients/{patient}");
    let encounter = json!({ "at": "2024-06-01T09:00:00Z", "encounter_class": "virtual" });
    vec![
        (format!("{base}/encounters"), Some(encounter)),
        (format!("{base}/consultations"), None),
        (format!("{base}/consultations"), Some(consultation_body())),
        (format!("{base}/prescriptions"), None),
        (format!("{base}/prescriptions"), Some(prescription_body(None))),
    ]
}

/// Tenant admins, the storefront and platform operators get 403 on every route, and a
/// patient account reads only its own records and writes none, without an audit entry.
#[test]
fn roles_without_access_get_403() {
    let fixture = Fixture::new(Backend::Sqlite);
    let patient = fixture.a_patients[0];
    // A storefront token needs a client certificate; the matrix of tests/isolation.rs
    // checks that it gets 403 on these routes.
    let callers =
        [fixture.token_of(Some("clinic-a"), "admin@a.test"), fixture.token_of(None, "ops")];
    let before = fixture.head();
    for token in &callers {
        for (path, body) in routes(patient) {
            let response = match &body {
                Some(body) => fixture.post(&path, token, body),
                None => fixture.get(&path, token),
            };
            assert_error(&response, 403, "forbidden");
        }
    }

    let token = fixture.token_of(Some("clinic-a"), "patient@a.test");
    for (path, body) in routes(patient) {
        if let Some(body) = body {
            assert_error(&fixture.post(&path, &token, &body), 403, "forbidden");
        }
    }
    for other in [fixture.a_patients[1], fixture.b_patient] {
        for (path, body) in routes(other) {
            if body.is_none() {
                assert_error(&fixture.get(&path, &token), 403, "forbidden");
            }
        }
    }
    assert!(fixture.clinical_entries_after(before).is_empty());
    let link = fixture.store.patient_link(&fixture.clinic_a, patient).expect("link");
    assert_eq!(link.counts.consultations, 0);
    assert_eq!(link.counts.prescriptions, 0);

    for (path, body) in routes(patient) {
        if body.is_none() {
            let response = fixture.get(&path, &token);
            assert_eq!(response.status, 200, "{path}: {}", response.text());
        }
    }
    let entries = fixture.clinical_entries_after(before);
    assert_eq!(entries.len(), 2, "{entries:?}");
    for entry in &entries {
        assert_eq!(entry["outcome"], "success");
        let detail = entry["detail"].as_str().expect("detail");
        assert!(detail.starts_with("role=patient request="), "{detail}");
    }
}

/// Bodies that fail a check get 422 naming the field, quote nothing the client sent and
/// store nothing.
#[test]
fn invalid_bodies_get_422_without_echo() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let patient = fixture.a_patients[0];
    let sibling = fixture.a_patients[1];
    let encounters = format!("/v1/patients/{patient}/encounters");
    let consultations = format!("/v1/patients/{patient}/consultations");
    let prescriptions = format!("/v1/patients/{patient}/prescriptions");

    let response = fixture.post(
        &format!("/v1/patients/{sibling}/consultations"),
        &token,
        &consultation_body(),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    let siblings_consultation = response.json()["consultation_id"].as_str().expect("id").to_owned();
    let before = fixture.head();

    let future = (chrono::Utc::now() + chrono::TimeDelta::days(1)).to_rfc3339();
    let with = |base: Value, field: &str, value: Value| {
        let mut body = base;
        body[field] = value;
        body
    };
    let card_in = |field: &str| format!("seen for Quillon, card {CARD} on file ({field})");
    let cases: Vec<(&str, &String, Value, &str)> = vec![
        (
            "card in reason",
            &consultations,
            with(consultation_body(), "reason", json!(card_in("reason"))),
            "reason",
        ),
        (
            "card split by tabs and line breaks in notes",
            &consultations,
            with(consultation_body(), "notes", json!("paid 4111\t1111\n1111\u{a0}1111")),
            "notes",
        ),
        (
            "card in notes",
            &consultations,
            with(consultation_body(), "notes", json!(card_in("notes"))),
            "notes",
        ),
        (
            "card in code",
            &prescriptions,
            with(prescription_body(None), "code", json!(CARD)),
            "code",
        ),
        (
            "card in description",
            &prescriptions,
            with(prescription_body(None), "description", json!(card_in("description"))),
            "description",
        ),
        (
            "card in encounter class",
            &encounters,
            json!({ "at": "2024-06-01T09:00:00Z", "encounter_class": CARD }),
            "encounter_class",
        ),
        (
            "future encounter",
            &encounters,
            json!({ "at": future, "encounter_class": "virtual" }),
            "at",
        ),
        (
            "future start",
            &consultations,
            with(consultation_body(), "started_at", json!(future)),
            "started_at",
        ),
        (
            "future stop",
            &prescriptions,
            with(prescription_body(None), "stopped_at", json!(future)),
            "stopped_at",
        ),
        (
            "date without time",
            &encounters,
            json!({ "at": "2024-06-01", "encounter_class": "virtual" }),
            "at",
        ),
        (
            "time without offset",
            &encounters,
            json!({ "at": "2024-06-01T09:00:00", "encounter_class": "virtual" }),
            "at",
        ),
        (
            "unknown encounter class",
            &encounters,
            json!({ "at": "2024-06-01T09:00:00Z", "encounter_class": "Quillon" }),
            "encounter_class",
        ),
        (
            "unknown status",
            &consultations,
            with(consultation_body(), "status", json!("Quillon")),
            "status",
        ),
        ("empty reason", &consultations, with(consultation_body(), "reason", json!("")), "reason"),
        (
            "end before start",
            &consultations,
            with(consultation_body(), "ended_at", json!("2024-05-01T06:00:00Z")),
            "ended_at",
        ),
        (
            "zero dispenses",
            &prescriptions,
            with(prescription_body(None), "dispenses", json!(0)),
            "dispenses",
        ),
        (
            "too many dispenses",
            &prescriptions,
            with(prescription_body(None), "dispenses", json!(100)),
            "dispenses",
        ),
        (
            "dispenses as text",
            &prescriptions,
            with(prescription_body(None), "dispenses", json!("Quillon")),
            "dispenses",
        ),
        (
            "controlled as text",
            &prescriptions,
            with(prescription_body(None), "controlled", json!("Quillon")),
            "controlled",
        ),
        (
            "stop before start",
            &prescriptions,
            with(prescription_body(None), "stopped_at", json!("2024-04-01T00:00:00Z")),
            "stopped_at",
        ),
        (
            "consultation not an id",
            &prescriptions,
            with(prescription_body(None), "consultation_id", json!("Quillon")),
            "consultation_id",
        ),
        (
            "sibling's consultation",
            &prescriptions,
            prescription_body(Some(&siblings_consultation)),
            "consultation_id",
        ),
        (
            "missing consultation",
            &prescriptions,
            prescription_body(Some(&PatientId::new().to_string())),
            "consultation_id",
        ),
    ];
    for (case, path, body, field) in &cases {
        let response = fixture.post(path, &token, body);
        let message = assert_error(&response, 422, "unprocessable_entity");
        assert!(message.contains(&format!("`{field}`")), "{case}: {message}");
        let text = response.text();
        for sent in ["Quillon", "4111", siblings_consultation.as_str(), future.as_str()] {
            assert!(!text.contains(sent), "{case}: {text}");
        }
    }

    // Unknown and missing fields.
    let unknown = with(consultation_body(), "Quillon Maravelle", json!("x"));
    let message =
        assert_error(&fixture.post(&consultations, &token, &unknown), 422, "unprocessable_entity");
    assert!(message.contains("does not accept"), "{message}");
    assert!(!message.contains("Quillon"), "{message}");
    let missing = json!({ "encounter_class": "virtual" });
    let message =
        assert_error(&fixture.post(&encounters, &token, &missing), 422, "unprocessable_entity");
    assert!(message.contains("`at`"), "{message}");
    let not_object = json!(["Quillon"]);
    assert_error(&fixture.post(&encounters, &token, &not_object), 422, "unprocessable_entity");
    let response = fixture.post_raw(&encounters, &token, b"{\"at\": \"Quillon");
    assert_error(&response, 400, "bad_request");
    assert!(!response.text().contains("Quillon"), "{}", response.text());

    assert!(fixture.clinical_entries_after(before).is_empty());
    let link = fixture.store.patient_link(&fixture.clinic_a, patient).expect("link");
    assert_eq!(link.counts.consultations, 0);
    assert_eq!(link.counts.prescriptions, 0);
    assert_eq!(link.link.last_medical_encounter_at, None);
}

#[test]
fn body_over_limit_gets_413() {
    let fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let patient = fixture.a_patients[0];
    let notes = "n".repeat(17 * 1024);
    let body = json!({
        "status": "completed",
        "encounter_class": "ambulatory",
        "reason": "check-up",
        "notes": notes,
        "started_at": "2024-05-01T09:00:00Z",
    });
    let before = fixture.head();
    let response = fixture.post(&format!("/v1/patients/{patient}/consultations"), &token, &body);
    assert_error(&response, 413, "payload_too_large");
    assert!(fixture.clinical_entries_after(before).is_empty());
    let link = fixture.store.patient_link(&fixture.clinic_a, patient).expect("link");
    assert_eq!(link.counts.consultations, 0);
}

#[test]
fn encounter_recorded_under_legal_hold() {
    let mut fixture = Fixture::new(Backend::Sqlite);
    let token = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let patient = fixture.a_patients[1];
    let tenant = fixture.clinic_a.clone();
    let scope = HoldScope::Patient(patient);
    fixture.store.place_hold(&tenant, scope, "matter-9", "litigation", "test").expect("hold");
    let body = json!({ "at": "2025-01-10T08:00:00-05:00", "encounter_class": "emergency" });
    let response = fixture.post(&format!("/v1/patients/{patient}/encounters"), &token, &body);
    assert_eq!(response.status, 201, "{}", response.text());
    let json = response.json();
    assert_eq!(json["last_medical_encounter_at"], "2025-01-10T13:00:00Z");
    assert_eq!(json["phi_retention_until"], "2032-01-10T13:00:00Z");
}

medconnect_store::backend_tests!(
    encounter_moves_retention_forward,
    consultations_and_prescriptions_round_trip,
    other_tenant_patient_looks_missing,
);
