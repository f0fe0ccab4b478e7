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
    store.set_master_key(MasterKey::generate(1).expect("key")).expect("keys");
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

fn import_providers(store: &mut SqliteStore, tenant: &Tenant, names: &[&str]) {
    let batch = ImportBatch {
        source_system: "test".into(),
        providers: names
            .iter()
            .map(|name| medconnect_domain::model::NewProvider {
                source_id: format!("prov-{name}"),
                name: (*name).into(),
                specialty: "GENERAL PRACTICE".into(),
                license_state: "NE".into(),
                ..Default::default()
            })
            .collect(),
        ..ImportBatch::default()
    };
    store.import(tenant, &batch, &Policy::builtin(), ACTOR).expect("providers");
}

#[test]
fn tenant_rotation_keeps_old_versions_readable() {
    let dir = TempDir::new().expect("dir");
    let mut store = store(dir.path());
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    import_providers(&mut store, &tenant, &["Early1 Doctor1"]);
    assert_eq!(store.rotate_tenant_key(&tenant, ACTOR).expect("rotate"), 2);
    import_providers(&mut store, &tenant, &["Later2 Doctor2"]);

    let mut names: Vec<String> =
        store.providers(&tenant).expect("providers").into_iter().map(|p| p.name).collect();
    names.sort();
    assert_eq!(names, ["Early1 Doctor1", "Later2 Doctor2"]);
    let conn = db(dir.path());
    let mut versions: Vec<u32> = conn
        .prepare("SELECT name FROM providers")
        .expect("query")
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("rows")
        .map(|sealed| {
            medconnect_crypto::parse_header(&sealed.expect("row")).expect("header").key_version
        })
        .collect();
    versions.sort();
    assert_eq!(versions, [1, 2], "old writes keep version 1, new writes use version 2");
}

#[test]
fn master_rotation_resumes_after_interruption() {
    let dir = TempDir::new().expect("dir");
    let next_bytes = [9u8; 32];
    let clock = || Box::new(FixedClock(at("2024-01-01T00:00:00Z")));
    let mut store = SqliteStore::create(dir.path(), ClockMode::Simulated, clock()).expect("store");
    store.set_master_key(MasterKey::from_bytes(1, &[7u8; 32])).expect("keys");
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let first = import(&mut store, &tenant, "s-1", "Alpha1");
    let second = import(&mut store, &tenant, "s-2", "Bravo2");

    // Start the rotation and re-wrap a single key, then stop as a crash would.
    store.begin_master_rotation(2, ACTOR).expect("begin");
    store
        .set_master_keys(
            MasterKey::from_bytes(1, &[7u8; 32]),
            Some(MasterKey::from_bytes(2, &next_bytes)),
        )
        .expect("keys");
    let remaining = store.rewrap_data_keys(1).expect("one batch");
    assert!(remaining > 0, "rotation is only partly done");
    drop(store);

    // A second process in the middle of the rotation reads and writes with both keys.
    let mut store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.master_rotation_target().expect("target"), Some(2));
    store
        .set_master_keys(
            MasterKey::from_bytes(1, &[7u8; 32]),
            Some(MasterKey::from_bytes(2, &next_bytes)),
        )
        .expect("keys");
    assert_eq!(
        store.patient_profile(&tenant, first).expect("mid-rotation read").given_name,
        "Alpha1"
    );
    let third = import(&mut store, &tenant, "s-3", "Charlie3");

    while store.rewrap_data_keys(2).expect("batch") > 0 {}
    assert_eq!(store.finish_master_rotation(ACTOR).expect("finish"), 2);
    drop(store);

    // Only the new key now: every profile opens and blind-index lookups still match.
    let mut store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.master_key_version().expect("version"), 2);
    store.set_master_key(MasterKey::from_bytes(2, &next_bytes)).expect("new key only");
    for (patient, name) in [(first, "Alpha1"), (second, "Bravo2"), (third, "Charlie3")] {
        assert_eq!(store.patient_profile(&tenant, patient).expect("profile").given_name, name);
    }
    assert_eq!(store.find_patient(&tenant, "test", "s-2").expect("find"), Some(second));
    let old_versions: i64 = db(dir.path())
        .query_row("SELECT count(*) FROM data_keys WHERE master_version <> 2", [], |r| r.get(0))
        .expect("count");
    assert_eq!(old_versions, 0);

    // The old key alone no longer opens anything.
    let mut store = SqliteStore::open(dir.path()).expect("reopen");
    let err =
        store.set_master_key(MasterKey::from_bytes(1, &[7u8; 32])).expect_err("old key rejected");
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
}

#[test]
fn finishing_incomplete_rotation_is_rejected() {
    let dir = TempDir::new().expect("dir");
    let mut store = store(dir.path());
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    import(&mut store, &tenant, "s-1", "Alpha1");
    store.begin_master_rotation(2, ACTOR).expect("begin");
    let err = store.finish_master_rotation(ACTOR).expect_err("keys not re-wrapped");
    assert!(matches!(err, StoreError::RotationIncomplete { .. }), "{err}");
}
