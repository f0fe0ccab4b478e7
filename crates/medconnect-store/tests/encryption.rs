//! Encryption at rest on a real SQLite store: sealed fields and blobs open only in their own
//! row, column and tenant, and disposal destroys the keys.

use std::path::Path;

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{ImportBatch, NewConsultation, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::PatientId;
use medconnect_store::{
    ClockMode, Disposal, DisposalContext, DisposalOutcome, SqliteStore, Store, StoreError,
};
use rusqlite::Connection;
use tempfile::TempDir;

const ACTOR: &str = "test";

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("instant")
}

fn store(dir: &Path) -> SqliteStore {
    let clock = Box::new(FixedClock(at("2024-01-01T00:00:00Z")));
    let mut store = SqliteStore::create(dir, ClockMode::Simulated, clock).expect("store");
    store.set_master_key(MasterKey::generate(1).expect("key"));
    store
}

fn import(store: &mut SqliteStore, tenant: &Tenant, source_id: &str, given: &str) -> PatientId {
    let batch = ImportBatch {
        source_system: "test".into(),
        patients: vec![NewPatientProfile {
            source_system: "test".into(),
            source_id: source_id.into(),
            given_name: given.into(),
            family_name: "Family1".into(),
            birth_date: "1970-01-01".into(),
            sex: "F".into(),
            ssn: Some("999-00-0001".into()),
            address_line: "1 Main Street".into(),
            ..NewPatientProfile::default()
        }],
        consultations: vec![NewConsultation {
            source_id: format!("{source_id}-e"),
            patient_source_id: source_id.into(),
            provider_source_id: None,
            status: "completed".into(),
            encounter_class: "virtual".into(),
            reason: "Migraine follow-up".into(),
            notes: "Patient reports relief".into(),
            started_at: at("2015-01-01T00:00:00Z"),
            ended_at: Some(at("2015-01-01T00:20:00Z")),
        }],
        ..ImportBatch::default()
    };
    let before: Vec<PatientId> =
        store.patient_links(tenant).expect("links").iter().map(|l| l.patient_id).collect();
    store.import(tenant, &batch, &Policy::builtin(), ACTOR).expect("import");
    store
        .patient_links(tenant)
        .expect("links")
        .into_iter()
        .map(|l| l.patient_id)
        .find(|p| !before.contains(p))
        .expect("new link")
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("medconnect.db")).expect("db")
}

#[test]
fn profile_round_trips_encrypted() {
    let dir = TempDir::new().expect("dir");
    let mut store = store(dir.path());
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import(&mut store, &tenant, "s-1", "Zelda7");

    let profile = store.patient_profile(&tenant, patient).expect("profile");
    assert_eq!(profile.given_name, "Zelda7");
    assert_eq!(profile.ssn.as_deref(), Some("999-00-0001"));
    assert_eq!(profile.address_line, "1 Main Street");

    let stored: Vec<u8> = db(dir.path())
        .query_row("SELECT given_name FROM patient_profiles", [], |r| r.get(0))
        .expect("stored");
    assert!(!String::from_utf8_lossy(&stored).contains("Zelda7"), "stored sealed");
    assert_eq!(&stored[..2], b"MC", "versioned ciphertext header");
}

#[test]
fn moved_ciphertext_is_rejected() {
    // (SQL that moves a ciphertext, what the error must name)
    let cases = [
        (
            "UPDATE patient_profiles SET given_name = (SELECT given_name FROM patient_profiles WHERE id = :a) WHERE id = :b",
            "patient_profiles.given_name",
        ),
        (
            "UPDATE patient_profiles SET given_name = (SELECT family_name FROM patient_profiles WHERE id = :b) WHERE id = :b",
            "patient_profiles.given_name",
        ),
    ];
    for (sql, expected) in cases {
        let dir = TempDir::new().expect("dir");
        let mut store = store(dir.path());
        let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
        let a = import(&mut store, &tenant, "s-1", "Alpha1");
        let b = import(&mut store, &tenant, "s-2", "Bravo2");
        let sql = sql.replace(":a", &format!("'{a}'")).replace(":b", &format!("'{b}'"));
        db(dir.path()).execute_batch(&sql).expect("tamper");
        let err = store.patient_profile(&tenant, b).err().expect("rejected");
        assert!(matches!(err, StoreError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
        assert!(store.patient_profile(&tenant, a).is_ok(), "the source row still opens");
    }
}

#[test]
fn photo_moved_across_tenants_is_rejected() {
    let dir = TempDir::new().expect("dir");
    let mut store = store(dir.path());
    let first = store.create_tenant("first", "First", ACTOR).expect("tenant");
    let second = store.create_tenant("second", "Second", ACTOR).expect("tenant");
    let a = import(&mut store, &first, "s-1", "Alpha1");
    let b = import(&mut store, &second, "s-2", "Bravo2");
    let photo_a = store
        .add_id_photo(&first, a, b"first tenant photo", at("2024-01-01T00:00:00Z"), ACTOR)
        .expect("photo");
    let photo_b = store
        .add_id_photo(&second, b, b"second tenant photo", at("2024-01-01T00:00:00Z"), ACTOR)
        .expect("photo");
    assert_eq!(store.read_id_photo(&first, photo_a).expect("read"), b"first tenant photo");

    let blobs = dir.path().join("blobs/id-photos");
    let path_a = blobs.join(format!("{}/{photo_a}.bin", first.id));
    let path_b = blobs.join(format!("{}/{photo_b}.bin", second.id));
    let sealed = std::fs::read(&path_a).expect("sealed file");
    assert!(!String::from_utf8_lossy(&sealed).contains("first tenant photo"), "file is sealed");
    std::fs::copy(&path_a, &path_b).expect("copy across tenants");
    let err = store.read_id_photo(&second, photo_b).expect_err("rejected");
    assert!(matches!(err, StoreError::Unreadable { .. }), "{err}");
    let err = store.read_id_photo(&second, photo_a).expect_err("other tenant id");
    assert!(matches!(err, StoreError::PhotoNotFound { .. }), "{err}");
}

#[test]
fn disposal_destroys_link_and_profile_keys() {
    let dir = TempDir::new().expect("dir");
    let mut store = store(dir.path());
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import(&mut store, &tenant, "s-1", "Alpha1");
    let conn = db(dir.path());
    let keys_before: Vec<String> = conn
        .prepare("SELECT id FROM data_keys WHERE scope IN ('link', 'profile') ORDER BY scope")
        .expect("query")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect();
    assert_eq!(keys_before.len(), 2);
    let sealed_reason: Vec<u8> =
        conn.query_row("SELECT reason FROM consultations", [], |r| r.get(0)).expect("reason");

    let policy = Policy::builtin();
    let context = DisposalContext {
        policy: &policy,
        as_of: at("2030-01-01T00:00:00Z"),
        actor: ACTOR,
        run_id: "t",
    };
    let disposal = Disposal {
        category: medconnect_domain::model::Category::PatientRecords,
        tenant_id: tenant.id,
        patient_id: Some(patient),
        record_id: patient.to_string(),
    };
    let outcomes = store.dispose(&[disposal], &context).expect("dispose");
    let DisposalOutcome::Disposed { receipts } = &outcomes[0] else {
        panic!("not disposed: {outcomes:?}");
    };
    let destroyed: Vec<String> = receipts.iter().flat_map(|r| r.keys_destroyed.clone()).collect();
    let mut expected = keys_before.clone();
    expected.sort();
    let mut got = destroyed.clone();
    got.sort();
    assert_eq!(got, expected, "receipts name every destroyed key");
    let remaining: i64 = conn
        .query_row("SELECT count(*) FROM data_keys WHERE scope IN ('link', 'profile')", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(remaining, 0);
    // A copy of a ciphertext kept from before the purge names a key that no longer exists.
    let header = medconnect_crypto::parse_header(&sealed_reason).expect("header");
    assert!(keys_before.contains(&header.key_id.to_string()));
}

#[test]
fn plaintext_store_is_refused() {
    let dir = TempDir::new().expect("dir");
    let conn = Connection::open(dir.path().join("medconnect.db")).expect("db");
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for file in ["0001_initial.sql", "0002_link_activity_index.sql"] {
        conn.execute_batch(&std::fs::read_to_string(migrations.join(file)).expect("sql"))
            .expect("migrate");
    }
    conn.execute_batch(
        "PRAGMA user_version = 2;
         INSERT INTO store_meta VALUES ('clock_mode', 'production'), ('created_at', '2026-01-01T00:00:00Z');
         INSERT INTO patient_profiles (id, source_system, source_id, given_name, family_name, birth_date, sex, address_line, city, state, postal_code, created_at)
         VALUES ('p', 's', 'x', 'Plain1', 'Text1', '1970-01-01', 'F', 'a', 'b', 'c', 'd', '2026-01-01T00:00:00Z');",
    )
    .expect("plaintext row");
    drop(conn);
    let err = SqliteStore::open(dir.path()).err().expect("refused");
    assert!(matches!(err, StoreError::PlaintextStore { found: 2 }), "{err}");
}

#[test]
fn import_without_master_key_fails() {
    let dir = TempDir::new().expect("dir");
    let clock = Box::new(FixedClock(at("2024-01-01T00:00:00Z")));
    let mut store = SqliteStore::create(dir.path(), ClockMode::Simulated, clock).expect("store");
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let err = store
        .import(&tenant, &ImportBatch::default(), &Policy::builtin(), ACTOR)
        .expect_err("no key");
    assert!(matches!(err, StoreError::MasterKeyRequired), "{err}");
}
