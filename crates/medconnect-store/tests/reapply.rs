//! `Store::reapply_disposal` on both backends, with ledger entries written for records of
//! the store itself: what each category deletes, and that a second pass finds nothing.

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::audit::Destroyed;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{Category, ImportBatch, NewConsultation, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::{PatientId, TenantId};
use medconnect_store::backend_tests;
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{LedgerEntry, ReapplyOutcome, SessionTimes};

backend_tests!(
    reapply_patient_records_and_profile,
    reapply_profile_kept_by_link,
    reapply_photo_and_session,
);

const ACTOR: &str = "test";

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("instant")
}

fn store(backend: Backend) -> TestStore {
    let mut store = backend.create(Box::new(FixedClock(at("2024-01-01T00:00:00Z"))));
    store.set_master_keys(MasterKey::generate(1).expect("key"), None).expect("keys");
    store
}

/// Imports one patient with one consultation. The same source id in another tenant links
/// the same core profile.
fn import(store: &mut TestStore, tenant: &Tenant, source_id: &str) -> PatientId {
    let batch = ImportBatch {
        source_system: "test".into(),
        patients: vec![NewPatientProfile {
            source_system: "test".into(),
            source_id: source_id.into(),
            given_name: "Given1".into(),
            family_name: "Family1".into(),
            birth_date: "1970-01-01".into(),
            sex: "F".into(),
            ..NewPatientProfile::default()
        }],
        consultations: vec![NewConsultation {
            source_id: format!("{source_id}-enc"),
            patient_source_id: source_id.into(),
            provider_source_id: None,
            status: "completed".into(),
            encounter_class: "virtual".into(),
            reason: "check-up".into(),
            notes: String::new(),
            started_at: at("2023-01-01T10:00:00Z"),
            ended_at: Some(at("2023-01-01T10:20:00Z")),
        }],
        ..ImportBatch::default()
    };
    store.import(tenant, &batch, &Policy::builtin(), ACTOR).expect("import");
    store.find_patient(tenant, "test", source_id).expect("find").expect("imported")
}

fn entry(category: Category, tenant: Option<TenantId>, record_id: String) -> LedgerEntry {
    LedgerEntry {
        seq: 1,
        hash: "00".into(),
        category,
        tenant_id: tenant,
        record_id,
        keys_destroyed: Vec::new(),
        disposed_at: at("2024-06-01T00:00:00Z"),
    }
}

fn applied(outcome: ReapplyOutcome) -> (Destroyed, Vec<String>) {
    match outcome {
        ReapplyOutcome::Applied { destroyed, keys_destroyed } => (destroyed, keys_destroyed),
        ReapplyOutcome::Absent => panic!("expected the entry to delete something"),
    }
}

fn reapply_patient_records_and_profile(backend: Backend) {
    let mut store = store(backend);
    let clinic = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import(&mut store, &clinic, "s-1");
    let records = entry(Category::PatientRecords, Some(clinic.id), patient.to_string());

    let (destroyed, keys) = applied(store.reapply_disposal(&records).expect("reapply"));

    // Consultation, link and core profile.
    assert_eq!(destroyed.rows, 3);
    assert_eq!(destroyed.files, 0);
    assert_eq!(keys.len(), 2, "link key and profile key");
    assert!(store.links_of_patient(patient).expect("links").is_empty());
    assert_eq!(store.find_patient(&clinic, "test", "s-1").expect("find"), None);
    assert_eq!(store.reapply_disposal(&records).expect("again"), ReapplyOutcome::Absent);
    let profile = entry(Category::PatientProfile, None, patient.to_string());
    assert_eq!(store.reapply_disposal(&profile).expect("profile"), ReapplyOutcome::Absent);
}

fn reapply_profile_kept_by_link(backend: Backend) {
    let mut store = store(backend);
    let clinic = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let other = store.create_tenant("other", "Other", ACTOR).expect("tenant");
    let patient = import(&mut store, &clinic, "s-1");
    assert_eq!(import(&mut store, &other, "s-1"), patient, "one core profile, two links");
    let records = entry(Category::PatientRecords, Some(clinic.id), patient.to_string());

    let (destroyed, keys) = applied(store.reapply_disposal(&records).expect("reapply"));

    assert_eq!(destroyed.rows, 2, "consultation and link");
    assert_eq!(keys.len(), 1, "the link key only");
    assert_eq!(store.links_of_patient(patient).expect("links").len(), 1);
    assert!(store.patient_profile(&other, patient).is_ok(), "the other tenant still reads it");

    // A profile entry while a link remains destroys the profile's keys and keeps its row.
    let profile = entry(Category::PatientProfile, None, patient.to_string());
    let (destroyed, keys) = applied(store.reapply_disposal(&profile).expect("profile"));
    assert_eq!(destroyed, Destroyed::default());
    assert_eq!(keys.len(), 1, "the profile key");
    assert_eq!(store.links_of_patient(patient).expect("links").len(), 1);
    assert!(store.patient_profile(&other, patient).is_err(), "profile no longer readable");
}

fn reapply_photo_and_session(backend: Backend) {
    let mut store = store(backend);
    let clinic = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import(&mut store, &clinic, "s-1");
    let photo = store
        .add_id_photo(&clinic, patient, &[7u8; 500], at("2024-01-02T00:00:00Z"), ACTOR)
        .expect("photo");
    let times = SessionTimes {
        started_at: at("2024-01-02T00:00:00Z"),
        expires_at: at("2024-01-02T01:00:00Z"),
        ended_at: None,
    };
    let session = store.add_session(&clinic, Some(patient), times).expect("session");
    let photo_entry = entry(Category::IdPhoto, Some(clinic.id), photo.to_string());
    let session_entry = entry(Category::Session, Some(clinic.id), session.to_string());

    let (destroyed, keys) = applied(store.reapply_disposal(&photo_entry).expect("photo"));
    assert_eq!(destroyed.rows, 1);
    assert_eq!(destroyed.files, 1);
    assert!(destroyed.bytes > 500, "the sealed photo bytes count");
    assert!(keys.is_empty());
    assert!(store.read_id_photo(&clinic, photo).is_err(), "photo gone");

    let (destroyed, _) = applied(store.reapply_disposal(&session_entry).expect("session"));
    assert_eq!(destroyed.rows, 1);
    assert_eq!(destroyed.files, 0);
    let detail = store.patient_link(&clinic, patient).expect("link stays");
    assert_eq!(detail.counts.id_photos, 0);
    assert_eq!(detail.counts.sessions, 0);

    assert_eq!(store.reapply_disposal(&photo_entry).expect("again"), ReapplyOutcome::Absent);
    assert_eq!(store.reapply_disposal(&session_entry).expect("again"), ReapplyOutcome::Absent);
}
