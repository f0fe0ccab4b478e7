//! Row-level security of the PostgreSQL schema, probed directly as the two store roles.
//!
//! Two tenants, A and B, get rows in every tenant-owned table, written through the store
//! where an operation exists and as the admin role otherwise.
//! [`isolation_violations`] then probes the schema as `medconnect_app` and
//! `medconnect_operator`. With no tenant set, every table under row-level security reads
//! empty. With tenant A set, A reads and changes exactly its own rows and nothing of B. The
//! operator reads the rows of both tenants. Each check that fails becomes one line of the returned list, so
//! the same function proves the intact schema clean and proves that dropping any one policy
//! is noticed.
//!
//! The tables are read from the catalog, not listed here, so a new table is checked as soon
//! as it exists. A new table without row-level security fails unless it joins
//! [`NON_TENANT_TABLES`], and a new tenant table fails until the seed gives it rows.

use std::collections::BTreeMap;

use ::postgres::{Client, NoTls};
use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_crypto::SecretToken;
use medconnect_domain::clock::{FixedClock, SystemClock};
use medconnect_domain::model::{
    HoldScope, ImportBatch, NewConsultation, NewHistoryEntry, NewPatientProfile, NewPrescription,
    NewProvider,
};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_store::testing::{self, Backend, TestStore};
use medconnect_store::{
    CertificateFingerprint, NewServiceToken, NewUser, Role, SessionTimes, UserRef,
};

/// Tables without row-level security, because no row of them belongs to a tenant: store
/// settings, applied migrations, the audit chain head, signed audit checkpoints and
/// lifecycle runs. The application role may read only the first three.
const NON_TENANT_TABLES: &[&str] =
    ["store_meta", "schema_migrations", "audit_head", "audit_checkpoints", "lifecycle_runs"]
        .as_slice();

/// SQLSTATE of a missing privilege and of a row that row-level security rejects.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// SQLSTATE of a violated foreign key.
const FOREIGN_KEY_VIOLATION: &str = "23503";

const APP: &str = "medconnect_app";
const OPERATOR: &str = "medconnect_operator";
const ACTOR: &str = "test";
const SOURCE_SYSTEM: &str = "test";

/// Clock of the seeded stores.
const SEEDED_AT: &str = "2024-01-01T00:00:00Z";

/// The rows of one seeded tenant that the checks refer to.
struct SeededTenant {
    id: String,
    /// The core profile linked to this tenant only.
    profile: String,
    source_index: String,
    link: i64,
}

struct Seeded {
    store: TestStore,
    a: SeededTenant,
    b: SeededTenant,
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Connects as `user` (the admin URL when `user` is None) with search_path set to the
/// store's schema.
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

/// Creates a store with tenants A and B, each with rows in every tenant-owned table.
fn seeded_store() -> Seeded {
    let mut store = Backend::Postgres.create(Box::new(FixedClock(at(SEEDED_AT))));
    let master = MasterKey::generate(1).expect("master key generated");
    store.set_master_keys(master, None).expect("master key set");
    let a = seed_tenant(&mut store, "alpha");
    let b = seed_tenant(&mut store, "beta");
    Seeded { store, a, b }
}

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

/// Writes rows of a new tenant through the store: an import (profile, link, provider,
/// consultation, prescription, history entry, data keys and audit entries), an ID photo, a
/// session, a legal hold, a patient's account with a login session, and a service token. No
/// store operation writes intake forms, so the admin role inserts those.
fn seed_tenant(store: &mut TestStore, slug: &str) -> SeededTenant {
    let tenant = store.create_tenant(slug, slug, ACTOR).expect("tenant created");
    let source_id = format!("{slug}-patient");
    store.import(&tenant, &batch(slug, &source_id), &Policy::builtin(), ACTOR).expect("import");
    let patient = store
        .find_patient(&tenant, SOURCE_SYSTEM, &source_id)
        .expect("patient looked up")
        .expect("patient imported");
    store.add_id_photo(&tenant, patient, b"photo", at(SEEDED_AT), ACTOR).expect("photo added");
    let times = SessionTimes {
        started_at: at(SEEDED_AT),
        expires_at: at(SEEDED_AT) + chrono::Duration::hours(1),
        ended_at: None,
    };
    store.add_session(&tenant, Some(patient), times).expect("session added");
    store
        .place_hold(&tenant, HoldScope::Patient(patient), "matter-1", "litigation", ACTOR)
        .expect("hold placed");
    let account = NewUser {
        tenant: Some(&tenant),
        username: "patient",
        role: Role::Patient,
        // Any argon2id PHC string will do: nobody logs in.
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
        patient: Some(patient),
    };
    let user = store.create_user(&account, ACTOR).expect("patient account created");
    let login = SecretToken::generate().expect("token generated");
    let user = UserRef { id: user, tenant_id: Some(tenant.id) };
    store
        .create_session(
            user,
            &login.hash(),
            at(SEEDED_AT),
            at(SEEDED_AT) + chrono::Duration::hours(1),
        )
        .expect("login session created");
    let service = NewServiceToken {
        tenant: &tenant,
        name: "storefront",
        role: Role::Storefront,
        token_hash: SecretToken::generate().expect("token generated").hash(),
        expires_at: None,
        client_cert: Some(CertificateFingerprint::of_der(b"storefront certificate")),
    };
    store.create_service_token(&service, ACTOR).expect("service token created");

    let (id, profile) = (tenant.id.to_string(), patient.to_string());
    let mut admin = connect(store, None);
    let link: i64 = admin
        .query_one("SELECT id FROM patient_links WHERE tenant_id = $1", &[&id])
        .expect("link found")
        .get(0);
    let source_index: String = admin
        .query_one("SELECT source_index FROM patient_profiles WHERE id = $1", &[&profile])
        .expect("profile found")
        .get(0);
    admin
        .batch_execute(&format!(
            "INSERT INTO intake_forms (id, tenant_id, link_id, form, answers_json, submitted_at)
             VALUES ('{}', '{id}', {link}, 'intake', '\\x01', '{SEEDED_AT}');",
            uuid()
        ))
        .expect("intake form seeded");
    SeededTenant { id, profile, source_index, link }
}

/// Builds a batch of one patient with a provider, a consultation, a prescription and a
/// history entry. Source ids differ per tenant, so each tenant gets a core profile of its own.
fn batch(slug: &str, source_id: &str) -> ImportBatch {
    let provider = format!("{slug}-provider");
    let visit = format!("{slug}-visit");
    let started_at = at("2023-05-01T10:00:00Z");
    ImportBatch {
        source_system: SOURCE_SYSTEM.into(),
        patients: vec![NewPatientProfile {
            source_system: SOURCE_SYSTEM.into(),
            source_id: source_id.into(),
            given_name: "Given1".into(),
            family_name: "Family1".into(),
            birth_date: "1970-01-01".into(),
            sex: "F".into(),
            address_line: "1 Main Street".into(),
            city: "Lincoln".into(),
            state: "NE".into(),
            postal_code: "68501".into(),
            ..NewPatientProfile::default()
        }],
        providers: vec![NewProvider {
            source_id: provider.clone(),
            name: "Doctor1 Provider1".into(),
            specialty: "GENERAL PRACTICE".into(),
            organization: "Clinic1".into(),
            license_number: None,
            license_state: "NE".into(),
            dea_number: None,
        }],
        consultations: vec![NewConsultation {
            source_id: visit.clone(),
            patient_source_id: source_id.into(),
            provider_source_id: Some(provider),
            status: "completed".into(),
            encounter_class: "virtual".into(),
            reason: "Follow-up".into(),
            notes: "Notes".into(),
            started_at,
            ended_at: Some(started_at + chrono::Duration::minutes(20)),
        }],
        prescriptions: vec![NewPrescription {
            patient_source_id: source_id.into(),
            consultation_source_id: Some(visit.clone()),
            code: "313782".into(),
            description: "Acetaminophen 325 MG".into(),
            dispenses: 1,
            controlled: false,
            started_at,
            stopped_at: None,
        }],
        history: vec![NewHistoryEntry {
            patient_source_id: source_id.into(),
            consultation_source_id: Some(visit),
            kind: "condition",
            code: "37796009".into(),
            description: "Migraine".into(),
            started_at,
            stopped_at: None,
        }],
    }
}

/// A table of the store's schema as the catalog describes it.
struct Table {
    name: String,
    row_security: bool,
    /// Columns an INSERT may name: all but generated and always-identity ones.
    insertable: Vec<String>,
    has_tenant_id: bool,
    has_link_id: bool,
}

/// Lists the ordinary tables of the store's schema with their columns, read as the admin.
fn schema_tables(admin: &mut Client, schema: &str) -> Vec<Table> {
    let rows = admin
        .query(
            "SELECT c.relname::text, c.relrowsecurity FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1",
            &[&schema],
        )
        .expect("tables listed");
    rows.iter()
        .map(|row| {
            let name: String = row.get(0);
            let columns = admin
                .query(
                    "SELECT column_name::text, is_generated = 'ALWAYS' OR identity_generation = 'ALWAYS'
                     FROM information_schema.columns
                     WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                    &[&schema, &name],
                )
                .expect("columns listed");
            let all: Vec<String> = columns.iter().map(|c| c.get(0)).collect();
            let insertable = columns
                .iter()
                .filter(|c| !c.get::<_, Option<bool>>(1).unwrap_or(false))
                .map(|c| c.get(0))
                .collect();
            Table {
                has_tenant_id: all.iter().any(|c| c == "tenant_id"),
                has_link_id: all.iter().any(|c| c == "link_id"),
                name,
                row_security: row.get(1),
                insertable,
            }
        })
        .collect()
}

/// Returns the WHERE condition that selects the seeded rows of `tenant` in `table`, or None
/// when the test cannot tell whose rows the table holds.
fn owner_filter(table: &Table, tenant: &SeededTenant) -> Option<String> {
    let (id, profile) = (&tenant.id, &tenant.profile);
    match table.name.as_str() {
        "tenants" => Some(format!("id = '{id}'")),
        "patient_profiles" => Some(format!("id = '{profile}'")),
        "data_keys" => Some(format!("(tenant_id = '{id}' OR owner = '{profile}')")),
        _ if table.has_tenant_id => Some(format!("tenant_id = '{id}'")),
        _ => None,
    }
}

/// Runs `sql` as one statement in a transaction that is rolled back, after setting
/// `tenant` as the current tenant when given. Returns the rows the statement counted or
/// changed, or the SQLSTATE it failed with.
fn probe(client: &mut Client, tenant: Option<&str>, sql: &str) -> Result<i64, String> {
    let mut tx = client.transaction().expect("transaction starts");
    if let Some(tenant) = tenant {
        tx.execute("SELECT set_config('medconnect.tenant', $1, true)", &[&tenant])
            .expect("tenant set");
    }
    let code = |error: ::postgres::Error| {
        error.code().map_or_else(|| error.to_string(), |code| code.code().to_owned())
    };
    let outcome = if sql.trim_start().to_ascii_uppercase().starts_with("SELECT") {
        tx.query_one(sql, &[]).map(|row| row.get::<_, i64>(0)).map_err(code)
    } else {
        tx.execute(sql, &[]).map(|rows| rows as i64).map_err(code)
    };
    tx.rollback().expect("rollback");
    outcome
}

/// Builds an INSERT that copies the first row of `source` with new ids and the values
/// in `replace`, named by column.
fn copy_row(table: &Table, source: &str, replace: &BTreeMap<&str, String>) -> String {
    let columns = table.insertable.join(", ");
    let values: Vec<String> = table
        .insertable
        .iter()
        .map(|column| match replace.get(column.as_str()) {
            Some(value) => value.clone(),
            None if column == "id" => format!("'{}'", uuid()),
            None => column.clone(),
        })
        .collect();
    format!(
        "INSERT INTO {0} ({columns}) SELECT {1} FROM {0} WHERE {source} LIMIT 1",
        table.name,
        values.join(", ")
    )
}

fn has_privilege(
    admin: &mut Client,
    role: &str,
    schema: &str,
    table: &str,
    privilege: &str,
) -> bool {
    admin
        .query_one(
            "SELECT has_table_privilege($1, format('%I.%I', $2::text, $3::text), $4)",
            &[&role, &schema, &table, &privilege],
        )
        .expect("privilege looked up")
        .get(0)
}

/// Probes the schema as the application and operator roles and returns one line per
/// broken expectation. An empty list means tenants A and B are isolated from each other
/// and each still reaches its own rows.
fn isolation_violations(seeded: &Seeded) -> Vec<String> {
    let schema = seeded.store.pg_config().expect("PostgreSQL store").schema.clone();
    let mut admin = connect(&seeded.store, None);
    let mut app = connect(&seeded.store, Some(APP));
    let mut operator = connect(&seeded.store, Some(OPERATOR));
    let (a, b) = (&seeded.a, &seeded.b);
    let tables = schema_tables(&mut admin, &schema);
    let mut violations = Vec::new();

    for table in &tables {
        let name = table.name.as_str();
        if !table.row_security {
            if !NON_TENANT_TABLES.contains(&name) {
                violations.push(format!(
                    "{name} has no row-level security and is not a known non-tenant table"
                ));
            }
            continue;
        }
        let (Some(own), Some(other)) = (owner_filter(table, a), owner_filter(table, b)) else {
            violations.push(format!("{name}: the test cannot tell which rows are a tenant's"));
            continue;
        };
        let count = |filter: &str| format!("SELECT count(*) FROM {name} WHERE {filter}");
        let own_rows = probe(&mut admin, None, &count(&own)).expect("admin counts");
        let other_rows = probe(&mut admin, None, &count(&other)).expect("admin counts");
        if own_rows == 0 || other_rows == 0 {
            violations.push(format!("{name}: the seed wrote no rows of tenant A or B"));
            continue;
        }

        // Without a tenant the application role reads nothing.
        match probe(&mut app, None, &format!("SELECT count(*) FROM {name}")) {
            Ok(0) => {}
            Err(code) if code == INSUFFICIENT_PRIVILEGE => {}
            found => violations.push(format!("{name}: no tenant set, app reads {found:?} rows")),
        }

        // With tenant A: all of A, nothing of B.
        let a_id = Some(a.id.as_str());
        match probe(&mut app, a_id, &count(&own)) {
            Ok(seen) if seen == own_rows => {}
            found => {
                violations.push(format!("{name}: tenant A reads {found:?} of its {own_rows} rows"))
            }
        }
        match probe(&mut app, a_id, &count(&other)) {
            Ok(0) => {}
            found => violations.push(format!("{name}: tenant A reads {found:?} rows of B")),
        }
        let first_column = table.insertable.first().cloned().unwrap_or_default();
        let touch = |filter: &str| {
            format!("UPDATE {name} SET {first_column} = {first_column} WHERE {filter}")
        };
        for (action, sql) in
            [("updates", touch(&other)), ("deletes", format!("DELETE FROM {name} WHERE {other}"))]
        {
            match probe(&mut app, a_id, &sql) {
                Ok(0) => {}
                Err(code) if code == INSUFFICIENT_PRIVILEGE => {}
                found => violations.push(format!("{name}: tenant A {action} {found:?} rows of B")),
            }
        }
        if has_privilege(&mut admin, APP, &schema, name, "UPDATE") {
            match probe(&mut app, a_id, &touch(&own)) {
                Ok(changed) if changed == own_rows => {}
                found => violations
                    .push(format!("{name}: tenant A updates {found:?} of its {own_rows} rows")),
            }
        }
        if table.has_tenant_id && has_privilege(&mut admin, APP, &schema, name, "INSERT") {
            let source = format!("tenant_id = '{}'", a.id);
            let to_b = BTreeMap::from([("tenant_id", format!("'{}'", b.id))]);
            match probe(&mut app, a_id, &copy_row(table, &source, &to_b)) {
                Err(code) if code == INSUFFICIENT_PRIVILEGE => {}
                found => violations.push(format!(
                    "{name}: tenant A inserting a row of B gives {found:?}, expected SQLSTATE \
                     {INSUFFICIENT_PRIVILEGE} (Ok(0): no row of A was found to copy)"
                )),
            }
        }
        if table.has_tenant_id && has_privilege(&mut admin, APP, &schema, name, "UPDATE") {
            let sql = format!("UPDATE {name} SET tenant_id = '{}' WHERE {own}", b.id);
            match probe(&mut app, a_id, &sql) {
                Err(code) if code == INSUFFICIENT_PRIVILEGE => {}
                found => violations.push(format!(
                    "{name}: tenant A moving its rows to B gives {found:?}, expected SQLSTATE \
                     {INSUFFICIENT_PRIVILEGE}"
                )),
            }
        }

        // The operator reads both tenants.
        for (tenant, filter, rows) in [("A", &own, own_rows), ("B", &other, other_rows)] {
            match probe(&mut operator, None, &count(filter)) {
                Ok(seen) if seen == rows => {}
                found => violations.push(format!(
                    "{name}: the operator reads {found:?} of the {rows} rows of {tenant}"
                )),
            }
        }
    }

    // Core profiles are shared, so any tenant may add one.
    let fresh = BTreeMap::from([
        ("id", format!("'{}'", uuid())),
        ("source_index", format!("'{}'", uuid())),
    ]);
    match tables.iter().find(|t| t.name == "patient_profiles") {
        Some(profiles) => {
            let insert = copy_row(profiles, &format!("id = '{}'", a.profile), &fresh);
            match probe(&mut app, Some(&a.id), &insert) {
                Ok(1) => {}
                found => {
                    violations.push(format!("patient_profiles: tenant A adds a profile: {found:?}"))
                }
            }
        }
        None => violations.push("the schema has no patient_profiles table".to_owned()),
    }
    violations
}

fn pg() -> bool {
    testing::postgres_available()
}

#[test]
fn store_roles_respect_row_security() {
    if !pg() {
        return;
    }
    let store = Backend::Postgres.create(Box::new(SystemClock));
    let mut admin = connect(&store, None);

    for role in [APP, OPERATOR] {
        let row = admin
            .query_one("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", &[&role])
            .expect("role exists");
        let (superuser, bypass): (bool, bool) = (row.get(0), row.get(1));
        assert!(!superuser, "{role} is a superuser");
        assert!(!bypass, "{role} may bypass row-level security");
    }
}

#[test]
fn intact_schema_isolates_tenants() {
    if !pg() {
        return;
    }
    let seeded = seeded_store();

    let violations = isolation_violations(&seeded);

    assert!(violations.is_empty(), "violations:\n{}", violations.join("\n"));
}

#[test]
fn tables_without_row_security_are_known() {
    if !pg() {
        return;
    }
    let store = Backend::Postgres.create(Box::new(SystemClock));
    let schema = store.pg_config().expect("PostgreSQL store").schema.clone();
    let mut admin = connect(&store, None);

    let tables = schema_tables(&mut admin, &schema);

    let plain: Vec<&str> =
        tables.iter().filter(|t| !t.row_security).map(|t| t.name.as_str()).collect();
    let protected = tables.iter().filter(|t| t.row_security).count();
    let mut known = NON_TENANT_TABLES.to_vec();
    known.sort_unstable();
    assert_eq!(plain, known, "tables without row-level security");
    assert!(protected >= 10, "only {protected} tables have row-level security");
}

#[test]
fn empty_tenant_reads_nothing() {
    if !pg() {
        return;
    }
    let seeded = seeded_store();
    let schema = seeded.store.pg_config().expect("PostgreSQL store").schema.clone();
    let mut admin = connect(&seeded.store, None);
    let mut app = connect(&seeded.store, Some(APP));

    for table in schema_tables(&mut admin, &schema).iter().filter(|t| t.row_security) {
        let sql = format!("SELECT count(*) FROM {}", table.name);
        let seeded_rows = probe(&mut admin, None, &sql).expect("admin counts");
        let unset = probe(&mut app, None, &sql);
        let empty = probe(&mut app, Some(""), &sql);

        assert!(seeded_rows > 0, "{} has no seeded rows", table.name);
        assert_eq!(unset, Ok(0), "{} with no tenant set", table.name);
        assert_eq!(empty, Ok(0), "{} with an empty tenant", table.name);
    }
}

/// A row of tenant A may not hang off a patient link of tenant B: row-level security does
/// not cover foreign keys, so the schema ties each link reference to the row's tenant.
#[test]
fn link_of_other_tenant_rejected() {
    if !pg() {
        return;
    }
    let seeded = seeded_store();
    let schema = seeded.store.pg_config().expect("PostgreSQL store").schema.clone();
    let mut admin = connect(&seeded.store, None);
    let mut app = connect(&seeded.store, Some(APP));
    let (a, b) = (&seeded.a, &seeded.b);
    let tables: Vec<Table> =
        schema_tables(&mut admin, &schema).into_iter().filter(|t| t.has_link_id).collect();

    assert!(tables.len() >= 6, "only {} tables reference patient links", tables.len());
    for table in &tables {
        // A row with a link, so that a CHECK tying the link to other columns (a patient
        // account's role) holds in the copy; the copies get fresh unique values too.
        let source = format!("tenant_id = '{}' AND link_id IS NOT NULL", a.id);
        let fresh = |link: i64| {
            BTreeMap::from([
                ("link_id", link.to_string()),
                ("username", format!("'{}'", uuid())),
                ("token_hash", format!("'{}'", uuid())),
            ])
        };
        let to_b_link = fresh(b.link);
        let insert = probe(&mut app, Some(&a.id), &copy_row(table, &source, &to_b_link));
        let update = probe(
            &mut app,
            Some(&a.id),
            &format!("UPDATE {} SET link_id = {} WHERE {source}", table.name, b.link),
        );
        let own_link = fresh(a.link);
        let control = probe(&mut app, Some(&a.id), &copy_row(table, &source, &own_link));

        assert_eq!(insert, Err(FOREIGN_KEY_VIOLATION.to_owned()), "insert into {}", table.name);
        // The application role may not update these rows at all; were it granted UPDATE,
        // the foreign key would still refuse B's link.
        assert!(
            update == Err(FOREIGN_KEY_VIOLATION.to_owned())
                || update == Err(INSUFFICIENT_PRIVILEGE.to_owned()),
            "update of {}: {update:?}",
            table.name
        );
        assert_eq!(control, Ok(1), "insert into {} with A's own link", table.name);
    }
}

#[test]
fn profile_by_source_returns_only_id() {
    if !pg() {
        return;
    }
    let seeded = seeded_store();
    let schema = seeded.store.pg_config().expect("PostgreSQL store").schema.clone();
    let mut admin = connect(&seeded.store, None);
    let mut app = connect(&seeded.store, Some(APP));
    let (a, b) = (&seeded.a, &seeded.b);

    let signature = admin
        .query_one(
            "SELECT format_type(p.prorettype, NULL), p.proretset, p.prosecdef,
                    coalesce(array_to_string(p.proconfig, ','), '')
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = $1 AND p.proname = 'profile_by_source'",
            &[&schema],
        )
        .expect("function found");
    let mut tx = app.transaction().expect("transaction");
    tx.execute("SELECT set_config('medconnect.tenant', $1, true)", &[&a.id]).expect("tenant");
    let found: Option<String> = tx
        .query_one("SELECT profile_by_source($1, $2)", &[&SOURCE_SYSTEM, &b.source_index])
        .expect("function runs")
        .get(0);
    let row_visible: i64 = tx
        .query_one("SELECT count(*) FROM patient_profiles WHERE id = $1", &[&b.profile])
        .expect("profile counted")
        .get(0);
    let missing: Option<String> = tx
        .query_one("SELECT profile_by_source($1, $2)", &[&SOURCE_SYSTEM, &uuid()])
        .expect("function runs")
        .get(0);
    drop(tx);

    assert_eq!(signature.get::<_, String>(0), "text", "returns one text value");
    assert!(!signature.get::<_, bool>(1), "returns no set of rows");
    assert!(signature.get::<_, bool>(2), "runs as its owner, across tenants");
    let config: String = signature.get(3);
    assert!(config.contains("search_path=pg_catalog"), "search_path pinned: {config}");
    assert_eq!(found.as_deref(), Some(b.profile.as_str()), "finds B's profile by index");
    assert_eq!(row_visible, 0, "the profile itself stays hidden from tenant A");
    assert_eq!(missing, None);
}

/// A view by the owner that sets security_invoker applies the caller's policies. A view
/// without it reads as its owner. The owner here is the admin, a superuser that row-level
/// security never stops, so such a view shows every tenant.
#[test]
fn owner_views_need_security_invoker() {
    if !pg() {
        return;
    }
    let seeded = seeded_store();
    let mut admin = connect(&seeded.store, None);
    let mut app = connect(&seeded.store, Some(APP));
    let (a, b) = (&seeded.a, &seeded.b);
    admin
        .batch_execute(&format!(
            "CREATE VIEW invoker_providers WITH (security_invoker = true)
                 AS SELECT * FROM providers;
             CREATE VIEW definer_providers AS SELECT * FROM providers;
             GRANT SELECT ON invoker_providers, definer_providers TO {APP};"
        ))
        .expect("views created");
    let count = |view: &str, tenant: &str| {
        format!("SELECT count(*) FROM {view} WHERE tenant_id = '{tenant}'")
    };

    let invoker_own = probe(&mut app, Some(&a.id), &count("invoker_providers", &a.id));
    let invoker_other = probe(&mut app, Some(&a.id), &count("invoker_providers", &b.id));
    let definer_other = probe(&mut app, Some(&a.id), &count("definer_providers", &b.id));

    assert_eq!(invoker_own, Ok(1));
    assert_eq!(invoker_other, Ok(0), "a security_invoker view hides B");
    assert_eq!(definer_other, Ok(1), "a view without security_invoker reads as its owner");
}

/// The application role cannot add views or functions to the schema. What it can create
/// elsewhere (temporary objects) runs with its own rights, so it reads no more of B.
#[test]
fn app_objects_see_no_more() {
    if !pg() {
        return;
    }
    let seeded = seeded_store();
    let schema = seeded.store.pg_config().expect("PostgreSQL store").schema.clone();
    let mut admin = connect(&seeded.store, None);
    let mut app = connect(&seeded.store, Some(APP));
    let (a, b) = (&seeded.a, &seeded.b);

    let may_create: bool = admin
        .query_one("SELECT has_schema_privilege($1, $2, 'CREATE')", &[&APP, &schema])
        .expect("privilege looked up")
        .get(0);
    let view = probe(&mut app, None, "CREATE VIEW app_view AS SELECT * FROM providers");
    let function = probe(
        &mut app,
        None,
        "CREATE FUNCTION app_function() RETURNS bigint LANGUAGE sql SECURITY DEFINER
         AS 'SELECT count(*) FROM providers'",
    );
    app.batch_execute(
        "CREATE TEMPORARY VIEW temp_providers AS SELECT * FROM providers;
         CREATE FUNCTION pg_temp.count_providers(tenant text) RETURNS bigint
             LANGUAGE sql SECURITY DEFINER
             AS 'SELECT count(*) FROM providers WHERE tenant_id = tenant';",
    )
    .expect("temporary objects created");
    let temp_view = probe(
        &mut app,
        Some(&a.id),
        &format!("SELECT count(*) FROM temp_providers WHERE tenant_id = '{}'", b.id),
    );
    let temp_function =
        probe(&mut app, Some(&a.id), &format!("SELECT pg_temp.count_providers('{}')", b.id));
    let temp_function_own =
        probe(&mut app, Some(&a.id), &format!("SELECT pg_temp.count_providers('{}')", a.id));

    assert!(!may_create, "{APP} may create objects in the store's schema");
    assert_eq!(view, Err(INSUFFICIENT_PRIVILEGE.to_owned()));
    assert_eq!(function, Err(INSUFFICIENT_PRIVILEGE.to_owned()));
    assert_eq!(temp_view, Ok(0));
    assert_eq!(temp_function, Ok(0));
    assert_eq!(temp_function_own, Ok(1));
}

/// Each policy is dropped in a store of its own, and the isolation check must notice.
#[test]
fn dropped_policy_detected() {
    if !pg() {
        return;
    }
    let policies: Vec<(String, String)> = {
        let store = Backend::Postgres.create(Box::new(SystemClock));
        let schema = store.pg_config().expect("PostgreSQL store").schema.clone();
        let mut admin = connect(&store, None);
        admin
            .query(
                "SELECT tablename::text, policyname::text FROM pg_policies
                 WHERE schemaname = $1 ORDER BY 1, 2",
                &[&schema],
            )
            .expect("policies listed")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    };
    assert!(policies.len() >= 20, "only {} policies", policies.len());

    // Stores are independent, so a few threads check them side by side.
    let threads = 4;
    let missed: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|offset| {
                let policies = &policies;
                scope.spawn(move || {
                    policies
                        .iter()
                        .skip(offset)
                        .step_by(threads)
                        .filter(|(table, policy)| !drop_is_noticed(table, policy))
                        .map(|(table, policy)| format!("{policy} on {table}"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("checking thread")).collect()
    });

    assert!(missed.is_empty(), "dropping these policies went unnoticed: {missed:?}");
}

fn drop_is_noticed(table: &str, policy: &str) -> bool {
    let seeded = seeded_store();
    let mut admin = connect(&seeded.store, None);
    admin
        .batch_execute(&format!("DROP POLICY \"{policy}\" ON \"{table}\""))
        .expect("policy dropped");
    drop(admin);
    !isolation_violations(&seeded).is_empty()
}

/// Loosening a policy instead of dropping it is noticed as well: a USING clause that lets
/// every row through, or a WITH CHECK clause that accepts any tenant.
#[test]
fn loosened_policy_detected() {
    if !pg() {
        return;
    }
    let cases = [
        "ALTER POLICY providers_app ON providers USING (true)",
        "ALTER POLICY audit_log_app ON audit_log WITH CHECK (true)",
        "ALTER POLICY data_keys_app ON data_keys USING (true)",
        "ALTER POLICY tenants_app ON tenants USING (id IS NOT NULL)",
    ];

    for change in cases {
        let seeded = seeded_store();
        connect(&seeded.store, None).batch_execute(change).expect("policy changed");

        let violations = isolation_violations(&seeded);

        assert!(!violations.is_empty(), "unnoticed: {change}");
    }
}

/// The data_keys policy lets any tenant add a key for any core profile, even one linked only
/// to another tenant.
#[test]
fn profile_key_of_other_tenant_accepted() {
    if !pg() {
        return;
    }
    let seeded = seeded_store();
    let mut app = connect(&seeded.store, Some(APP));
    let (a, b) = (&seeded.a, &seeded.b);

    let insert = probe(
        &mut app,
        Some(&a.id),
        &format!(
            "INSERT INTO data_keys (id, scope, owner, tenant_id, version, wrapped,
                 master_version, created_at)
             VALUES ('{}', 'profile', '{}', NULL, 2, '\\x00', 1, '2024-01-01T00:00:00Z')",
            uuid(),
            b.profile
        ),
    );

    // TODO: tenant A can add a key version to a profile linked only to tenant B, which B's
    // next write to that profile would use. Rejecting it needs a SECURITY DEFINER check that
    // the profile is linked to the current tenant or to no tenant yet.
    assert_eq!(insert, Ok(1));
}
