//! Audited encounters, consultations and prescriptions on every backend: retention moves
//! only forward, free text is sealed at rest, and each call writes one sanitized entry in its
//! own transaction.

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{HoldScope, ImportBatch, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::{ConsultationId, PatientId, UserId};
use medconnect_store::testing::{admin_url, Backend, TestStore};
use medconnect_store::{
    backend_tests, Access, NewEncounter, NewPrescriptionEntry, Role, Store, StoreError,
};
use serde_json::Value;

const MASTER: [u8; 32] = [7; 32];
const REQUEST: &str = "6d0c1f7a-2b3e-4c5d-8e9f-a0b1c2d3e4f5";
const REASON: &str = "Zephyrine cough follow-up";
const NOTES: &str = "Patient reports Quorvex rash since Monday";
const CODE: &str = "RX-Amoxivane-500";
const DESCRIPTION: &str = "Amoxivane 500 mg oral capsule";

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

fn person(source_id: &str) -> NewPatientProfile {
    NewPatientProfile {
        source_system: "test".into(),
        source_id: source_id.into(),
        given_name: "Orsolya".into(),
        family_name: "Pemberwick".into(),
        birth_date: "1981-05-06".into(),
        sex: "F".into(),
        address_line: "9 Larchmont Road".into(),
        city: "Omaha".into(),
        state: "NE".into(),
        postal_code: "68102".into(),
        ..NewPatientProfile::default()
    }
}

struct Seeded {
    store: TestStore,
    tenant: Tenant,
    other: Tenant,
    patient: PatientId,
    /// A second patient of `tenant`.
    sibling: PatientId,
    /// A patient linked only to `other`.
    theirs: PatientId,
}

fn seeded(backend: Backend) -> Seeded {
    let mut store = backend.create(Box::new(FixedClock(at("2025-01-01T00:00:00Z"))));
    store.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect("master key");
    let tenant = store.create_tenant("clinic-a", "Clinic A", "test").expect("tenant a");
    let other = store.create_tenant("clinic-b", "Clinic B", "test").expect("tenant b");
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
    let ours = import(&tenant, &["a1", "a2"]);
    let theirs = import(&other, &["b1"])[0];
    Seeded { store, tenant, other, patient: ours[0], sibling: ours[1], theirs }
}

fn access() -> Access {
    Access::user(UserId::new(), Role::Provider, REQUEST).expect("valid request id")
}

fn head(store: &dyn Store) -> i64 {
    store.audit_entries(0, u32::MAX).expect("entries").last().map_or(0, |entry| entry.seq)
}

/// Returns the committed entries after `after`, read through a second handle.
fn entries_after(seeded: &Seeded, after: i64) -> Vec<Value> {
    let other = seeded.store.open_again();
    other.audit_entries(after, u32::MAX).expect("entries").into_iter().map(|e| e.body).collect()
}

fn subjects(entry: &Value) -> Vec<String> {
    serde_json::from_value(entry["subjects"].clone()).expect("subjects")
}

/// Checks one entry's fields and that none of the free text written appears in it.
fn check_entry(entry: &Value, access: &Access, tenant: &Tenant, action: &str, outcome: &str) {
    assert_eq!(entry["action"], action);
    assert_eq!(entry["actor"], access.actor());
    assert_eq!(entry["tenant_id"], tenant.id.to_string());
    assert_eq!(entry["outcome"], outcome);
    let detail = entry["detail"].as_str().expect("detail");
    assert!(detail.starts_with(&format!("role=provider request={REQUEST}")), "{detail}");
    let text = entry.to_string();
    for value in [REASON, NOTES, CODE, DESCRIPTION, "Orsolya", "Pemberwick", "ambulatory"] {
        assert!(!text.contains(value), "entry {text} contains a value the client sent");
    }
}

fn consultation(started_at: &str, ended_at: Option<&str>) -> NewEncounter<'static> {
    NewEncounter {
        status: "completed",
        encounter_class: "ambulatory",
        reason: REASON,
        notes: NOTES,
        started_at: at(started_at),
        ended_at: ended_at.map(at),
    }
}

fn prescription(consultation_id: Option<ConsultationId>) -> NewPrescriptionEntry<'static> {
    NewPrescriptionEntry {
        code: CODE,
        description: DESCRIPTION,
        dispenses: 3,
        controlled: true,
        started_at: at("2024-06-01T10:00:00Z"),
        stopped_at: Some(at("2024-07-01T10:00:00Z")),
        consultation_id,
    }
}

fn encounter_moves_retention_forward_only(backend: Backend) {
    let mut seeded = seeded(backend);
    let (tenant, patient, access) = (seeded.tenant.clone(), seeded.patient, access());
    let policy = Policy::builtin();

    let before = head(&*seeded.store);
    let encounter = NewEncounter::at(at("2024-06-01T09:30:00Z"), "ambulatory");
    let recorded = seeded
        .store
        .record_encounter_audited(
            &tenant,
            patient,
            &encounter,
            &policy,
            &access,
            "encounter.record",
        )
        .expect("record");
    assert_eq!(recorded.last_medical_encounter_at, at("2024-06-01T09:30:00Z"));
    assert_eq!(recorded.phi_retention_until, at("2031-06-01T09:30:00Z"));
    let link = seeded.store.patient_link(&tenant, patient).expect("link");
    assert_eq!(link.link.last_medical_encounter_at, Some(at("2024-06-01T09:30:00Z")));
    assert_eq!(link.link.phi_retention_until, at("2031-06-01T09:30:00Z"));
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "encounter.record", "success");
    let expected = vec![patient.to_string(), recorded.consultation_id.to_string()];
    assert_eq!(subjects(&entries[0]), expected);
    let detail = entries[0]["detail"].as_str().expect("detail");
    assert!(detail.ends_with(&format!("policy={}", policy.version())), "{detail}");

    // An older encounter is stored, but the last encounter and retention stay.
    let older = NewEncounter::at(at("2023-01-15T08:00:00Z"), "virtual");
    let unchanged = seeded
        .store
        .record_encounter_audited(&tenant, patient, &older, &policy, &access, "encounter.record")
        .expect("older");
    assert_eq!(unchanged.last_medical_encounter_at, at("2024-06-01T09:30:00Z"));
    assert_eq!(unchanged.phi_retention_until, at("2031-06-01T09:30:00Z"));
    let link = seeded.store.patient_link(&tenant, patient).expect("link");
    assert_eq!(link.link.phi_retention_until, at("2031-06-01T09:30:00Z"));
    assert_eq!(link.counts.consultations, 2);
}

fn leap_day_encounter_ends_on_march_first(backend: Backend) {
    let mut seeded = seeded(backend);
    let (tenant, patient, access) = (seeded.tenant.clone(), seeded.patient, access());
    let policy = Policy::builtin();
    let leap = NewEncounter::at(at("2024-02-29T12:00:00Z"), "wellness");
    let recorded = seeded
        .store
        .record_encounter_audited(&tenant, patient, &leap, &policy, &access, "encounter.record")
        .expect("record");
    // Seven years after 29 February 2024 falls in a common year: the period ends on 1 March,
    // never on 28 February, so it is never shorter than seven full years.
    assert_eq!(recorded.phi_retention_until, at("2031-03-01T12:00:00Z"));
    assert_eq!(
        recorded.phi_retention_until,
        policy.phi_retention_until("clinic-a", leap.started_at)
    );
}

fn encounter_under_legal_hold_is_recorded(backend: Backend) {
    let mut seeded = seeded(backend);
    let (tenant, patient, access) = (seeded.tenant.clone(), seeded.patient, access());
    let policy = Policy::builtin();
    let scope = HoldScope::Patient(patient);
    seeded.store.place_hold(&tenant, scope, "matter-7", "litigation", "test").expect("hold");
    let encounter = NewEncounter::at(at("2024-09-09T09:00:00Z"), "inpatient");
    let recorded = seeded
        .store
        .record_encounter_audited(
            &tenant,
            patient,
            &encounter,
            &policy,
            &access,
            "encounter.record",
        )
        .expect("recorded under hold");
    assert_eq!(recorded.phi_retention_until, at("2031-09-09T09:00:00Z"));
    let link = seeded.store.patient_link(&tenant, patient).expect("link");
    assert_eq!(link.link.phi_retention_until, at("2031-09-09T09:00:00Z"));
}

fn consultation_round_trips_sealed(backend: Backend) {
    let mut seeded = seeded(backend);
    let (tenant, patient, access) = (seeded.tenant.clone(), seeded.patient, access());
    let policy = Policy::builtin();

    let first = consultation("2024-03-01T10:00:00Z", Some("2024-03-01T10:30:00Z"));
    let second = consultation("2024-05-01T10:00:00Z", None);
    let before = head(&*seeded.store);
    let created = seeded
        .store
        .record_encounter_audited(&tenant, patient, &first, &policy, &access, "consultation.create")
        .expect("first");
    assert_eq!(created.last_medical_encounter_at, at("2024-03-01T10:30:00Z"));
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "consultation.create", "success");
    let newest = seeded
        .store
        .record_encounter_audited(
            &tenant,
            patient,
            &second,
            &policy,
            &access,
            "consultation.create",
        )
        .expect("second");
    // Without an end, the start is the encounter.
    assert_eq!(newest.last_medical_encounter_at, at("2024-05-01T10:00:00Z"));
    assert_eq!(newest.phi_retention_until, at("2031-05-01T10:00:00Z"));

    let before = head(&*seeded.store);
    let listed = seeded.store.read_consultations(&tenant, patient, &access).expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, newest.consultation_id, "newest first");
    assert_eq!(listed[1].id, created.consultation_id);
    assert_eq!(listed[0].reason, REASON);
    assert_eq!(listed[0].notes, NOTES);
    assert_eq!(listed[0].status, "completed");
    assert_eq!(listed[0].encounter_class, "ambulatory");
    assert_eq!(listed[0].ended_at, None);
    assert_eq!(listed[1].ended_at, Some(at("2024-03-01T10:30:00Z")));
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "consultation.list", "success");
    assert!(entries[0]["detail"].as_str().expect("detail").ends_with(" count=2"));
    assert_eq!(subjects(&entries[0]), vec![patient.to_string()]);

    let mut raw = Raw::open(&seeded.store);
    for sealed in raw
        .blobs("SELECT reason FROM consultations")
        .into_iter()
        .chain(raw.blobs("SELECT notes FROM consultations"))
    {
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("Zephyrine"), "reason stored sealed");
        assert!(!text.contains("Quorvex"), "notes stored sealed");
    }
}

fn prescription_checks_its_consultation(backend: Backend) {
    let mut seeded = seeded(backend);
    let (tenant, patient, access) = (seeded.tenant.clone(), seeded.patient, access());
    let policy = Policy::builtin();
    let visit = consultation("2024-06-01T09:00:00Z", Some("2024-06-01T09:20:00Z"));
    let ours = seeded
        .store
        .record_encounter_audited(&tenant, patient, &visit, &policy, &access, "consultation.create")
        .expect("ours");
    let sibling = seeded
        .store
        .record_encounter_audited(
            &tenant,
            seeded.sibling,
            &visit,
            &policy,
            &access,
            "consultation.create",
        )
        .expect("sibling's");

    let before = head(&*seeded.store);
    let stored = seeded
        .store
        .create_prescription(&tenant, patient, &prescription(Some(ours.consultation_id)), &access)
        .expect("prescription");
    assert_eq!(stored.consultation_id, Some(ours.consultation_id.to_string()));
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "prescription.create", "success");
    assert_eq!(subjects(&entries[0]), vec![patient.to_string(), stored.id.clone()]);

    // A consultation of another patient, or a missing one, stores nothing and writes no entry.
    for wrong in [sibling.consultation_id, ConsultationId::new()] {
        let before = head(&*seeded.store);
        let result =
            seeded.store.create_prescription(&tenant, patient, &prescription(Some(wrong)), &access);
        assert!(matches!(result, Err(StoreError::ConsultationNotFound { .. })));
        assert!(entries_after(&seeded, before).is_empty());
    }
    let link = seeded.store.patient_link(&tenant, patient).expect("link");
    assert_eq!(link.counts.prescriptions, 1);

    let unlinked = seeded
        .store
        .create_prescription(&tenant, patient, &prescription(None), &access)
        .expect("without consultation");
    let before = head(&*seeded.store);
    let listed = seeded.store.read_prescriptions(&tenant, patient, &access).expect("list");
    assert_eq!(listed.len(), 2);
    let ids: Vec<&str> = listed.iter().map(|p| p.id.as_str()).collect();
    assert!(ids.contains(&stored.id.as_str()), "{ids:?}");
    assert!(ids.contains(&unlinked.id.as_str()), "{ids:?}");
    assert_eq!(listed[0].code, CODE);
    assert_eq!(listed[0].description, DESCRIPTION);
    assert_eq!(listed[0].dispenses, 3);
    assert!(listed[0].controlled);
    assert_eq!(listed[0].stopped_at, Some(at("2024-07-01T10:00:00Z")));
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "prescription.list", "success");
    assert!(entries[0]["detail"].as_str().expect("detail").ends_with(" count=2"));

    let mut raw = Raw::open(&seeded.store);
    for sealed in raw
        .blobs("SELECT code FROM prescriptions")
        .into_iter()
        .chain(raw.blobs("SELECT description FROM prescriptions"))
    {
        assert!(!String::from_utf8_lossy(&sealed).contains("Amoxivane"), "stored sealed");
    }
}

/// One store call of a test, with its result reduced to success or the error.
type StoreCall<'a> = dyn Fn(&mut TestStore) -> Result<(), StoreError> + 'a;

fn other_tenants_patient_is_not_found(backend: Backend) {
    let mut seeded = seeded(backend);
    let (tenant, theirs, access) = (seeded.tenant.clone(), seeded.theirs, access());
    let other = seeded.other.clone();
    let policy = Policy::builtin();
    let before_link = seeded.store.patient_link(&other, theirs).expect("their link");

    let visit = consultation("2024-06-01T09:00:00Z", None);
    let calls: Vec<(&str, Box<StoreCall<'_>>)> = vec![
        (
            "encounter.record",
            Box::new(|store: &mut TestStore| {
                let encounter = NewEncounter::at(at("2024-06-01T09:00:00Z"), "virtual");
                store
                    .record_encounter_audited(
                        &tenant,
                        theirs,
                        &encounter,
                        &policy,
                        &access,
                        "encounter.record",
                    )
                    .map(drop)
            }),
        ),
        (
            "consultation.create",
            Box::new(|store: &mut TestStore| {
                store
                    .record_encounter_audited(
                        &tenant,
                        theirs,
                        &visit,
                        &policy,
                        &access,
                        "consultation.create",
                    )
                    .map(drop)
            }),
        ),
        (
            "consultation.list",
            Box::new(|store: &mut TestStore| {
                store.read_consultations(&tenant, theirs, &access).map(drop)
            }),
        ),
        (
            "prescription.create",
            Box::new(|store: &mut TestStore| {
                store.create_prescription(&tenant, theirs, &prescription(None), &access).map(drop)
            }),
        ),
        (
            "prescription.list",
            Box::new(|store: &mut TestStore| {
                store.read_prescriptions(&tenant, theirs, &access).map(drop)
            }),
        ),
    ];
    for (action, call) in calls {
        let before = head(&*seeded.store);
        let result = call(&mut seeded.store);
        assert!(matches!(result, Err(StoreError::PatientNotFound { .. })), "{action}");
        let entries = entries_after(&seeded, before);
        assert_eq!(entries.len(), 1, "{action}");
        check_entry(&entries[0], &access, &tenant, action, "not_found");
        assert_eq!(subjects(&entries[0]), vec![theirs.to_string()], "{action}");
    }
    let after_link = seeded.store.patient_link(&other, theirs).expect("their link");
    assert_eq!(after_link.counts, before_link.counts, "nothing stored for tenant B");
    assert_eq!(after_link.link, before_link.link, "retention of tenant B unchanged");
}

fn no_master_key_writes_nothing(backend: Backend) {
    let seeded = seeded(backend);
    let (tenant, patient, access) = (seeded.tenant.clone(), seeded.patient, access());
    let mut keyless = seeded.store.open_again();
    let before = head(&*seeded.store);
    let encounter = NewEncounter::at(at("2024-06-01T09:00:00Z"), "virtual");
    let policy = Policy::builtin();
    let result = keyless.record_encounter_audited(
        &tenant,
        patient,
        &encounter,
        &policy,
        &access,
        "encounter.record",
    );
    assert!(matches!(result, Err(StoreError::MasterKeyRequired)));
    let result = keyless.read_consultations(&tenant, patient, &access);
    assert!(matches!(result, Err(StoreError::MasterKeyRequired)));
    assert!(entries_after(&seeded, before).is_empty());
    let link = seeded.store.patient_link(&tenant, patient).expect("link");
    assert_eq!(link.counts.consultations, 0);
}

/// Direct access to a store's tables, past the store and past row-level security.
enum Raw {
    Sqlite(rusqlite::Connection),
    Postgres(::postgres::Client),
}

impl Raw {
    fn open(store: &TestStore) -> Raw {
        if let Some(dir) = store.data_dir() {
            let conn = rusqlite::Connection::open(dir.join("medconnect.db")).expect("db");
            return Raw::Sqlite(conn);
        }
        let config = store.pg_config().expect("a test store has a folder or a schema");
        let mut client =
            ::postgres::Client::connect(&admin_url(), ::postgres::NoTls).expect("admin connection");
        client.batch_execute(&format!("SET search_path TO {}", config.schema)).expect("schema");
        Raw::Postgres(client)
    }

    /// Returns the first column of every row `sql` selects, as bytes.
    fn blobs(&mut self, sql: &str) -> Vec<Vec<u8>> {
        match self {
            Raw::Sqlite(conn) => conn
                .prepare(sql)
                .expect("query")
                .query_map([], |row| row.get(0))
                .expect("rows")
                .map(|row| row.expect("row"))
                .collect(),
            Raw::Postgres(client) => {
                client.query(sql, &[]).expect("query").iter().map(|row| row.get(0)).collect()
            }
        }
    }
}

backend_tests!(
    encounter_moves_retention_forward_only,
    leap_day_encounter_ends_on_march_first,
    encounter_under_legal_hold_is_recorded,
    consultation_round_trips_sealed,
    prescription_checks_its_consultation,
    other_tenants_patient_is_not_found,
    no_master_key_writes_nothing,
);
