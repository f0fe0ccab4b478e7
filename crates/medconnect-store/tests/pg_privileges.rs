//! Privileges of the PostgreSQL store roles and the race between a legal hold and a
//! disposal under way: each test runs SQL as the role an attacker would hold, or sets two
//! nodes against each other, on a fresh `mc_test_...` schema from `medconnect_store::testing`.

use std::thread;
use std::time::{Duration, Instant};

use ::postgres::{Client, NoTls};
use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{
    Category, HoldScope, ImportBatch, NewConsultation, NewPatientProfile, Tenant,
};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::PatientId;
use medconnect_store::testing::{self, Backend, TestStore};
use medconnect_store::{
    Disposal, DisposalContext, DisposalOutcome, PgConfig, PgStore, SessionTimes, SkipReason, Store,
};

const ACTOR: &str = "test";
const MASTER_KEY: [u8; 32] = [42; 32];
/// Every record of these tests is past retention at this instant.
const AS_OF: &str = "2100-01-01T00:00:00Z";
const OLD: &str = "2015-01-01T00:00:00Z";

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

fn master_key() -> MasterKey {
    MasterKey::from_bytes(1, &MASTER_KEY)
}

fn create_store() -> Option<TestStore> {
    if !testing::postgres_available() {
        return None;
    }
    let mut store = Backend::Postgres.create(Box::new(FixedClock(at("2020-01-01T00:00:00Z"))));
    store.set_master_keys(master_key(), None).expect("master key");
    Some(store)
}

fn open_node(config: &PgConfig, name: &str) -> PgStore {
    let mut config = config.clone();
    config.node = name.to_owned();
    let mut node = PgStore::open(&config).expect("opening a node");
    node.set_master_keys(master_key(), None).expect("master key");
    node.set_clock(Box::new(FixedClock(at(AS_OF))));
    node
}

fn patient_batch(source_id: &str, given: &str, ssn: Option<&str>) -> ImportBatch {
    let end = at(OLD);
    ImportBatch {
        source_system: "test".into(),
        patients: vec![NewPatientProfile {
            source_system: "test".into(),
            source_id: source_id.into(),
            given_name: given.into(),
            family_name: "Family1".into(),
            birth_date: "1970-01-01".into(),
            sex: "F".into(),
            ssn: ssn.map(Into::into),
            address_line: "1 Main Street".into(),
            city: "Lincoln".into(),
            state: "NE".into(),
            postal_code: "68501".into(),
            ..NewPatientProfile::default()
        }],
        consultations: vec![NewConsultation {
            source_id: format!("{source_id}-enc"),
            patient_source_id: source_id.into(),
            provider_source_id: None,
            status: "completed".into(),
            encounter_class: "virtual".into(),
            reason: "check-up".into(),
            notes: String::new(),
            started_at: end - chrono::Duration::minutes(20),
            ended_at: Some(end),
        }],
        ..ImportBatch::default()
    }
}

fn import_one(store: &mut TestStore, tenant: &Tenant, source_id: &str) -> PatientId {
    store
        .import(
            tenant,
            &patient_batch(source_id, "Given1", Some("999-00-1234")),
            &Policy::builtin(),
            ACTOR,
        )
        .expect("import");
    store.find_patient(tenant, "test", source_id).expect("find").expect("imported")
}

/// Connects as `user` (admin when None) with search_path set to the store's schema.
fn connect(store: &TestStore, user: Option<&str>) -> Client {
    let config = store.pg_config().expect("a PostgreSQL store");
    let mut client = match user {
        None => Client::connect(&testing::admin_url(), NoTls).expect("admin connects"),
        Some(user) => {
            let mut role: ::postgres::Config = config.database_url.parse().expect("database URL");
            role.user(user);
            role.connect(NoTls).expect("store role connects")
        }
    };
    client
        .batch_execute(&format!("SET search_path TO \"{}\"", config.schema))
        .expect("search_path set");
    client
}

/// Begins a transaction on an application connection with `tenant` set, as the store does.
fn app_tx<'a>(client: &'a mut Client, tenant: &Tenant) -> ::postgres::Transaction<'a> {
    let mut tx = client.transaction().expect("begin");
    tx.execute("SELECT set_config('medconnect.tenant', $1, true)", &[&tenant.id.to_string()])
        .expect("tenant set");
    tx
}

/// Waits until a backend whose application_name is `node` waits for a lock.
fn wait_for_lock_wait(admin: &mut Client, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE application_name = $1 AND wait_event_type = 'Lock')",
                &[&node],
            )
            .expect("pg_stat_activity read")
            .get(0);
        if waiting {
            return;
        }
        assert!(Instant::now() < deadline, "{node} never waited for a lock");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A patient-scoped legal hold placed while a lifecycle run disposes of that patient's ID
/// photo and session must stop the disposal or be rejected. Here the hold commits first, and
/// the disposal, which read the hold table before that commit, commits after it. The audit
/// log then records "hold placed" and then "photo destroyed" for the held patient.
///
/// The admin connection locks the audit head for a moment, so the interleaving repeats on
/// every run. Without it the same order happens whenever the hold commits between the
/// disposal's hold check and its commit. Patient holds lock only the link row, and photo and
/// session disposals never touch that row. Whole-tenant holds take the advisory lock, which
/// is sound.
#[test]
fn patient_hold_stops_photo_and_session_disposal_under_way() {
    let Some(mut store) = create_store() else { return };
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let patient = import_one(&mut store, &tenant, "p-1");
    let photo = store.add_id_photo(&tenant, patient, b"photo", at(OLD), ACTOR).expect("photo");
    let session = store
        .add_session(
            &tenant,
            Some(patient),
            SessionTimes { started_at: at(OLD), expires_at: at(OLD), ended_at: Some(at(OLD)) },
        )
        .expect("session");
    let config = store.pg_config().expect("pg").clone();

    let mut admin = connect(&store, None);
    let mut head = admin.transaction().expect("begin");
    head.execute("SELECT 1 FROM audit_head FOR UPDATE", &[]).expect("head locked");

    let hold_config = config.clone();
    let hold_tenant = tenant.clone();
    let holder = thread::spawn(move || {
        let mut node = open_node(&hold_config, "review-hold");
        node.place_hold(&hold_tenant, HoldScope::Patient(patient), "m-1", "litigation", ACTOR)
    });
    let mut watcher = connect(&store, None);
    wait_for_lock_wait(&mut watcher, "review-hold");

    let dispose_config = config.clone();
    let tenant_id = tenant.id;
    let disposer = thread::spawn(move || {
        let mut node = open_node(&dispose_config, "review-dispose");
        let run = node.start_run(at(AS_OF)).expect("run");
        let policy = Policy::builtin();
        let context =
            DisposalContext { policy: &policy, as_of: at(AS_OF), actor: ACTOR, run_id: &run };
        let disposals = [
            Disposal {
                category: Category::IdPhoto,
                tenant_id,
                patient_id: Some(patient),
                record_id: photo.to_string(),
            },
            Disposal {
                category: Category::Session,
                tenant_id,
                patient_id: Some(patient),
                record_id: session.to_string(),
            },
        ];
        node.dispose(&disposals, &context)
    });
    wait_for_lock_wait(&mut watcher, "review-dispose");
    head.rollback().expect("head released");

    let hold = holder.join().expect("hold thread").expect("hold placed");
    let outcomes = disposer.join().expect("dispose thread").expect("dispose ran");

    let order: Vec<(i64, String)> = watcher
        .query(
            "SELECT seq, action FROM audit_log WHERE action IN ('hold.place', 'lifecycle.dispose')
             ORDER BY seq",
            &[],
        )
        .expect("audit read")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for outcome in &outcomes {
        assert!(
            matches!(outcome, DisposalOutcome::Skipped(SkipReason::LegalHold { hold_id }) if *hold_id == hold.id),
            "hold {} committed before the disposal, yet the disposal's outcome is {outcome:?}; \
             audit order: {order:?}",
            hold.id
        );
    }
}

/// Tenant A's application role may point one of its own links (or a new one) at tenant B's
/// patient: foreign keys ignore row-level security, and the link policy checks only the
/// link's tenant_id. The profile's PHI and profile key then become visible to A, and the
/// store's own `patient_profile` decrypts B's patient for tenant A.
#[test]
fn app_cannot_move_a_link_to_another_profile() {
    let Some(mut store) = create_store() else { return };
    let a = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let b = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    let a_patient = import_one(&mut store, &a, "a-1");
    // B's patient, with a SSN that tenant A never supplied.
    store
        .import(
            &b,
            &patient_batch("b-1", "Secret1", Some("123-45-6789")),
            &Policy::builtin(),
            ACTOR,
        )
        .expect("import");
    let b_patient = store.find_patient(&b, "test", "b-1").expect("find").expect("imported");

    let mut app = connect(&store, Some("medconnect_app"));
    let mut tx = app_tx(&mut app, &a);
    let changed = tx.execute(
        "UPDATE patient_links SET patient_id = $1 WHERE patient_id = $2",
        &[&b_patient.to_string(), &a_patient.to_string()],
    );
    if let Ok(1) = changed {
        tx.commit().expect("commit");
        let stolen = store.patient_profile(&a, b_patient).expect("tenant A reads B's patient");
        panic!(
            "tenant A relinked its link to B's patient and read given name {:?}, SSN {:?}",
            stolen.given_name, stolen.ssn
        );
    }
}

/// A core profile linked to tenants A and B may be rewritten by A alone (the update policy
/// requires only a link of A): A changes what B reads of its own patient, or detaches B's
/// lookups by changing source_index.
#[test]
fn app_cannot_rewrite_a_shared_profile() {
    let Some(mut store) = create_store() else { return };
    let a = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let b = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    let shared = import_one(&mut store, &b, "shared-1");
    import_one(&mut store, &a, "shared-1");
    let mut app = connect(&store, Some("medconnect_app"));
    let mut tx = app_tx(&mut app, &a);
    let changed = tx
        .execute(
            "UPDATE patient_profiles SET source_index = 'detached' WHERE id = $1",
            &[&shared.to_string()],
        )
        .unwrap_or(0);
    tx.commit().expect("commit");
    let found = store.find_patient(&b, "test", "shared-1").expect("lookup");
    assert_eq!(changed, 0, "tenant A's role rewrote the source_index of a shared profile");
    assert_eq!(found, Some(shared), "tenant B's lookup of its own patient found {found:?}");
}

/// Tenant A's application role may release its own legal holds with a plain UPDATE, outside
/// `release_hold` (an operator job that writes hold.release to the audit log). The next run
/// then disposes of the held records, and no audit entry records the release.
#[test]
fn app_cannot_release_holds_without_audit() {
    let Some(mut store) = create_store() else { return };
    let a = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let patient = import_one(&mut store, &a, "a-1");
    store.place_hold(&a, HoldScope::Patient(patient), "m-1", "litigation", ACTOR).expect("hold");
    let mut app = connect(&store, Some("medconnect_app"));
    let mut tx = app_tx(&mut app, &a);
    let released = tx
        .execute(
            "UPDATE legal_holds SET released_at = '2020-01-01T00:00:00Z', released_by = 'x'",
            &[],
        )
        .unwrap_or(0);
    tx.commit().expect("commit");
    let active = store.holds(Some(a.id), false).expect("holds").len();
    assert_eq!(released, 0, "the application role released {released} hold(s) by UPDATE");
    assert_eq!(active, 1, "no active hold remains, and no hold.release entry was written");
}

/// Link ids come from a sequence, so tenant A can predict the next ones. Its application role may
/// insert `link` data keys for those owners (the data_keys check tests only tenant_id), and
/// tenant B's next imports then fail when they store the key of their new link.
#[test]
fn app_cannot_create_keys_for_links_of_others() {
    let Some(mut store) = create_store() else { return };
    let a = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let b = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    import_one(&mut store, &a, "a-1");
    let mut app = connect(&store, Some("medconnect_app"));
    let mut tx = app_tx(&mut app, &a);
    let squatted = tx.execute(
        "INSERT INTO data_keys (id, scope, owner, tenant_id, version, wrapped, master_version,
                                created_at)
         SELECT gen_random_uuid()::text, 'link', (m + g)::text, current_tenant(), 1, '\\x00', 1,
                '2020-01-01T00:00:00Z'
         FROM (SELECT max(id) AS m FROM patient_links) l, generate_series(1, 100) g",
        &[],
    );
    if squatted.is_ok() {
        tx.commit().expect("commit");
    }
    let result = store.import(&b, &patient_batch("b-1", "Given1", None), &Policy::builtin(), ACTOR);
    assert!(
        result.is_ok(),
        "after tenant A's role stored keys for future link ids, tenant B's import fails: {:?}",
        result.err()
    );
}

/// The same with link ids themselves: GENERATED ALWAYS still lets a role with INSERT on the
/// table choose the id with OVERRIDING SYSTEM VALUE, so tenant A takes the ids that tenant
/// B's next links would get.
#[test]
fn app_cannot_choose_link_ids() {
    let Some(mut store) = create_store() else { return };
    let a = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let b = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    let mut app = connect(&store, Some("medconnect_app"));
    let mut tx = app_tx(&mut app, &a);
    // A profile of A's own (the insert policy requires only a tenant) for the squatting links
    // to reference.
    let squatted = tx.batch_execute(
        "INSERT INTO patient_profiles (id, source_system, source_index, given_name, family_name,
                                       birth_date, sex, address_line, city, state, postal_code,
                                       created_at)
         VALUES ('squat', 's', 'i', '\\x00', '\\x00', '\\x00', '\\x00', '\\x00', '\\x00', '\\x00',
                 '\\x00', '2020-01-01T00:00:00Z');
         INSERT INTO patient_links (id, tenant_id, patient_id, created_at, phi_retention_until)
         OVERRIDING SYSTEM VALUE
         SELECT g, current_tenant(), 'squat', '2020-01-01T00:00:00Z', '2999-01-01T00:00:00Z'
         FROM generate_series(1, 1) g;",
    );
    if squatted.is_ok() {
        tx.commit().expect("commit");
    }
    let result = store.import(&b, &patient_batch("b-1", "Given1", None), &Policy::builtin(), ACTOR);
    assert!(
        result.is_ok(),
        "after tenant A's role took link id 1, tenant B's import fails: {:?}",
        result.err()
    );
}
