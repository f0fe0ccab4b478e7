//! End-to-end tests of signed audit checkpoints, offline verification of an exported log and
//! audit-log retention, on real stores in temporary directories.

#[allow(dead_code, reason = "the shared helpers serve several test files; this one uses some")]
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Months, Utc};
use common::{synthea_dir, CliOutput, TestStore};
use serde_json::Value;

/// The instant of the first run. Every sample patient's last encounter is more than 7 years
/// before it, so the run writes disposal entries dated then.
const LATE_AS_OF: &str = "2031-12-01";

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Returns a simulated-clock store with the Synthea export imported into `northwind` and one
/// lifecycle run, which signs a checkpoint at its end.
fn store_with_run() -> TestStore {
    let store = TestStore::init(true);
    store.run_ok(&["tenant", "create", "northwind"]);
    let dir = synthea_dir();
    store.run_ok(&["import", "synthea", path_arg(&dir), "--tenant", "northwind", "--json"]);
    let report = store.run_json(&["lifecycle", "run", "--as-of", LATE_AS_OF, "--json"]);
    let head = store.count("audit_log");
    assert_eq!(report["audit_checkpoint_seq"], head, "the run signs the head");
    store
}

fn public_key_path(store: &TestStore) -> PathBuf {
    store.data_dir().join("audit-public.key")
}

fn signing_key_path(store: &TestStore) -> PathBuf {
    store.data_dir().join("keys").join("audit-signing.key")
}

/// Runs `audit export` into a file beside the data directory and returns its path.
fn export(store: &TestStore, name: &str) -> PathBuf {
    let out = store.scratch_path(name);
    store.run_ok(&["audit", "export", "--out", path_arg(&out)]);
    out
}

/// Runs offline verification of an export. `--data-dir` points at a folder that does not
/// exist, so the result cannot depend on any store.
fn verify_offline(export: &Path, public_key: &Path) -> (CliOutput, Value) {
    let nowhere = TestStore::empty();
    let output = nowhere.run(&[
        "audit",
        "verify",
        "--export",
        path_arg(export),
        "--public-key",
        path_arg(public_key),
        "--json",
    ]);
    let report = output.json();
    (output, report)
}

fn verify_in_store(store: &TestStore, extra: &[&str]) -> (CliOutput, Value) {
    let mut args = vec!["audit", "verify", "--json"];
    args.extend_from_slice(extra);
    let output = store.run(&args);
    let report = output.json();
    (output, report)
}

/// Returns the lines of an export file.
fn export_lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).expect("reading the export");
    text.lines().map(str::to_owned).collect()
}

fn line_json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|err| panic!("export line is not JSON ({err})"))
}

/// One edit of an export file and the failure that verification must report.
struct Mutation {
    name: &'static str,
    line: usize,
    field: &'static str,
    edit: fn(&str) -> String,
    breach: &'static str,
    first_bad_seq: Option<i64>,
    bad_checkpoint: Option<i64>,
    message: String,
}

/// Replaces the hex digit at `index` of a string with another hex digit.
fn flip_hex(value: &str, index: usize) -> String {
    let mut chars: Vec<char> = value.chars().collect();
    chars[index] = if chars[index] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[test]
fn export_verifies_offline_with_public_key_alone() {
    let store = store_with_run();
    let entries = store.count("audit_log");
    let out = export(&store, "audit.jsonl");

    // The auditor holds only the export and the public key: copy both and drop the store.
    let auditor = tempfile::tempdir().expect("temp dir");
    let copy = auditor.path().join("audit.jsonl");
    let key = auditor.path().join("audit-public.key");
    fs::copy(&out, &copy).expect("copying the export");
    fs::copy(public_key_path(&store), &key).expect("copying the public key");
    let key_text = fs::read_to_string(&key).expect("reading the public key");
    assert_eq!(key_text.trim().len(), 64, "public key file: {key_text:?}");
    drop(store);

    let (output, report) = verify_offline(&copy, &key);

    assert!(output.success(), "offline verify:\n{output}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["entries"], entries);
    assert_eq!(report["first_seq"], 1);
    assert_eq!(report["head_seq"], entries);
    assert_eq!(report["signed_seq"], entries, "the head is signed");
    assert_eq!(report["signatures_checked"], true);
    let lines = export_lines(&copy);
    let header = line_json(&lines[0]);
    assert_eq!(header["type"], "header");
    assert_eq!(header["format"], "medconnect-audit-export");
    assert_eq!(header["version"], 1);
    assert_eq!(header["public_key"], key_text.trim());
    assert_eq!(header["entries"], entries);
    let checkpoints = lines.iter().filter(|l| line_json(l)["type"] == "checkpoint").count();
    assert_eq!(header["checkpoints"], checkpoints);
    assert_eq!(lines.len() as i64, 1 + entries + checkpoints as i64, "one line per item");
}

#[test]
fn one_changed_byte_fails_naming_entry_or_checkpoint() {
    let store = store_with_run();
    let out = export(&store, "audit.jsonl");
    let lines = export_lines(&out);
    let import_line = lines
        .iter()
        .position(|l| line_json(l)["action"] == "import")
        .expect("the export has the import entry");
    let import_seq = line_json(&lines[import_line])["seq"].as_i64().expect("seq");
    let checkpoint_line = lines.len() - 1;
    let checkpoint = line_json(&lines[checkpoint_line]);
    assert_eq!(checkpoint["type"], "checkpoint");
    let checkpoint_seq = checkpoint["seq"].as_i64().expect("checkpoint seq");
    let middle_line = lines.len() / 2;
    let middle_seq = line_json(&lines[middle_line])["seq"].as_i64().expect("seq");

    let cases = [
        Mutation {
            name: "body byte",
            line: import_line,
            field: "body",
            edit: |body| body.replacen("111 profiles", "112 profiles", 1),
            breach: "altered",
            first_bad_seq: Some(import_seq),
            bad_checkpoint: None,
            message: format!("entry {import_seq} was altered"),
        },
        Mutation {
            name: "entry hash",
            line: middle_line,
            field: "hash",
            edit: |hash| flip_hex(hash, 10),
            breach: "altered",
            first_bad_seq: Some(middle_seq),
            bad_checkpoint: None,
            message: format!("entry {middle_seq} was altered"),
        },
        Mutation {
            name: "entry prev_hash",
            line: middle_line,
            field: "prev_hash",
            edit: |hash| flip_hex(hash, 0),
            breach: "altered",
            first_bad_seq: Some(middle_seq),
            bad_checkpoint: None,
            message: format!("entry {middle_seq} was altered"),
        },
        Mutation {
            name: "checkpoint signature",
            line: checkpoint_line,
            field: "signature",
            edit: |signature| flip_hex(signature, 40),
            breach: "signature",
            first_bad_seq: None,
            bad_checkpoint: Some(checkpoint_seq),
            message: format!("checkpoint {checkpoint_seq} has an invalid signature"),
        },
        Mutation {
            name: "checkpoint head hash",
            line: checkpoint_line,
            field: "head_hash",
            edit: |hash| flip_hex(hash, 63),
            breach: "signature",
            first_bad_seq: None,
            bad_checkpoint: Some(checkpoint_seq),
            message: format!("checkpoint {checkpoint_seq} has an invalid signature"),
        },
    ];

    for case in cases {
        let Mutation { name, line, field, edit, breach, first_bad_seq, bad_checkpoint, message } =
            case;
        let mut item = line_json(&lines[line]);
        let before = item[field].as_str().expect("a string field").to_owned();
        let after = edit(&before);
        let changed = before.bytes().zip(after.bytes()).filter(|(a, b)| a != b).count();
        assert_eq!((changed, before.len()), (1, after.len()), "{name}: not one byte changed");
        item[field] = Value::String(after);
        let mut edited = lines.clone();
        edited[line] = serde_json::to_string(&item).expect("serializing the edited line");
        let path = store.scratch_path(&format!("edited-{}.jsonl", name.replace(' ', "-")));
        fs::write(&path, edited.join("\n") + "\n").expect("writing the edited export");

        let (output, report) = verify_offline(&path, &public_key_path(&store));

        assert!(!output.success(), "{name}: edited export verified:\n{output}");
        assert_eq!(report["ok"], false, "{name}");
        assert_eq!(report["breach"], breach, "{name}: {}", report["message"]);
        assert_eq!(report["first_bad_seq"].as_i64(), first_bad_seq, "{name}");
        assert_eq!(report["bad_checkpoint"].as_i64(), bad_checkpoint, "{name}");
        let text = report["message"].as_str().unwrap_or_default();
        assert!(text.contains(&message), "{name}: message {text:?} lacks {message:?}");
    }
}

#[test]
fn checkpoint_verified_with_other_public_key_fails() {
    let store = store_with_run();
    let other = TestStore::init(true);
    let other_key = public_key_path(&other);
    assert_ne!(
        fs::read_to_string(&other_key).expect("other key"),
        fs::read_to_string(public_key_path(&store)).expect("own key"),
        "two stores got the same key"
    );
    let out = export(&store, "audit.jsonl");

    let (offline, offline_report) = verify_offline(&out, &other_key);
    let (in_store, store_report) = verify_in_store(&store, &["--public-key", path_arg(&other_key)]);

    assert!(!offline.success(), "offline verify with another key:\n{offline}");
    assert_eq!(offline_report["breach"], "signature");
    let message = offline_report["message"].as_str().unwrap_or_default();
    assert!(message.contains("another key"), "{message}");
    assert!(!in_store.success(), "in-store verify with another key:\n{in_store}");
    assert_eq!(store_report["breach"], "signature");
    let head = store.count("audit_log");
    assert_eq!(store_report["bad_checkpoint"], head, "the run's checkpoint is named");
    let message = store_report["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("checkpoint {head} was signed by another key")), "{message}");
}

#[test]
fn in_store_verify_checks_stored_signatures() {
    let store = store_with_run();
    let (output, report) = verify_in_store(&store, &[]);
    assert!(output.success(), "verify of an untouched store:\n{output}");
    assert_eq!(report["signatures_checked"], true, "audit-public.key is used by default");

    let head = store.count("audit_log");
    let conn = store.db();
    let signature: String = conn
        .query_row("SELECT signature FROM audit_checkpoints WHERE seq = ?1", [head], |row| {
            row.get(0)
        })
        .expect("reading the run's checkpoint");
    conn.execute(
        "UPDATE audit_checkpoints SET signature = ?1 WHERE seq = ?2",
        (flip_hex(&signature, 0), head),
    )
    .expect("editing the signature");
    drop(conn);

    let (output, report) = verify_in_store(&store, &[]);

    assert!(!output.success(), "verify after a signature edit:\n{output}");
    assert_eq!(report["breach"], "signature");
    assert_eq!(report["bad_checkpoint"], head);
}

#[test]
fn retention_cut_verifies_in_store_and_offline() {
    let store = store_with_run();
    let entries_before = store.audit_entries();
    let first_at: DateTime<Utc> = entries_before[0].2["at"]
        .as_str()
        .and_then(|at| at.parse().ok())
        .expect("entry 1 has a time");
    // Six years and one day after the store was created: the entries written then (store,
    // tenant and import) are past retention, the run's entries of 2031 are not.
    let as_of = first_at
        .checked_add_months(Months::new(72))
        .and_then(|at| at.checked_add_signed(chrono::Duration::days(1)))
        .expect("instant in range");
    let threshold = as_of.checked_sub_months(Months::new(72)).expect("instant in range");
    let due = entries_before
        .iter()
        .take_while(|(_, _, body)| {
            body["at"].as_str().and_then(|at| at.parse::<DateTime<Utc>>().ok()).expect("at")
                <= threshold
        })
        .count() as i64;
    assert!(due >= 3, "expected the store, tenant and import entries to be due, got {due}");
    let as_of = as_of.format("%Y-%m-%dT%H:%M:%SZ").to_string();

    let plan = store.run_json(&["lifecycle", "plan", "--as-of", &as_of, "--json"]);
    assert_eq!(plan["audit_entries_disposed"], due, "plan counts the due entries");
    let report = store.run_json(&["lifecycle", "run", "--as-of", &as_of, "--json"]);

    assert_eq!(report["audit_entries_disposed"], due, "run JSON");
    let entries_after = store.audit_entries();
    assert_eq!(entries_after[0].0, due + 1, "the log starts after the cut");
    let removed = entries_before.len() as i64 - (entries_after.len() as i64 - 2);
    assert_eq!(removed, due, "entries removed (the run appends audit.dispose and lifecycle.run)");
    let dispose = entries_after
        .iter()
        .find(|(_, action, _)| action == "audit.dispose")
        .expect("an audit.dispose entry");
    let detail = dispose.2["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&format!("{due} audit entries up to seq {due}")), "{detail}");
    let kept: i64 = store
        .db()
        .query_row("SELECT count(*) FROM audit_checkpoints WHERE seq = ?1", [due], |row| row.get(0))
        .expect("counting checkpoints");
    assert_eq!(kept, 1, "the checkpoint at the cut is kept");

    let (output, in_store) = verify_in_store(&store, &[]);
    assert!(output.success(), "in-store verify after the cut:\n{output}");
    assert_eq!(in_store["first_seq"], due + 1);
    assert_eq!(in_store["signatures_checked"], true);

    let out = export(&store, "after-cut.jsonl");
    let (output, offline) = verify_offline(&out, &public_key_path(&store));
    assert!(output.success(), "offline verify after the cut:\n{output}");
    assert_eq!(offline["first_seq"], due + 1);
    assert_eq!(offline["entries"], entries_after.len());
    let message = offline["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("checkpoint at entry {due}")), "{message}");

    // Without the kept checkpoint, the start of the log vouches for nothing.
    let lines = export_lines(&out);
    let without: Vec<&String> = lines
        .iter()
        .filter(|l| !(line_json(l)["type"] == "checkpoint" && line_json(l)["seq"] == due))
        .collect();
    let mut header = line_json(without[0]);
    header["checkpoints"] = Value::from(header["checkpoints"].as_u64().unwrap_or(1) - 1);
    let mut edited = vec![serde_json::to_string(&header).expect("header")];
    edited.extend(without[1..].iter().map(|l| (*l).clone()));
    let path = store.scratch_path("no-anchor.jsonl");
    fs::write(&path, edited.join("\n") + "\n").expect("writing the edited export");
    let (output, report) = verify_offline(&path, &public_key_path(&store));
    assert!(!output.success(), "export without its anchor verified:\n{output}");
    assert_eq!(report["breach"], "removed");
    assert_eq!(report["first_bad_seq"], due + 1);
}

#[test]
fn loose_signing_key_is_rejected() {
    let store = store_with_run();
    let path = signing_key_path(&store);
    let key_bytes = fs::read(&path).expect("reading the signing key");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod 644");

    let output = store.run(&["audit", "checkpoint"]);

    assert!(!output.success(), "checkpoint with a loose key:\n{output}");
    assert!(output.stderr.contains("chmod 600"), "{output}");
    assert!(output.stderr.contains(path_arg(&path)), "the key file is named:\n{output}");
    let key_hex: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!output.all_text().contains(&key_hex[key_hex.len() - 32..]), "key bytes printed");

    // A run is not blocked: it warns, disposes as usual and signs nothing.
    let report = store.run_ok(&["lifecycle", "run", "--as-of", "2032-01-01", "--json"]);
    assert!(report.stderr.contains("chmod 600"), "run warning:\n{report}");
    assert_eq!(report.json()["audit_checkpoint_seq"], Value::Null);
}

#[test]
fn missing_signing_key_fails_checkpoint_but_not_run() {
    let store = store_with_run();
    fs::remove_file(signing_key_path(&store)).expect("removing the signing key");

    let output = store.run(&["audit", "checkpoint"]);
    assert!(!output.success(), "checkpoint without a key:\n{output}");
    assert!(output.stderr.contains("not found"), "{output}");
    assert!(output.stderr.contains("medconnect audit keygen"), "{output}");

    let head = store.count("audit_log");
    let run = store.run_ok(&["lifecycle", "run", "--as-of", "2032-01-01", "--json"]);
    assert!(run.stderr.contains("warning:"), "run warning:\n{run}");
    let report = run.json();
    assert_eq!(report["audit_checkpoint_seq"], Value::Null);
    assert_eq!(report["audit_entries_disposed"], 0);
    let checkpoints: i64 = store
        .db()
        .query_row("SELECT max(seq) FROM audit_checkpoints", [], |row| row.get(0))
        .expect("reading checkpoints");
    assert_eq!(checkpoints, head, "no checkpoint after the run without a key");

    // A new key signs again. Until key rotation exists, the old checkpoint fails against the
    // new public key, so this checks only the new checkpoint.
    store.run_ok(&["audit", "keygen"]);
    let signed = store.run_json(&["audit", "checkpoint", "--json"]);
    assert_eq!(signed["seq"], store.count("audit_log"));
    assert_eq!(signed["created"], true);
}
