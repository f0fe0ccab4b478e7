//! Encryption at rest through the real binary: no patient name or address reaches the disk in
//! plaintext, and the master key file is guarded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

fn synthea_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea")
}

fn medconnect(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medconnect"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("MEDCONNECT_MASTER_KEY")
        .env_remove("MEDCONNECT_MASTER_KEY_FILE")
        .output()
        .expect("medconnect starts")
}

fn ok(data_dir: &Path, args: &[&str]) -> Output {
    let output = medconnect(data_dir, args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Returns the (FIRST, LAST, ADDRESS) cells of patients.csv and the NAME cells of providers.csv.
fn imported_phi() -> Vec<String> {
    let mut values = Vec::new();
    let mut patients =
        csv::Reader::from_path(synthea_dir().join("patients.csv")).expect("patients");
    let headers = patients.headers().expect("headers").clone();
    let column = |name: &str| headers.iter().position(|h| h == name).expect("column");
    let (first, last, address) = (column("FIRST"), column("LAST"), column("ADDRESS"));
    for record in patients.records() {
        let record = record.expect("row");
        for index in [first, last, address] {
            values.push(record[index].to_owned());
        }
    }
    let mut providers =
        csv::Reader::from_path(synthea_dir().join("providers.csv")).expect("providers");
    let name =
        providers.headers().expect("headers").iter().position(|h| h == "NAME").expect("NAME");
    for record in providers.records() {
        values.push(record.expect("row")[name].to_owned());
    }
    values
}

/// Lists every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn no_plaintext_phi_on_disk() {
    let dir = TempDir::new().expect("dir");
    let data = dir.path().join("data");
    let synthea = synthea_dir();
    let synthea = synthea.to_str().expect("utf-8");
    ok(&data, &["init", "--simulated-clock"]);
    for tenant in ["northwind", "prairie"] {
        ok(&data, &["tenant", "create", tenant]);
        ok(&data, &["import", "synthea", synthea, "--tenant", tenant]);
    }
    ok(&data, &["lifecycle", "run", "--as-of", "2027-01-01"]);

    let phi = imported_phi();
    assert!(phi.len() > 300, "{} values to look for", phi.len());
    let on_disk = files(&data);
    assert!(on_disk.iter().any(|p| p.ends_with("medconnect.db")));
    let escaped: Vec<String> = phi.iter().map(|value| regex::escape(value)).collect();
    let any_value = regex::bytes::Regex::new(&escaped.join("|")).expect("pattern");
    for path in &on_disk {
        let bytes = std::fs::read(path).expect("read file");
        let hit = any_value.find(&bytes).map(|m| m.start());
        assert_eq!(
            hit,
            None,
            "{} holds an imported value in plaintext at byte {hit:?}",
            path.display()
        );
    }
}

#[test]
fn key_file_is_created_private() {
    let dir = TempDir::new().expect("dir");
    let data = dir.path().join("data");
    let output = ok(&data, &["init"]);
    let key = data.join("keys/master.key");
    assert!(String::from_utf8_lossy(&output.stdout).contains("master.key"));
    let mode = std::fs::metadata(&key).expect("key file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let folder =
        std::fs::metadata(data.join("keys")).expect("key folder").permissions().mode() & 0o777;
    assert_eq!(folder, 0o700);
}

#[test]
fn loose_key_file_is_rejected() {
    let dir = TempDir::new().expect("dir");
    let data = dir.path().join("data");
    ok(&data, &["init"]);
    ok(&data, &["tenant", "create", "northwind"]);
    let key = data.join("keys/master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = medconnect(
        &data,
        &["import", "synthea", synthea_dir().to_str().expect("utf-8"), "--tenant", "northwind"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    let key_text = std::fs::read_to_string(&key).expect("key");
    assert!(!stderr.contains(key_text.trim()), "the key is never printed");
}

#[test]
fn wrong_master_key_cannot_read() {
    let dir = TempDir::new().expect("dir");
    let data = dir.path().join("data");
    ok(&data, &["init"]);
    ok(&data, &["tenant", "create", "northwind"]);
    ok(
        &data,
        &["import", "synthea", synthea_dir().to_str().expect("utf-8"), "--tenant", "northwind"],
    );
    let list = ok(&data, &["patient", "list", "--tenant", "northwind", "--json"]);
    let links: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let patient = links[0]["patient_id"].as_str().expect("id").to_owned();
    ok(&data, &["patient", "show", "--tenant", "northwind", "--patient", &patient]);

    // Another valid key: every data key fails to unwrap, and nothing is shown.
    let other = dir.path().join("other.key");
    ok(
        &dir.path().join("other-store"),
        &["--master-key-file", other.to_str().expect("utf-8"), "init"],
    );
    let output = medconnect(
        &data,
        &[
            "--master-key-file",
            other.to_str().expect("utf-8"),
            "patient",
            "show",
            "--tenant",
            "northwind",
            "--patient",
            &patient,
        ],
    );
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error:"), "{stderr}");
}

#[test]
fn master_key_from_environment() {
    let dir = TempDir::new().expect("dir");
    let data = dir.path().join("data");
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let run = |args: &[&str], with_key: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_medconnect"));
        command.arg("--data-dir").arg(&data).args(args).env_remove("MEDCONNECT_MASTER_KEY_FILE");
        if with_key {
            command.env("MEDCONNECT_MASTER_KEY", key);
        } else {
            command.env_remove("MEDCONNECT_MASTER_KEY");
        }
        command.output().expect("medconnect starts")
    };
    assert!(run(&["init"], true).status.success());
    assert!(
        !data.join("keys/master.key").exists(),
        "no key file when the key comes from the environment"
    );
    assert!(run(&["tenant", "create", "northwind"], true).status.success());
    let synthea = synthea_dir();
    let import = ["import", "synthea", synthea.to_str().expect("utf-8"), "--tenant", "northwind"];
    let without = run(&import, false);
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("master.key"), "{stderr}");
    assert!(run(&import, true).status.success());
}

fn first_patient(data: &Path) -> String {
    let list = ok(data, &["patient", "list", "--tenant", "northwind", "--json"]);
    let links: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    links[0]["patient_id"].as_str().expect("id").to_owned()
}

fn imported_store(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    ok(&data, &["init"]);
    ok(&data, &["tenant", "create", "northwind"]);
    ok(
        &data,
        &["import", "synthea", synthea_dir().to_str().expect("utf-8"), "--tenant", "northwind"],
    );
    data
}

fn master_versions(data: &Path) -> Vec<i64> {
    let db = rusqlite::Connection::open(data.join("medconnect.db")).expect("db");
    let mut statement =
        db.prepare("SELECT DISTINCT master_version FROM data_keys ORDER BY 1").expect("query");
    let rows = statement.query_map([], |r| r.get(0)).expect("rows");
    rows.map(|r| r.expect("row")).collect()
}

#[test]
fn master_rotation_rewraps_every_key() {
    let dir = TempDir::new().expect("dir");
    let data = imported_store(dir.path());
    let patient = first_patient(&data);
    let old_key = std::fs::read_to_string(data.join("keys/master.key")).expect("old key");

    let output = ok(&data, &["keys", "rotate", "--master", "--batch-size", "7"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("master key version 2 is current"));
    assert_eq!(master_versions(&data), [2]);
    assert_eq!(std::fs::read_to_string(data.join("keys/master.key.v1")).expect("retired"), old_key);
    assert_ne!(std::fs::read_to_string(data.join("keys/master.key")).expect("new"), old_key);
    let mode =
        std::fs::metadata(data.join("keys/master.key")).expect("new").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    ok(&data, &["patient", "show", "--tenant", "northwind", "--patient", &patient]);
    let log = ok(&data, &["audit", "log", "--tail", "5"]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("keys.rotate_master"));
}

#[test]
fn interrupted_master_rotation_resumes() {
    use medconnect_crypto::{KeyFileProvider, KeyProvider};
    use medconnect_store::{SqliteStore, Store};

    let dir = TempDir::new().expect("dir");
    let data = imported_store(dir.path());
    let patient = first_patient(&data);
    let current = data.join("keys/master.key");
    let next = data.join("keys/master.key.next");

    // The first steps of a rotation, stopped after one batch as a crash would leave them.
    {
        let mut store = SqliteStore::open(&data).expect("open");
        KeyFileProvider::create(&next).expect("next key");
        store.begin_master_rotation(2, "test").expect("begin");
        let master = KeyFileProvider::new(&current).master_key().expect("current key");
        let upcoming =
            KeyFileProvider::new(&next).with_master_key_version(2).master_key().expect("next key");
        store.set_master_keys(master, Some(upcoming)).expect("keys");
        assert!(store.rewrap_data_keys(3).expect("one batch") > 0);
    }
    assert_eq!(master_versions(&data), [1, 2]);
    // Reads work in the middle of the rotation.
    ok(&data, &["patient", "show", "--tenant", "northwind", "--patient", &patient]);

    let output = ok(&data, &["keys", "rotate", "--master"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("resuming"));
    assert_eq!(master_versions(&data), [2]);
    assert!(!next.exists());
    ok(&data, &["patient", "show", "--tenant", "northwind", "--patient", &patient]);
}

#[test]
fn tenant_rotation_through_cli() {
    let dir = TempDir::new().expect("dir");
    let data = imported_store(dir.path());
    let output = ok(&data, &["keys", "rotate", "--tenant", "northwind"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("data key version 2"), "{output:?}");
    let missing = medconnect(&data, &["keys", "rotate", "--tenant", "nosuch"]);
    assert!(!missing.status.success());
}

#[test]
fn rotation_resumes_between_renames() {
    let dir = TempDir::new().expect("dir");
    let data = imported_store(dir.path());
    let patient = first_patient(&data);
    let keys = data.join("keys");
    ok(&data, &["keys", "rotate", "--master"]);

    // Rebuild the state a crash between the two renames leaves: the old key retired, the
    // new key still under its temporary name, the rotation still recorded.
    std::fs::rename(keys.join("master.key"), keys.join("master.key.next")).expect("undo rename");
    let db = rusqlite::Connection::open(data.join("medconnect.db")).expect("db");
    db.execute_batch(
        "UPDATE store_meta SET value = '1' WHERE key = 'master_key_version';
         INSERT INTO store_meta (key, value) VALUES ('master_rotation', '2');",
    )
    .expect("rotation state");
    drop(db);

    let output = ok(&data, &["keys", "rotate", "--master"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("version 2 is current"), "{output:?}");
    assert!(keys.join("master.key").is_file());
    assert!(!keys.join("master.key.next").exists());
    ok(&data, &["patient", "show", "--tenant", "northwind", "--patient", &patient]);
}
