//! Audited reads of patient data: every read writes one sanitized entry in the transaction
//! of the read, on every backend.

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{ImportBatch, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::{PatientId, PhotoId, ServiceTokenId, UserId};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{backend_tests, Access, PatientRead, Role, Store, StoreError};
use serde_json::Value;

const MASTER: [u8; 32] = [7; 32];
const REQUEST: &str = "3f2b8c1e-5d4a-4b6f-9e0d-7a1c2b3d4e5f";
const PHOTO: &[u8] = b"photo bytes of the patient";

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

/// The imported profile: every PHI value here must stay out of the audit log.
fn person(source_id: &str) -> NewPatientProfile {
    NewPatientProfile {
        source_system: "test".into(),
        source_id: source_id.into(),
        given_name: "Quillon".into(),
        family_name: "Maravelle".into(),
        birth_date: "1970-02-03".into(),
        sex: "F".into(),
        ssn: Some("999-00-0001".into()),
        phone: Some("402-555-0199".into()),
        email: Some("quillon.maravelle@example.test".into()),
        address_line: "17 Birchwood Lane".into(),
        city: "Lincoln".into(),
        state: "NE".into(),
        postal_code: "68501".into(),
        ..NewPatientProfile::default()
    }
}

/// The PHI values of [`person`] that an entry must not contain.
fn phi_values() -> Vec<String> {
    let p = person("s-1");
    let mut values = vec![p.given_name, p.family_name, p.birth_date, p.address_line];
    values.extend([p.ssn, p.phone, p.email].into_iter().flatten());
    values
}

struct Seeded {
    store: TestStore,
    tenant: Tenant,
    other: Tenant,
    patient: PatientId,
    /// A patient linked only to `other`.
    theirs: PatientId,
    photo: PhotoId,
    theirs_photo: PhotoId,
}

fn seeded(backend: Backend) -> Seeded {
    let mut store = backend.create(Box::new(FixedClock(at("2024-01-01T00:00:00Z"))));
    store.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect("master key");
    let tenant = store.create_tenant("clinic-a", "Clinic A", "test").expect("tenant a");
    let other = store.create_tenant("clinic-b", "Clinic B", "test").expect("tenant b");
    let policy = Policy::builtin();
    let patient_of = |store: &mut TestStore, tenant: &Tenant, source_id: &str| {
        let batch = ImportBatch {
            source_system: "test".into(),
            patients: vec![person(source_id)],
            ..ImportBatch::default()
        };
        store.import(tenant, &batch, &policy, "test").expect("import");
        store.find_patient(tenant, "test", source_id).expect("find").expect("imported")
    };
    let patient = patient_of(&mut store, &tenant, "s-1");
    let theirs = patient_of(&mut store, &other, "s-2");
    let when = at("2024-01-01T00:00:00Z");
    let photo = store.add_id_photo(&tenant, patient, PHOTO, when, "test").expect("photo");
    let theirs_photo = store.add_id_photo(&other, theirs, b"other", when, "test").expect("photo");
    Seeded { store, tenant, other, patient, theirs, photo, theirs_photo }
}

fn access() -> Access {
    Access::user(UserId::new(), Role::Provider, REQUEST).expect("valid request id")
}

fn head(store: &dyn Store) -> i64 {
    store.audit_entries(0, u32::MAX).expect("entries").last().map_or(0, |entry| entry.seq)
}

/// Returns the entries written after `after`, read through a second handle, so that only
/// committed entries count.
fn entries_after(seeded: &Seeded, after: i64) -> Vec<Value> {
    let other = seeded.store.open_again();
    other.audit_entries(after, u32::MAX).expect("entries").into_iter().map(|e| e.body).collect()
}

/// Checks one entry's fields and that no PHI of the patient appears anywhere in it.
fn check_entry(entry: &Value, access: &Access, tenant: &Tenant, action: &str, outcome: &str) {
    assert_eq!(entry["action"], action);
    assert_eq!(entry["actor"], access.actor());
    assert_eq!(entry["tenant_id"], tenant.id.to_string());
    assert_eq!(entry["outcome"], outcome);
    let detail = entry["detail"].as_str().expect("detail");
    assert!(detail.starts_with(&format!("role=provider request={REQUEST}")), "{detail}");
    let text = entry.to_string();
    for value in phi_values() {
        assert!(!text.contains(&value), "entry {text} contains PHI");
    }
}

fn subjects(entry: &Value) -> Vec<String> {
    serde_json::from_value(entry["subjects"].clone()).expect("subjects")
}

fn reads_write_one_entry_each(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    let (tenant, patient, photo) = (seeded.tenant.clone(), seeded.patient, seeded.photo);

    let before = head(&*seeded.store);
    let links = seeded.store.read_patient_links(&tenant, &access).expect("list");
    assert_eq!(links.iter().map(|l| l.patient_id).collect::<Vec<_>>(), vec![patient]);
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "patient.list", "success");
    assert!(entries[0]["detail"].as_str().expect("detail").ends_with(" count=1"));
    assert!(subjects(&entries[0]).is_empty());

    let before = head(&*seeded.store);
    let record = seeded.store.read_patient(&tenant, patient, &access).expect("read");
    assert_eq!(record.profile.given_name, "Quillon");
    assert_eq!(record.profile.email.as_deref(), Some("quillon.maravelle@example.test"));
    assert_eq!(record.link.link.patient_id, patient);
    assert_eq!(record.link.counts.id_photos, 1);
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "patient.read", "success");
    assert_eq!(subjects(&entries[0]), vec![patient.to_string()]);

    let before = head(&*seeded.store);
    let bytes = seeded.store.read_id_photo_audited(&tenant, photo, &access).expect("photo");
    assert_eq!(bytes, PHOTO);
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "id_photo.read", "success");
    assert_eq!(subjects(&entries[0]), vec![photo.to_string()]);

    assert!(seeded.store.verify_audit().expect("verify").ok);
}

fn missing_and_cross_tenant_reads_write_not_found(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    let tenant = seeded.tenant.clone();
    let missing = PatientId::new();
    for requested in [seeded.theirs, missing] {
        let before = head(&*seeded.store);
        let result = seeded.store.read_patient(&tenant, requested, &access);
        assert!(matches!(result, Err(StoreError::PatientNotFound { .. })));
        let entries = entries_after(&seeded, before);
        assert_eq!(entries.len(), 1);
        check_entry(&entries[0], &access, &tenant, "patient.read", "not_found");
        assert_eq!(subjects(&entries[0]), vec![requested.to_string()]);
    }

    for requested in [seeded.theirs_photo, PhotoId::new()] {
        let before = head(&*seeded.store);
        let result = seeded.store.read_id_photo_audited(&tenant, requested, &access);
        assert!(matches!(result, Err(StoreError::PhotoNotFound { .. })));
        let entries = entries_after(&seeded, before);
        assert_eq!(entries.len(), 1);
        check_entry(&entries[0], &access, &tenant, "id_photo.read", "not_found");
        assert_eq!(subjects(&entries[0]), vec![requested.to_string()]);
    }

    // The other tenant's log gained nothing: no entry names it.
    let other = seeded.other.id.to_string();
    let named_other = entries_after(&seeded, 0)
        .iter()
        .filter(|entry| entry["action"].as_str().is_some_and(|a| a.ends_with(".read")))
        .any(|entry| entry["tenant_id"] == other.as_str());
    assert!(!named_other);
    assert!(seeded.store.verify_audit().expect("verify").ok);
}

/// Checks that a read failing for a reason other than not-found, which discloses and decides
/// nothing, writes no entry.
fn read_without_master_key_writes_no_entry(backend: Backend) {
    let seeded = seeded(backend);
    let access = access();
    let mut keyless = seeded.store.open_again();
    let before = head(&*seeded.store);
    let result = keyless.read_patient(&seeded.tenant, seeded.patient, &access);
    assert!(matches!(result, Err(StoreError::MasterKeyRequired)));
    let result = keyless.read_id_photo_audited(&seeded.tenant, seeded.photo, &access);
    assert!(matches!(result, Err(StoreError::MasterKeyRequired)));
    assert!(entries_after(&seeded, before).is_empty());
}

/// When the entry cannot be written, the read fails too: no patient data leaves the store
/// without its entry. A trigger in the test store refuses every new audit row.
fn read_whose_entry_fails_returns_no_data(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    seeded.store.fail_audit_writes();
    let before = head(&*seeded.store);
    let (tenant, patient, photo) = (seeded.tenant.clone(), seeded.patient, seeded.photo);
    assert!(seeded.store.read_patient(&tenant, patient, &access).is_err());
    assert!(seeded.store.read_id_photo_audited(&tenant, photo, &access).is_err());
    assert!(seeded.store.read_patient_links(&tenant, &access).is_err());
    assert!(seeded.store.read_patient(&tenant, seeded.theirs, &access).is_err());
    assert!(entries_after(&seeded, before).is_empty());
}

/// Checks that a batch of reads returns one result per read in order, and writes one entry
/// per read in the reader's tenant: success, or not_found for another tenant's patient and a
/// missing one.
fn batch_reads_write_one_entry_each(backend: Backend) {
    let mut seeded = seeded(backend);
    let ours = access();
    let theirs_access = Access::token(ServiceTokenId::new(), Role::Provider, "req-b").expect("id");
    let (tenant, other) = (seeded.tenant.clone(), seeded.other.clone());
    let missing = PatientId::new();
    let read = |tenant: &Tenant, patient, access: &Access| PatientRead {
        tenant: tenant.clone(),
        patient,
        access: access.clone(),
    };
    let reads = [
        read(&tenant, seeded.patient, &ours),
        read(&tenant, seeded.theirs, &ours),
        read(&other, seeded.theirs, &theirs_access),
        read(&tenant, missing, &ours),
        read(&other, seeded.patient, &theirs_access),
    ];

    let before = head(&*seeded.store);
    let results = seeded.store.read_patients(&reads).expect("batch");
    assert_eq!(results.len(), reads.len());
    let record = results[0].as_ref().expect("own patient");
    assert_eq!(record.profile.given_name, "Quillon");
    assert_eq!(record.link.link.tenant_id, tenant.id);
    assert!(matches!(results[1], Err(StoreError::PatientNotFound { .. })));
    let record = results[2].as_ref().expect("other tenant's own patient");
    assert_eq!(record.link.link.patient_id, seeded.theirs);
    assert_eq!(record.link.link.tenant_id, other.id);
    assert!(matches!(results[3], Err(StoreError::PatientNotFound { .. })));
    assert!(matches!(results[4], Err(StoreError::PatientNotFound { .. })));

    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), reads.len());
    let expected = [
        (&tenant, seeded.patient, "success"),
        (&tenant, seeded.theirs, "not_found"),
        (&other, seeded.theirs, "success"),
        (&tenant, missing, "not_found"),
        (&other, seeded.patient, "not_found"),
    ];
    for (entry, (tenant, patient, outcome)) in entries.iter().zip(expected) {
        assert_eq!(entry["action"], "patient.read", "{entry}");
        assert_eq!(entry["outcome"], outcome, "{entry}");
        assert_eq!(entry["tenant_id"], tenant.id.to_string(), "{entry}");
        assert_eq!(subjects(entry), vec![patient.to_string()]);
        let text = entry.to_string();
        for value in phi_values() {
            assert!(!text.contains(&value), "entry {text} contains PHI");
        }
    }
    assert_eq!(entries[0]["actor"], ours.actor());
    assert_eq!(entries[2]["actor"], theirs_access.actor());
    assert!(seeded.store.verify_audit().expect("verify").ok);
}

/// Checks that no read of a batch returns data when the entries cannot be written, and that
/// a batch without a master key writes nothing.
fn batch_reads_without_entries_return_no_data(backend: Backend) {
    let mut seeded = seeded(backend);
    let reads =
        [PatientRead { tenant: seeded.tenant.clone(), patient: seeded.patient, access: access() }];
    let mut keyless = seeded.store.open_again();
    let before = head(&*seeded.store);
    match keyless.read_patients(&reads) {
        Err(error) => assert!(matches!(error, StoreError::MasterKeyRequired), "{error}"),
        Ok(results) => {
            assert!(matches!(results[0], Err(StoreError::MasterKeyRequired)));
        }
    }

    seeded.store.fail_audit_writes();
    // A backend that commits the batch at once fails it as a whole; one that commits each
    // read alone fails each read.
    if let Ok(results) = seeded.store.read_patients(&reads) {
        assert_eq!(results.len(), 1);
        assert!(results[0].is_err());
    }
    assert!(entries_after(&seeded, before).is_empty());
}

/// Checks that a token's access is recorded under the token's id, and that request ids an entry
/// could not carry unchanged are refused.
fn token_access_and_request_ids(backend: Backend) {
    let mut seeded = seeded(backend);
    let token = ServiceTokenId::new();
    let access = Access::token(token, Role::Storefront, "req-1").expect("valid");
    assert_eq!(access.actor(), format!("token:{token}"));
    let before = head(&*seeded.store);
    let tenant = seeded.tenant.clone();
    seeded.store.read_patient_links(&tenant, &access).expect("list");
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["actor"], format!("token:{token}"));
    assert_eq!(entries[0]["detail"], "role=storefront request=req-1 count=1");

    for bad in ["", "Alice Smith", "a@b.test", &"a".repeat(65), "req 1"] {
        assert!(Access::user(UserId::new(), Role::Provider, bad).is_err(), "{bad:?}");
    }
}

backend_tests!(
    reads_write_one_entry_each,
    missing_and_cross_tenant_reads_write_not_found,
    read_without_master_key_writes_no_entry,
    read_whose_entry_fails_returns_no_data,
    token_access_and_request_ids,
    batch_reads_write_one_entry_each,
    batch_reads_without_entries_return_no_data,
);
