//! `GET /v1/patients` and `GET /v1/patients/{id}` against the real server on 127.0.0.1, over
//! real TLS connections, on both store backends: tenant isolation, roles and audit entries.

mod common;

use common::{assert_error, check_provider_entry, subjects, TwoClinics};
use medconnect_api::testing::phi;
use medconnect_api::testing::{HttpResponse, HttpsClient, TestServer, TestServerOptions};
use medconnect_crypto::{MasterKey, SecretToken};
use medconnect_domain::clock::SystemClock;
use medconnect_domain::model::Tenant;
use medconnect_domain::{PatientId, UserId};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{NewServiceToken, Role};
use serde_json::Value;

const MASTER: [u8; 32] = [7; 32];

/// Two clinics, and a server on their store.
struct Fixture {
    server: Option<TestServer>,
    store: TestStore,
    clinic_a: Tenant,
    /// Patients of clinic A, imported as `a1` and `a2`.
    a_patients: Vec<PatientId>,
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

    /// Returns the `patient.*` entries written after `after`.
    fn patient_entries_after(&self, after: i64) -> Vec<Value> {
        common::audit_bodies_after(&self.store, after, |action| action.starts_with("patient."))
    }
}

impl Drop for Fixture {
    /// Stops the server, then searches the captured logs and the audit log for the imported
    /// patients' PHI.
    fn drop(&mut self) {
        drop(self.server.take());
        common::assert_no_phi_logged(&self.store, &TwoClinics::phi_corpus());
    }
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
    check_provider_entry(
        &entries[0],
        "patient.list",
        "success",
        fixture.provider,
        &fixture.clinic_a,
    );
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
    check_provider_entry(
        &entries[0],
        "patient.read",
        "success",
        fixture.provider,
        &fixture.clinic_a,
    );
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
        check_provider_entry(
            entry,
            "patient.read",
            "not_found",
            fixture.provider,
            &fixture.clinic_a,
        );
        assert_eq!(subjects(entry), vec![asked.to_string()]);
    }
}

/// Reads of two tenants at once, which the server may commit in shared batches: each gets its
/// own tenant's record or 404, and writes exactly one entry in its caller's tenant.
fn concurrent_reads_each_audited(backend: Backend) {
    let fixture = Fixture::new(backend);
    let token_a = fixture.token_of(Some("clinic-a"), "provider@a.test");
    let token_b = fixture.token_of(Some("clinic-b"), "provider@b.test");
    let clinic_a = fixture.clinic_a.clone();
    let clinic_b = fixture.store.tenant_by_slug("clinic-b").expect("tenant b");
    let (a1, a2, b1) = (fixture.a_patients[0], fixture.a_patients[1], fixture.b_patient);
    // (token, caller's tenant, patient, expected status, expected given name)
    let requests = [
        (&token_a, &clinic_a, a1, 200, Some("Givena1")),
        (&token_a, &clinic_a, a2, 200, Some("Givena2")),
        (&token_a, &clinic_a, b1, 404, None),
        (&token_b, &clinic_b, b1, 200, Some("Givenb1")),
        (&token_b, &clinic_b, a1, 404, None),
    ];
    const ROUNDS: usize = 4;
    let before = fixture.head();
    std::thread::scope(|scope| {
        for (token, _, patient, status, given) in requests {
            let client = fixture.client();
            scope.spawn(move || {
                for _ in 0..ROUNDS {
                    let response = client.get_with_token(&format!("/v1/patients/{patient}"), token);
                    assert_eq!(response.status, status, "{}", response.text());
                    if let Some(given) = given {
                        assert_eq!(response.json()["profile"]["given_name"], given);
                    }
                }
            });
        }
    });

    let entries = fixture.patient_entries_after(before);
    assert_eq!(entries.len(), requests.len() * ROUNDS, "{entries:?}");
    for (_, tenant, patient, status, _) in requests {
        let outcome = if status == 200 { "success" } else { "not_found" };
        let matching = entries
            .iter()
            .filter(|entry| {
                subjects(entry) == vec![patient.to_string()]
                    && entry["tenant_id"] == tenant.id.to_string()
                    && entry["outcome"] == outcome
            })
            .count();
        assert_eq!(matching, ROUNDS, "{patient} in {}: {entries:?}", tenant.slug);
    }
    assert!(fixture.store.verify_audit().expect("verify").ok);
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
        client_cert: None,
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
    concurrent_reads_each_audited,
);
