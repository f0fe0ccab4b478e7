//! Fixture code that several route tests share: test patients and accounts, two clinics on one
//! store, login, and checks of JSON errors, audit entries and bodies against the OpenAPI
//! document.

#![allow(dead_code, reason = "each test file uses only some of these helpers")]

pub mod schema;

use medconnect_api::testing::phi::{self, PhiCorpus};
use medconnect_api::testing::{HttpResponse, HttpsClient};
use medconnect_crypto::hash_password;
use medconnect_domain::model::{ImportBatch, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::{PatientId, UserId};
use medconnect_store::testing::TestStore;
use medconnect_store::{NewUser, Role};
use serde_json::{json, Value};

/// The password of every account that these helpers create.
pub const PASSWORD: &str = "correct horse battery staple";

/// An account to create: tenant (None for a platform account), username, role, and the
/// patient of a patient account.
pub type Account<'a> = (Option<&'a Tenant>, &'a str, Role, Option<PatientId>);

/// Returns a profile whose names contain `source_id`, so a response can be searched for them.
pub fn person(source_id: &str) -> NewPatientProfile {
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

/// Imports `profiles` into `tenant` under the built-in policy and returns their patient ids,
/// in the order of `profiles`.
pub fn import_patients(
    store: &mut TestStore,
    tenant: &Tenant,
    profiles: Vec<NewPatientProfile>,
) -> Vec<PatientId> {
    let batch =
        ImportBatch { source_system: "test".into(), patients: profiles, ..ImportBatch::default() };
    store.import(tenant, &batch, &Policy::builtin(), "test").expect("import");
    batch
        .patients
        .iter()
        .map(|profile| {
            let found = store.find_patient(tenant, "test", &profile.source_id).expect("find");
            found.expect("imported")
        })
        .collect()
}

/// Creates `accounts` with [`PASSWORD`] and returns their user ids, in order.
pub fn create_users(store: &mut TestStore, accounts: &[Account<'_>]) -> Vec<UserId> {
    let hash = hash_password(PASSWORD).expect("hash");
    accounts
        .iter()
        .map(|&(tenant, username, role, patient)| {
            let new = NewUser { tenant, username, role, password_hash: &hash, patient };
            store.create_user(&new, "test").expect("user")
        })
        .collect()
}

/// Tenants `clinic-a` and `clinic-b` on one store, with patients and accounts.
pub struct TwoClinics {
    pub clinic_a: Tenant,
    /// Patients of clinic A, imported from [`person`] `a1` and `a2`.
    pub a_patients: Vec<PatientId>,
    pub clinic_b: Tenant,
    /// The patient of clinic B, imported from [`person`] `b1`.
    pub b_patient: PatientId,
    /// The account `provider@a.test`.
    pub provider: UserId,
    /// The account `patient@a.test`, of patient `a1`.
    pub patient_user: UserId,
}

impl TwoClinics {
    /// Source ids of the imported patients, whose profiles no log or audit entry may contain.
    pub const SOURCE_IDS: [&'static str; 3] = ["a1", "a2", "b1"];

    /// Builds a PHI corpus of the imported patients' profiles.
    pub fn phi_corpus() -> PhiCorpus {
        let mut corpus = PhiCorpus::new();
        for source_id in TwoClinics::SOURCE_IDS {
            corpus.add_profile(&person(source_id));
        }
        corpus
    }

    /// Creates both tenants, imports their patients and creates the accounts
    /// `provider@a.test`, `admin@a.test`, `patient@a.test`, `provider@b.test` and the platform
    /// operator `ops`. The store must have its master key.
    pub fn create(store: &mut TestStore) -> Self {
        let clinic_a = store.create_tenant("clinic-a", "Clinic A", "test").expect("tenant");
        let clinic_b = store.create_tenant("clinic-b", "Clinic B", "test").expect("tenant");
        let a_patients = import_patients(store, &clinic_a, vec![person("a1"), person("a2")]);
        let b_patient = import_patients(store, &clinic_b, vec![person("b1")])[0];

        let users = create_users(
            store,
            &[
                (Some(&clinic_a), "provider@a.test", Role::Provider, None),
                (Some(&clinic_a), "admin@a.test", Role::TenantAdmin, None),
                (Some(&clinic_a), "patient@a.test", Role::Patient, Some(a_patients[0])),
                (Some(&clinic_b), "provider@b.test", Role::Provider, None),
                (None, "ops", Role::PlatformOperator, None),
            ],
        );
        TwoClinics {
            clinic_a,
            a_patients,
            clinic_b,
            b_patient,
            provider: users[0],
            patient_user: users[2],
        }
    }
}

/// Logs in as `username` of `tenant` with [`PASSWORD`] and returns the session token.
pub fn login(client: &HttpsClient, tenant: Option<&str>, username: &str) -> String {
    let body = json!({ "tenant": tenant, "username": username, "password": PASSWORD });
    let body = serde_json::to_vec(&body).expect("JSON");
    let response = client.request("POST", "/v1/login", &body).expect("login");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["token"].as_str().expect("token in the body").to_owned()
}

/// Asserts a JSON error with `status` and `code`, and returns its message.
pub fn assert_error(response: &HttpResponse, status: u16, code: &str) -> String {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"), "{}", response.text());
    let json = response.json();
    assert_eq!(json["error"]["code"], code, "{json}");
    json["error"]["message"].as_str().expect("message").to_owned()
}

/// Returns the sequence number of the last audit entry, or 0 when there is none.
pub fn audit_head(store: &TestStore) -> i64 {
    let entries = store.audit_entries(0, u32::MAX).expect("entries");
    entries.last().map_or(0, |entry| entry.seq)
}

/// Returns the bodies of the audit entries after sequence number `after` for whose action
/// `keep` returns true.
pub fn audit_bodies_after(
    store: &TestStore,
    after: i64,
    keep: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let entries = store.audit_entries(after, u32::MAX).expect("entries");
    entries
        .into_iter()
        .map(|entry| entry.body)
        .filter(|body| body["action"].as_str().is_some_and(&keep))
        .collect()
}

/// Checks the action, outcome, actor and tenant of an audit entry's body, and that a
/// provider made the request.
pub fn check_provider_entry(
    entry: &Value,
    action: &str,
    outcome: &str,
    actor: UserId,
    tenant: &Tenant,
) {
    assert_eq!(entry["action"], action, "{entry}");
    assert_eq!(entry["outcome"], outcome, "{entry}");
    assert_eq!(entry["actor"], format!("user:{actor}"), "{entry}");
    assert_eq!(entry["tenant_id"], tenant.id.to_string(), "{entry}");
    let detail = entry["detail"].as_str().expect("detail");
    assert!(detail.starts_with("role=provider request="), "{detail}");
}

/// Asserts that neither the captured logs nor the audit log of `store` contain a value of
/// `corpus`. Does nothing while the thread panics, because a second panic in `Drop` would
/// abort the test process.
pub fn assert_no_phi_logged(store: &TestStore, corpus: &PhiCorpus) {
    if std::thread::panicking() {
        return;
    }
    let audit = store.audit_entries(0, u32::MAX).expect("entries");
    phi::assert_no_phi(corpus, &audit);
}

/// Returns the subject ids of an audit entry's body.
pub fn subjects(entry: &Value) -> Vec<String> {
    serde_json::from_value(entry["subjects"].clone()).expect("subjects")
}
