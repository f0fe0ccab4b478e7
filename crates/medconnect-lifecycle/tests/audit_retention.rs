//! Audit-log retention and closing checkpoints of lifecycle runs on real stores of both
//! backends: which entries a run removes under `audit_log_years`, and what it does without a
//! key.

use chrono::{DateTime, Utc};
use medconnect_crypto::{AuditSigner, AuditSigningKey};
use medconnect_domain::audit::{AuditEvent, Breach};
use medconnect_domain::checkpoint::AuditPublicKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::policy::{Policy, DEFAULT_POLICY_TOML};
use medconnect_domain::time::parse_instant;
use medconnect_lifecycle::{plan, run_with_signer, RunOptions, RunReport};
use medconnect_store::backend_tests;
use medconnect_store::testing::{admin_url, Backend, TestStore};
use tempfile::TempDir;

backend_tests!(
    run_removes_due_prefix,
    longer_tenant_period_delays_cut,
    run_without_key_keeps_entries,
    tampered_tail_is_not_signed,
);

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

struct Fixture {
    store: TestStore,
    /// Holds the signing key file.
    _key_dir: TempDir,
    key: AuditSigningKey,
    policy: Policy,
}

impl Fixture {
    /// Creates a store at 2020-01-01 with tenant `slug`, then writes one event of no tenant at
    /// 2022-01-01. Entries 1 and 2 date from 2020, entry 3 from 2022.
    fn new(backend: Backend, policy: Policy, slug: &str) -> Self {
        let mut store = backend.create(Box::new(FixedClock(at("2020-01-01T00:00:00Z"))));
        store.create_tenant(slug, slug, "test").expect("tenant created");
        store.set_clock(Box::new(FixedClock(at("2022-01-01T00:00:00Z"))));
        store.append_audit(AuditEvent::new("test", "test.event")).expect("event appended");
        let key_dir = TempDir::new().expect("temp dir");
        let key = AuditSigningKey::create(key_dir.path().join("audit-signing.key")).expect("key");
        Fixture { store, _key_dir: key_dir, key, policy }
    }

    /// Rewrites the body of one audit entry behind the store's back.
    fn tamper(&self, seq: i64) {
        let edit = "SET body = replace(body, 'test.later', 'test.lated')";
        match self.store.backend() {
            Backend::Sqlite => {
                let db = self.store.data_dir().expect("data dir").join("medconnect.db");
                let conn = rusqlite::Connection::open(&db).expect("open database");
                let sql = format!("UPDATE audit_log {edit} WHERE seq = ?1");
                conn.execute(&sql, [seq]).expect("tamper");
            }
            Backend::Postgres => {
                let schema = &self.store.pg_config().expect("PostgreSQL config").schema;
                let mut client =
                    ::postgres::Client::connect(&admin_url(), ::postgres::NoTls).expect("connect");
                let sql = format!("UPDATE \"{schema}\".audit_log {edit} WHERE seq = $1");
                client.execute(&sql, &[&seq]).expect("tamper");
            }
        }
    }

    fn run(&mut self, as_of: &str, signed: bool) -> RunReport {
        let as_of = at(as_of);
        self.store.set_clock(Box::new(FixedClock(as_of)));
        let signer = signed.then_some(&self.key as &dyn AuditSigner);
        let options = RunOptions::default();
        run_with_signer(&mut *self.store, &self.policy, as_of, &options, signer, &mut |_, _| {})
            .expect("run")
    }

    fn public_key(&self) -> AuditPublicKey {
        AuditPublicKey::from_bytes(self.key.public_key())
    }

    fn first_seq(&self) -> i64 {
        self.store.audit_entries(0, 1).expect("entries")[0].seq
    }
}

fn run_removes_due_prefix(backend: Backend) {
    let mut fx = Fixture::new(backend, Policy::builtin(), "short");
    assert_eq!(
        plan(&*fx.store, &fx.policy, at("2026-06-01")).expect("plan").audit_entries_disposed,
        2
    );

    let report = fx.run("2026-06-01", true);

    assert_eq!(report.audit_entries_disposed, 2, "the two entries of 2020");
    assert_eq!(fx.first_seq(), 3, "the 2022 entry is kept");
    let entries = fx.store.audit_entries(0, 100).expect("entries");
    let actions: Vec<&str> = entries.iter().filter_map(|e| e.body["action"].as_str()).collect();
    assert_eq!(actions, ["test.event", "policy.apply", "audit.dispose", "lifecycle.run"]);
    let head = entries.last().map(|e| e.seq).expect("head");
    let checkpoints = fx.store.audit_checkpoints().expect("checkpoints");
    let seqs: Vec<i64> = checkpoints.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [2, head], "kept at the cut, and signed at the end of the run");
    assert_eq!(checkpoints[0].entries, 2, "entries the log held up to the cut");
    assert_eq!(checkpoints[1].entries, 4, "entries the log held when the run ended");
    assert_eq!(report.audit_checkpoint_seq, Some(head));
    let verify = fx.store.verify_audit_with_key(Some(&fx.public_key())).expect("verify");
    assert!(verify.ok, "{}", verify.message);
    assert_eq!(verify.first_seq, Some(3));
    assert_eq!(verify.signed_seq, Some(head));

    // The next run finds nothing more due, and its checkpoint chains on from the last one.
    let again = fx.run("2026-06-02", true);
    assert_eq!(again.audit_entries_disposed, 0);
    let verify = fx.store.verify_audit_with_key(Some(&fx.public_key())).expect("verify");
    assert!(verify.ok, "{}", verify.message);
}

fn longer_tenant_period_delays_cut(backend: Backend) {
    let toml = format!("{DEFAULT_POLICY_TOML}\n[tenants.long]\naudit_log_years = 10\n");
    let policy = Policy::from_toml(&toml).expect("policy with a longer tenant period");
    let mut fx = Fixture::new(backend, policy, "long");

    // Entry 1 belongs to no tenant, so it follows the longest period (10 years) and stops
    // the cut; entry 2 of tenant `long` would too.
    let early = fx.run("2026-06-01", true);
    assert_eq!(early.audit_entries_disposed, 0);
    assert_eq!(fx.first_seq(), 1);

    let late = fx.run("2030-06-01", true);
    assert_eq!(late.audit_entries_disposed, 2, "entries of 2020 are due after 10 years");
    assert_eq!(fx.first_seq(), 3);
    let verify = fx.store.verify_audit_with_key(Some(&fx.public_key())).expect("verify");
    assert!(verify.ok, "{}", verify.message);
}

fn run_without_key_keeps_entries(backend: Backend) {
    let mut fx = Fixture::new(backend, Policy::builtin(), "short");

    let report = fx.run("2026-06-01", false);

    assert_eq!(report.audit_entries_disposed, 0);
    assert_eq!(report.audit_checkpoint_seq, None);
    assert_eq!(fx.first_seq(), 1);
    assert!(fx.store.audit_checkpoints().expect("checkpoints").is_empty());
    let verify = fx.store.verify_audit().expect("verify");
    assert!(verify.ok, "{}", verify.message);
}

fn tampered_tail_is_not_signed(backend: Backend) {
    let mut fx = Fixture::new(backend, Policy::builtin(), "short");
    let signed = fx.run("2023-01-01", true).audit_checkpoint_seq.expect("first run signs");
    let seq = fx.store.append_audit(AuditEvent::new("test", "test.later")).expect("appended");
    assert_eq!(seq, signed + 1);
    fx.tamper(seq);

    // The run itself completes; only signing over the damage is refused (and logged).
    let report = fx.run("2023-01-02", true);

    assert_eq!(report.audit_checkpoint_seq, None);
    let last = fx.store.audit_checkpoints().expect("checkpoints").last().map(|c| c.seq);
    assert_eq!(last, Some(signed), "no checkpoint after the damaged entry");
    let verify = fx.store.verify_audit_with_key(Some(&fx.public_key())).expect("verify");
    assert_eq!(verify.breach, Some(Breach::Altered));
    assert_eq!(verify.first_bad_seq, Some(seq));
}
