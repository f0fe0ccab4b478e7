//! What a PostgreSQL store does when its server cannot be reached, drops its connections, or
//! holds a schema of another version.

use medconnect_domain::clock::SystemClock;
use medconnect_store::testing::{admin_url, postgres_available, Backend};
use medconnect_store::{PgConfig, PgStore, Store, StoreError};

fn admin() -> ::postgres::Client {
    ::postgres::Client::connect(&admin_url(), ::postgres::NoTls).expect("admin connection")
}

#[test]
fn unreachable_server_is_reported_without_password() {
    // Port 1 on loopback refuses connections at once.
    let mut config = PgConfig::new("postgres://medconnect_app:s3cret-pass@127.0.0.1:1/test");
    config.schema = "unused".into();
    let error = PgStore::open(&config).err().expect("no server answers");
    let message = error.to_string();
    assert!(matches!(error, StoreError::PostgresUnreachable { attempts: 5, .. }), "{message}");
    assert!(message.contains("127.0.0.1:1/test"), "{message}");
    assert!(message.contains("database_url"), "the message names the setting: {message}");
    assert!(!message.contains("s3cret-pass"), "{message}");
}

#[test]
fn malformed_url_is_named_but_not_shown() {
    let config = PgConfig::new("postgres://user:pa ss@[::1/oops");
    let message = PgStore::open(&config).err().expect("rejected").to_string();
    assert!(message.contains("database_url"), "{message}");
    assert!(!message.contains("pa ss"), "{message}");
}

#[test]
fn tls_requirement_is_refused_clearly() {
    let config = PgConfig::new("postgres://127.0.0.1/test?sslmode=require");
    let message = PgStore::open(&config).err().expect("rejected").to_string();
    assert!(message.contains("sslmode=require"), "{message}");
}

#[test]
fn schema_name_must_be_plain() {
    for schema in ["", "Clinic", "a-b", "x\"; DROP SCHEMA public; --", "9lives", "pg_clinic"] {
        let mut config = PgConfig::new("postgres://127.0.0.1/test");
        config.schema = schema.into();
        let error = PgStore::open(&config).err().expect("rejected");
        assert!(matches!(error, StoreError::PostgresConfig(_)), "{schema:?}: {error}");
    }
}

#[test]
fn missing_store_and_newer_schema_are_refused() {
    if !postgres_available() {
        return;
    }
    let store = Backend::Postgres.create(Box::new(SystemClock));
    let config = store.pg_config().expect("PostgreSQL store").clone();

    let mut empty = config.clone();
    empty.schema = format!("{}_none", config.schema);
    let error = PgStore::open(&empty).err().expect("no store there");
    assert!(matches!(error, StoreError::PostgresNotInitialized(_)), "{error}");

    admin()
        .execute(
            &format!(
                "INSERT INTO \"{}\".schema_migrations (version, name, applied_at)
                 VALUES (99, 'future', '2030-01-01T00:00:00Z')",
                config.schema
            ),
            &[],
        )
        .expect("a migration from a newer release");
    let error = PgStore::open(&config).err().expect("newer schema refused");
    assert!(matches!(error, StoreError::SchemaTooNew { found: 99, .. }), "{error}");
}

#[test]
fn superuser_connection_is_refused() {
    if !postgres_available() {
        return;
    }
    let store = Backend::Postgres.create(Box::new(SystemClock));
    let mut config = store.pg_config().expect("PostgreSQL store").clone();
    config.database_url = admin_url();
    let error = PgStore::open(&config).err().expect("superuser refused");
    let message = error.to_string();
    assert!(message.contains("row-level security"), "{message}");
}

#[test]
fn dropped_connections_are_reopened() {
    if !postgres_available() {
        return;
    }
    let store = Backend::Postgres.create(Box::new(SystemClock));
    let mut config = store.pg_config().expect("PostgreSQL store").clone();
    config.node = format!("dropped-{}", config.schema);
    let mut node = PgStore::open(&config).expect("node");
    let tenant = node.create_tenant("clinic", "Clinic", "test").expect("tenant");

    // The server ends both of the node's sessions, as a restart or failover would.
    let ended: i64 = admin()
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                   WHERE application_name = $1) AS t",
            &[&config.node],
        )
        .expect("terminate")
        .get(0);
    assert_eq!(ended, 2, "the node had an application and an operator session");

    let found = node.tenant_by_slug("clinic").expect("the next call reconnects");
    assert_eq!(found.id, tenant.id);
    let second = node.create_tenant("practice", "Practice", "test").expect("writes go on");
    assert_eq!(node.tenants().expect("tenants").len(), 2);
    assert_eq!(node.tenant(second.id).expect("tenant").slug, "practice");
    assert!(node.verify_audit().expect("verify").ok, "the chain stays whole");
}

#[test]
fn roles_cannot_be_swapped() {
    if !postgres_available() {
        return;
    }
    let store = Backend::Postgres.create(Box::new(SystemClock));
    let config = store.pg_config().expect("PostgreSQL store").clone();

    // The operator role on the application connection would see every tenant.
    let mut swapped = config.clone();
    swapped.database_url = format!("{}?user=medconnect_operator", config.database_url);
    let url: ::postgres::Config = config.database_url.parse().expect("test URL");
    let host = match url.get_hosts().first() {
        Some(::postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = url.get_ports().first().copied().unwrap_or(5432);
    let dbname = url.get_dbname().unwrap_or("test").to_owned();
    swapped.database_url = format!("postgres://medconnect_operator@{host}:{port}/{dbname}");
    let message = PgStore::open(&swapped).err().expect("operator as app refused").to_string();
    assert!(message.contains("database_url"), "{message}");
    assert!(message.contains("medconnect_app"), "{message}");

    // The application role on the operator connection would see nothing and report
    // empty lists as if they were true.
    let mut swapped = config.clone();
    swapped.operator_database_url =
        Some(format!("postgres://medconnect_app@{host}:{port}/{dbname}"));
    let message = PgStore::open(&swapped).err().expect("app as operator refused").to_string();
    assert!(message.contains("operator_database_url"), "{message}");
}

#[test]
fn store_is_created_only_where_the_nodes_look() {
    if !postgres_available() {
        return;
    }
    let schema = medconnect_store::testing::unique_schema();
    let config = medconnect_store::testing::pg_config(&schema);
    let mut elsewhere: ::postgres::Config = admin_url().parse().expect("admin URL");
    elsewhere.dbname("postgres");
    let user = elsewhere.get_user().unwrap_or("postgres").to_owned();
    let (host, port) = match (elsewhere.get_hosts().first(), elsewhere.get_ports().first()) {
        (Some(::postgres::config::Host::Tcp(host)), Some(port)) => (host.clone(), *port),
        _ => ("127.0.0.1".to_owned(), 5432),
    };
    let other = format!("postgres://{user}@{host}:{port}/postgres");
    let error = PgStore::create(
        &config,
        &other,
        medconnect_store::ClockMode::Simulated,
        Box::new(SystemClock),
    )
    .err()
    .expect("mismatch refused");
    assert!(matches!(error, StoreError::PostgresConfig(_)), "{error}");
    let exists: bool = admin()
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&schema])
        .expect("query")
        .get(0);
    assert!(!exists, "nothing was created");
}

#[test]
fn migrating_a_schema_without_store_creates_nothing() {
    if !postgres_available() {
        return;
    }
    let schema = medconnect_store::testing::unique_schema();
    let config = medconnect_store::testing::pg_config(&schema);
    let error = PgStore::migrate(&config, &admin_url()).expect_err("no store to migrate");
    assert!(matches!(error, StoreError::PostgresNotInitialized(_)), "{error}");
    let exists: bool = admin()
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&schema])
        .expect("query")
        .get(0);
    assert!(!exists, "the schema was not left behind");
}
