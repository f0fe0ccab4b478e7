//! The audit log on both backends: appending, verification, tampering, signed checkpoints,
//! export and retention cuts. On PostgreSQL, appends from several nodes form one chain.
//!
//! Tampering goes around the store: through rusqlite on the SQLite file, or through the admin
//! role (a superuser, which row-level security does not stop) on the PostgreSQL schema.

use std::sync::{Arc, Barrier};

use chrono::{DateTime, Utc};
use medconnect_crypto::{AuditSigner, AuditSigningKey};
use medconnect_domain::audit::{
    chain_hash, AuditEvent, Breach, Destroyed, DisposalReceipt, VerifyReport,
};
use medconnect_domain::checkpoint::{
    verify_export, AuditPublicKey, Checkpoint, ExportLine, LogVerifier, EXPORT_FORMAT,
};
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::Category;
use medconnect_domain::policy::{Policy, Rule, DEFAULT_POLICY_TOML};
use medconnect_domain::time::parse_instant;
use medconnect_domain::TenantId;
use medconnect_store::testing::{self, Backend, TestStore};
use medconnect_store::{backend_tests, PgStore, Store, StoreError};
use tempfile::TempDir;

backend_tests!(
    appends_verify,
    entries_and_tail_list,
    edited_body_detected,
    rewritten_head_detected,
    deleted_tail_detected,
    checkpoint_signed_once,
    signing_rejects_tampered_chain,
    export_lines_verify,
    dispose_cuts_due_prefix,
    dispose_keeps_cut_checkpoint,
    dispose_follows_tenant_period,
    receipts_found_by_record,
);

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

/// Creates a store whose clock is set to `now`.
fn store_at(backend: Backend, now: &str) -> TestStore {
    backend.create(Box::new(FixedClock(at(now))))
}

fn append(store: &mut TestStore, action: &str) -> i64 {
    store.append_audit(AuditEvent::new("test", action)).expect("event appended")
}

/// A new audit signing key in a folder of its own.
struct Signer {
    _dir: TempDir,
    key: AuditSigningKey,
}

impl Signer {
    fn new() -> Self {
        let dir = TempDir::new().expect("temporary directory for the key");
        let key = AuditSigningKey::create(dir.path().join("audit-signing.key")).expect("key");
        Signer { _dir: dir, key }
    }

    fn public_key(&self) -> AuditPublicKey {
        AuditPublicKey::from_bytes(self.key.public_key())
    }
}

/// Runs `sql` on the store's database behind its back: through rusqlite on a SQLite store,
/// and as the admin role with search_path set to the store's schema on PostgreSQL.
fn tamper(store: &TestStore, sql: &str) {
    match store.backend() {
        Backend::Sqlite => {
            let path = store.data_dir().expect("SQLite data dir").join("medconnect.db");
            let conn = rusqlite::Connection::open(path).expect("open the SQLite file");
            conn.execute_batch(sql).expect("tampering SQL runs");
        }
        Backend::Postgres => {
            let schema = &store.pg_config().expect("PostgreSQL config").schema;
            let mut admin = ::postgres::Client::connect(&testing::admin_url(), ::postgres::NoTls)
                .expect("admin");
            admin
                .batch_execute(&format!("SET search_path TO \"{schema}\"; {sql}"))
                .expect("tampering SQL runs");
        }
    }
}

fn assert_breach(report: &VerifyReport, breach: Breach, first_bad_seq: i64) {
    assert!(!report.ok, "verification passed: {}", report.message);
    assert_eq!(report.breach, Some(breach), "{}", report.message);
    assert_eq!(report.first_bad_seq, Some(first_bad_seq), "{}", report.message);
}

fn appends_verify(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");

    let seqs: Vec<i64> = ["test.one", "test.two", "test.three"]
        .into_iter()
        .map(|action| append(&mut store, action))
        .collect();

    assert_eq!(seqs, [2, 3, 4], "entry 1 is store.create");
    let report = store.verify_audit().expect("verify");
    assert!(report.ok, "{}", report.message);
    assert_eq!(report.entries, 4);
    assert_eq!(report.first_seq, Some(1));
    assert_eq!(report.head_seq, Some(4));
    assert_eq!(report.checkpoints, 0);
    assert!(!report.signatures_checked);
}

fn entries_and_tail_list(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");
    for action in ["test.one", "test.two", "test.three"] {
        append(&mut store, action);
    }

    let all = store.audit_entries(0, 100).expect("entries");
    let page = store.audit_entries(1, 2).expect("entries after 1");
    let tail = store.audit_tail_start(2).expect("tail start");
    let short = store.audit_tail_start(10).expect("tail start past the start");

    let actions: Vec<&str> = all.iter().filter_map(|e| e.body["action"].as_str()).collect();
    assert_eq!(actions, ["store.create", "test.one", "test.two", "test.three"]);
    assert_eq!(all[3].body["seq"], 4);
    assert_eq!(all[2].hash, all[3].body["prev_hash"], "each body names the hash before it");
    let page_seqs: Vec<i64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(page_seqs, [2, 3]);
    assert_eq!(tail, 2);
    assert_eq!(short, 0);
}

fn edited_body_detected(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");
    append(&mut store, "test.one");
    append(&mut store, "test.two");

    tamper(
        &store,
        "UPDATE audit_log SET body = replace(body, 'test.one', 'test.won') WHERE seq = 2",
    );

    let report = store.verify_audit().expect("verify");
    assert_breach(&report, Breach::Altered, 2);
}

/// Rewrites the last entry with a hash that matches its new body: only the recorded head
/// (store_meta on SQLite, audit_head on PostgreSQL) shows the change.
fn rewritten_head_detected(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");
    append(&mut store, "test.one");
    let head = store.audit_entries(1, 1).expect("head entry").remove(0);
    let body = serde_json::to_string(&head.body).expect("body").replace("test.one", "test.won");
    let prev_hash = head.body["prev_hash"].as_str().expect("prev_hash");

    tamper(
        &store,
        &format!(
            "UPDATE audit_log SET body = '{}', action = 'test.won', hash = '{}' WHERE seq = 2",
            body.replace('\'', "''"),
            chain_hash(prev_hash, &body)
        ),
    );

    let report = store.verify_audit().expect("verify");
    assert_breach(&report, Breach::Altered, 2);
    assert!(report.message.contains("recorded head"), "{}", report.message);
}

fn deleted_tail_detected(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");
    append(&mut store, "test.one");
    append(&mut store, "test.two");

    tamper(&store, "DELETE FROM audit_log WHERE seq = 3");

    let report = store.verify_audit().expect("verify");
    assert_breach(&report, Breach::Truncated, 3);
}

fn checkpoint_signed_once(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");
    append(&mut store, "test.one");
    let signer = Signer::new();
    let other = Signer::new();

    let first = store.sign_audit_checkpoint(&signer.key).expect("signed");
    let again = store.sign_audit_checkpoint(&signer.key).expect("signed again");

    assert!(first.created);
    assert_eq!(first.checkpoint.seq, 2);
    assert_eq!(first.checkpoint.entries, 2);
    assert_eq!(first.checkpoint.public_key, signer.key.public_key_hex());
    assert_eq!(first.checkpoint.check(&signer.public_key()), Ok(()));
    assert!(!again.created, "the same key reuses the checkpoint at the same head");
    assert_eq!(again.checkpoint, first.checkpoint);
    let stored = store.audit_checkpoints().expect("checkpoints");
    assert_eq!(stored, std::slice::from_ref(&first.checkpoint));
    let report = store.verify_audit_with_key(Some(&signer.public_key())).expect("verify");
    assert!(report.ok, "{}", report.message);
    assert!(report.signatures_checked);
    assert_eq!(report.signed_seq, Some(2));
    let wrong = store.verify_audit_with_key(Some(&other.public_key())).expect("verify");
    assert!(!wrong.ok, "a checkpoint by another key verifies: {}", wrong.message);
    assert_eq!(wrong.breach, Some(Breach::Signature));
    assert_eq!(wrong.bad_checkpoint, Some(2));

    // A later head gets a checkpoint of its own, chained on from the first.
    append(&mut store, "test.two");
    let second = store.sign_audit_checkpoint(&signer.key).expect("signed at the new head");
    assert!(second.created);
    assert_eq!(second.checkpoint.seq, 3);
    let seqs: Vec<i64> =
        store.audit_checkpoints().expect("checkpoints").iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [2, 3]);
}

fn signing_rejects_tampered_chain(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");
    let signer = Signer::new();
    store.sign_audit_checkpoint(&signer.key).expect("signed at entry 1");
    append(&mut store, "test.one");
    append(&mut store, "test.two");
    tamper(
        &store,
        "UPDATE audit_log SET body = replace(body, 'test.one', 'test.won') WHERE seq = 2",
    );

    let result = store.sign_audit_checkpoint(&signer.key);

    match result {
        Err(StoreError::AuditBroken { seq, reason }) => {
            assert_eq!(seq, 3, "the head that was to be signed");
            assert!(reason.contains("entry 2"), "{reason}");
        }
        other => panic!("expected AuditBroken, got {other:?}"),
    }
    let seqs: Vec<i64> =
        store.audit_checkpoints().expect("checkpoints").iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [1], "no checkpoint vouches for the tampered chain");
}

fn export_lines_verify(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");
    let signer = Signer::new();
    append(&mut store, "test.one");
    store.sign_audit_checkpoint(&signer.key).expect("signed at entry 2");
    append(&mut store, "test.two");
    store.sign_audit_checkpoint(&signer.key).expect("signed at entry 3");
    let key = signer.public_key();

    let mut lines = Vec::new();
    let exported = store
        .export_audit(Some(&key), &mut |line| {
            lines.push(line.clone());
            Ok(())
        })
        .expect("export");

    assert_eq!(exported.entries, 3);
    assert_eq!(exported.checkpoints, 2);
    assert_eq!(exported.first_seq, Some(1));
    assert_eq!(exported.head_seq, Some(3));
    assert_eq!(exported.signed_seq, Some(3));
    let ExportLine::Header(header) = &lines[0] else { panic!("line 1 is {:?}", lines[0]) };
    assert_eq!(header.format, EXPORT_FORMAT);
    assert_eq!(header.entries, 3);
    assert_eq!(header.checkpoints, 2);
    assert_eq!(header.public_key.as_deref(), Some(key.to_hex().as_str()));
    let checkpoints: Vec<Checkpoint> = lines
        .iter()
        .filter_map(|line| match line {
            ExportLine::Checkpoint(checkpoint) => Some(checkpoint.clone()),
            _ => None,
        })
        .collect();
    let mut verifier = LogVerifier::new(checkpoints, Some(key));
    let mut entry_seqs = Vec::new();
    for line in &lines[1..] {
        if let ExportLine::Entry(entry) = line {
            entry_seqs.push(entry.seq);
            verifier.push(entry);
        }
    }
    assert_eq!(entry_seqs, [1, 2, 3]);
    let report = verifier.finish(None, true);
    assert!(report.ok, "{}", report.message);
    assert_eq!(report.signed_seq, Some(3));
    let mut file = String::new();
    for line in &lines {
        file.push_str(&line.to_json());
        file.push('\n');
    }
    let offline = verify_export(file.as_bytes(), &key);
    assert!(offline.ok, "{}", offline.message);
    let forged = verify_export(file.replace("test.two", "test.too").as_bytes(), &key);
    assert!(!forged.ok, "an edited export verifies");
}

/// Entries 1 and 2 date from 2020, entry 3 from 2022. Under the built-in policy (6 years
/// for entries of no tenant) the first two are due in mid-2026.
fn dispose_cuts_due_prefix(backend: Backend) {
    let mut store = store_at(backend, "2020-01-01T00:00:00Z");
    append(&mut store, "test.early");
    store.set_clock(Box::new(FixedClock(at("2022-01-01T00:00:00Z"))));
    append(&mut store, "test.later");
    let signer = Signer::new();
    let policy = Policy::builtin();
    let as_of = at("2026-06-01T00:00:00Z");
    store.set_clock(Box::new(FixedClock(as_of)));

    let early = store.audit_disposal_due(&policy, at("2025-06-01T00:00:00Z")).expect("plan");
    let due = store.audit_disposal_due(&policy, as_of).expect("plan");
    let cut = store.dispose_audit(&policy, as_of, &signer.key, "test").expect("dispose");

    assert_eq!(early.entries, 0);
    assert_eq!(early.through_seq, None);
    assert_eq!(due.entries, 2);
    assert_eq!(due.through_seq, Some(2));
    assert_eq!(cut, due, "the cut removes what the plan counted");
    let entries = store.audit_entries(0, 100).expect("entries");
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3, 4]);
    assert_eq!(entries[1].body["action"], "audit.dispose");
    assert_eq!(entries[1].body["actor"], "test");
    let subjects = entries[1].body["subjects"].as_array().expect("subjects");
    assert!(subjects.iter().any(|s| s == "audit-cut:2"), "{subjects:?}");
    let checkpoints = store.audit_checkpoints().expect("checkpoints");
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].seq, 2, "the checkpoint at the last removed entry is kept");
    assert_eq!(checkpoints[0].entries, 2);
    let report = store.verify_audit_with_key(Some(&signer.public_key())).expect("verify");
    assert!(report.ok, "{}", report.message);
    assert_eq!(report.first_seq, Some(3));
    assert_eq!(report.head_seq, Some(4));

    let again = store.dispose_audit(&policy, as_of, &signer.key, "test").expect("dispose");
    assert_eq!(again.entries, 0, "entry 3 of 2022 is not due yet");
    assert_eq!(store.audit_entries(0, 100).expect("entries").len(), 2, "nothing appended");
}

/// Verification starts from the kept checkpoint, so removing it, or the entries after the
/// cut, is detected.
fn dispose_keeps_cut_checkpoint(backend: Backend) {
    let mut store = store_at(backend, "2020-01-01T00:00:00Z");
    append(&mut store, "test.early");
    let signer = Signer::new();
    store.sign_audit_checkpoint(&signer.key).expect("signed at entry 2");
    store.set_clock(Box::new(FixedClock(at("2022-01-01T00:00:00Z"))));
    append(&mut store, "test.later");
    let policy = Policy::builtin();
    let as_of = at("2026-06-01T00:00:00Z");
    store.dispose_audit(&policy, as_of, &signer.key, "test").expect("dispose");
    let after_cut = store.verify_audit_with_key(Some(&signer.public_key())).expect("verify");

    tamper(&store, "DELETE FROM audit_checkpoints WHERE seq = 2");
    let without_checkpoint = store.verify_audit().expect("verify");

    assert!(after_cut.ok, "{}", after_cut.message);
    assert_eq!(after_cut.first_seq, Some(3));
    assert_eq!(after_cut.signed_seq, None, "no checkpoint after the cut yet");
    assert_breach(&without_checkpoint, Breach::Removed, 3);
}

/// Entry 1 has no tenant, so it follows the longest period of 7 years. Entry 2 of tenant
/// `short` follows the default 6 years, and entry 3 of tenant `long` 7 years. In mid-2027 the
/// first two are due, but entry 2 only if its tenant id resolves to the slug `short`.
fn dispose_follows_tenant_period(backend: Backend) {
    let toml = format!("{DEFAULT_POLICY_TOML}\n[tenants.long]\naudit_log_years = 7\n");
    let policy = Policy::from_toml(&toml).expect("policy with a longer tenant period");
    let mut store = store_at(backend, "2020-01-01T00:00:00Z");
    let short = add_tenant(&store, "short");
    let long = add_tenant(&store, "long");
    store.set_clock(Box::new(FixedClock(at("2021-01-01T00:00:00Z"))));
    store.append_audit(AuditEvent::new("test", "test.short").tenant(short)).expect("appended");
    store.append_audit(AuditEvent::new("test", "test.long").tenant(long)).expect("appended");
    let signer = Signer::new();

    let before = store.audit_disposal_due(&policy, at("2026-06-01T00:00:00Z")).expect("plan");
    let due = store.audit_disposal_due(&policy, at("2027-06-01T00:00:00Z")).expect("plan");
    let all = store.audit_disposal_due(&policy, at("2028-06-01T00:00:00Z")).expect("plan");
    let cut = store
        .dispose_audit(&policy, at("2027-06-01T00:00:00Z"), &signer.key, "test")
        .expect("dispose");

    assert_eq!(before.entries, 0, "entry 1 follows the longest period");
    assert_eq!(due.through_seq, Some(2), "entry 2 follows the period of tenant short");
    assert_eq!(all.through_seq, Some(3));
    assert_eq!(cut, due);
    let report = store.verify_audit_with_key(Some(&signer.public_key())).expect("verify");
    assert!(report.ok, "{}", report.message);
    assert_eq!(report.first_seq, Some(3));
}

/// Adds a tenant row behind the store's back, so this test needs no tenant API.
fn add_tenant(store: &TestStore, slug: &str) -> TenantId {
    let id = TenantId::new();
    tamper(
        store,
        &format!(
            "INSERT INTO tenants (id, slug, name, created_at)
             VALUES ('{id}', '{slug}', '{slug}', '2020-01-01T00:00:00Z')"
        ),
    );
    id
}

fn receipts_found_by_record(backend: Backend) {
    let mut store = store_at(backend, "2024-01-01T00:00:00Z");
    let record = uuid::Uuid::new_v4().to_string();
    let other = uuid::Uuid::new_v4().to_string();
    for id in [&record, &other, &record] {
        let event = AuditEvent::new("test", "lifecycle.dispose").receipt(receipt(id));
        store.append_audit(event).expect("receipt appended");
    }
    let mention = AuditEvent::new("test", "test.note").subject(&record).detail(record.clone());
    store.append_audit(mention).expect("note appended");

    let found = store.receipts_for(&record).expect("receipts");
    let none = store.receipts_for(&uuid::Uuid::new_v4().to_string()).expect("receipts");

    let seqs: Vec<i64> = found.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [2, 4], "disposal entries only, oldest first");
    assert!(found.iter().all(|r| r.body["receipt"]["record_id"] == record.as_str()));
    assert!(none.is_empty());
}

fn receipt(record_id: &str) -> DisposalReceipt {
    DisposalReceipt {
        category: Category::Session,
        record_id: record_id.to_owned(),
        rule: Rule::SessionAfterEnd,
        retention_until: at("2024-01-01T00:00:00Z"),
        policy_version: "test".to_owned(),
        destroyed: Destroyed { rows: 1, files: 0, bytes: 0 },
        digest: "0".repeat(64),
        keys_destroyed: Vec::new(),
    }
}

/// Four nodes append 50 entries each at the same time. The lock on audit_head orders them
/// into one chain: 200 entries after store.create, numbered without gaps, that verifies.
#[test]
fn postgres_concurrent_appends_form_one_chain() {
    if !testing::postgres_available() {
        return;
    }
    const NODES: usize = 4;
    const PER_NODE: usize = 50;
    let store = Backend::Postgres.create(Box::new(FixedClock(at("2024-01-01T00:00:00Z"))));
    let config = store.pg_config().expect("PostgreSQL config").clone();
    let start = Arc::new(Barrier::new(NODES));

    let handles: Vec<_> = (0..NODES)
        .map(|node| {
            let config = config.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                // The same handle TestStore::open_again returns, opened on this thread because
                // a store handle cannot move between threads.
                let mut handle = PgStore::open(&config).expect("second node opens the store");
                start.wait();
                (0..PER_NODE)
                    .map(|i| {
                        let event = AuditEvent::new(format!("node-{node}"), "test.concurrent")
                            .detail(format!("entry {i}"));
                        handle.append_audit(event).expect("concurrent append")
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut seqs: Vec<i64> =
        handles.into_iter().flat_map(|h| h.join().expect("node thread")).collect();

    seqs.sort_unstable();
    let expected: Vec<i64> = (2..=(1 + NODES * PER_NODE) as i64).collect();
    assert_eq!(seqs, expected, "every append got its own seq, with no gap");
    let report = store.verify_audit().expect("verify");
    assert!(report.ok, "{}", report.message);
    assert_eq!(report.entries, 1 + (NODES * PER_NODE) as u64);
    assert_eq!(report.head_seq, Some(1 + (NODES * PER_NODE) as i64));
    let entries = store.audit_entries(0, 1000).expect("entries");
    for node in 0..NODES {
        let actor = format!("node-{node}");
        let count = entries.iter().filter(|e| e.body["actor"] == actor.as_str()).count();
        assert_eq!(count, PER_NODE, "entries of {actor}");
    }
}

/// Two nodes cut the log at the same time while a third appends. The cuts queue on the lock
/// of audit_checkpoints, so exactly one removes the due entries and records `audit.dispose`,
/// the other finds nothing due, and the appends go on into one chain that verifies.
#[test]
fn postgres_concurrent_cuts_remove_once() {
    if !testing::postgres_available() {
        return;
    }
    const APPENDS: usize = 50;
    let mut store = Backend::Postgres.create(Box::new(FixedClock(at("2020-01-01T00:00:00Z"))));
    for _ in 0..9 {
        append(&mut store, "test.early");
    }
    let config = store.pg_config().expect("PostgreSQL config").clone();
    let signer = Arc::new(Signer::new());
    let as_of = at("2026-06-01T00:00:00Z");
    let start = Arc::new(Barrier::new(3));
    let open_node = move |config: &medconnect_store::PgConfig| {
        let mut handle = PgStore::open(config).expect("node opens the store");
        handle.set_clock(Box::new(FixedClock(as_of)));
        handle
    };

    let cutters: Vec<_> = (0..2)
        .map(|_| {
            let (config, signer, start) = (config.clone(), Arc::clone(&signer), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut handle = open_node(&config);
                start.wait();
                let policy = Policy::builtin();
                handle.dispose_audit(&policy, as_of, &signer.key, "test").expect("cut")
            })
        })
        .collect();
    let appender = {
        let (config, start) = (config.clone(), Arc::clone(&start));
        std::thread::spawn(move || {
            let mut handle = open_node(&config);
            start.wait();
            for _ in 0..APPENDS {
                handle.append_audit(AuditEvent::new("test", "test.during")).expect("append");
            }
        })
    };
    let mut cuts: Vec<u64> =
        cutters.into_iter().map(|h| h.join().expect("cut thread").entries).collect();
    appender.join().expect("append thread");

    cuts.sort_unstable();
    assert_eq!(cuts, [0, 10], "one cut removes entries 1 to 10, the other finds none due");
    let entries = store.audit_entries(0, 1000).expect("entries");
    assert_eq!(entries.first().map(|e| e.seq), Some(11));
    assert_eq!(entries.len(), APPENDS + 1, "the appends and one audit.dispose entry");
    let disposals = entries.iter().filter(|e| e.body["action"] == "audit.dispose").count();
    assert_eq!(disposals, 1);
    let report = store.verify_audit_with_key(Some(&signer.public_key())).expect("verify");
    assert!(report.ok, "{}", report.message);
    assert_eq!(report.first_seq, Some(11));
}
