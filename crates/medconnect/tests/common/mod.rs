//! Helpers for end-to-end tests: run the real `medconnect` binary against a store in a
//! temporary data directory, and read or tamper with that store's SQLite database directly.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tempfile::TempDir;

/// File name of the store's database inside the data directory.
pub const DATABASE_FILE: &str = "medconnect.db";

/// Characters of standard output shown in assertion messages, because plan and audit output
/// can be hundreds of kilobytes.
const SHOWN_STDOUT_CHARS: usize = 4000;

/// How one run of the binary exited and what it printed.
pub struct CliOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Parses standard output as one JSON document, failing the test if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("output is not JSON ({err}):\n{self}"))
    }

    /// Returns standard output and standard error together, for searching both.
    pub fn all_text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for CliOutput {
    /// Formats the command, its exit status and its output, for assertion messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stdout: String = self.stdout.chars().take(SHOWN_STDOUT_CHARS).collect();
        let cut = if stdout.len() < self.stdout.len() { "\n[... cut]" } else { "" };
        write!(
            f,
            "`medconnect {}` exited with {}\n--- stdout\n{stdout}{cut}\n--- stderr\n{}",
            self.args.join(" "),
            self.status,
            self.stderr
        )
    }
}

/// A temporary data directory for one test, removed when the value is dropped.
pub struct TestStore {
    root: TempDir,
    data_dir: PathBuf,
}

impl TestStore {
    /// Creates a temporary directory whose data directory does not exist yet, so no store.
    pub fn empty() -> Self {
        let root = tempfile::Builder::new()
            .prefix("medconnect-e2e-")
            .tempdir()
            .expect("creating a temporary directory");
        let data_dir = root.path().join("data");
        TestStore { root, data_dir }
    }

    /// Runs `medconnect init` in a fresh data directory, adding `--simulated-clock` when
    /// `simulated` is true.
    pub fn init(simulated: bool) -> Self {
        let store = TestStore::empty();
        let args: &[&str] = if simulated { &["init", "--simulated-clock"] } else { &["init"] };
        store.run_ok(args);
        store
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Returns a path inside the test's temporary directory but outside the data directory.
    pub fn scratch_path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }

    /// Runs the binary with `--data-dir` set to this store and the given arguments.
    /// Variables that would redirect the data directory, the policy or the log level are
    /// removed so the developer's environment cannot change the result.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        let output = Command::new(env!("CARGO_BIN_EXE_medconnect"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env_remove("MEDCONNECT_DATA_DIR")
            .env_remove("MEDCONNECT_POLICY")
            .env_remove("MEDCONNECT_LOG")
            .env_remove("MEDCONNECT_SYNTHEA_DIR")
            .env_remove("MEDCONNECT_LEDGER")
            .env_remove("MEDCONNECT_BACKUP_DESTINATIONS")
            .output()
            .expect("starting the medconnect binary");
        CliOutput {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs the binary and fails the test unless it exits with status 0.
    pub fn run_ok(&self, args: &[&str]) -> CliOutput {
        let output = self.run(args);
        assert!(output.success(), "expected success:\n{output}");
        output
    }

    /// Runs the binary with `--json` output and returns the parsed JSON.
    pub fn run_json(&self, args: &[&str]) -> Value {
        self.run_ok(args).json()
    }

    /// Opens the store's database for reading, counting or tampering. Fails the test if the
    /// database does not exist, instead of creating an empty one as a plain open would.
    pub fn db(&self) -> Connection {
        let path = self.database_path();
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()))
    }

    /// Returns the number of rows in one table.
    pub fn count(&self, table: &str) -> i64 {
        count_rows(&self.db(), table)
    }

    /// Returns the number of rows of every table in the database, keyed by table name.
    pub fn row_counts(&self) -> BTreeMap<String, i64> {
        let conn = self.db();
        let tables: Vec<String> = {
            let mut statement = conn
                .prepare(
                    "SELECT name FROM sqlite_master
                     WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )
                .expect("listing tables");
            let names = statement.query_map([], |row| row.get(0)).expect("listing tables");
            names.collect::<rusqlite::Result<_>>().expect("reading table names")
        };
        tables
            .into_iter()
            .map(|table| {
                let rows = count_rows(&conn, &table);
                (table, rows)
            })
            .collect()
    }

    /// Returns every audit entry as (seq, action, parsed body), in sequence order.
    pub fn audit_entries(&self) -> Vec<(i64, String, Value)> {
        let conn = self.db();
        let mut statement = conn
            .prepare("SELECT seq, action, body FROM audit_log ORDER BY seq")
            .expect("querying audit_log");
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
            })
            .expect("querying audit_log");
        rows.map(|row| {
            let (seq, action, body) = row.expect("reading an audit row");
            let body = serde_json::from_str(&body)
                .unwrap_or_else(|err| panic!("audit entry {seq} body is not JSON ({err}): {body}"));
            (seq, action, body)
        })
        .collect()
    }

    /// Returns the number of audit entries with this action.
    pub fn audit_count(&self, action: &str) -> i64 {
        self.db()
            .query_row("SELECT count(*) FROM audit_log WHERE action = ?1", [action], |row| {
                row.get(0)
            })
            .expect("counting audit entries")
    }
}

fn count_rows(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |row| row.get(0))
        .unwrap_or_else(|err| panic!("counting rows of {table}: {err}"))
}

/// Returns the folder of the Synthea sample export, which sits in `shared/data/synthea`
/// next to the repository checkout.
pub fn synthea_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea");
    assert!(
        dir.join("patients.csv").is_file(),
        "Synthea sample data not found in {}: check out `shared` next to the repository",
        dir.display()
    );
    dir
}

/// Copies the Synthea CSV files into a new temporary folder, so a test can corrupt one.
pub fn copy_synthea() -> TempDir {
    let copy = tempfile::Builder::new()
        .prefix("medconnect-synthea-")
        .tempdir()
        .expect("creating a temporary directory");
    let source = synthea_dir();
    for entry in fs::read_dir(&source).expect("listing the Synthea folder") {
        let entry = entry.expect("reading the Synthea folder");
        if entry.file_type().expect("reading a file type").is_file() {
            fs::copy(entry.path(), copy.path().join(entry.file_name()))
                .unwrap_or_else(|err| panic!("copying {}: {err}", entry.path().display()));
        }
    }
    copy
}

/// Returns the number of data rows in a CSV file, read with the csv crate. A missing file
/// counts 0 rows, as the importer treats a missing optional file as empty.
pub fn csv_rows(path: &Path) -> u64 {
    if !path.is_file() {
        return 0;
    }
    let mut reader = csv::Reader::from_path(path)
        .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
    let mut rows = 0;
    for record in reader.records() {
        record.unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
        rows += 1;
    }
    rows
}

/// Reads a CSV file into one map from column name to cell per data row.
pub fn csv_records(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path)
        .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
    let headers = reader.headers().expect("reading the CSV header").clone();
    reader
        .records()
        .map(|record| {
            let record = record.unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
            headers.iter().map(str::to_owned).zip(record.iter().map(str::to_owned)).collect()
        })
        .collect()
}

/// Rewrites one line (1-based, the header is line 1) of a text file.
pub fn edit_line(path: &Path, line: usize, edit: impl FnOnce(&str) -> String) {
    let text =
        fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let target =
        lines.get_mut(line - 1).unwrap_or_else(|| panic!("{} has no line {line}", path.display()));
    *target = edit(target);
    fs::write(path, lines.join("\n"))
        .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
}

/// Replaces one cell of a comma-separated line without quoting, found by its header name,
/// and returns the cell's previous value. The Synthea export quotes no cell.
pub fn set_cell(path: &Path, line: usize, column: &str, value: &str) -> String {
    let text =
        fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    let header = text.lines().next().expect("CSV file has a header");
    let index = header
        .split(',')
        .position(|name| name == column)
        .unwrap_or_else(|| panic!("{} has no column {column}", path.display()));
    let mut previous = String::new();
    edit_line(path, line, |row| {
        assert!(!row.contains('"'), "line {line} of {} has quoted cells", path.display());
        let mut cells: Vec<&str> = row.split(',').collect();
        previous = cells[index].to_owned();
        cells[index] = value;
        cells.join(",")
    });
    previous
}
