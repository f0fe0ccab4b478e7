//! End-to-end tests of the `medconnect` command. Each test runs the real binary against its
//! own store in a temporary directory, then checks the printed output and the database.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{
    copy_synthea, csv_records, csv_rows, edit_line, set_cell, synthea_dir, CliOutput, TestStore,
};
use serde_json::Value;

/// Synthea files whose rows the importer turns into medical-history entries.
const HISTORY_FILES: [&str; 5] =
    ["conditions.csv", "allergies.csv", "immunizations.csv", "procedures.csv", "careplans.csv"];

/// Disposal categories, as named in plan and run JSON.
const CATEGORIES: [&str; 4] = ["patient_records", "patient_profile", "id_photo", "session"];

/// Patients in the Synthea sample export.
const SYNTHEA_PATIENTS: u64 = 111;

/// The instant the lifecycle tests run at. Every sample patient's last encounter is more
/// than 7 years before it, so all their PHI is past retention.
const LATE_AS_OF: &str = "2031-12-01";

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn synthea_rows(file: &str) -> u64 {
    csv_rows(&synthea_dir().join(file))
}

/// Returns the number at a JSON pointer such as `/counts/providers`.
fn json_u64(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("JSON has no number at {pointer}"))
}

/// Returns the sum of `purged` over all categories of a plan or run report.
fn purged_total(report: &Value) -> u64 {
    CATEGORIES.iter().map(|c| json_u64(report, &format!("/purged/{c}"))).sum()
}

fn create_tenant(store: &TestStore, slug: &str) {
    store.run_ok(&["tenant", "create", slug]);
}

/// Imports the shared Synthea export into an existing tenant and returns the JSON report.
fn import_synthea(store: &TestStore, slug: &str) -> Value {
    let dir = synthea_dir();
    store.run_json(&["import", "synthea", path_arg(&dir), "--tenant", slug, "--json"])
}

/// Returns a simulated-clock store with the Synthea export imported into `northwind`.
fn simulated_store_with_import() -> TestStore {
    let store = TestStore::init(true);
    create_tenant(&store, "northwind");
    import_synthea(&store, "northwind");
    store
}

/// Returns a simulated-clock store whose audit log holds tenant, import, policy, disposal
/// and run entries: init, tenant create, import, then one lifecycle run.
fn store_with_activity() -> TestStore {
    let store = simulated_store_with_import();
    store.run_ok(&["lifecycle", "run", "--as-of", LATE_AS_OF, "--json"]);
    store
}

/// Returns each Synthea patient's last encounter end (STOP, or START if empty), keyed by
/// patient id, in the fixed-width form `2023-10-17T00:43:11Z`.
fn last_encounters() -> BTreeMap<String, String> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for row in csv_records(&synthea_dir().join("encounters.csv")) {
        let end = if row["STOP"].is_empty() { row["START"].clone() } else { row["STOP"].clone() };
        let latest = last.entry(row["PATIENT"].clone()).or_default();
        if end > *latest {
            *latest = end;
        }
    }
    last
}

/// Runs `audit verify --json` and returns the output with its parsed report.
fn verify(store: &TestStore) -> (CliOutput, Value) {
    let output = store.run(&["audit", "verify", "--json"]);
    let report = output.json();
    (output, report)
}

#[test]
fn import_counts_match_csv() {
    let store = TestStore::init(false);
    create_tenant(&store, "northwind");
    let report = import_synthea(&store, "northwind");

    let patients = synthea_rows("patients.csv");
    assert_eq!(patients, SYNTHEA_PATIENTS, "data rows in patients.csv");
    let history: u64 = HISTORY_FILES.iter().map(|file| synthea_rows(file)).sum();
    let cases = [
        // (key under `counts` in the JSON, table, rows expected)
        ("profiles_created", "patient_profiles", patients),
        ("links_created", "patient_links", patients),
        ("providers", "providers", synthea_rows("providers.csv")),
        ("consultations", "consultations", synthea_rows("encounters.csv")),
        ("prescriptions", "prescriptions", synthea_rows("medications.csv")),
        ("history_entries", "medical_history", history),
    ];
    for (key, table, expected) in cases {
        let reported = json_u64(&report, &format!("/counts/{key}"));
        assert_eq!(reported, expected, "counts.{key} in the import JSON");
        let stored = store.count(table);
        assert_eq!(stored, expected as i64, "rows in table {table}");
    }
    let linked = json_u64(&report, "/counts/profiles_linked");
    assert_eq!(linked, 0, "counts.profiles_linked on the first import");
    assert_eq!(report["tenant"], "northwind", "tenant in the import JSON");

    let files = report["files"].as_array().expect("import JSON has a `files` array");
    let names: Vec<&str> = files.iter().filter_map(|entry| entry[0].as_str()).collect();
    assert!(names.contains(&"encounters.csv"), "files listed: {names:?}");
    for entry in files {
        let name = entry[0].as_str().expect("file name");
        let rows = entry[1].as_u64().expect("row count");
        assert_eq!(rows, synthea_rows(name), "rows reported for {name}");
    }
    let imports = store.audit_count("import");
    assert_eq!(imports, 1, "audit entries with action import");
}

#[test]
fn import_second_tenant_links_profiles() {
    let store = TestStore::init(false);
    create_tenant(&store, "northwind");
    create_tenant(&store, "prairie");
    import_synthea(&store, "northwind");
    let report = import_synthea(&store, "prairie");

    let linked = json_u64(&report, "/counts/profiles_linked");
    assert_eq!(linked, SYNTHEA_PATIENTS, "counts.profiles_linked of the second tenant");
    let created = json_u64(&report, "/counts/profiles_created");
    assert_eq!(created, 0, "counts.profiles_created of the second tenant");
    let links = json_u64(&report, "/counts/links_created");
    assert_eq!(links, SYNTHEA_PATIENTS, "counts.links_created of the second tenant");

    let profiles = store.count("patient_profiles");
    assert_eq!(profiles, SYNTHEA_PATIENTS as i64, "rows in patient_profiles");
    let links = store.count("patient_links");
    assert_eq!(links, 2 * SYNTHEA_PATIENTS as i64, "rows in patient_links");
    // Clinical records belong to one tenant, so each tenant gets its own copy.
    let consultations = store.count("consultations");
    let encounters = synthea_rows("encounters.csv") as i64;
    assert_eq!(consultations, 2 * encounters, "rows in consultations");
}

#[test]
fn import_twice_changes_nothing() {
    let store = TestStore::init(false);
    create_tenant(&store, "northwind");
    import_synthea(&store, "northwind");
    let before = store.row_counts();

    let dir = synthea_dir();
    let output = store.run(&["import", "synthea", path_arg(&dir), "--tenant", "northwind"]);

    assert!(!output.success(), "re-import should fail:\n{output}");
    for expected in ["\"northwind\"", "imported before", "nothing was written"] {
        assert!(output.stderr.contains(expected), "stderr lacks {expected:?}:\n{output}");
    }
    assert!(output.stdout.is_empty(), "stdout of a failed re-import:\n{output}");
    let after = store.row_counts();
    assert_eq!(after, before, "row counts (audit_log included) after a rejected re-import");
}

/// One command that must fail, with text its error must and must not contain.
struct BadInput {
    name: &'static str,
    args: Vec<String>,
    expected: Vec<String>,
    forbidden: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn bad_input_rejected_unchanged() {
    // A production store whose `northwind` tenant contains the sample data and whose `prairie`
    // tenant is empty, so a faulty import into `prairie` would otherwise succeed.
    let store = TestStore::init(false);
    create_tenant(&store, "northwind");
    create_tenant(&store, "prairie");
    import_synthea(&store, "northwind");
    let synthea = synthea_dir();

    let missing_dir = store.scratch_path("no-such-export");

    let no_encounters = copy_synthea();
    let no_encounters_file = no_encounters.path().join("encounters.csv");
    fs::remove_file(&no_encounters_file).expect("removing encounters.csv from the copy");

    let extra_cell = copy_synthea();
    let extra_cell_file = extra_cell.path().join("encounters.csv");
    let header_cells = fs::read_to_string(&extra_cell_file)
        .expect("reading encounters.csv")
        .lines()
        .next()
        .expect("encounters.csv has a header")
        .split(',')
        .count();
    edit_line(&extra_cell_file, 10, |row| format!("{row},extra"));

    // Line 5 is the fourth data row.
    let bad_date = copy_synthea();
    let bad_date_file = bad_date.path().join("patients.csv");
    let bad_date_patient = csv_records(&bad_date_file).swap_remove(3);
    set_cell(&bad_date_file, 5, "BIRTHDATE", "31/12/1970");
    let mut bad_date_forbidden = strings(&["31/12/1970"]);
    for column in ["FIRST", "LAST", "SSN", "ADDRESS"] {
        bad_date_forbidden.push(bad_date_patient[column].clone());
    }

    let unknown_patient = copy_synthea();
    let unknown_patient_file = unknown_patient.path().join("encounters.csv");
    set_cell(&unknown_patient_file, 7, "PATIENT", "00000000-0000-4000-8000-000000000000");

    let short_policy = store.scratch_path("short-policy.toml");
    let policy_text =
        fs::read_to_string(store.data_dir().join("policy.toml")).expect("reading policy.toml");
    fs::write(&short_policy, format!("{policy_text}\n[tenants.northwind]\nphi_years = 5\n"))
        .expect("writing the shortened policy");
    let short_policy = path_arg(&short_policy);
    let policy_errors = ["phi_years = 5", "minimum 7", "tenant \"northwind\"", "never shortened"];

    let unlinked = "3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab";
    let import = |dir: &Path, tenant: &str| {
        strings(&["import", "synthea", path_arg(dir), "--tenant", tenant])
    };
    let cases = vec![
        BadInput {
            name: "unknown tenant",
            args: import(&synthea, "nope"),
            expected: strings(&["\"nope\"", "medconnect tenant create"]),
            forbidden: vec![],
        },
        BadInput {
            name: "missing folder",
            args: import(&missing_dir, "prairie"),
            expected: strings(&[path_arg(&missing_dir), "patients.csv and encounters.csv"]),
            forbidden: vec![],
        },
        BadInput {
            name: "folder without encounters.csv",
            args: import(no_encounters.path(), "prairie"),
            expected: strings(&[
                path_arg(&no_encounters_file),
                "needs patients.csv and encounters.csv",
            ]),
            forbidden: vec![],
        },
        BadInput {
            name: "row with an extra cell",
            args: import(extra_cell.path(), "prairie"),
            expected: vec![
                "encounters.csv:10".to_owned(),
                format!("{} cells", header_cells + 1),
                format!("header has {header_cells}"),
            ],
            forbidden: vec![],
        },
        BadInput {
            name: "malformed birth date",
            args: import(bad_date.path(), "prairie"),
            expected: strings(&["patients.csv:5", "BIRTHDATE", "expected 1962-03-01"]),
            forbidden: bad_date_forbidden,
        },
        BadInput {
            name: "encounter of an unknown patient",
            args: import(unknown_patient.path(), "prairie"),
            expected: strings(&["encounters.csv:7", "PATIENT", "not in patients.csv"]),
            forbidden: vec![],
        },
        BadInput {
            name: "--as-of on a production store",
            args: strings(&["lifecycle", "run", "--as-of", "2040-01-01"]),
            expected: strings(&["--as-of", "2040-01-01", "--simulated-clock"]),
            forbidden: vec![],
        },
        BadInput {
            name: "hold on an unlinked patient",
            args: strings(&[
                "hold",
                "place",
                "--tenant",
                "northwind",
                "--patient",
                unlinked,
                "--matter",
                "CASE-1",
                "--reason",
                "litigation",
            ]),
            expected: strings(&[unlinked, "medconnect patient list --tenant northwind"]),
            forbidden: vec![],
        },
        BadInput {
            name: "hold with a malformed patient id",
            args: strings(&[
                "hold",
                "place",
                "--tenant",
                "northwind",
                "--patient",
                "not-a-uuid",
                "--matter",
                "CASE-1",
                "--reason",
                "litigation",
            ]),
            expected: strings(&["\"not-a-uuid\"", "expected a UUID"]),
            forbidden: vec![],
        },
        BadInput {
            name: "shortened policy on policy show",
            args: strings(&["policy", "show", "--policy", short_policy]),
            expected: strings(&policy_errors),
            forbidden: vec![],
        },
        BadInput {
            name: "shortened policy on lifecycle plan",
            args: strings(&["lifecycle", "plan", "--json", "--policy", short_policy]),
            expected: strings(&policy_errors),
            forbidden: vec![],
        },
        BadInput {
            name: "malformed --as-of on plan",
            args: strings(&["lifecycle", "plan", "--as-of", "not-a-date"]),
            expected: strings(&["\"not-a-date\"", "expected RFC 3339"]),
            forbidden: vec![],
        },
    ];

    for case in &cases {
        let before = store.row_counts();
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let output = store.run(&args);
        let name = case.name;

        assert!(!output.success(), "{name}: expected failure:\n{output}");
        assert!(output.stdout.is_empty(), "{name}: expected empty stdout:\n{output}");
        for text in &case.expected {
            assert!(
                output.stderr.contains(text.as_str()),
                "{name}: stderr lacks {text:?}:\n{output}"
            );
        }
        for text in &case.forbidden {
            assert!(
                !output.all_text().contains(text.as_str()),
                "{name}: output shows {text:?}:\n{output}"
            );
        }
        let after = store.row_counts();
        assert_eq!(after, before, "{name}: row counts (audit_log included) changed");
    }
}

#[test]
fn missing_store_suggests_init() {
    let store = TestStore::empty();
    let synthea = synthea_dir();
    let commands: [&[&str]; 7] = [
        &["tenant", "list"],
        &["tenant", "create", "northwind"],
        &["import", "synthea", path_arg(&synthea), "--tenant", "northwind"],
        &["lifecycle", "plan"],
        &["hold", "list"],
        &["audit", "verify"],
        &["policy", "show"],
    ];
    for args in commands {
        let output = store.run(args);
        let command = args.join(" ");

        assert!(!output.success(), "{command}: expected failure:\n{output}");
        assert!(output.stderr.contains("medconnect init"), "{command}: no init hint:\n{output}");
        let dir = path_arg(store.data_dir());
        assert!(output.stderr.contains(dir), "{command}: data dir not named:\n{output}");
        let created = store.database_path().exists();
        assert!(!created, "{command}: created {}", store.database_path().display());
    }
}

#[test]
fn init_twice_fails_unchanged() {
    let second_inits: [&[&str]; 2] = [&["init"], &["init", "--simulated-clock"]];
    for second in second_inits {
        let command = second.join(" ");
        let store = TestStore::init(false);
        create_tenant(&store, "northwind");
        let policy_path = store.data_dir().join("policy.toml");
        let policy_before = fs::read_to_string(&policy_path).expect("reading policy.toml");
        let before = store.row_counts();

        let output = store.run(second);

        assert!(!output.success(), "{command}: expected failure:\n{output}");
        let stderr = &output.stderr;
        assert!(
            stderr.contains("already exists"),
            "{command}: stderr lacks \"already exists\":\n{output}"
        );
        let dir = path_arg(store.data_dir());
        assert!(stderr.contains(dir), "{command}: data dir not named:\n{output}");
        let after = store.row_counts();
        assert_eq!(after, before, "{command}: row counts changed");
        let mode: String = store
            .db()
            .query_row("SELECT value FROM store_meta WHERE key = 'clock_mode'", [], |row| {
                row.get(0)
            })
            .expect("reading the clock mode");
        assert_eq!(mode, "production", "{command}: clock mode after the second init");
        let policy_after = fs::read_to_string(&policy_path).expect("reading policy.toml");
        assert_eq!(policy_after, policy_before, "{command}: policy.toml changed");
    }
}

#[test]
fn as_of_marks_simulated_audit() {
    let store = simulated_store_with_import();
    let report = store.run_json(&["lifecycle", "run", "--as-of", LATE_AS_OF, "--json"]);
    assert_eq!(report["as_of"], "2031-12-01T00:00:00Z", "as_of in the run JSON");

    let entries = store.audit_entries();
    let actions: Vec<&str> = entries.iter().map(|(_, action, _)| action.as_str()).collect();
    assert!(actions.contains(&"lifecycle.run"), "audit actions: {actions:?}");
    for (seq, action, body) in &entries {
        let flag = &body["simulated_clock"];
        assert_eq!(flag, &Value::Bool(true), "simulated_clock of entry {seq} ({action})");
    }
    // The run writes its entries on the clock set by --as-of.
    let run_actions = ["policy.apply", "lifecycle.dispose", "lifecycle.run"];
    for (seq, action, body) in entries.iter().filter(|(_, a, _)| run_actions.contains(&a.as_str()))
    {
        assert_eq!(body["at"], "2031-12-01T00:00:00Z", "at of entry {seq} ({action})");
    }
}

#[test]
fn audit_production_not_simulated() {
    let store = TestStore::init(false);
    create_tenant(&store, "northwind");
    import_synthea(&store, "northwind");

    let entries = store.audit_entries();
    assert_eq!(entries.len(), 3, "audit entries after init, tenant create and import");
    for (seq, action, body) in &entries {
        let flag = &body["simulated_clock"];
        assert_eq!(flag, &Value::Bool(false), "simulated_clock of entry {seq} ({action})");
    }
}

#[test]
fn audit_verify_intact_store() {
    let store = store_with_activity();
    let entries = store.count("audit_log");

    let (output, report) = verify(&store);

    assert!(output.success(), "verify of an untouched store:\n{output}");
    assert_eq!(report["ok"], true, "ok in the verify JSON");
    assert_eq!(report["entries"], entries, "entries in the verify JSON");
    assert_eq!(report["head_seq"], entries, "head_seq in the verify JSON");
    assert_eq!(report["breach"], Value::Null, "breach in the verify JSON");
}

#[test]
fn audit_verify_detects_edit() {
    let store = store_with_activity();
    let conn = store.db();
    let (seq, body): (i64, String) = conn
        .query_row("SELECT seq, body FROM audit_log WHERE action = 'import'", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .expect("reading the import entry");
    let edited = body.replacen("111 profiles created", "112 profiles created", 1);
    assert_ne!(edited, body, "import entry has no count to edit: {body}");
    conn.execute("UPDATE audit_log SET body = ?1 WHERE seq = ?2", (&edited, seq))
        .expect("editing the import entry");
    drop(conn);

    let (output, report) = verify(&store);

    assert!(!output.success(), "verify after an edit:\n{output}");
    assert_eq!(report["ok"], false, "ok in the verify JSON");
    assert_eq!(report["breach"], "altered", "breach in the verify JSON");
    assert_eq!(report["first_bad_seq"], seq, "first_bad_seq in the verify JSON");
}

#[test]
fn audit_verify_detects_deletion() {
    let store = store_with_activity();
    let seq = store.count("audit_log") / 2;
    let deleted = store
        .db()
        .execute("DELETE FROM audit_log WHERE seq = ?1", [seq])
        .expect("deleting an audit entry");
    assert_eq!(deleted, 1, "rows deleted at seq {seq}");

    let (output, report) = verify(&store);

    assert!(!output.success(), "verify after a deletion:\n{output}");
    assert_eq!(report["ok"], false, "ok in the verify JSON");
    assert_eq!(report["breach"], "removed", "breach in the verify JSON");
    // The gap shows at the entry after the removed one.
    assert_eq!(report["first_bad_seq"], seq + 1, "first_bad_seq in the verify JSON");
    let message = report["message"].as_str().expect("verify JSON has a message");
    let named = format!("entry {seq} was removed");
    assert!(message.contains(&named), "message does not name entry {seq}: {message}");
}

#[test]
fn audit_verify_detects_swap() {
    let store = store_with_activity();
    let conn = store.db();
    let first: i64 = conn
        .query_row("SELECT seq FROM audit_log WHERE action = 'import'", [], |row| row.get(0))
        .expect("reading the import entry");
    let read = |seq: i64| -> [String; 4] {
        conn.query_row(
            "SELECT action, body, prev_hash, hash FROM audit_log WHERE seq = ?1",
            [seq],
            |row| Ok([row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?]),
        )
        .unwrap_or_else(|err| panic!("reading audit entry {seq}: {err}"))
    };
    let (a, b) = (read(first), read(first + 1));
    let write = |seq: i64, [action, body, prev_hash, hash]: &[String; 4]| {
        conn.execute(
            "UPDATE audit_log SET action = ?1, body = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?5",
            (action, body, prev_hash, hash, seq),
        )
        .unwrap_or_else(|err| panic!("rewriting audit entry {seq}: {err}"));
    };
    // Rows keep their seq, but their contents trade places.
    write(first, &b);
    write(first + 1, &a);
    drop(conn);

    let (output, report) = verify(&store);

    assert!(!output.success(), "verify after a swap:\n{output}");
    assert_eq!(report["ok"], false, "ok in the verify JSON");
    let breach = report["breach"].as_str().unwrap_or_default();
    assert!(["reordered", "altered"].contains(&breach), "breach in the verify JSON: {breach:?}");
    assert_eq!(report["first_bad_seq"], first, "first_bad_seq in the verify JSON");
}

#[test]
fn audit_verify_detects_truncation() {
    let store = store_with_activity();
    let last = store.count("audit_log");
    store
        .db()
        .execute("DELETE FROM audit_log WHERE seq = ?1", [last])
        .expect("deleting the last audit entry");

    let (output, report) = verify(&store);

    assert!(!output.success(), "verify after truncation:\n{output}");
    assert_eq!(report["ok"], false, "ok in the verify JSON");
    assert_eq!(report["breach"], "truncated", "breach in the verify JSON");
    assert_eq!(report["first_bad_seq"], last, "first_bad_seq in the verify JSON");
}

#[test]
fn policy_show_prints_defaults() {
    let store = TestStore::init(false);
    let policy = store.run_json(&["policy", "show", "--json"]);

    let file = fs::read_to_string(store.data_dir().join("policy.toml")).expect("reading policy");
    let label = file
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("policy.toml has a version line");
    let version = policy["version"].as_str().expect("policy JSON has a version");
    let digest = version.strip_prefix(&format!("{label}+")).unwrap_or_default();
    assert_eq!(digest.len(), 12, "version {version:?} is not {label}+<12 hex digits>");
    let hex = digest.chars().all(|c| c.is_ascii_hexdigit());
    assert!(hex, "version {version:?} is not {label}+<12 hex digits>");

    let defaults =
        [("phi_years", 7), ("audit_log_years", 6), ("id_photo_days", 90), ("session_days", 90)];
    for (field, expected) in defaults {
        let value = json_u64(&policy, &format!("/policy/defaults/{field}"));
        assert_eq!(value, expected, "policy.defaults.{field}");
    }
}

#[test]
fn lifecycle_plan_matches_actions() {
    let store = simulated_store_with_import();
    let last = last_encounters();
    let cases = [
        // (--as-of, cutoff): a last encounter at or before the cutoff is 7 years old by --as-of.
        (LATE_AS_OF, "2024-12-01T00:00:00Z"),
        // Keeps the patients seen after 2023-10-01.
        ("2030-10-01", "2023-10-01T00:00:00Z"),
    ];
    for (as_of, cutoff) in cases {
        let expired = last.values().filter(|end| end.as_str() <= cutoff).count() as u64;
        let before = store.row_counts();

        let plan = store.run_json(&["lifecycle", "plan", "--as-of", as_of, "--json"]);

        for key in ["purged", "skipped", "receipts", "actions"] {
            assert!(plan.get(key).is_some(), "as of {as_of}: plan JSON has no {key}");
        }
        let actions = plan["actions"].as_array().expect("actions is an array");
        for category in CATEGORIES {
            let listed = actions
                .iter()
                .filter(|a| a["decision"] == "purge" && a["category"] == category)
                .count() as u64;
            let tallied = json_u64(&plan, &format!("/purged/{category}"));
            assert_eq!(tallied, listed, "as of {as_of}: purged.{category} vs purge actions");
        }
        let records = json_u64(&plan, "/purged/patient_records");
        assert_eq!(records, expired, "as of {as_of}: purged.patient_records");
        let receipts = json_u64(&plan, "/receipts");
        assert_eq!(receipts, purged_total(&plan), "as of {as_of}: receipts vs purged");
        let after = store.row_counts();
        assert_eq!(after, before, "as of {as_of}: plan changed row counts");
    }
}

#[test]
fn lifecycle_run_writes_receipts() {
    let store = simulated_store_with_import();
    let run = ["lifecycle", "run", "--json", "--as-of", LATE_AS_OF];

    let first = store.run_json(&run);

    for key in ["purged", "skipped", "receipts"] {
        assert!(first.get(key).is_some(), "run JSON has no {key}");
    }
    let receipts = json_u64(&first, "/receipts");
    assert_eq!(receipts, purged_total(&first), "receipts vs sum of purged");
    let records = json_u64(&first, "/purged/patient_records");
    assert_eq!(records, SYNTHEA_PATIENTS, "purged.patient_records");
    let disposals = store.audit_count("lifecycle.dispose");
    assert_eq!(disposals, receipts as i64, "lifecycle.dispose audit entries");
    for table in
        ["patient_links", "patient_profiles", "consultations", "prescriptions", "medical_history"]
    {
        let rows = store.count(table);
        assert_eq!(rows, 0, "rows left in {table} after the run");
    }

    let second = store.run_json(&run);

    let purged = purged_total(&second);
    assert_eq!(purged, 0, "records purged by the second run");
    let receipts = json_u64(&second, "/receipts");
    assert_eq!(receipts, 0, "receipts of the second run");
    let after = store.audit_count("lifecycle.dispose");
    assert_eq!(after, disposals, "lifecycle.dispose audit entries after the second run");
}

/// A platform operator's session has no tenant, and a simulated-clock run purges it once the
/// default session period since its expiry has passed.
#[test]
fn lifecycle_purges_platform_sessions() {
    use medconnect_crypto::SecretToken;
    use medconnect_domain::time::parse_instant;
    use medconnect_store::{NewUser, Role, SqliteStore, Store, UserRef};

    let store = TestStore::init(true);
    let mut opened = SqliteStore::open(store.data_dir()).expect("opening the test store");
    let operator = NewUser {
        tenant: None,
        username: "ops@example.test",
        role: Role::PlatformOperator,
        // Of the right form, for an account that never logs in by password.
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
        patient: None,
    };
    let id = opened.create_user(&operator, "test").expect("platform operator");
    let started = parse_instant("2020-01-01T00:00:00Z").expect("instant");
    // Neither session is logged out, so each is due 90 days after its expiry. The first is
    // due long before LATE_AS_OF, and the second only on 30 January 2032.
    for expires in ["2020-01-02T00:00:00Z", "2031-11-01T00:00:00Z"] {
        let token = SecretToken::generate().expect("token");
        let expires = parse_instant(expires).expect("instant");
        let user = UserRef { id, tenant_id: None };
        opened.create_session(user, &token.hash(), started, expires).expect("session");
    }
    drop(opened);

    let plan = store.run_json(&["lifecycle", "plan", "--as-of", LATE_AS_OF, "--json"]);
    assert_eq!(json_u64(&plan, "/platform_sessions_due"), 1);
    assert_eq!(json_u64(&plan, "/purged/session"), 0, "no tenant session");
    let text = store.run_ok(&["lifecycle", "plan", "--as-of", LATE_AS_OF]).stdout;
    let line = "platform operator sessions past session_days that a run would purge: 1";
    assert!(text.contains(line), "{text}");

    let run = store.run_json(&["lifecycle", "run", "--as-of", LATE_AS_OF, "--json"]);
    assert_eq!(json_u64(&run, "/platform_sessions_purged"), 1);
    assert_eq!(json_u64(&run, "/receipts"), 0, "no receipt for a platform session");
    assert_eq!(store.count("sessions"), 1, "the later session is kept");
    assert_eq!(store.audit_count("session.purge"), 1);

    let again = store.run_ok(&["lifecycle", "run", "--as-of", LATE_AS_OF]).stdout;
    assert!(again.contains("platform operator sessions past session_days purged: 0"), "{again}");
    assert_eq!(store.audit_count("session.purge"), 1, "an empty purge writes no entry");
}

#[test]
fn output_contains_no_phi() {
    let store = TestStore::init(true);
    create_tenant(&store, "northwind");
    create_tenant(&store, "prairie");
    let synthea = synthea_dir();
    let synthea = path_arg(&synthea);
    let mut outputs: Vec<CliOutput> = Vec::new();

    outputs.push(store.run_ok(&["import", "synthea", synthea, "--tenant", "northwind"]));
    outputs.push(store.run_ok(&["import", "synthea", synthea, "--tenant", "prairie", "--json"]));
    let patients = store.run_ok(&["patient", "list", "--tenant", "northwind", "--json"]);
    let ids: Vec<String> = patients
        .json()
        .as_array()
        .expect("patient list is an array")
        .iter()
        .map(|link| link["patient_id"].as_str().expect("patient_id").to_owned())
        .collect();
    assert_eq!(ids.len() as u64, SYNTHEA_PATIENTS, "patients listed for northwind");
    outputs.push(patients);
    outputs.push(store.run_ok(&[
        "hold",
        "place",
        "--tenant",
        "northwind",
        "--patient",
        &ids[0],
        "--matter",
        "CASE-17",
        "--reason",
        "litigation",
    ]));
    outputs.push(store.run_ok(&["lifecycle", "plan", "--as-of", LATE_AS_OF, "--json"]));
    outputs.push(store.run_ok(&["lifecycle", "plan", "--as-of", LATE_AS_OF]));
    for id in &ids {
        let explain = ["lifecycle", "explain", "--tenant", "northwind", "--patient", id];
        let explain_at = [&explain[..], &["--as-of", LATE_AS_OF]].concat();
        outputs.push(store.run_ok(&explain_at));
        outputs.push(store.run_ok(&[&explain_at[..], &["--json"]].concat()));
    }
    outputs.push(store.run_ok(&["lifecycle", "run", "--as-of", LATE_AS_OF, "--json"]));
    outputs.push(store.run_ok(&["audit", "log", "--limit", "100000"]));
    outputs.push(store.run_ok(&["hold", "list", "--all"]));
    outputs.push(store.run_ok(&["hold", "list", "--json"]));

    let mut texts: Vec<(String, String)> = outputs
        .iter()
        .map(|output| (format!("`medconnect {}`", output.args.join(" ")), output.all_text()))
        .collect();
    let conn = store.db();
    let mut statement = conn.prepare("SELECT seq, body FROM audit_log").expect("querying bodies");
    let bodies = statement
        .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))
        .expect("querying bodies");
    for body in bodies {
        let (seq, body) = body.expect("reading an audit body");
        texts.push((format!("audit_log entry {seq}"), body));
    }

    let records = csv_records(&synthea_dir().join("patients.csv"));
    assert_eq!(records.len() as u64, SYNTHEA_PATIENTS, "patients read from patients.csv");
    for patient in &records {
        let name = format!("{} {}", patient["FIRST"], patient["LAST"]);
        let values =
            [&name, &patient["FIRST"], &patient["LAST"], &patient["SSN"], &patient["ADDRESS"]];
        for value in values {
            for (source, text) in &texts {
                assert!(!text.contains(value.as_str()), "{source} shows PHI {value:?}");
            }
        }
    }
}
