//! Audited intake forms and ID photos: sealed at rest, one sanitized entry per write or read
//! in its transaction, and nothing stored or disclosed for another tenant's patient, on every
//! backend.

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{ImportBatch, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::{PatientId, PhotoId, UserId};
use medconnect_store::testing::{admin_url, Backend, TestStore};
use medconnect_store::{
    backend_tests, Access, InvalidIdPhoto, NewIdPhoto, NewIntakeForm, Role, Store, StoreError,
};
use serde_json::{json, Value};

const MASTER: [u8; 32] = [7; 32];
const REQUEST: &str = "9b1c2d3e-4f5a-4b6c-8d7e-0f1a2b3c4d5e";
/// The answer text that must never appear in an audit entry or in a stored column.
const SECRET_ANSWER: &str = "persistent migraines since the accident";
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00];
const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D];

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

fn person(source_id: &str) -> NewPatientProfile {
    NewPatientProfile {
        source_system: "test".into(),
        source_id: source_id.into(),
        given_name: "Quillon".into(),
        family_name: "Maravelle".into(),
        birth_date: "1970-02-03".into(),
        sex: "F".into(),
        address_line: "17 Birchwood Lane".into(),
        city: "Lincoln".into(),
        state: "NE".into(),
        postal_code: "68501".into(),
        ..NewPatientProfile::default()
    }
}

struct Seeded {
    store: TestStore,
    tenant: Tenant,
    other: Tenant,
    /// Two patients of `tenant`.
    patient: PatientId,
    second: PatientId,
    /// A patient linked only to `other`.
    theirs: PatientId,
}

fn seeded(backend: Backend) -> Seeded {
    let mut store = backend.create(Box::new(FixedClock(at("2024-03-01T12:00:00Z"))));
    store.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect("master key");
    let tenant = store.create_tenant("clinic-a", "Clinic A", "test").expect("tenant a");
    let other = store.create_tenant("clinic-b", "Clinic B", "test").expect("tenant b");
    let policy = Policy::builtin();
    let import = |store: &mut TestStore, tenant: &Tenant, ids: &[&str]| -> Vec<PatientId> {
        let batch = ImportBatch {
            source_system: "test".into(),
            patients: ids.iter().map(|id| person(id)).collect(),
            ..ImportBatch::default()
        };
        store.import(tenant, &batch, &policy, "test").expect("import");
        ids.iter()
            .map(|id| store.find_patient(tenant, "test", id).expect("find").expect("imported"))
            .collect()
    };
    let ours = import(&mut store, &tenant, &["s-1", "s-2"]);
    let theirs = import(&mut store, &other, &["s-3"])[0];
    Seeded { store, tenant, other, patient: ours[0], second: ours[1], theirs }
}

fn access() -> Access {
    Access::user(UserId::new(), Role::Provider, REQUEST).expect("valid request id")
}

fn form(name: &str, submitted_at: &str, answers: Value) -> NewIntakeForm {
    let Value::Object(answers) = answers else { panic!("answers must be an object") };
    NewIntakeForm { form: name.into(), answers, submitted_at: at(submitted_at) }
}

fn head(store: &dyn Store) -> i64 {
    store.audit_entries(0, u32::MAX).expect("entries").last().map_or(0, |entry| entry.seq)
}

/// Returns the entries committed after `after`, read through a second handle.
fn entries_after(seeded: &Seeded, after: i64) -> Vec<Value> {
    let other = seeded.store.open_again();
    other.audit_entries(after, u32::MAX).expect("entries").into_iter().map(|e| e.body).collect()
}

fn check_entry(entry: &Value, access: &Access, tenant: &Tenant, action: &str, outcome: &str) {
    assert_eq!(entry["action"], action);
    assert_eq!(entry["actor"], access.actor());
    assert_eq!(entry["tenant_id"], tenant.id.to_string());
    assert_eq!(entry["outcome"], outcome);
    let detail = entry["detail"].as_str().expect("detail");
    assert!(detail.starts_with(&format!("role=provider request={REQUEST}")), "{detail}");
    let text = entry.to_string();
    for value in [SECRET_ANSWER, "Quillon", "Maravelle", "1970-02-03", "Birchwood"] {
        assert!(!text.contains(value), "entry {text} contains PHI");
    }
}

fn subjects(entry: &Value) -> Vec<String> {
    serde_json::from_value(entry["subjects"].clone()).expect("subjects")
}

/// Direct access to the store's tables, past the store and past row-level security.
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

    fn count(&mut self, sql: &str) -> i64 {
        match self {
            Raw::Sqlite(conn) => conn.query_row(sql, [], |row| row.get(0)).expect("count"),
            Raw::Postgres(client) => client.query_one(sql, &[]).expect("count").get(0),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

fn forms_round_trip_sealed(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    let (tenant, patient) = (seeded.tenant.clone(), seeded.patient);
    let older = form(
        "medical-history",
        "2024-02-01T09:30:00+02:00",
        json!({ "symptoms": SECRET_ANSWER, "smoker": false, "weight_kg": 71.5 }),
    );
    let newer = form("consent", "2024-02-20T10:00:00Z", json!({ "agreed": true }));

    let before = head(&*seeded.store);
    let first = seeded.store.submit_intake_form(&tenant, patient, &older, &access).expect("form");
    assert_eq!(first.form, "medical-history");
    assert_eq!(first.submitted_at, at("2024-02-01T07:30:00Z"));
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "intake_form.submit", "success");
    assert_eq!(subjects(&entries[0]), vec![patient.to_string(), first.id.to_string()]);
    let second = seeded.store.submit_intake_form(&tenant, patient, &newer, &access).expect("form");

    let before = head(&*seeded.store);
    let forms = seeded.store.read_intake_forms(&tenant, patient, &access).expect("list");
    let ids: Vec<_> = forms.iter().map(|f| f.id).collect();
    assert_eq!(ids, vec![second.id, first.id], "newest first");
    assert_eq!(Value::Object(forms[1].answers.clone()), Value::Object(older.answers.clone()));
    assert_eq!(forms[1].submitted_at, at("2024-02-01T07:30:00Z"));
    assert_eq!(forms[0].form, "consent");
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "intake_form.list", "success");
    assert!(entries[0]["detail"].as_str().expect("detail").ends_with(" count=2"));
    assert_eq!(subjects(&entries[0]), vec![patient.to_string()]);

    // The answers are sealed at rest: the column never contains the text.
    let mut raw = Raw::open(&seeded.store);
    let stored = raw.blobs("SELECT answers_json FROM intake_forms");
    assert_eq!(stored.len(), 2);
    for sealed in &stored {
        assert!(!contains(sealed, SECRET_ANSWER.as_bytes()));
        assert!(!contains(sealed, b"symptoms"));
    }

    // Another patient of the same tenant has none of them.
    let others = seeded.store.read_intake_forms(&tenant, seeded.second, &access).expect("list");
    assert!(others.is_empty());
    let link = seeded.store.patient_link(&tenant, patient).expect("link");
    assert_eq!(link.counts.intake_forms, 2);
    assert!(seeded.store.verify_audit().expect("verify").ok);
}

fn forms_for_missing_patient_store_nothing(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    let tenant = seeded.tenant.clone();
    let answers = json!({ "symptoms": SECRET_ANSWER });
    for requested in [seeded.theirs, PatientId::new()] {
        let before = head(&*seeded.store);
        let submitted = form("intake", "2024-02-01T00:00:00Z", answers.clone());
        let result = seeded.store.submit_intake_form(&tenant, requested, &submitted, &access);
        assert!(matches!(result, Err(StoreError::PatientNotFound { .. })));
        let result = seeded.store.read_intake_forms(&tenant, requested, &access);
        assert!(matches!(result, Err(StoreError::PatientNotFound { .. })));
        let entries = entries_after(&seeded, before);
        assert_eq!(entries.len(), 2);
        check_entry(&entries[0], &access, &tenant, "intake_form.submit", "not_found");
        check_entry(&entries[1], &access, &tenant, "intake_form.list", "not_found");
        for entry in &entries {
            assert_eq!(subjects(entry), vec![requested.to_string()]);
        }
    }
    let mut raw = Raw::open(&seeded.store);
    assert_eq!(raw.count("SELECT count(*) FROM intake_forms"), 0);
    let theirs = seeded.store.patient_link(&seeded.other, seeded.theirs).expect("link");
    assert_eq!(theirs.counts.intake_forms, 0);
}

fn photos_round_trip_sealed(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    let (tenant, patient) = (seeded.tenant.clone(), seeded.patient);
    let legacy = seeded
        .store
        .add_id_photo(&tenant, patient, b"legacy bytes", at("2024-01-01T00:00:00Z"), "test")
        .expect("legacy photo");

    let before = head(&*seeded.store);
    let jpeg = NewIdPhoto::new(JPEG.to_vec(), "image/jpeg").expect("valid JPEG");
    let uploaded = seeded.store.upload_id_photo(&tenant, patient, &jpeg, &access).expect("upload");
    assert_eq!(uploaded.content_type, "image/jpeg");
    assert_eq!(uploaded.uploaded_at, at("2024-03-01T12:00:00Z"));
    assert_eq!(uploaded.sha256.len(), 64);
    assert!(uploaded.bytes > JPEG.len() as u64, "the size is of the sealed bytes");
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "id_photo.upload", "success");
    assert_eq!(subjects(&entries[0]), vec![patient.to_string(), uploaded.id.to_string()]);

    let before = head(&*seeded.store);
    let photos = seeded.store.read_id_photos(&tenant, patient, &access).expect("list");
    assert_eq!(photos.len(), 2);
    assert_eq!(photos[0], uploaded, "newest first, as the upload returned it");
    assert_eq!(photos[1].id, legacy);
    assert_eq!(photos[1].content_type, "application/octet-stream");
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "id_photo.list", "success");
    assert!(entries[0]["detail"].as_str().expect("detail").ends_with(" count=2"));

    let before = head(&*seeded.store);
    let content =
        seeded.store.read_patient_id_photo(&tenant, patient, uploaded.id, &access).expect("read");
    assert_eq!(content.content_type, "image/jpeg");
    assert_eq!(content.bytes, JPEG);
    let entries = entries_after(&seeded, before);
    assert_eq!(entries.len(), 1);
    check_entry(&entries[0], &access, &tenant, "id_photo.read", "success");
    assert_eq!(subjects(&entries[0]), vec![patient.to_string(), uploaded.id.to_string()]);

    // At rest the image is sealed: in its file on SQLite, in its row on PostgreSQL.
    let sealed = match seeded.store.data_dir() {
        Some(dir) => {
            std::fs::read(dir.join(format!("blobs/id-photos/{}/{}.bin", tenant.id, uploaded.id)))
                .expect("sealed file")
        }
        None => Raw::open(&seeded.store)
            .blobs(&format!("SELECT content FROM id_photos WHERE id = '{}'", uploaded.id))
            .remove(0),
    };
    assert_eq!(sealed.len() as u64, uploaded.bytes);
    assert!(!contains(&sealed, b"JFIF"));
    assert!(seeded.store.verify_audit().expect("verify").ok);
}

/// Checks that a photo is read only under its own patient's path: another patient's photo
/// of the same tenant, another tenant's photo and a missing one are all not found.
fn photo_of_another_patient_is_not_found(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    let (tenant, other) = (seeded.tenant.clone(), seeded.other.clone());
    let png = NewIdPhoto::new(PNG.to_vec(), "image/png").expect("valid PNG");
    let ours = seeded.store.upload_id_photo(&tenant, seeded.patient, &png, &access).expect("up");
    let access_b = Access::user(UserId::new(), Role::Provider, REQUEST).expect("valid");
    let theirs = seeded.store.upload_id_photo(&other, seeded.theirs, &png, &access_b).expect("up");

    let cases = [
        (seeded.second, ours.id),
        (seeded.patient, theirs.id),
        (seeded.patient, PhotoId::new()),
        (seeded.theirs, theirs.id),
    ];
    for (patient, photo) in cases {
        let before = head(&*seeded.store);
        let result = seeded.store.read_patient_id_photo(&tenant, patient, photo, &access);
        let expected_not_found = matches!(
            result,
            Err(StoreError::PhotoNotFound { .. } | StoreError::PatientNotFound { .. })
        );
        assert!(expected_not_found, "patient {patient} photo {photo}");
        let entries = entries_after(&seeded, before);
        assert_eq!(entries.len(), 1);
        check_entry(&entries[0], &access, &tenant, "id_photo.read", "not_found");
        assert_eq!(subjects(&entries[0]), vec![patient.to_string(), photo.to_string()]);
    }
    let listed = seeded.store.read_id_photos(&tenant, seeded.second, &access).expect("list");
    assert!(listed.is_empty());
}

fn photo_for_missing_patient_leaves_nothing(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    let tenant = seeded.tenant.clone();
    let jpeg = NewIdPhoto::new(JPEG.to_vec(), "image/jpeg").expect("valid JPEG");
    for requested in [seeded.theirs, PatientId::new()] {
        let before = head(&*seeded.store);
        let result = seeded.store.upload_id_photo(&tenant, requested, &jpeg, &access);
        assert!(matches!(result, Err(StoreError::PatientNotFound { .. })));
        let result = seeded.store.read_id_photos(&tenant, requested, &access);
        assert!(matches!(result, Err(StoreError::PatientNotFound { .. })));
        let entries = entries_after(&seeded, before);
        assert_eq!(entries.len(), 2);
        check_entry(&entries[0], &access, &tenant, "id_photo.upload", "not_found");
        check_entry(&entries[1], &access, &tenant, "id_photo.list", "not_found");
    }
    let mut raw = Raw::open(&seeded.store);
    assert_eq!(raw.count("SELECT count(*) FROM id_photos"), 0);
    if let Some(dir) = seeded.store.data_dir() {
        let photos = dir.join("blobs/id-photos");
        let files = std::fs::read_dir(&photos).map(|dir| dir.count()).unwrap_or(0);
        assert_eq!(files, 0, "no photo file is written for a missing patient");
    }
}

/// When the entry cannot be written, the write fails and leaves neither a row nor a file.
fn upload_whose_entry_fails_leaves_no_file(backend: Backend) {
    let mut seeded = seeded(backend);
    let access = access();
    let tenant = seeded.tenant.clone();
    seeded.store.fail_audit_writes();
    let jpeg = NewIdPhoto::new(JPEG.to_vec(), "image/jpeg").expect("valid JPEG");
    assert!(seeded.store.upload_id_photo(&tenant, seeded.patient, &jpeg, &access).is_err());
    let submitted = form("intake", "2024-02-01T00:00:00Z", json!({ "a": 1 }));
    let result = seeded.store.submit_intake_form(&tenant, seeded.patient, &submitted, &access);
    assert!(result.is_err());
    assert!(seeded.store.read_intake_forms(&tenant, seeded.patient, &access).is_err());

    let mut raw = Raw::open(&seeded.store);
    assert_eq!(raw.count("SELECT count(*) FROM id_photos"), 0);
    assert_eq!(raw.count("SELECT count(*) FROM intake_forms"), 0);
    if let Some(dir) = seeded.store.data_dir() {
        let folder = dir.join(format!("blobs/id-photos/{}", tenant.id));
        let files = std::fs::read_dir(&folder).map(|dir| dir.count()).unwrap_or(0);
        assert_eq!(files, 0, "the file of the failed upload is removed");
    }
}

fn writes_without_master_key_write_no_entry(backend: Backend) {
    let seeded = seeded(backend);
    let access = access();
    let mut keyless = seeded.store.open_again();
    let before = head(&*seeded.store);
    let submitted = form("intake", "2024-02-01T00:00:00Z", json!({ "a": 1 }));
    let result = keyless.submit_intake_form(&seeded.tenant, seeded.patient, &submitted, &access);
    assert!(matches!(result, Err(StoreError::MasterKeyRequired)));
    let jpeg = NewIdPhoto::new(JPEG.to_vec(), "image/jpeg").expect("valid JPEG");
    let result = keyless.upload_id_photo(&seeded.tenant, seeded.patient, &jpeg, &access);
    assert!(matches!(result, Err(StoreError::MasterKeyRequired)));
    let result = keyless.read_intake_forms(&seeded.tenant, seeded.patient, &access);
    assert!(matches!(result, Err(StoreError::MasterKeyRequired)));
    assert!(entries_after(&seeded, before).is_empty());
}

backend_tests!(
    forms_round_trip_sealed,
    forms_for_missing_patient_store_nothing,
    photos_round_trip_sealed,
    photo_of_another_patient_is_not_found,
    photo_for_missing_patient_leaves_nothing,
    upload_whose_entry_fails_leaves_no_file,
    writes_without_master_key_write_no_entry,
);

#[test]
fn photo_type_must_match_bytes() {
    assert_eq!(
        NewIdPhoto::new(JPEG.to_vec(), "image/jpeg").expect("JPEG").content_type(),
        "image/jpeg"
    );
    assert_eq!(
        NewIdPhoto::new(PNG.to_vec(), "IMAGE/PNG; q=1").expect("PNG").content_type(),
        "image/png"
    );
    let cases: [(&[u8], &str, InvalidIdPhoto); 5] = [
        (PNG, "image/jpeg", InvalidIdPhoto::ContentMismatch("image/jpeg")),
        (JPEG, "image/png", InvalidIdPhoto::ContentMismatch("image/png")),
        (b"GIF89a....", "image/gif", InvalidIdPhoto::UnsupportedType),
        (b"", "image/png", InvalidIdPhoto::ContentMismatch("image/png")),
        (JPEG, "application/octet-stream", InvalidIdPhoto::UnsupportedType),
    ];
    for (bytes, content_type, expected) in cases {
        let result = NewIdPhoto::new(bytes.to_vec(), content_type).err();
        assert_eq!(result, Some(expected), "{content_type}");
    }
}
