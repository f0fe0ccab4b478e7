//! Several nodes disposing of records in one PostgreSQL store at once. Every expired record
//! is disposed of exactly once, with exactly one receipt. A row that another transaction has
//! locked is skipped as claimed and retried, and the rows of a node that dies mid-disposal
//! are disposed of once the server releases them. Each platform operator session is purged
//! by exactly one node.
//!
//! Each node is a `PgStore` opened on the test schema in its own thread, with its own
//! connections, node name and copy of the master key. The tests skip when no PostgreSQL
//! server answers (see `medconnect_store::testing`).

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{
    Category, HoldScope, ImportBatch, NewConsultation, NewPatientProfile, Tenant,
};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::PatientId;
use medconnect_lifecycle::{run, RunOptions, RunReport};
use medconnect_store::testing::{database_url, postgres_available, Backend, TestStore};
use medconnect_store::{
    Disposal, DisposalContext, DisposalOutcome, NewUser, PgConfig, PgStore, Role, SessionTimes,
    SkipReason, Store, UserRef,
};

const ACTOR: &str = "test";

/// Master key bytes every node of a test loads, as nodes of one deployment would.
const MASTER_KEY: [u8; 32] = [42; 32];

/// The instant every run disposes as of.
const AS_OF: &str = "2030-01-01T00:00:00Z";

/// Last encounter of patients due by [`AS_OF`].
const EXPIRED_ENCOUNTER: &str = "2015-01-01T00:00:00Z";

/// Last encounter of patients still retained at [`AS_OF`].
const RECENT_ENCOUNTER: &str = "2025-06-01T00:00:00Z";

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

fn master_key() -> MasterKey {
    MasterKey::from_bytes(1, &MASTER_KEY)
}

/// Creates a PostgreSQL test store with the shared master key, or None when PostgreSQL tests
/// are skipped.
fn create_store() -> Option<TestStore> {
    if !postgres_available() {
        return None;
    }
    let mut store = Backend::Postgres.create(Box::new(FixedClock(at("2020-01-01T00:00:00Z"))));
    store.set_master_keys(master_key(), None).expect("master key");
    Some(store)
}

/// Opens another node on the store behind `config`, under its own node name.
fn open_node(config: &PgConfig, name: &str) -> PgStore {
    let mut config = config.clone();
    config.node = name.to_owned();
    let mut node = PgStore::open(&config).expect("opening a node");
    node.set_master_keys(master_key(), None).expect("master key");
    node.set_clock(Box::new(FixedClock(at(AS_OF))));
    node
}

/// Imports one batch of synthetic patients into `tenant`, each with one encounter ending at
/// `last_encounter`, and returns their ids in the order of `source_ids`. A source id already
/// imported into another tenant links the same core profile.
fn import(
    store: &mut TestStore,
    tenant: &Tenant,
    source_ids: &[String],
    last_encounter: &str,
) -> Vec<PatientId> {
    let end = at(last_encounter);
    let batch = ImportBatch {
        source_system: "test".into(),
        patients: source_ids
            .iter()
            .map(|id| NewPatientProfile {
                source_system: "test".into(),
                source_id: id.clone(),
                given_name: "Test1".into(),
                family_name: "Patient1".into(),
                birth_date: "1970-01-01".into(),
                sex: "F".into(),
                ..NewPatientProfile::default()
            })
            .collect(),
        consultations: source_ids
            .iter()
            .map(|id| NewConsultation {
                source_id: format!("{id}-enc"),
                patient_source_id: id.clone(),
                provider_source_id: None,
                status: "completed".into(),
                encounter_class: "virtual".into(),
                reason: "check-up".into(),
                notes: String::new(),
                started_at: end - chrono::Duration::minutes(20),
                ended_at: Some(end),
            })
            .collect(),
        ..ImportBatch::default()
    };
    store.import(tenant, &batch, &Policy::builtin(), ACTOR).expect("import");
    source_ids
        .iter()
        .map(|id| store.find_patient(tenant, "test", id).expect("find").expect("imported"))
        .collect()
}

fn source_ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|index| format!("{prefix}-{index}")).collect()
}

fn ended(value: &str) -> SessionTimes {
    let end = at(value);
    SessionTimes {
        started_at: end - chrono::Duration::hours(1),
        expires_at: end + chrono::Duration::hours(1),
        ended_at: Some(end),
    }
}

/// Counts the receipts that name `record_id`, per (category, tenant) of their audit entries.
fn receipt_counts(store: &TestStore, record_id: &str) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for record in store.receipts_for(record_id).expect("receipts") {
        let category = record.body["receipt"]["category"].as_str().expect("category").to_owned();
        let tenant = record.body["tenant_id"].as_str().unwrap_or("").to_owned();
        *counts.entry((category, tenant)).or_default() += 1;
    }
    counts
}

/// Connects as the operator role to the schema of `config`, as another node would.
fn raw_operator(config: &PgConfig) -> ::postgres::Client {
    let mut settings: ::postgres::Config = database_url().parse().expect("database URL");
    settings.user(medconnect_store::postgres::OPERATOR_ROLE);
    let mut client = settings.connect(::postgres::NoTls).expect("operator connection");
    client
        .batch_execute(&format!("SET search_path TO \"{}\"", config.schema))
        .expect("search path");
    client
}

/// Opens a transaction on `client` that locks the link rows of `patients`, as a node in the
/// middle of disposing of them would, and leaves it open.
fn hold_links(client: &mut ::postgres::Client, patients: &[PatientId]) {
    let ids: Vec<String> = patients.iter().map(ToString::to_string).collect();
    client.batch_execute("BEGIN").expect("begin");
    let locked = client
        .query("SELECT id FROM patient_links WHERE patient_id = ANY($1) FOR UPDATE", &[&ids])
        .expect("lock links");
    assert_eq!(locked.len(), patients.len(), "every link row locked");
}

fn count_links(client: &mut ::postgres::Client, patients: &[PatientId]) -> i64 {
    let ids: Vec<String> = patients.iter().map(ToString::to_string).collect();
    client
        .query_one("SELECT count(*) FROM patient_links WHERE patient_id = ANY($1)", &[&ids])
        .expect("count links")
        .get(0)
}

fn run_node(node: &mut PgStore, claim_wait: Duration) -> RunReport {
    let options = RunOptions { batch_size: 25, actor: ACTOR.into(), claim_wait };
    run(node, &Policy::builtin(), at(AS_OF), &options, &mut |_, _| {}).expect("run")
}

#[test]
fn three_nodes_dispose_each_record_once() {
    let Some(mut store) = create_store() else { return };
    let alpha = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let beta = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    let alone_alpha = import(&mut store, &alpha, &source_ids("a", 200), EXPIRED_ENCOUNTER);
    let alone_beta = import(&mut store, &beta, &source_ids("b", 50), EXPIRED_ENCOUNTER);
    // Linked in both tenants: two nodes may dispose of the two links at once, and exactly
    // one of them must take the core profile.
    let shared = import(&mut store, &alpha, &source_ids("s", 50), EXPIRED_ENCOUNTER);
    assert_eq!(import(&mut store, &beta, &source_ids("s", 50), EXPIRED_ENCOUNTER), shared);
    let recent = import(&mut store, &alpha, &source_ids("r", 10), RECENT_ENCOUNTER);
    let held = import(&mut store, &beta, &source_ids("h", 10), EXPIRED_ENCOUNTER);
    for patient in &held {
        store
            .place_hold(&beta, HoldScope::Patient(*patient), "m-1", "dispute", ACTOR)
            .expect("hold");
    }
    for _ in 0..20 {
        store.add_session(&alpha, None, ended("2020-01-01T00:00:00Z")).expect("staff session");
    }

    let config = store.pg_config().expect("PostgreSQL config").clone();
    let start = Arc::new(Barrier::new(3));
    let nodes: Vec<_> = (1..=3)
        .map(|index| {
            let (config, start) = (config.clone(), Arc::clone(&start));
            thread::spawn(move || {
                let mut node = open_node(&config, &format!("node-{index}"));
                start.wait();
                run_node(&mut node, RunOptions::default().claim_wait)
            })
        })
        .collect();
    let reports: Vec<RunReport> =
        nodes.into_iter().map(|node| node.join().expect("node thread")).collect();

    let purged = |category: Category| -> u64 {
        reports.iter().map(|report| report.tally.purged[&category]).sum()
    };
    let expired_links = alone_alpha.len() + alone_beta.len() + 2 * shared.len();
    let expired_profiles = alone_alpha.len() + alone_beta.len() + shared.len();
    assert_eq!(purged(Category::PatientRecords), expired_links as u64);
    assert_eq!(purged(Category::PatientProfile), expired_profiles as u64);
    assert_eq!(purged(Category::Session), 20);
    for report in &reports {
        assert_eq!(report.tally.claimed_elsewhere_total(), 0, "run {}", report.run_id);
    }

    let (alpha_id, beta_id) = (alpha.id.to_string(), beta.id.to_string());
    let records = |tenant: &str| ("patient_records".to_owned(), tenant.to_owned());
    let profile = ("patient_profile".to_owned(), String::new());
    for (patients, tenant) in [(&alone_alpha, &alpha_id), (&alone_beta, &beta_id)] {
        for patient in patients {
            let counts = receipt_counts(&store, &patient.to_string());
            let expected = HashMap::from([(records(tenant), 1), (profile.clone(), 1)]);
            assert_eq!(counts, expected, "receipts of patient {patient}");
        }
    }
    for patient in &shared {
        let counts = receipt_counts(&store, &patient.to_string());
        let expected =
            HashMap::from([(records(&alpha_id), 1), (records(&beta_id), 1), (profile.clone(), 1)]);
        assert_eq!(counts, expected, "receipts of shared patient {patient}");
    }
    for patient in recent.iter().chain(&held) {
        assert!(receipt_counts(&store, &patient.to_string()).is_empty(), "patient {patient}");
    }

    let remaining: Vec<PatientId> =
        store.patient_links(&alpha).expect("links").iter().map(|l| l.patient_id).collect();
    assert_eq!(remaining.len(), recent.len(), "alpha keeps only its recent patients");
    assert!(recent.iter().all(|p| remaining.contains(p)));
    let remaining: Vec<PatientId> =
        store.patient_links(&beta).expect("links").iter().map(|l| l.patient_id).collect();
    assert_eq!(remaining.len(), held.len(), "beta keeps only its held patients");
    assert!(held.iter().all(|p| remaining.contains(p)));

    let verify = store.verify_audit().expect("verify");
    assert!(verify.ok, "{}", verify.message);
    let mut raw = raw_operator(&config);
    let mut names: Vec<String> = raw
        .query("SELECT node FROM lifecycle_runs WHERE status = 'completed' ORDER BY node", &[])
        .expect("runs")
        .iter()
        .map(|row| row.get(0))
        .collect();
    names.dedup();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
}

#[test]
fn dispose_skips_claimed_row() {
    let Some(mut store) = create_store() else { return };
    let clinic = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patients = import(&mut store, &clinic, &source_ids("p", 2), EXPIRED_ENCOUNTER);
    let config = store.pg_config().expect("PostgreSQL config").clone();
    let mut other_node = raw_operator(&config);
    hold_links(&mut other_node, &patients[..1]);

    let policy = Policy::builtin();
    let context = DisposalContext { policy: &policy, as_of: at(AS_OF), actor: ACTOR, run_id: "t" };
    let disposals: Vec<Disposal> = patients
        .iter()
        .map(|patient| Disposal {
            category: Category::PatientRecords,
            tenant_id: clinic.id,
            patient_id: Some(*patient),
            record_id: patient.to_string(),
        })
        .collect();
    let outcomes = store.dispose(&disposals, &context).expect("dispose");
    assert_eq!(outcomes[0], DisposalOutcome::Skipped(SkipReason::Claimed));
    assert!(
        matches!(&outcomes[1], DisposalOutcome::Disposed { receipts } if receipts.len() == 2),
        "{:?}",
        outcomes[1]
    );

    other_node.batch_execute("ROLLBACK").expect("rollback");
    let outcomes = store.dispose(&disposals, &context).expect("dispose again");
    assert!(
        matches!(&outcomes[0], DisposalOutcome::Disposed { receipts } if receipts.len() == 2),
        "{:?}",
        outcomes[0]
    );
    assert_eq!(outcomes[1], DisposalOutcome::Skipped(SkipReason::AlreadyGone));
}

#[test]
fn dead_node_rows_are_disposed_after_release() {
    let Some(mut store) = create_store() else { return };
    let clinic = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patients = import(&mut store, &clinic, &source_ids("p", 60), EXPIRED_ENCOUNTER);
    let config = store.pg_config().expect("PostgreSQL config").clone();
    let locked = &patients[20..30];
    let mut dying_node = raw_operator(&config);
    hold_links(&mut dying_node, locked);

    let runner = {
        let config = config.clone();
        thread::spawn(move || {
            run_node(&mut open_node(&config, "survivor"), Duration::from_secs(180))
        })
    };
    // Wait until the run has disposed of everything it can, so that it meets the held rows,
    // then let the holding node die: its connection closes without a commit.
    let mut observer = raw_operator(&config);
    while count_links(&mut observer, &patients) > locked.len() as i64 && !runner.is_finished() {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count_links(&mut observer, locked), locked.len() as i64, "held rows kept");
    drop(dying_node);
    let report = runner.join().expect("run thread");

    assert_eq!(report.tally.purged[&Category::PatientRecords], patients.len() as u64);
    assert_eq!(report.tally.claimed_elsewhere_total(), 0);
    assert_eq!(count_links(&mut observer, &patients), 0);
    let clinic_id = clinic.id.to_string();
    for patient in &patients {
        let counts = receipt_counts(&store, &patient.to_string());
        let expected = HashMap::from([
            (("patient_records".to_owned(), clinic_id.clone()), 1),
            (("patient_profile".to_owned(), String::new()), 1),
        ]);
        assert_eq!(counts, expected, "receipts of patient {patient}");
    }
}

#[test]
fn run_reports_rows_still_claimed() {
    let Some(mut store) = create_store() else { return };
    let clinic = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patients = import(&mut store, &clinic, &source_ids("p", 8), EXPIRED_ENCOUNTER);
    let config = store.pg_config().expect("PostgreSQL config").clone();
    let locked = &patients[..3];
    let mut busy_node = raw_operator(&config);
    hold_links(&mut busy_node, locked);

    let mut node = open_node(&config, "impatient");
    let report = run_node(&mut node, Duration::from_millis(500));

    assert_eq!(report.tally.purged[&Category::PatientRecords], 5);
    assert_eq!(report.tally.claimed_elsewhere[&Category::PatientRecords], 3);
    let summary = node.runs(1).expect("runs")[0].summary.clone().expect("summary");
    assert_eq!(summary["claimed_elsewhere"]["patient_records"], 3);
    busy_node.batch_execute("ROLLBACK").expect("rollback");
    let again = run_node(&mut node, Duration::from_millis(500));
    assert_eq!(again.tally.purged[&Category::PatientRecords], 3);
    assert_eq!(again.tally.claimed_elsewhere_total(), 0);
}

#[test]
fn whole_tenant_hold_waits_for_disposals_under_way() {
    let Some(mut store) = create_store() else { return };
    let clinic = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patients = import(&mut store, &clinic, &source_ids("p", 2), EXPIRED_ENCOUNTER);
    let config = store.pg_config().expect("PostgreSQL config").clone();

    // A node in the middle of a disposal transaction in this tenant holds the tenant's hold
    // lock shared.
    let mut disposing = raw_operator(&config);
    disposing.batch_execute("BEGIN").expect("begin");
    disposing
        .execute(
            "SELECT pg_advisory_xact_lock_shared(hashtextextended('medconnect-hold:' || $1, 0))",
            &[&clinic.id.to_string()],
        )
        .expect("shared hold lock");

    let placing = thread::spawn({
        let config = config.clone();
        let clinic = clinic.clone();
        move || {
            let mut node = open_node(&config, "legal");
            node.place_hold(&clinic, HoldScope::WholeTenant, "matter-1", "litigation", ACTOR)
                .expect("hold placed")
        }
    });
    thread::sleep(Duration::from_millis(300));
    let mut observer = raw_operator(&config);
    let holds: i64 =
        observer.query_one("SELECT count(*) FROM legal_holds", &[]).expect("count").get(0);
    assert_eq!(holds, 0, "the hold waits while a disposal in its tenant is under way");

    disposing.batch_execute("COMMIT").expect("commit");
    let hold = placing.join().expect("placing thread");
    assert_eq!(hold.scope, HoldScope::WholeTenant);

    let report = run_node(&mut open_node(&config, "after"), Duration::from_secs(5));
    assert_eq!(report.tally.purged_total(), 0, "nothing purged under the hold");
    assert_eq!(count_links(&mut observer, &patients), 2, "both patients kept");
}

/// Creates a platform operator with `count` sessions that expired on 2020-01-02 without a
/// logout, all due by [`AS_OF`], and returns their ids.
fn platform_sessions(store: &mut TestStore, count: usize) -> Vec<String> {
    let operator = NewUser {
        tenant: None,
        username: "ops@example.test",
        role: Role::PlatformOperator,
        // Of the right form, for an account that never logs in by password.
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
        patient: None,
    };
    let id = store.create_user(&operator, ACTOR).expect("platform operator");
    let operator = UserRef { id, tenant_id: None };
    let (start, expiry) = (at("2020-01-01T00:00:00Z"), at("2020-01-02T00:00:00Z"));
    let mut ids: Vec<String> = (0..count)
        .map(|_| {
            let token = medconnect_crypto::SecretToken::generate().expect("token");
            let session = store.create_session(operator, &token.hash(), start, expiry);
            session.expect("session").to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// Returns the session ids named by the `session.purge` audit entries, sorted, with repeats.
fn purged_session_subjects(store: &TestStore) -> Vec<String> {
    let entries = store.audit_entries(0, 100_000).expect("audit entries");
    let mut subjects: Vec<String> = entries
        .iter()
        .filter(|entry| entry.body["action"] == "session.purge")
        .flat_map(|entry| entry.body["subjects"].as_array().cloned().unwrap_or_default())
        .filter_map(|subject| subject.as_str().map(str::to_owned))
        .collect();
    subjects.sort();
    subjects
}

#[test]
fn three_nodes_purge_each_platform_session_once() {
    let Some(mut store) = create_store() else { return };
    let sessions = platform_sessions(&mut store, 60);

    let config = store.pg_config().expect("PostgreSQL config").clone();
    let start = Arc::new(Barrier::new(3));
    let nodes: Vec<_> = (1..=3)
        .map(|index| {
            let (config, start) = (config.clone(), Arc::clone(&start));
            thread::spawn(move || {
                let mut node = open_node(&config, &format!("node-{index}"));
                start.wait();
                run_node(&mut node, Duration::from_secs(5))
            })
        })
        .collect();
    let reports: Vec<RunReport> =
        nodes.into_iter().map(|node| node.join().expect("node thread")).collect();

    let purged: u64 = reports.iter().map(|report| report.platform_sessions_purged).sum();
    assert_eq!(purged, sessions.len() as u64, "each session counted by one node");
    assert_eq!(purged_session_subjects(&store), sessions, "each session named once");
    let mut raw = raw_operator(&config);
    let left: i64 = raw
        .query_one("SELECT count(*) FROM sessions WHERE tenant_id IS NULL", &[])
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
    let verify = store.verify_audit().expect("verify");
    assert!(verify.ok, "{}", verify.message);
}

#[test]
fn platform_session_purge_skips_locked_row() {
    let Some(mut store) = create_store() else { return };
    let sessions = platform_sessions(&mut store, 3);
    let config = store.pg_config().expect("PostgreSQL config").clone();
    let mut other_node = raw_operator(&config);
    other_node.batch_execute("BEGIN").expect("begin");
    other_node
        .query_one("SELECT id FROM sessions WHERE id = $1 FOR UPDATE", &[&sessions[0]])
        .expect("lock session");

    let cutoff = at(AS_OF) - chrono::Duration::days(90);
    let purged = store.purge_platform_sessions(cutoff, ACTOR, "t").expect("purge");
    assert_eq!(purged, 2, "the locked session is skipped without waiting");
    assert_eq!(purged_session_subjects(&store), sessions[1..]);

    other_node.batch_execute("ROLLBACK").expect("rollback");
    let purged = store.purge_platform_sessions(cutoff, ACTOR, "t").expect("purge again");
    assert_eq!(purged, 1, "a later call purges what was left");
    assert_eq!(purged_session_subjects(&store), sessions);
}
