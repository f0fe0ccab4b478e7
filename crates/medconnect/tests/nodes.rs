//! Several `medconnect` processes share one PostgreSQL store: three lifecycle runs at once
//! dispose of every expired record exactly once, and when one of them is killed mid-run the
//! others finish its work.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use medconnect_store::testing::{admin_url, database_url, postgres_available, unique_schema};
use medconnect_store::PgStore;
use tempfile::TempDir;

const AS_OF: &str = "2031-12-01T00:00:00Z";
const TENANTS: [&str; 3] = ["alpha", "bravo", "charlie"];
const SYNTHEA_PATIENTS: i64 = 111;

fn synthea_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea")
}

/// One PostgreSQL store shared by the processes of a test, dropped at the end.
struct Cluster {
    _dir: TempDir,
    data_dir: PathBuf,
    schema: String,
    db: postgres::Client,
}

impl Cluster {
    fn new() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let data_dir = dir.path().join("data");
        let schema = unique_schema();
        let mut db = postgres::Client::connect(&admin_url(), postgres::NoTls).expect("admin");
        db.batch_execute(&format!("SET search_path TO \"{schema}\"")).expect("search path");
        let cluster = Cluster { _dir: dir, data_dir, schema, db };
        cluster.run_ok(&["init", "--simulated-clock"], "");
        cluster
    }

    fn medconnect(&self, node: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_medconnect"));
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("MEDCONNECT_DATABASE_URL", database_url())
            .env("MEDCONNECT_DATABASE_SCHEMA", &self.schema)
            .env("MEDCONNECT_ADMIN_DATABASE_URL", admin_url())
            .env_remove("MEDCONNECT_CONFIG");
        if !node.is_empty() {
            command.env("MEDCONNECT_NODE_NAME", node);
        }
        command
    }

    fn run_ok(&self, args: &[&str], node: &str) -> Output {
        let output = self.medconnect(node).args(args).output().expect("medconnect starts");
        assert!(
            output.status.success(),
            "medconnect {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn spawn_run(&self, node: &str) -> Child {
        self.medconnect(node)
            .args(["lifecycle", "run", "--as-of", AS_OF, "--batch-size", "1", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run starts")
    }

    fn count(&mut self, sql: &str) -> i64 {
        self.db.query_one(sql, &[]).expect("count query").get(0)
    }

    /// Imports the Synthea sample into every tenant; returns the expired links.
    fn seed(&mut self) -> i64 {
        let synthea = synthea_dir();
        let synthea = synthea.to_str().expect("utf-8 path");
        for tenant in TENANTS {
            self.run_ok(&["tenant", "create", tenant], "");
            self.run_ok(&["import", "synthea", synthea, "--tenant", tenant], "");
        }
        let expired = self.count(EXPIRED_SQL);
        assert_eq!(expired, TENANTS.len() as i64 * SYNTHEA_PATIENTS, "every link is expired");
        expired
    }

    /// Checks that nothing expired is left and that every disposal has exactly one receipt.
    fn assert_disposed_once(&mut self, expired_links: i64, profiles: i64) {
        assert_eq!(self.count(EXPIRED_SQL), 0, "no expired link left");
        assert_eq!(self.count("SELECT count(*) FROM patient_profiles"), 0, "no profile left");
        assert_eq!(self.count("SELECT count(*) FROM consultations"), 0, "no consultation left");
        let rows = self
            .db
            .query("SELECT body FROM audit_log WHERE action = 'lifecycle.dispose'", &[])
            .expect("receipts");
        let mut seen = HashSet::new();
        let (mut records, mut profile_receipts) = (0, 0);
        for row in rows {
            let body: serde_json::Value =
                serde_json::from_str(row.get::<_, &str>(0)).expect("body json");
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
        let verify = self.run_ok(&["audit", "verify", "--json"], "");
        let verify: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
        assert_eq!(verify["ok"], true, "{verify}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(error) = PgStore::drop_schema(&admin_url(), &self.schema) {
            eprintln!("could not drop test schema {}: {error}", self.schema);
        }
    }
}

const EXPIRED_SQL: &str =
    "SELECT count(*) FROM patient_links WHERE phi_retention_until <= '2031-12-01T00:00:00Z'";
const RECEIPTS_SQL: &str = "SELECT count(*) FROM audit_log WHERE action = 'lifecycle.dispose'";

fn finish(child: Child) -> (bool, serde_json::Value, String) {
    let output = child.wait_with_output().expect("run ends");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.success(), report, stderr)
}

#[test]
fn three_nodes_dispose_of_each_record_once() {
    if !postgres_available() {
        return;
    }
    let mut cluster = Cluster::new();
    let expired = cluster.seed();
    let profiles = cluster.count("SELECT count(*) FROM patient_profiles");

    let children: Vec<Child> = ["a", "b", "c"].iter().map(|node| cluster.spawn_run(node)).collect();
    let mut purged = 0;
    for child in children {
        let (ok, report, stderr) = finish(child);
        assert!(ok, "a node failed: {stderr}");
        purged += report["purged"]["patient_records"].as_i64().expect("purged count");
    }
    assert_eq!(purged, expired, "the nodes' purged counts add up to the expired links");
    cluster.assert_disposed_once(expired, profiles);
    let status = cluster.run_ok(&["lifecycle", "status", "--json"], "");
    let runs: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let mut nodes: Vec<&str> = runs
        .as_array()
        .expect("a list of runs")
        .iter()
        .map(|run| run["node"].as_str().expect("each run names its node"))
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["a", "b", "c"], "each node recorded its run under its name");
}

#[test]
fn killed_node_leaves_its_work_to_the_others() {
    if !postgres_available() {
        return;
    }
    let mut cluster = Cluster::new();
    let expired = cluster.seed();
    let profiles = cluster.count("SELECT count(*) FROM patient_profiles");

    let mut victim = cluster.spawn_run("victim");
    let deadline = Instant::now() + Duration::from_secs(120);
    while cluster.count(RECEIPTS_SQL) == 0 && Instant::now() < deadline {
        assert!(victim.try_wait().expect("status").is_none(), "the run ended before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The survivors start while the victim has rows locked, so their plans include them.
    let survivors: Vec<Child> = ["b", "c"].iter().map(|node| cluster.spawn_run(node)).collect();
    victim.kill().expect("kill");
    victim.wait().expect("reap");
    assert!(cluster.count(EXPIRED_SQL) > 0, "the kill landed before all work was done");

    for child in survivors {
        let (ok, _report, stderr) = finish(child);
        assert!(ok, "a surviving node failed: {stderr}");
    }
    cluster.assert_disposed_once(expired, profiles);
    let running = cluster.count("SELECT count(*) FROM lifecycle_runs WHERE status = 'running'");
    assert_eq!(running, 1, "only the killed node's run stays marked as running");
}
