//! Killing `medconnect lifecycle run` mid-run and running again ends with every expired
//! record disposed of exactly once, with exactly one receipt.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tempfile::TempDir;

const AS_OF: &str = "2031-12-01T00:00:00Z";
const TENANTS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

fn synthea_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea")
}

fn medconnect(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_medconnect"));
    command.arg("--data-dir").arg(data_dir);
    command
}

fn run_ok(data_dir: &Path, args: &[&str]) -> Output {
    let output = medconnect(data_dir).args(args).output().expect("medconnect starts");
    assert!(
        output.status.success(),
        "medconnect {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn count(db: &Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |row| row.get(0)).expect("count query")
}

const RECEIPTS_SQL: &str = "SELECT count(*) FROM audit_log WHERE action = 'lifecycle.dispose'";
const EXPIRED_SQL: &str =
    "SELECT count(*) FROM patient_links WHERE phi_retention_until <= '2031-12-01T00:00:00Z'";

/// Starts a run and kills it with SIGKILL as soon as it has committed at least one new
/// receipt. Returns true when the kill landed before the run finished.
fn kill_mid_run(data_dir: &Path, db: &Connection) -> bool {
    let before = count(db, RECEIPTS_SQL);
    let mut child = medconnect(data_dir)
        .args(["lifecycle", "run", "--as-of", AS_OF, "--batch-size", "1", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("child status").is_some() {
            return false;
        }
        if count(db, RECEIPTS_SQL) > before || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    count(db, EXPIRED_SQL) > 0
}

#[test]
fn killed_run_converges_exactly_once() {
    let dir = TempDir::new().expect("temp dir");
    let data_dir = dir.path().join("data");
    run_ok(&data_dir, &["init", "--simulated-clock"]);
    let synthea = synthea_dir();
    let synthea = synthea.to_str().expect("utf-8 path");
    for tenant in TENANTS {
        run_ok(&data_dir, &["tenant", "create", tenant]);
        run_ok(&data_dir, &["import", "synthea", synthea, "--tenant", tenant]);
    }
    let db = Connection::open(data_dir.join("medconnect.db")).expect("open db");
    let expired_links = count(&db, EXPIRED_SQL);
    let profiles = count(&db, "SELECT count(*) FROM patient_profiles");
    assert_eq!(expired_links, 4 * 111, "every imported link is expired as of {AS_OF}");

    let mut partial_kills = 0;
    for _ in 0..6 {
        if kill_mid_run(&data_dir, &db) {
            partial_kills += 1;
        }
        if count(&db, EXPIRED_SQL) == 0 {
            break;
        }
    }
    assert!(partial_kills >= 1, "no kill landed mid-run");
    let remaining_before_final = count(&db, EXPIRED_SQL);
    assert!(remaining_before_final < expired_links, "killed runs made progress");

    let output = run_ok(&data_dir, &["lifecycle", "run", "--as-of", AS_OF, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("run json");
    assert_eq!(
        report["purged"]["patient_records"], remaining_before_final,
        "the final run finishes the rest"
    );
    assert_eq!(count(&db, EXPIRED_SQL), 0, "no expired link left");
    assert_eq!(count(&db, "SELECT count(*) FROM patient_profiles"), 0, "no profile left");
    assert_eq!(count(&db, "SELECT count(*) FROM consultations"), 0, "no consultation left");

    let mut statement =
        db.prepare("SELECT body FROM audit_log WHERE action = 'lifecycle.dispose'").expect("query");
    let bodies: Vec<String> =
        statement.query_map([], |row| row.get(0)).expect("rows").map(|r| r.expect("row")).collect();
    let mut seen = HashSet::new();
    let (mut records, mut profile_receipts) = (0, 0);
    for body in &bodies {
        let body: serde_json::Value = serde_json::from_str(body).expect("body json");
        let receipt = &body["receipt"];
        let key = (
            receipt["category"].to_string(),
            body["tenant_id"].to_string(),
            receipt["record_id"].to_string(),
        );
        assert!(seen.insert(key.clone()), "duplicate receipt {key:?}");
        match receipt["category"].as_str() {
            Some("patient_records") => records += 1,
            Some("patient_profile") => profile_receipts += 1,
            other => panic!("unexpected category {other:?}"),
        }
    }
    assert_eq!(records, expired_links, "one receipt per expired link");
    assert_eq!(profile_receipts, profiles, "one receipt per core profile");

    let verify = run_ok(&data_dir, &["audit", "verify", "--json"]);
    let verify: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("verify json");
    assert_eq!(verify["ok"], true, "{verify}");
}
