//! Encryption at rest on real stores: sealed fields and ID photos open only in their own
//! row, column and tenant, keys rotate without re-encrypting, and disposal destroys the keys.
//! Tests that tamper with stored rows reach them past the store: through the database file
//! on SQLite, and as the admin role on PostgreSQL.

use std::path::Path;

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{ImportBatch, NewConsultation, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::{PatientId, PhotoId};
use medconnect_store::testing::{admin_url, Backend, TestStore};
use medconnect_store::{
    backend_tests, Disposal, DisposalContext, DisposalOutcome, SqliteStore, StoreError,
};
use rusqlite::Connection;
use tempfile::TempDir;

const ACTOR: &str = "test";

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("instant")
}

fn clock() -> Box<FixedClock> {
    Box::new(FixedClock(at("2024-01-01T00:00:00Z")))
}

fn store(backend: Backend) -> TestStore {
    let mut store = backend.create(clock());
    store.set_master_keys(MasterKey::generate(1).expect("key"), None).expect("keys");
    store
}

fn import(store: &mut TestStore, tenant: &Tenant, source_id: &str, given: &str) -> PatientId {
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

/// Direct access to a store's tables, past the store and past row-level security.
enum Raw {
    Sqlite(Connection),
    Postgres(::postgres::Client),
}

impl Raw {
    fn open(store: &TestStore) -> Raw {
        if let Some(dir) = store.data_dir() {
            return Raw::Sqlite(Connection::open(dir.join("medconnect.db")).expect("db"));
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

    /// Returns the first column of every row `sql` selects, as text.
    fn texts(&mut self, sql: &str) -> Vec<String> {
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

    fn count(&mut self, sql: &str) -> i64 {
        match self {
            Raw::Sqlite(conn) => conn.query_row(sql, [], |row| row.get(0)).expect("count"),
            Raw::Postgres(client) => client.query_one(sql, &[]).expect("count").get(0),
        }
    }

    fn execute(&mut self, sql: &str) {
        match self {
            Raw::Sqlite(conn) => conn.execute_batch(sql).expect("statement"),
            Raw::Postgres(client) => client.batch_execute(sql).expect("statement"),
        }
    }

    /// Returns the sealed bytes of an ID photo: its blob file on SQLite, its row on
    /// PostgreSQL.
    fn sealed_photo(&mut self, store: &TestStore, tenant: &Tenant, photo: PhotoId) -> Vec<u8> {
        match store.data_dir() {
            Some(dir) => std::fs::read(photo_file(&dir, tenant, photo)).expect("sealed file"),
            None => self.blobs(&format!("SELECT content FROM id_photos WHERE id = '{photo}'"))[0]
                .clone(),
        }
    }

    /// Replaces the sealed bytes of photo `to` with those of photo `from`.
    fn copy_sealed_photo(
        &mut self,
        store: &TestStore,
        from: (&Tenant, PhotoId),
        to: (&Tenant, PhotoId),
    ) {
        match store.data_dir() {
            Some(dir) => {
                let (source, target) =
                    (photo_file(&dir, from.0, from.1), photo_file(&dir, to.0, to.1));
                std::fs::copy(source, target).expect("copy across tenants");
            }
            None => self.execute(&format!(
                "UPDATE id_photos SET content = (SELECT content FROM id_photos WHERE id = '{}')
                 WHERE id = '{}'",
                from.1, to.1
            )),
        }
    }
}

fn photo_file(data_dir: &Path, tenant: &Tenant, photo: PhotoId) -> std::path::PathBuf {
    data_dir.join(format!("blobs/id-photos/{}/{photo}.bin", tenant.id))
}

backend_tests!(
    profile_round_trips_encrypted,
    moved_ciphertext_is_rejected,
    photo_moved_across_tenants_is_rejected,
    import_without_master_key_fails,
    tenant_rotation_keeps_old_versions_readable,
    master_rotation_resumes_after_interruption,
    finishing_incomplete_rotation_is_rejected,
);

fn profile_round_trips_encrypted(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import(&mut store, &tenant, "s-1", "Zelda7");

    let profile = store.patient_profile(&tenant, patient).expect("profile");
    assert_eq!(profile.given_name, "Zelda7");
    assert_eq!(profile.ssn.as_deref(), Some("999-00-0001"));
    assert_eq!(profile.address_line, "1 Main Street");

    let stored = Raw::open(&store).blobs("SELECT given_name FROM patient_profiles").remove(0);
    assert!(!String::from_utf8_lossy(&stored).contains("Zelda7"), "stored sealed");
    assert_eq!(&stored[..2], b"MC", "versioned ciphertext header");
}

fn moved_ciphertext_is_rejected(backend: Backend) {
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
        let mut store = store(backend);
        let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
        let a = import(&mut store, &tenant, "s-1", "Alpha1");
        let b = import(&mut store, &tenant, "s-2", "Bravo2");
        let sql = sql.replace(":a", &format!("'{a}'")).replace(":b", &format!("'{b}'"));
        Raw::open(&store).execute(&sql);
        let err = store.patient_profile(&tenant, b).err().expect("rejected");
        assert!(matches!(err, StoreError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
        assert!(store.patient_profile(&tenant, a).is_ok(), "the source row still opens");
    }
}

fn photo_moved_across_tenants_is_rejected(backend: Backend) {
    let mut store = store(backend);
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

    let mut raw = Raw::open(&store);
    let sealed = raw.sealed_photo(&store, &first, photo_a);
    assert!(!String::from_utf8_lossy(&sealed).contains("first tenant photo"), "photo is sealed");
    raw.copy_sealed_photo(&store, (&first, photo_a), (&second, photo_b));
    let err = store.read_id_photo(&second, photo_b).expect_err("rejected");
    match backend {
        // The key opens, but the associated data names another tenant and record.
        Backend::Sqlite => assert!(matches!(err, StoreError::Unreadable { .. }), "{err}"),
        // Row-level security hides the first tenant's key from the second.
        Backend::Postgres => assert!(matches!(err, StoreError::KeyUnavailable { .. }), "{err}"),
    }
    assert!(err.to_string().contains("id_photos.file"), "{err}");
    let err = store.read_id_photo(&second, photo_a).expect_err("other tenant id");
    assert!(matches!(err, StoreError::PhotoNotFound { .. }), "{err}");
}

// TODO: run this on PostgreSQL too, through `backend_tests!`, once `PgStore::dispose` is
// implemented; until then it panics there.
#[test]
fn disposal_destroys_link_and_profile_keys() {
    let mut store = store(Backend::Sqlite);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import(&mut store, &tenant, "s-1", "Alpha1");
    let mut raw = Raw::open(&store);
    let keys_before =
        raw.texts("SELECT id FROM data_keys WHERE scope IN ('link', 'profile') ORDER BY scope");
    assert_eq!(keys_before.len(), 2);
    let sealed_reason = raw.blobs("SELECT reason FROM consultations").remove(0);

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
    let remaining = raw.count("SELECT count(*) FROM data_keys WHERE scope IN ('link', 'profile')");
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

fn import_without_master_key_fails(backend: Backend) {
    let mut store = backend.create(clock());
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let err = store
        .import(&tenant, &ImportBatch::default(), &Policy::builtin(), ACTOR)
        .expect_err("no key");
    assert!(matches!(err, StoreError::MasterKeyRequired), "{err}");
}

fn import_providers(store: &mut TestStore, tenant: &Tenant, names: &[&str]) {
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

fn tenant_rotation_keeps_old_versions_readable(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    import_providers(&mut store, &tenant, &["Early1 Doctor1"]);
    assert_eq!(store.rotate_tenant_key(&tenant, ACTOR).expect("rotate"), 2);
    import_providers(&mut store, &tenant, &["Later2 Doctor2"]);

    let mut names: Vec<String> =
        store.providers(&tenant).expect("providers").into_iter().map(|p| p.name).collect();
    names.sort();
    assert_eq!(names, ["Early1 Doctor1", "Later2 Doctor2"]);
    let mut versions: Vec<u32> = Raw::open(&store)
        .blobs("SELECT name FROM providers")
        .iter()
        .map(|sealed| medconnect_crypto::parse_header(sealed).expect("header").key_version)
        .collect();
    versions.sort();
    assert_eq!(versions, [1, 2], "old writes keep version 1, new writes use version 2");
}

fn master_rotation_resumes_after_interruption(backend: Backend) {
    let next_bytes = [9u8; 32];
    let both =
        || (MasterKey::from_bytes(1, &[7u8; 32]), Some(MasterKey::from_bytes(2, &next_bytes)));
    let mut store = backend.create(clock());
    store.set_master_keys(MasterKey::from_bytes(1, &[7u8; 32]), None).expect("keys");
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let first = import(&mut store, &tenant, "s-1", "Alpha1");
    let second = import(&mut store, &tenant, "s-2", "Bravo2");

    // Start the rotation and re-wrap a single key, then stop as a crash would.
    store.begin_master_rotation(2, ACTOR).expect("begin");
    let (master, next) = both();
    store.set_master_keys(master, next).expect("keys");
    let remaining = store.rewrap_data_keys(1).expect("one batch");
    assert!(remaining > 0, "rotation is only partly done");

    // A second process in the middle of the rotation reads and writes with both keys.
    let mut node = store.open_again();
    node.set_clock(clock());
    assert_eq!(node.master_rotation_target().expect("target"), Some(2));
    let (master, next) = both();
    node.set_master_keys(master, next).expect("keys");
    assert_eq!(
        node.patient_profile(&tenant, first).expect("mid-rotation read").given_name,
        "Alpha1"
    );
    let batch = ImportBatch {
        source_system: "test".into(),
        patients: vec![NewPatientProfile {
            source_system: "test".into(),
            source_id: "s-3".into(),
            given_name: "Charlie3".into(),
            family_name: "Family1".into(),
            birth_date: "1970-01-01".into(),
            sex: "F".into(),
            ..NewPatientProfile::default()
        }],
        ..ImportBatch::default()
    };
    node.import(&tenant, &batch, &Policy::builtin(), ACTOR).expect("mid-rotation import");
    let third = node.find_patient(&tenant, "test", "s-3").expect("find").expect("third");

    while node.rewrap_data_keys(2).expect("batch") > 0 {}
    assert_eq!(node.finish_master_rotation(ACTOR).expect("finish"), 2);
    drop(node);

    // Only the new key now: every profile opens and blind-index lookups still match.
    let mut node = store.open_again();
    assert_eq!(node.master_key_version().expect("version"), 2);
    node.set_master_keys(MasterKey::from_bytes(2, &next_bytes), None).expect("new key only");
    for (patient, name) in [(first, "Alpha1"), (second, "Bravo2"), (third, "Charlie3")] {
        assert_eq!(node.patient_profile(&tenant, patient).expect("profile").given_name, name);
    }
    assert_eq!(node.find_patient(&tenant, "test", "s-2").expect("find"), Some(second));
    let old_versions =
        Raw::open(&store).count("SELECT count(*) FROM data_keys WHERE master_version <> 2");
    assert_eq!(old_versions, 0);

    // The old key alone no longer opens anything.
    let mut node = store.open_again();
    let err = node
        .set_master_keys(MasterKey::from_bytes(1, &[7u8; 32]), None)
        .expect_err("old key rejected");
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
}

fn finishing_incomplete_rotation_is_rejected(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    import(&mut store, &tenant, "s-1", "Alpha1");
    store.begin_master_rotation(2, ACTOR).expect("begin");
    let err = store.finish_master_rotation(ACTOR).expect_err("keys not re-wrapped");
    assert!(matches!(err, StoreError::RotationIncomplete { .. }), "{err}");
}
