//! The disposal ledger and `Store::reapply_disposal` on real SQLite stores: a copy taken with
//! `SqliteStore::snapshot` stands for a backup, and disposals made after it are re-applied.

use std::fs;
use std::io::Read;
use std::path::Path;

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{Category, ImportBatch, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::PatientId;
use medconnect_store::ledger::{self, LedgerEntry};
use medconnect_store::{
    ClockMode, Disposal, DisposalContext, ReapplyOutcome, SqliteStore, Store, StoreError,
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

/// Imports one patient without encounters, so the link is due 7 years after its creation.
fn import(store: &mut SqliteStore, tenant: &Tenant, source_id: &str) -> PatientId {
    let batch = ImportBatch {
        source_system: "test".into(),
        patients: vec![NewPatientProfile {
            source_system: "test".into(),
            source_id: source_id.into(),
            given_name: "Given1".into(),
            family_name: "Family1".into(),
            birth_date: "1970-01-01".into(),
            sex: "F".into(),
            address_line: "1 Main Street".into(),
            ..NewPatientProfile::default()
        }],
        ..ImportBatch::default()
    };
    store.import(tenant, &batch, &Policy::builtin(), ACTOR).expect("import");
    let links = store.patient_links(tenant).expect("links");
    let found = store.find_patient(tenant, "test", source_id).expect("find");
    found.unwrap_or_else(|| panic!("patient {source_id} not among {} links", links.len()))
}

fn dispose(store: &mut SqliteStore, tenant: &Tenant, patient: PatientId) {
    let policy = Policy::builtin();
    let context = DisposalContext {
        policy: &policy,
        as_of: at("2040-01-01T00:00:00Z"),
        actor: ACTOR,
        run_id: "t",
    };
    let disposal = Disposal {
        category: Category::PatientRecords,
        tenant_id: tenant.id,
        patient_id: Some(patient),
        record_id: patient.to_string(),
    };
    store.dispose(&[disposal], &context).expect("dispose");
}

/// Writes a snapshot of `store` into a new data directory `target` and opens it there.
fn copy_of(store: &mut SqliteStore, target: &Path) -> SqliteStore {
    let mut snapshot = store.snapshot("test-copy").expect("snapshot");
    let mut bytes = Vec::new();
    snapshot.database.read_to_end(&mut bytes).expect("reading the snapshot");
    fs::create_dir_all(target.join("blobs")).expect("mkdir");
    fs::write(target.join("medconnect.db"), bytes).expect("write");
    let mut copy = SqliteStore::open(target).expect("opening the copy");
    copy.set_clock(Box::new(FixedClock(at("2024-06-01T00:00:00Z"))));
    copy
}

fn count(dir: &Path, sql: &str, param: &str) -> i64 {
    let conn = Connection::open(dir.join("medconnect.db")).expect("db");
    conn.query_row(sql, [param], |row| row.get(0)).expect("count")
}

#[test]
fn reapply_repeats_later_disposals() {
    let root = TempDir::new().expect("dir");
    let (live_dir, backup_dir) = (root.path().join("live"), root.path().join("backup"));
    let mut live = store(&live_dir);
    let clinic = live.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let other = live.create_tenant("other", "Other", ACTOR).expect("tenant");
    let alone = import(&mut live, &clinic, "s-1");
    let shared = import(&mut live, &clinic, "s-2");
    assert_eq!(import(&mut live, &other, "s-2"), shared, "one core profile, two links");

    let mut backup = copy_of(&mut live, &backup_dir);
    assert_eq!(backup.snapshot_facts().expect("facts").disposal_receipt_seq, 0);
    dispose(&mut live, &clinic, alone);
    dispose(&mut live, &clinic, shared);
    let ledger_path = root.path().join("ledger/disposals.jsonl");
    let synced = ledger::sync(&live, &ledger_path).expect("sync");
    // Records and profile of `alone`, records of `shared`, whose profile `other` keeps.
    assert_eq!(synced.appended, 3);
    let entries = ledger::read(&ledger_path).expect("read").expect("ledger exists");
    let categories: Vec<Category> = entries.iter().map(|e| e.category).collect();
    assert_eq!(
        categories,
        [Category::PatientRecords, Category::PatientProfile, Category::PatientRecords]
    );
    let alone_keys: Vec<String> =
        entries[..2].iter().flat_map(|e| e.keys_destroyed.clone()).collect();
    assert_eq!(alone_keys.len(), 2, "link and profile key of the purged patient");

    let outcomes: Vec<ReapplyOutcome> =
        entries.iter().map(|e| backup.reapply_disposal(e).expect("reapply")).collect();
    assert!(matches!(&outcomes[0], ReapplyOutcome::Applied { keys_destroyed, .. }
        if keys_destroyed.len() == 2));
    // The profile went with its last link in the first entry.
    assert_eq!(outcomes[1], ReapplyOutcome::Absent);
    assert!(matches!(&outcomes[2], ReapplyOutcome::Applied { keys_destroyed, .. }
        if keys_destroyed.len() == 1));

    let alone_id = alone.to_string();
    let shared_id = shared.to_string();
    let links = "SELECT count(*) FROM patient_links WHERE patient_id = ?1";
    assert_eq!(count(&backup_dir, links, &alone_id), 0);
    assert_eq!(count(&backup_dir, links, &shared_id), 1, "the other tenant's link stays");
    let profiles = "SELECT count(*) FROM patient_profiles WHERE id = ?1";
    assert_eq!(count(&backup_dir, profiles, &alone_id), 0);
    assert_eq!(count(&backup_dir, profiles, &shared_id), 1);
    for key in &alone_keys {
        assert_eq!(count(&backup_dir, "SELECT count(*) FROM data_keys WHERE id = ?1", key), 0);
    }
    let profile_key = "SELECT count(*) FROM data_keys WHERE scope = 'profile' AND owner = ?1";
    assert_eq!(count(&backup_dir, profile_key, &shared_id), 1, "shared profile stays readable");

    // Re-applying again changes nothing.
    for entry in &entries {
        assert_eq!(backup.reapply_disposal(entry).expect("reapply"), ReapplyOutcome::Absent);
    }
}

#[test]
fn reapply_rejects_entry_without_tenant() {
    let root = TempDir::new().expect("dir");
    let mut store = store(root.path());
    let entry = LedgerEntry {
        seq: 9,
        hash: "00".into(),
        category: Category::Session,
        tenant_id: None,
        record_id: "session-1".into(),
        keys_destroyed: Vec::new(),
        disposed_at: at("2024-01-01T00:00:00Z"),
    };

    let error = store.reapply_disposal(&entry).expect_err("no tenant");

    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    assert!(error.to_string().contains("entry 9 (session) has no tenant id"), "{error}");
}

#[test]
fn sync_keeps_both_lineages() {
    let root = TempDir::new().expect("dir");
    let (live_dir, restored_dir) = (root.path().join("live"), root.path().join("restored"));
    let mut live = store(&live_dir);
    let clinic = live.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let first = import(&mut live, &clinic, "s-1");
    let second = import(&mut live, &clinic, "s-2");
    let mut restored = copy_of(&mut live, &restored_dir);

    // Both stores continue the same chain, so their receipts get the same sequence numbers.
    dispose(&mut live, &clinic, first);
    dispose(&mut restored, &clinic, second);
    let ledger_path = root.path().join("disposals.jsonl");
    assert_eq!(ledger::sync(&live, &ledger_path).expect("sync").appended, 2);
    assert_eq!(ledger::sync(&restored, &ledger_path).expect("sync").appended, 2);
    let entries = ledger::read(&ledger_path).expect("read").expect("ledger exists");
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs[..2], seqs[2..], "the lineages reuse sequence numbers");
    assert_ne!(entries[0].hash, entries[2].hash);
    assert_eq!(entries[0].record_id, first.to_string());
    assert_eq!(entries[2].record_id, second.to_string());

    // Each store finds its own last entry, so neither appends again.
    assert_eq!(ledger::sync(&live, &ledger_path).expect("sync").appended, 0);
    assert_eq!(ledger::sync(&restored, &ledger_path).expect("sync").appended, 0);

    // A restore of the live store's receipts re-applies the other lineage's entries too.
    let in_live = ledger::receipt_hashes(&live, i64::MAX).expect("hashes");
    let live_seq = *in_live.keys().max().expect("live has receipts");
    let selected = ledger::entries_to_reapply(&entries, live_seq, &in_live);
    let selected_ids: Vec<&str> = selected.iter().map(|e| e.record_id.as_str()).collect();
    let second_id = second.to_string();
    assert_eq!(selected_ids, [second_id.as_str(), second_id.as_str()]);
}

#[test]
fn sync_repairs_lines_lost_mid_file() {
    let dir = TempDir::new().expect("dir");
    let mut store = store(dir.path());
    let tenant = store.create_tenant("clinic", "Clinic", "test").expect("tenant");
    for index in 0..4 {
        let patient = import(&mut store, &tenant, &format!("s-{index}"));
        dispose(&mut store, &tenant, patient);
    }
    let path = dir.path().join("ledger/disposals.jsonl");
    let first = ledger::sync(&store, &path).expect("sync");
    let all = ledger::read(&path).expect("read").expect("ledger exists");
    assert_eq!(all.len() as u64, first.entries);
    assert!(all.len() >= 4, "one receipt per purged patient, at least");

    // Keep only the last line: every earlier receipt is missing from the middle of history.
    let text = fs::read_to_string(&path).expect("ledger text");
    let last = text.lines().last().expect("a line");
    fs::write(&path, format!("{last}\n")).expect("truncate ledger");
    let repaired = ledger::sync(&store, &path).expect("sync again");
    assert_eq!(repaired.appended as usize, all.len() - 1);
    let mut seqs: Vec<i64> =
        ledger::read(&path).expect("read").expect("ledger").iter().map(|e| e.seq).collect();
    seqs.sort();
    let mut expected: Vec<i64> = all.iter().map(|e| e.seq).collect();
    expected.sort();
    assert_eq!(seqs, expected);
}
