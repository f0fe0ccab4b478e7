//! End-to-end tests of encrypted backups: `backup create`, `list`, `verify` and `restore`
//! through the real binary, and the disposal ledger that keeps a restore from bringing purged
//! records back.

#[allow(dead_code, reason = "each test binary uses part of the shared helpers")]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Duration, Utc};
use common::{csv_records, synthea_dir, CliOutput, TestStore};
use medconnect_crypto::{open, parse_header, Aad, KeyFileProvider, KeyId, KeyProvider, MasterKey};
use medconnect_domain::time::{format_instant, parse_instant};
use medconnect_domain::PatientId;
use medconnect_store::{SessionTimes, SqliteStore, Store};
use rusqlite::Connection;
use serde_json::Value;

/// Patients in the Synthea sample export.
const SYNTHEA_PATIENTS: usize = 111;

/// The `table` of the associated data of sealed backup files, as the manifest format sets it.
const BACKUP_FILE_TABLE: &str = "backup-file";

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Two destination folders, standing for two regions, inside the test's temporary folder.
fn destinations(store: &TestStore) -> (PathBuf, PathBuf) {
    let a = store.scratch_path("region-a");
    let b = store.scratch_path("region-b");
    fs::create_dir_all(&a).expect("creating destination a");
    fs::create_dir_all(&b).expect("creating destination b");
    (a, b)
}

/// Runs a `backup` subcommand with `--destination` for each of `destinations`.
fn backup(store: &TestStore, args: &[&str], destinations: &[&Path]) -> CliOutput {
    let mut all: Vec<&str> = vec!["backup"];
    all.extend_from_slice(args);
    for destination in destinations {
        all.extend_from_slice(&["--destination", path_arg(destination)]);
    }
    store.run(&all)
}

/// Creates a backup in `a` and `b` and returns its id.
fn create_backup(store: &TestStore, a: &Path, b: &Path) -> String {
    let output = backup(store, &["create", "--json"], &[a, b]);
    assert!(output.success(), "backup create failed:\n{output}");
    let report = output.json();
    report["backup_id"].as_str().expect("backup_id in the create report").to_owned()
}

/// Runs the binary against another data directory than the test store's, such as a
/// restored one.
fn run_at(data_dir: &Path, args: &[&str]) -> CliOutput {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_medconnect"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("MEDCONNECT_MASTER_KEY")
        .env_remove("MEDCONNECT_LEDGER")
        .env_remove("MEDCONNECT_POLICY")
        .output()
        .expect("starting the medconnect binary");
    let output = CliOutput {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(output.success(), "expected success:\n{output}");
    output
}

fn master_key(store: &TestStore) -> MasterKey {
    KeyFileProvider::new(store.data_dir().join("keys/master.key"))
        .master_key()
        .expect("the test store's master key loads")
}

/// Opens the store through the library with its master key, for records that only the API
/// creates (ID photos and sessions).
fn open_store(store: &TestStore) -> SqliteStore {
    let mut opened = SqliteStore::open(store.data_dir()).expect("opening the test store");
    opened.set_master_key(master_key(store)).expect("keys");
    opened
}

fn import_northwind(store: &TestStore) {
    store.run_ok(&["tenant", "create", "northwind"]);
    let synthea = synthea_dir();
    store.run_ok(&["import", "synthea", path_arg(&synthea), "--tenant", "northwind"]);
}

/// Returns each Synthea patient's last encounter end (STOP, or START if empty).
fn last_encounters() -> BTreeMap<String, DateTime<Utc>> {
    let mut last: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for row in csv_records(&synthea_dir().join("encounters.csv")) {
        let end = if row["STOP"].is_empty() { &row["START"] } else { &row["STOP"] };
        let end = parse_instant(end).expect("encounter instants parse");
        let latest = last.entry(row["PATIENT"].clone()).or_insert(end);
        *latest = (*latest).max(end);
    }
    last
}

fn plus_years(instant: DateTime<Utc>, years: i32) -> DateTime<Utc> {
    instant
        .with_year(instant.year() + years)
        .unwrap_or_else(|| instant + Duration::days(365 * i64::from(years)))
}

fn find_patient(store: &TestStore, source_id: &str) -> PatientId {
    let output =
        store.run_ok(&["patient", "find", "--tenant", "northwind", "--source-id", source_id]);
    PatientId::parse(output.stdout.trim()).expect("patient find prints an id")
}

/// Decrypts one file of a backup copy with the test's own code, as the manifest documents.
fn open_backup_file(master: &MasterKey, destination: &Path, id: &str, path: &str) -> Vec<u8> {
    let folder = destination.join(id);
    let manifest: Value =
        serde_json::from_slice(&fs::read(folder.join("manifest.json")).expect("manifest"))
            .expect("manifest is JSON");
    let key = &manifest["backup_key"];
    let key_id = KeyId::parse(key["key_id"].as_str().expect("key_id")).expect("key id");
    let wrapped = hex::decode(key["wrapped"].as_str().expect("wrapped")).expect("hex");
    let version = u32::try_from(key["key_version"].as_u64().expect("key_version")).expect("u32");
    let backup_key = master.unwrap_key(&wrapped, key_id, version).expect("backup key unwraps");
    let sealed = fs::read(folder.join("files").join(path)).expect("sealed file");
    let aad = Aad { tenant: "", table: BACKUP_FILE_TABLE, column: id, record: path };
    open(&backup_key, &aad, &sealed).expect("backup file decrypts").to_vec()
}

/// Lists every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).expect("listing a folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn query_strings(conn: &Connection, sql: &str, param: &str) -> Vec<String> {
    let mut statement = conn.prepare(sql).expect("valid query");
    let rows = statement.query_map([param], |row| row.get::<_, String>(0)).expect("query runs");
    rows.collect::<rusqlite::Result<_>>().expect("rows read")
}

fn count(conn: &Connection, sql: &str, param: &str) -> i64 {
    conn.query_row(sql, [param], |row| row.get(0)).expect("count query runs")
}

/// Flips one byte in the middle of a file.
fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).expect("reading the file to tamper with");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(path, bytes).expect("writing the tampered file");
}

#[test]
fn restore_reapplies_later_purge() {
    let store = TestStore::init(true);
    import_northwind(&store);
    let (a, b) = destinations(&store);

    // The patient with the earliest last encounter is the only one due at `as_of`.
    let last = last_encounters();
    let mut by_time: Vec<(&String, &DateTime<Utc>)> = last.iter().collect();
    by_time.sort_by_key(|(_, at)| **at);
    let (purged_source, purged_last) = by_time[0];
    let as_of = plus_years(*purged_last, 7) + Duration::days(1);
    assert!(plus_years(*by_time[1].1, 7) > as_of, "only one patient is due at {as_of}");
    let purged = find_patient(&store, purged_source);
    let kept = find_patient(&store, by_time[1].0);

    // An ID photo and a staff session that are due at `as_of` without their patient's
    // records, and a photo and session of the purged patient.
    let old = as_of - Duration::days(400);
    let (kept_photo, staff_session) = {
        let mut api = open_store(&store);
        let tenant = api.tenant_by_slug("northwind").expect("tenant");
        api.add_id_photo(&tenant, purged, b"purged patient photo", old, "test").expect("photo");
        let times = SessionTimes { started_at: old, expires_at: old, ended_at: Some(old) };
        api.add_session(&tenant, Some(purged), times).expect("session");
        let kept_photo =
            api.add_id_photo(&tenant, kept, b"kept patient photo", old, "test").expect("photo");
        let staff = api.add_session(&tenant, None, times).expect("staff session");
        (kept_photo.to_string(), staff.to_string())
    };

    let id = create_backup(&store, &a, &b);
    let master = master_key(&store);

    // Ciphertexts and key ids of the purged patient, read from the backup's own database.
    let saved_db = store.scratch_path("backup-copy.db");
    fs::write(&saved_db, open_backup_file(&master, &b, &id, "medconnect.db")).expect("write");
    let saved = Connection::open(&saved_db).expect("opening the decrypted backup database");
    let patient = purged.to_string();
    let given_name: Vec<u8> = saved
        .query_row("SELECT given_name FROM patient_profiles WHERE id = ?1", [&patient], |row| {
            row.get(0)
        })
        .expect("the backup holds the patient's profile");
    let link: i64 = saved
        .query_row("SELECT id FROM patient_links WHERE patient_id = ?1", [&patient], |row| {
            row.get(0)
        })
        .expect("the backup holds the patient's link");
    let patient_keys = query_strings(
        &saved,
        "SELECT id FROM data_keys WHERE (scope = 'profile' AND owner = ?1)
            OR (scope = 'link' AND owner = (SELECT id FROM patient_links WHERE patient_id = ?1))",
        &patient,
    );
    assert_eq!(patient_keys.len(), 2, "profile and link key of the purged patient");
    let photo_files =
        query_strings(&saved, "SELECT file_name FROM id_photos WHERE id = ?1", &kept_photo);
    assert_eq!(photo_files.len(), 1, "the backup holds the kept patient's photo row");
    let sealed_photo = b.join(&id).join("files/blobs").join(&photo_files[0]);
    assert!(sealed_photo.is_file(), "the backup holds the kept patient's photo file");
    let aad =
        Aad { tenant: "core", table: "patient_profiles", column: "given_name", record: &patient };
    let (key_id, key_version, wrapped): (String, u32, Vec<u8>) = saved
        .query_row(
            "SELECT id, version, wrapped FROM data_keys WHERE scope = 'profile' AND owner = ?1",
            [&patient],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .expect("profile key in the backup");
    let profile_key = master
        .unwrap_key(&wrapped, KeyId::parse(&key_id).expect("key id"), key_version)
        .expect("profile key unwraps");
    assert!(open(&profile_key, &aad, &given_name).is_ok(), "control: the backup's key opens it");
    drop(saved);

    // Purge after the backup.
    let as_of_arg = format_instant(as_of);
    let run = store.run_json(&["lifecycle", "run", "--as-of", &as_of_arg, "--json"]);
    assert_eq!(run["purged"]["patient_records"], 1, "{run}");
    assert_eq!(run["purged"]["patient_profile"], 1, "{run}");
    assert!(run["purged"]["id_photo"].as_u64() >= Some(1), "{run}");
    assert!(run["purged"]["session"].as_u64() >= Some(1), "{run}");
    let ledger = fs::read_to_string(store.data_dir().join("ledger/disposals.jsonl"))
        .expect("lifecycle run writes the ledger");
    let receipts = store.audit_count("lifecycle.dispose");
    assert_eq!(ledger.lines().count() as i64, receipts, "one ledger line per receipt");
    assert!(ledger.contains(&patient), "the ledger names the purged patient");

    // Restore the backup taken before the purge.
    let restored = store.scratch_path("restored");
    let output =
        backup(&store, &["restore", &id, "--into", path_arg(&restored), "--json"], &[&a, &b]);
    assert!(output.success(), "restore failed:\n{output}");
    let report = output.json();
    assert_eq!(report["destination"].as_str(), Some(path_arg(&a)), "{report}");
    assert_eq!(report["ledger_source"], "live", "{report}");
    assert_eq!(report["reapplied"]["selected"].as_i64(), Some(receipts), "{report}");
    // Patient records, the kept patient's photo and the staff session at least. The core
    // profile's own entry finds it already deleted with its last link.
    assert!(report["reapplied"]["applied"].as_u64() >= Some(3), "{report}");

    // The purged patient is gone from the restored store, and the others are back.
    let key_file = store.data_dir().join("keys/master.key");
    let in_restored = |args: &[&str]| {
        let mut all = vec!["--master-key-file", path_arg(&key_file)];
        all.extend_from_slice(args);
        run_at(&restored, &all)
    };
    let listed: Value = in_restored(&["patient", "list", "--tenant", "northwind", "--json"]).json();
    let ids: Vec<&str> =
        listed.as_array().expect("list").iter().filter_map(|l| l["patient_id"].as_str()).collect();
    assert_eq!(ids.len(), SYNTHEA_PATIENTS - 1, "patients in the restored store");
    assert!(!ids.contains(&patient.as_str()), "purged patient listed after restore");
    assert!(ids.contains(&kept.to_string().as_str()), "kept patient missing after restore");
    in_restored(&["patient", "show", "--tenant", "northwind", "--patient", &kept.to_string()]);
    let verify = in_restored(&["audit", "verify"]);
    assert!(verify.stdout.contains("intact"), "{verify}");

    let conn = Connection::open(restored.join("medconnect.db")).expect("restored database");
    let absent = [
        ("link", "SELECT count(*) FROM patient_links WHERE patient_id = ?1", patient.clone()),
        ("profile", "SELECT count(*) FROM patient_profiles WHERE id = ?1", patient.clone()),
        (
            "link children",
            "SELECT count(*) FROM consultations WHERE link_id = ?1",
            link.to_string(),
        ),
        ("photo", "SELECT count(*) FROM id_photos WHERE id = ?1", kept_photo.clone()),
        ("staff session", "SELECT count(*) FROM sessions WHERE id = ?1", staff_session.clone()),
    ];
    for (what, sql, param) in absent {
        assert_eq!(count(&conn, sql, &param), 0, "{what} still in the restored store");
    }
    for key in &patient_keys {
        let rows = count(&conn, "SELECT count(*) FROM data_keys WHERE id = ?1", key);
        assert_eq!(rows, 0, "data key {key} of the purged patient restored");
    }
    let photo_file = restored.join("blobs").join(&photo_files[0]);
    assert!(!photo_file.exists(), "{} restored", photo_file.display());
    let actions: Vec<String> = query_strings(
        &conn,
        "SELECT action FROM audit_log WHERE action LIKE ?1 ORDER BY seq",
        "backup.%",
    );
    assert_eq!(actions, ["backup.reapply", "backup.restore"]);

    // No key left in the restored store opens the saved ciphertext.
    let mut statement = conn.prepare("SELECT id, version, wrapped FROM data_keys").expect("keys");
    let keys: Vec<(String, u32, Vec<u8>)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("keys")
        .collect::<rusqlite::Result<_>>()
        .expect("keys");
    assert!(keys.len() > 100, "{} keys left in the restored store", keys.len());
    let sealed_with = parse_header(&given_name).expect("ciphertext header").key_id.to_string();
    for (id, version, wrapped) in &keys {
        assert_ne!(id, &sealed_with, "the purged profile's key is in the restored store");
        let key = master.unwrap_key(wrapped, KeyId::parse(id).expect("key id"), *version);
        let key = key.expect("every restored key unwraps with the master key");
        assert!(open(&key, &aad, &given_name).is_err(), "key {id} opens the purged profile");
    }
}

#[test]
fn backup_holds_no_plaintext_or_key() {
    let store = TestStore::init(true);
    import_northwind(&store);
    let marker = b"PLAINTEXT-ID-PHOTO-MARKER-7f3a";
    {
        let mut api = open_store(&store);
        let tenant = api.tenant_by_slug("northwind").expect("tenant");
        let patient = api.patient_links(&tenant).expect("links")[0].patient_id;
        api.add_id_photo(&tenant, patient, marker, Utc::now(), "test").expect("photo");
    }
    let (a, b) = destinations(&store);
    let id = create_backup(&store, &a, &b);

    let mut names = Vec::new();
    for row in csv_records(&synthea_dir().join("patients.csv")) {
        names.push(regex::escape(&row["FIRST"]));
        names.push(regex::escape(&row["LAST"]));
    }
    assert_eq!(names.len(), 2 * SYNTHEA_PATIENTS);
    let any_name = regex::bytes::Regex::new(&names.join("|")).expect("pattern");
    let key_hex = fs::read_to_string(store.data_dir().join("keys/master.key")).expect("key file");
    let key_hex = key_hex.trim().to_owned();
    let key_bytes = hex::decode(&key_hex).expect("key file is hex");
    assert_eq!(key_bytes.len(), 32);

    let mut files = files_under(&a);
    files.extend(files_under(&b));
    assert!(files.iter().any(|f| f.ends_with("files/medconnect.db")), "{files:?}");
    assert!(files.iter().any(|f| f.to_string_lossy().contains("files/blobs/id-photos/")));
    for path in &files {
        let bytes = fs::read(path).expect("reading a backup file");
        let hit = any_name.find(&bytes).map(|m| m.start());
        assert_eq!(hit, None, "{} holds a patient name at byte {hit:?}", path.display());
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        assert!(!text.contains(&key_hex.to_lowercase()), "{} holds the key hex", path.display());
        let raw = bytes.windows(key_bytes.len()).any(|window| window == key_bytes.as_slice());
        assert!(!raw, "{} holds the master key bytes", path.display());
        let photo = bytes.windows(marker.len()).any(|window| window == marker);
        assert!(!photo, "{} holds the photo in plaintext", path.display());
        assert!(!path.to_string_lossy().contains("master.key"), "{}", path.display());
    }

    // The backup still decrypts to a database that contains every patient.
    let master = master_key(&store);
    let copy = store.scratch_path("copy.db");
    fs::write(&copy, open_backup_file(&master, &a, &id, "medconnect.db")).expect("write");
    let conn = Connection::open(&copy).expect("decrypted backup database");
    let profiles: i64 = conn
        .query_row("SELECT count(*) FROM patient_profiles", [], |row| row.get(0))
        .expect("count");
    assert_eq!(profiles, SYNTHEA_PATIENTS as i64);
}

#[test]
fn tampered_copy_fails_verify_and_restore() {
    let store = TestStore::init(true);
    import_northwind(&store);
    let (a, b) = destinations(&store);
    let id = create_backup(&store, &a, &b);

    let verified = backup(&store, &["verify", &id], &[&a, &b]);
    assert!(verified.success(), "{verified}");
    assert!(verified.stdout.contains("every destination verified"), "{verified}");

    // One byte changed in destination a.
    flip_byte(&a.join(&id).join("files/medconnect.db"));
    let output = backup(&store, &["verify", "--json"], &[&a, &b]);
    assert!(!output.success(), "verify passed a tampered copy:\n{output}");
    let report = output.json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["destinations"][0]["path"].as_str(), Some(path_arg(&a)));
    assert_eq!(report["destinations"][0]["ok"], false, "{report}");
    let problem = &report["destinations"][0]["backups"][0]["problems"][0];
    assert_eq!(problem["file"], "files/medconnect.db", "{report}");
    assert!(problem["problem"].as_str().is_some_and(|p| p.contains("SHA-256")), "{report}");
    assert_eq!(report["destinations"][1]["ok"], true, "{report}");
    let text = backup(&store, &["verify", &id], &[&a, &b]);
    assert!(!text.success());
    assert!(text.stdout.contains(&format!("destination {}: FAILED", a.display())), "{text}");
    assert!(text.stdout.contains("files/medconnect.db"), "{text}");

    // Restore skips a and uses b.
    let first = store.scratch_path("restored-from-b");
    let restored =
        backup(&store, &["restore", &id, "--into", path_arg(&first), "--json"], &[&a, &b]);
    assert!(restored.success(), "{restored}");
    let report = restored.json();
    assert_eq!(report["destination"].as_str(), Some(path_arg(&b)), "{report}");
    assert_eq!(report["skipped_destinations"][0]["path"].as_str(), Some(path_arg(&a)));
    assert!(restored.stderr.contains("skipping destination"), "{restored}");
    assert!(first.join("medconnect.db").is_file());

    // The same byte changed in b too: nothing verifies, nothing is written.
    flip_byte(&b.join(&id).join("files/medconnect.db"));
    let second = store.scratch_path("restored-nowhere");
    let refused = backup(&store, &["restore", &id, "--into", path_arg(&second)], &[&a, &b]);
    assert!(!refused.success(), "restore from two tampered copies succeeded:\n{refused}");
    assert!(refused.stderr.contains("nothing was written"), "{refused}");
    assert!(!second.exists(), "{} was created", second.display());
    let parent_entries: Vec<String> = fs::read_dir(store.scratch_path(""))
        .expect("listing the test folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!parent_entries.iter().any(|n| n.contains("restoring")), "{parent_entries:?}");

    // A missing destination folder is reported.
    fs::remove_dir_all(&a).expect("removing destination a");
    let missing = backup(&store, &["verify", &id, "--json"], &[&a, &b]);
    assert!(!missing.success());
    let report = missing.json();
    let problem = &report["destinations"][0]["problems"][0]["problem"];
    assert_eq!(problem, "destination folder not found", "{report}");
}

#[test]
fn create_needs_two_destinations() {
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    let (a, b) = destinations(&store);

    let none = store.run(&["backup", "create"]);
    let one = backup(&store, &["create"], &[&a]);
    let same_twice = backup(&store, &["create"], &[&a, &a]);
    let absent = backup(&store, &["create"], &[&a, &store.scratch_path("absent")]);
    let inside = backup(&store, &["create"], &[&a, &store.data_dir().join("blobs")]);
    let cases = [
        ("no destination", none, "--destination"),
        ("one destination", one, "at least 2 distinct destinations"),
        ("same destination twice", same_twice, "at least 2 distinct destinations"),
        ("missing folder", absent, "not an existing folder"),
        ("inside the data directory", inside, "inside the data directory"),
    ];
    for (name, output, expected) in cases {
        assert!(!output.success(), "{name}: succeeded\n{output}");
        assert!(output.stderr.contains(expected), "{name}: {output}");
    }
    assert!(files_under(&a).is_empty(), "{:?}", files_under(&a));
    assert!(files_under(&b).is_empty(), "{:?}", files_under(&b));

    // Two destinations from the environment work.
    let joined = format!("{}:{}", a.display(), b.display());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_medconnect"))
        .args(["--data-dir", path_arg(store.data_dir()), "backup", "create", "--json"])
        .env("MEDCONNECT_BACKUP_DESTINATIONS", &joined)
        .output()
        .expect("medconnect starts");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed = backup(&store, &["list", "--json"], &[&a, &b]).json();
    for destination in 0..2 {
        let backups = &listed[destination]["backups"];
        assert_eq!(backups.as_array().map(Vec::len), Some(1), "{listed}");
        assert_eq!(backups[0]["complete"], true, "{listed}");
        assert!(backups[0]["size"].as_u64() > Some(0), "{listed}");
    }
    assert!(a.join("ledger.jsonl").is_file(), "ledger copy in destination a");
}

#[test]
fn restore_rejects_bad_targets() {
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    let (a, b) = destinations(&store);
    let id = create_backup(&store, &a, &b);

    let occupied = store.scratch_path("occupied");
    fs::create_dir_all(&occupied).expect("mkdir");
    fs::write(occupied.join("notes.txt"), "keep me").expect("write");
    let cases = [
        ("non-empty folder", occupied.clone(), "not an empty folder"),
        ("live data directory", store.data_dir().to_owned(), "live data directory"),
        ("inside the data directory", store.data_dir().join("restored"), "live data directory"),
    ];
    let before = store.row_counts();
    for (name, target, expected) in cases {
        let output = backup(&store, &["restore", &id, "--into", path_arg(&target)], &[&a, &b]);
        assert!(!output.success(), "{name}: succeeded\n{output}");
        assert!(output.stderr.contains(expected), "{name}: {output}");
    }
    assert_eq!(files_under(&occupied), vec![occupied.join("notes.txt")]);
    assert_eq!(fs::read_to_string(occupied.join("notes.txt")).expect("read"), "keep me");
    assert!(!store.data_dir().join("restored").exists());
    assert_eq!(store.row_counts(), before, "the live store changed");

    // An empty existing folder is accepted.
    let empty = store.scratch_path("empty");
    fs::create_dir_all(&empty).expect("mkdir");
    let output = backup(&store, &["restore", &id, "--into", path_arg(&empty)], &[&a, &b]);
    assert!(output.success(), "{output}");
    assert!(empty.join("medconnect.db").is_file());
    assert!(empty.join("policy.toml").is_file());
    assert!(!empty.join("keys").exists(), "a restore copies no key");
}

#[test]
fn interrupted_backup_is_incomplete() {
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    let (a, b) = destinations(&store);
    let id = create_backup(&store, &a, &b);
    // A backup whose writer died before the rename.
    let interrupted = "0190f2c4-5b1a-7c3d-8e9f-0123456789ab";
    fs::create_dir_all(a.join(format!("{interrupted}.partial/files"))).expect("mkdir");
    fs::write(a.join(format!("{interrupted}.partial/files/medconnect.db")), b"x").expect("write");

    let listed = backup(&store, &["list", "--json"], &[&a]).json();
    let backups = listed[0]["backups"].as_array().expect("backups").clone();
    let mut state: Vec<(&str, bool)> = backups
        .iter()
        .map(|b| (b["id"].as_str().expect("id"), b["complete"].as_bool().expect("complete")))
        .collect();
    state.sort();
    let mut expected = vec![(interrupted, false), (id.as_str(), true)];
    expected.sort();
    assert_eq!(state, expected);

    let verified = backup(&store, &["verify"], &[&a, &b]);
    assert!(verified.success(), "an interrupted copy fails verify:\n{verified}");
    assert!(verified.stdout.contains("incomplete"), "{verified}");
    let refused = backup(&store, &["verify", interrupted], &[&a]);
    assert!(!refused.success());
    assert!(refused.stdout.contains("only the incomplete copy"), "{refused}");
}

#[test]
fn ledger_recovers_missing_receipts() {
    let store = TestStore::init(true);
    import_northwind(&store);
    let ledger_path = store.data_dir().join("ledger/disposals.jsonl");
    let ledger_seqs = || -> Vec<i64> {
        fs::read_to_string(&ledger_path)
            .expect("ledger exists")
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).expect("ledger line is JSON")["seq"]
                    .as_i64()
                    .expect("seq")
            })
            .collect()
    };
    let receipt_seqs = || -> Vec<i64> {
        store
            .audit_entries()
            .into_iter()
            .filter(|(_, action, _)| action == "lifecycle.dispose")
            .map(|(seq, _, _)| seq)
            .collect()
    };

    store.run_ok(&["lifecycle", "run", "--as-of", "2000-01-01"]);
    let first = receipt_seqs();
    assert!(!first.is_empty(), "the first run disposed of something");
    assert_eq!(ledger_seqs(), first);

    // Receipts written while the ledger is missing, by a run that never syncs it.
    fs::remove_file(&ledger_path).expect("removing the ledger");
    {
        let mut api = SqliteStore::open(store.data_dir()).expect("open");
        let as_of = parse_instant("2031-12-01").expect("instant");
        api.set_clock(Box::new(medconnect_domain::clock::FixedClock(as_of)));
        let text = fs::read_to_string(store.data_dir().join("policy.toml")).expect("policy");
        let policy = medconnect_domain::policy::Policy::from_toml(&text).expect("policy parses");
        let options = medconnect_lifecycle::RunOptions::default();
        medconnect_lifecycle::run(&mut api, &policy, as_of, &options, &mut |_, _| {}).expect("run");
    }
    assert!(!ledger_path.exists());
    let all = receipt_seqs();
    assert!(all.len() > first.len(), "the second run disposed of more");

    let synced = store.run_json(&["backup", "sync-ledger", "--json"]);
    assert_eq!(synced["sync"]["appended"].as_u64(), Some(all.len() as u64), "{synced}");
    assert_eq!(ledger_seqs(), all, "the ledger lists every receipt in order");

    // A torn last line, as a crash in the middle of an append leaves it, is replaced.
    let whole = fs::read_to_string(&ledger_path).expect("ledger");
    let last_line = whole.lines().last().expect("a line").to_owned();
    let without_last = &whole[..whole.len() - last_line.len() - 1];
    fs::write(&ledger_path, format!("{without_last}{}", &last_line[..last_line.len() / 2]))
        .expect("tearing the last line");
    let synced = store.run_json(&["backup", "sync-ledger", "--json"]);
    assert_eq!(synced["sync"]["appended"], 1, "{synced}");
    assert_eq!(fs::read_to_string(&ledger_path).expect("ledger"), whole);

    // A run whose ledger cannot be written fails after committing, and the next sync
    // catches up.
    let blocked = store.scratch_path("not-a-folder");
    fs::write(&blocked, "a file where the ledger's folder should be").expect("write");
    let bad_ledger = blocked.join("disposals.jsonl");
    let output = store.run(&["--ledger", path_arg(&bad_ledger), "lifecycle", "run"]);
    assert!(!output.success(), "{output}");
    assert!(output.stderr.contains("sync-ledger"), "{output}");
    let other = store.scratch_path("ledger-elsewhere/disposals.jsonl");
    store.run_ok(&["--ledger", path_arg(&other), "backup", "sync-ledger"]);
    let lines = fs::read_to_string(&other).expect("new ledger").lines().count();
    assert_eq!(lines, all.len());
}

#[test]
fn restore_uses_destination_ledger_copy() {
    let store = TestStore::init(true);
    import_northwind(&store);
    let (a, b) = destinations(&store);
    let id = create_backup(&store, &a, &b);
    store.run_ok(&["lifecycle", "run", "--as-of", "2000-01-01"]);
    let receipts = store.audit_count("lifecycle.dispose");
    assert!(receipts > 0);
    // A second backup copies the ledger, which now lists the run's receipts.
    create_backup(&store, &a, &b);
    let live = store.data_dir().join("ledger/disposals.jsonl");

    // Without the live store and its ledger, the newest copy in the destinations is used.
    fs::remove_file(&live).expect("removing the live ledger");
    fs::remove_file(store.database_path()).expect("removing the live database");
    let restored = store.scratch_path("restored");
    let output =
        backup(&store, &["restore", &id, "--into", path_arg(&restored), "--json"], &[&a, &b]);
    assert!(output.success(), "{output}");
    let report = output.json();
    assert_eq!(report["ledger_source"], "destination copy", "{report}");
    let copies = [a.join("ledger.jsonl"), b.join("ledger.jsonl")];
    let used = PathBuf::from(report["ledger"].as_str().expect("ledger path"));
    assert!(copies.contains(&used), "{report}");
    let reapplied = &report["reapplied"];
    let handled = reapplied["applied"].as_i64().zip(reapplied["already_absent"].as_i64());
    assert_eq!(handled.map(|(applied, absent)| applied + absent), Some(receipts), "{report}");
    assert!(reapplied["applied"].as_i64() > Some(0), "{report}");
    assert!(output.stderr.contains("using the newest copy"), "{output}");
}

#[test]
fn backup_outlives_master_rotation() {
    let store = TestStore::init(false);
    import_northwind(&store);
    let (a, b) = destinations(&store);
    let id = create_backup(&store, &a, &b);

    store.run_ok(&["keys", "rotate", "--master"]);
    assert!(store.data_dir().join("keys/master.key.v1").is_file());

    // The backup key was wrapped by master key version 1, now retired; verify and restore find it.
    let verify = backup(&store, &["verify", &id], &[&a, &b]);
    assert!(verify.success(), "{verify}");
    let target = store.scratch_path("restored");
    let restore = backup(&store, &["restore", &id, "--into", path_arg(&target)], &[&a, &b]);
    assert!(restore.success(), "{restore}");
    assert!(target.join("medconnect.db").is_file());

    // A backup taken after the rotation uses version 2.
    let later = create_backup(&store, &a, &b);
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(a.join(&later).join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(manifest["backup_key"]["master_key_version"], 2);
}
