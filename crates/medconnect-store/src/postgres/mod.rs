//! The scale-out backend: one PostgreSQL schema shared by several `medconnect` nodes.
//!
//! A store holds two connections. Work on one tenant's rows runs on the application
//! connection, as `medconnect_app`, in a transaction that names the tenant in the setting
//! `medconnect.tenant`; row-level security then hides every other tenant's rows, so a bug in
//! a query cannot reach across tenants. Jobs that span tenants (lifecycle runs, policy
//! application, key rotation, audit maintenance, tenant administration) run on the operator
//! connection, as `medconnect_operator`, and record what they did in the audit log. Neither
//! role may be a superuser or bypass row-level security; [`PgStore::open`] checks both.
//!
//! Several nodes coordinate through the database alone: appends to the audit chain queue on
//! the row of `audit_head`, and disposals claim rows with `FOR UPDATE SKIP LOCKED`, so a row
//! one node is disposing of is skipped by the others and released if that node dies.

mod access;
mod accounts;
mod audit;
mod chain;
mod clinical;
mod import;
mod intake;
mod keys;
mod ledger;
mod lifecycle;
mod records;
mod rotation;

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use medconnect_domain::audit::{AuditEvent, GENESIS_HASH};
use medconnect_domain::clock::{Clock, SystemClock};
use medconnect_domain::time::format_instant;
use medconnect_domain::TenantId;
use postgres::{Client, IsolationLevel, NoTls, Transaction};

pub(crate) use chain::PgAudit;

use crate::sqlite::values::parse_stored_instant;
use crate::{ClockMode, Result, StoreError, StoreInfo};

/// Schema of the store when the configuration names none.
pub const DEFAULT_SCHEMA: &str = "medconnect";

/// Role of the application connection. Row-level security confines it to one tenant.
pub const APP_ROLE: &str = "medconnect_app";

/// Role of the operator connection, for jobs that span tenants.
pub const OPERATOR_ROLE: &str = "medconnect_operator";

/// Schema migrations in order. The version of each is its position plus one.
const MIGRATIONS: &[(&str, &str)] = &[
    ("initial", include_str!("../../migrations/postgres/0001_initial.sql")),
    ("accounts", include_str!("../../migrations/postgres/0002_accounts.sql")),
    ("token_client_cert", include_str!("../../migrations/postgres/0003_token_client_cert.sql")),
    (
        "id_photo_content_type",
        include_str!("../../migrations/postgres/0004_id_photo_content_type.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Key of the advisory lock that serializes creating roles and migrating schemas.
const MIGRATION_LOCK: i64 = 0x6d65_6463_6f6e_6e01;

/// Names the admin URL in messages.
const ADMIN_SETTING: &str = "the admin URL (--admin-url or MEDCONNECT_ADMIN_DATABASE_URL)";

/// How often a connection or a transaction is tried before its error is returned.
const ATTEMPTS: u32 = 5;

/// Wait before the second attempt; it doubles for each attempt after that.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A transaction left idle this long is ended by the server, which releases the rows a
/// stuck node had claimed.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

/// Location of a PostgreSQL store and the URLs the nodes connect with.
#[derive(Clone)]
pub struct PgConfig {
    /// URL of the application connection. Without a user name it connects as
    /// [`APP_ROLE`].
    pub database_url: String,
    /// URL of the operator connection. Without it, `database_url` with the user
    /// [`OPERATOR_ROLE`].
    pub operator_database_url: Option<String>,
    /// Schema that contains the store's tables.
    pub schema: String,
    /// Name of this node in lifecycle runs and connection listings.
    pub node: String,
}

impl PgConfig {
    /// Creates a configuration with the default schema and the host name as node name.
    pub fn new(database_url: impl Into<String>) -> Self {
        PgConfig {
            database_url: database_url.into(),
            operator_database_url: None,
            schema: DEFAULT_SCHEMA.to_owned(),
            node: default_node_name(),
        }
    }

    fn validate(&self) -> Result<()> {
        let valid = !self.schema.is_empty()
            && self.schema.len() <= 63
            && self.schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && !self.schema.starts_with("pg_")
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(StoreError::PostgresConfig(format!(
                "database_schema {:?} is not usable: use 1 to 63 lower-case letters, digits \
                 and underscores, starting with a letter or underscore but not with pg_",
                self.schema
            )));
        }
        Ok(())
    }

    fn app_config(&self) -> Result<postgres::Config> {
        role_config(&self.database_url, "database_url", APP_ROLE)
    }

    fn operator_config(&self) -> Result<postgres::Config> {
        match &self.operator_database_url {
            Some(url) => role_config(url, "operator_database_url", OPERATOR_ROLE),
            None => {
                let mut config = parse_url(&self.database_url, "database_url")?;
                config.user(OPERATOR_ROLE);
                Ok(config)
            }
        }
    }
}

/// URLs can carry passwords, so only the schema and node are shown.
impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("schema", &self.schema)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn default_node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() { "node".to_owned() } else { host };
    format!("{host}:{}", std::process::id())
}

fn parse_url(url: &str, setting: &str) -> Result<postgres::Config> {
    let config = postgres::Config::from_str(url).map_err(|_| {
        StoreError::PostgresConfig(format!(
            "{setting} is not a PostgreSQL URL: write it as \
             postgres://USER@HOST:PORT/DATABASE (the value is not shown because it may hold \
             a password)"
        ))
    })?;
    // TODO: TLS to the database server. Until then connections are in the clear, so the
    // server belongs on loopback, a Unix socket or a private network.
    if config.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(StoreError::PostgresConfig(format!(
            "{setting} asks for sslmode=require, but this medconnect connects to PostgreSQL \
             without TLS: reach the server over loopback, a Unix socket or a private network \
             and remove sslmode from the URL"
        )));
    }
    Ok(config)
}

fn role_config(url: &str, setting: &str, default_user: &str) -> Result<postgres::Config> {
    let mut config = parse_url(url, setting)?;
    if config.get_user().is_none() {
        config.user(default_user);
    }
    Ok(config)
}

/// Host, port, database and role of a connection, for messages. Never the password. A host
/// with `@` in it comes from a password with `@` that was not percent-encoded, so it is not
/// shown.
fn target(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) if host.contains('@') => {
            "(host not shown: percent-encode @ in the password as %40)".to_owned()
        }
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let dbname = config.get_dbname().unwrap_or(user);
    format!("{host}:{port}/{dbname} as role {user}")
}

/// Host, port and database a connection reaches, for comparing two URLs.
fn database_of(config: &postgres::Config) -> (String, u16, String) {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().or(config.get_user()).unwrap_or_default().to_owned();
    (host, port, dbname)
}

/// Returns the messages of `error`'s chain, so that "error connecting to server" gets its cause.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Connects, retrying with backoff while the server cannot be reached. `setting` names
/// where the URL came from, for messages.
fn connect(config: &postgres::Config, setting: &str) -> Result<Client> {
    let mut wait = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match config.connect(NoTls) {
            Ok(client) => return Ok(client),
            Err(error) => match error.as_db_error() {
                // A database that does not exist will not exist on the next attempt either.
                Some(db) if db.code().code() == "3D000" => {
                    return Err(StoreError::PostgresConfig(format!(
                        "{setting} names a database that does not exist on {}: create it \
                         (createdb) or fix the URL",
                        target(config)
                    )))
                }
                // A server that replies with an error (unknown role, failed authentication)
                // replies the same way on the next attempt.
                Some(_) => return Err(error.into()),
                None if error.to_string().contains("invalid configuration") => {
                    return Err(StoreError::PostgresConfig(format!(
                        "{setting} cannot be used ({}): write it as \
                         postgres://USER@HOST:PORT/DATABASE",
                        with_causes(&error)
                    )))
                }
                None if attempt >= ATTEMPTS => {
                    return Err(StoreError::PostgresUnreachable {
                        target: target(config),
                        setting: setting.to_owned(),
                        attempts: attempt,
                        reason: with_causes(&error),
                    })
                }
                None => {
                    tracing::warn!(
                        attempt,
                        target = %target(config),
                        error = %with_causes(&error).to_lowercase(),
                        "database server not reachable, retrying"
                    );
                    std::thread::sleep(wait);
                    wait *= 2;
                    attempt += 1;
                }
            },
        }
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One role's connection, reopened when the server drops it.
struct RoleConnection {
    client: Client,
    config: postgres::Config,
    /// Setting the URL came from, for messages.
    setting: &'static str,
    schema: String,
    node: String,
}

impl RoleConnection {
    fn open(
        config: postgres::Config,
        setting: &'static str,
        schema: &str,
        node: &str,
    ) -> Result<Self> {
        let client = Self::prepare(connect(&config, setting)?, schema, node)?;
        Ok(RoleConnection {
            client,
            config,
            setting,
            schema: schema.to_owned(),
            node: node.to_owned(),
        })
    }

    fn prepare(mut client: Client, schema: &str, node: &str) -> Result<Client> {
        client.batch_execute(&format!(
            "SET search_path TO {};
             SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}';",
            quote_ident(schema)
        ))?;
        client.execute("SELECT set_config('application_name', $1, false)", &[&node])?;
        Ok(client)
    }

    fn ensure_open(&mut self) -> Result<()> {
        if self.client.is_closed() {
            tracing::warn!(target = %target(&self.config), "database connection lost, reconnecting");
            self.client =
                Self::prepare(connect(&self.config, self.setting)?, &self.schema, &self.node)?;
        }
        Ok(())
    }

    /// Refuses a role that would see past row-level security, and one that is not a member
    /// of `expected` or is a member of `other`: the application connection must see one
    /// tenant only, and the operator connection every tenant.
    fn check_role(&mut self, expected: &str, other: &str) -> Result<()> {
        let row = self.client.query_one(
            "SELECT current_user::text, rolsuper, rolbypassrls,
                    pg_has_role(current_user, $1, 'MEMBER'), pg_has_role(current_user, $2, 'MEMBER')
             FROM pg_roles WHERE rolname = current_user",
            &[&expected, &other],
        )?;
        let role: String = row.get(0);
        let (superuser, bypass): (bool, bool) = (row.get(1), row.get(2));
        let (is_expected, is_other): (bool, bool) = (row.get(3), row.get(4));
        let setting = self.setting;
        if superuser || bypass {
            return Err(StoreError::PostgresConfig(format!(
                "{setting} connects as role {role}, a superuser or a role that may bypass \
                 row-level security, so tenant isolation would rest on the application alone: \
                 connect as {APP_ROLE} and {OPERATOR_ROLE} (created by `medconnect init`)"
            )));
        }
        if !is_expected || is_other {
            return Err(StoreError::PostgresConfig(format!(
                "{setting} connects as role {role}, which must be {expected} (or a member of \
                 it) and not {other}: fix the user name in the URL"
            )));
        }
        Ok(())
    }
}

/// Errors worth running the whole transaction again for: a lost connection, a deadlock, a
/// serialization failure, or a server shutting down.
fn retryable(error: &StoreError, connection_lost: bool) -> bool {
    match error {
        // Errors the client raises itself (a value of the wrong type, a protocol error) come
        // back the same on every attempt. Only a lost connection is worth another.
        StoreError::Postgres { code: None, .. } => connection_lost,
        StoreError::Postgres { code: Some(code), .. } => {
            code == "40001" || code == "40P01" || code.starts_with("08") || code == "57P01"
        }
        _ => false,
    }
}

/// A store in one PostgreSQL schema.
pub struct PgStore {
    app: RefCell<RoleConnection>,
    operator: RefCell<RoleConnection>,
    config: PgConfig,
    clock: Box<dyn Clock>,
    clock_mode: ClockMode,
    keys: Option<crate::keys::Keys>,
}

impl PgStore {
    /// Creates the roles (when missing), the schema and a new store in it, connecting with
    /// `admin_url` as a role that may create roles and schemas. Fails if the schema already
    /// holds a store.
    pub fn create(
        config: &PgConfig,
        admin_url: &str,
        clock_mode: ClockMode,
        clock: Box<dyn Clock>,
    ) -> Result<Self> {
        config.validate()?;
        let admin_config = parse_url(admin_url, ADMIN_SETTING)?;
        let app_config = config.app_config()?;
        if database_of(&admin_config) != database_of(&app_config) {
            return Err(StoreError::PostgresConfig(format!(
                "{ADMIN_SETTING} names {} but database_url names {}: both must name the same \
                 server and database, or the store is created where the nodes never look",
                target(&admin_config),
                target(&app_config)
            )));
        }
        let mut admin = connect(&admin_config, ADMIN_SETTING)?;
        let now = clock.now();
        let mut tx = admin.transaction()?;
        migrate_in(&mut tx, &config.schema)?;
        let exists = tx.query_opt("SELECT 1 FROM store_meta WHERE key = 'created_at'", &[])?;
        if exists.is_some() {
            return Err(StoreError::PostgresStoreExists(config.schema.clone()));
        }
        tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('clock_mode', $1), ('created_at', $2)",
            &[&clock_mode.as_str(), &format_instant(now)],
        )?;
        tx.execute("INSERT INTO audit_head (seq, hash) VALUES (0, $1)", &[&GENESIS_HASH])?;
        // The first entry makes an emptied log detectable.
        let mut audit = PgAudit::begin(&mut tx, now, clock_mode == ClockMode::Simulated)?;
        let event = AuditEvent::new("medconnect", "store.create").detail(format!(
            "{} clock, postgres schema version {SCHEMA_VERSION}",
            clock_mode.as_str()
        ));
        audit.append(&mut tx, event)?;
        audit.finish(&mut tx)?;
        tx.commit()?;
        let mut store = PgStore::open(config)?;
        store.clock = clock;
        Ok(store)
    }

    /// Applies pending migrations to an existing store, connecting with `admin_url`.
    /// Returns the schema version before and after.
    pub fn migrate(config: &PgConfig, admin_url: &str) -> Result<(i64, i64)> {
        config.validate()?;
        let mut admin = connect(&parse_url(admin_url, ADMIN_SETTING)?, ADMIN_SETTING)?;
        let mut tx = admin.transaction()?;
        let before = migrate_in(&mut tx, &config.schema)?;
        // Migrating a schema that holds no store would leave tables no node can open; the
        // transaction is dropped, so nothing is created.
        let created = tx.query_opt("SELECT 1 FROM store_meta WHERE key = 'created_at'", &[])?;
        if created.is_none() {
            return Err(StoreError::PostgresNotInitialized(config.schema.clone()));
        }
        tx.commit()?;
        Ok((before, SCHEMA_VERSION))
    }

    /// Opens the store in the configured schema as the application and operator roles.
    pub fn open(config: &PgConfig) -> Result<Self> {
        config.validate()?;
        let mut app = RoleConnection::open(
            config.app_config()?,
            "database_url",
            &config.schema,
            &config.node,
        )?;
        let mut operator = RoleConnection::open(
            config.operator_config()?,
            "operator_database_url (default: database_url as medconnect_operator)",
            &config.schema,
            &config.node,
        )?;
        app.check_role(APP_ROLE, OPERATOR_ROLE)?;
        operator.check_role(OPERATOR_ROLE, APP_ROLE)?;
        let found = schema_version(&mut operator.client, &config.schema)?;
        match found {
            0 => return Err(StoreError::PostgresNotInitialized(config.schema.clone())),
            found if found > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION })
            }
            found if found < SCHEMA_VERSION => {
                return Err(StoreError::PostgresSchemaBehind { found, supported: SCHEMA_VERSION })
            }
            _ => {}
        }
        let clock_mode = match meta_value(&mut operator.client, "clock_mode")?.as_deref() {
            Some("simulated") => ClockMode::Simulated,
            Some("production") => ClockMode::Production,
            other => return Err(StoreError::Corrupt(format!("unknown clock mode {other:?}"))),
        };
        Ok(PgStore {
            app: RefCell::new(app),
            operator: RefCell::new(operator),
            config: config.clone(),
            clock: Box::new(SystemClock),
            clock_mode,
            keys: None,
        })
    }

    /// Drops the schema and everything in it. Tests use it to remove their stores.
    pub fn drop_schema(admin_url: &str, schema: &str) -> Result<()> {
        let mut admin = connect(&parse_url(admin_url, ADMIN_SETTING)?, ADMIN_SETTING)?;
        admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)))?;
        Ok(())
    }

    /// Replaces the clock that stamps audit entries and new records.
    pub fn set_clock(&mut self, clock: Box<dyn Clock>) {
        self.clock = clock;
    }

    pub fn clock_mode(&self) -> ClockMode {
        self.clock_mode
    }

    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn simulated(&self) -> bool {
        self.clock_mode == ClockMode::Simulated
    }

    fn keys(&self) -> Result<&crate::keys::Keys> {
        self.keys.as_ref().ok_or(StoreError::MasterKeyRequired)
    }

    /// Runs `work` in a transaction on the application connection with `tenant` as the
    /// tenant that row-level security lets it see, and commits.
    pub(crate) fn tenant_tx<T>(
        &self,
        tenant: TenantId,
        work: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        run_tx(&self.app, Some(tenant), TxMode::ReadCommitted, work)
    }

    /// Runs `work` in a transaction on the operator connection, which reads every tenant.
    pub(crate) fn operator_tx<T>(
        &self,
        work: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        run_tx(&self.operator, None, TxMode::ReadCommitted, work)
    }

    /// Runs `work` on the operator connection in a read-only transaction whose statements
    /// all see one snapshot, so rows that other nodes commit meanwhile never mix two states
    /// of the store into one result.
    pub(crate) fn operator_snapshot<T>(
        &self,
        work: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        run_tx(&self.operator, None, TxMode::Snapshot, work)
    }

    /// Runs `work` as [`Self::operator_snapshot`] does, but never a second time, for work
    /// whose effects outside the database (lines already written to an export) a second run
    /// would repeat.
    pub(crate) fn operator_snapshot_once<T>(
        &self,
        work: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        run_tx(&self.operator, None, TxMode::SnapshotOnce, work)
    }

    fn read_info(&self) -> Result<StoreInfo> {
        let created = self.operator_tx(|tx| {
            let row = tx.query_opt("SELECT value FROM store_meta WHERE key = 'created_at'", &[])?;
            row.map(|row| row.get::<_, String>(0))
                .ok_or_else(|| StoreError::Corrupt("store_meta has no created_at".into()))
        })?;
        Ok(StoreInfo {
            schema_version: SCHEMA_VERSION,
            clock: self.clock_mode,
            created_at: parse_stored_instant(&created)?,
            backend: "postgres",
            location: format!(
                "{} schema {}",
                target(&self.operator.borrow().config),
                self.config.schema
            ),
        })
    }
}

/// Isolation level and retries of a [`run_tx`] transaction.
#[derive(Clone, Copy)]
enum TxMode {
    /// Read committed, the server's default: each statement reads what was committed before it.
    ReadCommitted,
    /// Repeatable read and read only: every statement reads the snapshot of the first one.
    Snapshot,
    /// As `Snapshot`, but the work runs once, so an error is returned without a retry.
    SnapshotOnce,
}

/// Runs `work` in one transaction and commits. A lost connection, a deadlock or a
/// serialization failure before the commit rolls everything back, so the whole transaction
/// runs again, after a backoff, up to [`ATTEMPTS`] times. An error during the commit itself
/// is returned as it is, because the transaction may have committed. In
/// [`TxMode::SnapshotOnce`] every error is returned as it is.
fn run_tx<T>(
    connection: &RefCell<RoleConnection>,
    tenant: Option<TenantId>,
    mode: TxMode,
    mut work: impl FnMut(&mut Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let mut connection = connection.borrow_mut();
    let attempts = match mode {
        TxMode::SnapshotOnce => 1,
        TxMode::ReadCommitted | TxMode::Snapshot => ATTEMPTS,
    };
    let mut wait = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        connection.ensure_open()?;
        match attempt_tx(&mut connection.client, tenant, mode, &mut work) {
            Ok(value) => return Ok(value),
            // The transaction may have committed, so running it again could repeat it.
            Err(Failure::AtCommit(error)) => return Err(error),
            Err(Failure::BeforeCommit(error)) => {
                if !retryable(&error, connection.client.is_closed()) || attempt >= attempts {
                    return Err(error);
                }
                tracing::warn!(attempt, %error, "transaction failed, retrying");
                std::thread::sleep(wait);
                wait *= 2;
                attempt += 1;
            }
        }
    }
}

/// Failure of one attempt of a transaction.
enum Failure {
    /// Before COMMIT was sent: nothing of the attempt is stored.
    BeforeCommit(StoreError),
    /// During COMMIT: the outcome is unknown.
    AtCommit(StoreError),
}

/// Runs one attempt of a transaction: BEGIN, the tenant setting, `work` and COMMIT.
fn attempt_tx<T>(
    client: &mut Client,
    tenant: Option<TenantId>,
    mode: TxMode,
    work: &mut impl FnMut(&mut Transaction<'_>) -> Result<T>,
) -> std::result::Result<T, Failure> {
    let before = |error: postgres::Error| Failure::BeforeCommit(error.into());
    let begun = match mode {
        TxMode::ReadCommitted => client.transaction(),
        TxMode::Snapshot | TxMode::SnapshotOnce => client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start(),
    };
    // A session the server ended (a restart, a failover, pg_terminate_backend) fails here,
    // at BEGIN, and is retried like a failure inside the transaction.
    let mut tx = begun.map_err(before)?;
    if let Some(tenant) = tenant {
        tx.execute("SELECT set_config('medconnect.tenant', $1, true)", &[&tenant.to_string()])
            .map_err(before)?;
    }
    let value = work(&mut tx).map_err(Failure::BeforeCommit)?;
    tx.commit().map_err(|error| Failure::AtCommit(error.into()))?;
    Ok(value)
}

fn meta_value(client: &mut Client, key: &str) -> Result<Option<String>> {
    Ok(client
        .query_opt("SELECT value FROM store_meta WHERE key = $1", &[&key])?
        .map(|row| row.get(0)))
}

/// Returns the schema version, or 0 when the schema holds no store.
fn schema_version(client: &mut Client, schema: &str) -> Result<i64> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables
                            WHERE schemaname = $1 AND tablename = 'schema_migrations')",
            &[&schema],
        )?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: Option<i64> =
        client.query_one("SELECT max(version) FROM schema_migrations", &[])?.get(0);
    Ok(version.unwrap_or(0))
}

/// Creates the roles when missing, then the schema and its tables up to
/// [`SCHEMA_VERSION`], inside the caller's transaction. Returns the version found.
fn migrate_in(tx: &mut Transaction<'_>, schema: &str) -> Result<i64> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    for role in [APP_ROLE, OPERATOR_ROLE] {
        let exists = tx.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])?;
        if exists.is_none() {
            tracing::info!(role, "creating database role");
            tx.batch_execute(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))?;
        }
    }
    let quoted = quote_ident(schema);
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         SET LOCAL search_path TO {quoted};
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TEXT NOT NULL
         );
         GRANT USAGE ON SCHEMA {quoted} TO {APP_ROLE}, {OPERATOR_ROLE};
         GRANT SELECT ON schema_migrations TO {APP_ROLE}, {OPERATOR_ROLE};"
    ))?;
    let found: Option<i64> =
        tx.query_one("SELECT max(version) FROM schema_migrations", &[])?.get(0);
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        tracing::info!(version, migration = name, schema, "applying database migration");
        tx.batch_execute(&sql.replace("@SCHEMA@", &quoted))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[&version, name, &format_instant(Utc::now())],
        )?;
    }
    Ok(found)
}

impl crate::Store for PgStore {
    fn info(&self) -> Result<StoreInfo> {
        self.read_info()
    }

    fn set_master_keys(
        &mut self,
        master: medconnect_crypto::MasterKey,
        next: Option<medconnect_crypto::MasterKey>,
    ) -> Result<()> {
        self.set_master_keys_impl(master, next)
    }

    fn set_clock(&mut self, clock: Box<dyn Clock>) {
        self.clock = clock;
    }

    fn create_tenant(
        &mut self,
        slug: &str,
        name: &str,
        actor: &str,
    ) -> Result<medconnect_domain::model::Tenant> {
        self.create_tenant_impl(slug, name, actor)
    }

    fn tenant_by_slug(&self, slug: &str) -> Result<medconnect_domain::model::Tenant> {
        self.tenant_by_slug_impl(slug)
    }

    fn tenant(&self, id: medconnect_domain::TenantId) -> Result<medconnect_domain::model::Tenant> {
        self.tenant_impl(id)
    }

    fn tenants(&self) -> Result<Vec<medconnect_domain::model::Tenant>> {
        self.tenants_impl()
    }

    fn import(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        batch: &medconnect_domain::model::ImportBatch,
        policy: &medconnect_domain::policy::Policy,
        actor: &str,
    ) -> Result<medconnect_domain::model::ImportCounts> {
        self.import_impl(tenant, batch, policy, actor)
    }

    fn record_encounter(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        at: DateTime<Utc>,
        policy: &medconnect_domain::policy::Policy,
        actor: &str,
    ) -> Result<DateTime<Utc>> {
        self.record_encounter_impl(tenant, patient, at, policy, actor)
    }

    fn add_id_photo(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        bytes: &[u8],
        uploaded_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<medconnect_domain::PhotoId> {
        self.add_id_photo_impl(tenant, patient, bytes, uploaded_at, actor)
    }

    fn add_session(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: Option<medconnect_domain::PatientId>,
        times: crate::SessionTimes,
    ) -> Result<medconnect_domain::SessionId> {
        self.add_session_impl(tenant, patient, times)
    }

    fn patient_links(
        &self,
        tenant: &medconnect_domain::model::Tenant,
    ) -> Result<Vec<crate::LinkSummary>> {
        self.patient_links_impl(tenant)
    }

    fn patient_link(
        &self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
    ) -> Result<crate::LinkDetail> {
        self.patient_link_impl(tenant, patient)
    }

    fn patient_profile(
        &self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
    ) -> Result<crate::PatientProfileView> {
        self.patient_profile_impl(tenant, patient)
    }

    fn read_id_photo(
        &self,
        tenant: &medconnect_domain::model::Tenant,
        photo: medconnect_domain::PhotoId,
    ) -> Result<Vec<u8>> {
        self.read_id_photo_impl(tenant, photo)
    }

    fn providers(
        &self,
        tenant: &medconnect_domain::model::Tenant,
    ) -> Result<Vec<crate::ProviderView>> {
        self.providers_impl(tenant)
    }

    fn find_patient(
        &self,
        tenant: &medconnect_domain::model::Tenant,
        source_system: &str,
        source_id: &str,
    ) -> Result<Option<medconnect_domain::PatientId>> {
        self.find_patient_impl(tenant, source_system, source_id)
    }

    fn receipts_for(&self, record_id: &str) -> Result<Vec<crate::AuditRecord>> {
        self.receipts_for_impl(record_id)
    }

    fn read_patient_links(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        access: &crate::Access,
    ) -> Result<Vec<crate::LinkSummary>> {
        self.read_patient_links_impl(tenant, access)
    }

    fn read_patient(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<crate::PatientRecord> {
        self.read_patient_impl(tenant, patient, access)
    }

    fn read_id_photo_audited(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        photo: medconnect_domain::PhotoId,
        access: &crate::Access,
    ) -> Result<Vec<u8>> {
        self.read_id_photo_audited_impl(tenant, photo, access)
    }

    fn submit_intake_form(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        form: &crate::NewIntakeForm,
        access: &crate::Access,
    ) -> Result<crate::IntakeFormInfo> {
        self.submit_intake_form_impl(tenant, patient, form, access)
    }

    fn read_intake_forms(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<Vec<crate::IntakeForm>> {
        self.read_intake_forms_impl(tenant, patient, access)
    }

    fn upload_id_photo(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        photo: &crate::NewIdPhoto,
        access: &crate::Access,
    ) -> Result<crate::IdPhotoInfo> {
        self.upload_id_photo_impl(tenant, patient, photo, access)
    }

    fn read_id_photos(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<Vec<crate::IdPhotoInfo>> {
        self.read_id_photos_impl(tenant, patient, access)
    }

    fn read_patient_id_photo(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        photo: medconnect_domain::PhotoId,
        access: &crate::Access,
    ) -> Result<crate::IdPhotoContent> {
        self.read_patient_id_photo_impl(tenant, patient, photo, access)
    }

    fn record_encounter_audited(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        encounter: &crate::NewEncounter<'_>,
        policy: &medconnect_domain::policy::Policy,
        access: &crate::Access,
        action: &str,
    ) -> Result<crate::EncounterRecorded> {
        self.record_encounter_audited_impl(tenant, patient, encounter, policy, access, action)
    }

    fn read_consultations(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<Vec<crate::ConsultationRecord>> {
        self.read_consultations_impl(tenant, patient, access)
    }

    fn create_prescription(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        prescription: &crate::NewPrescriptionEntry<'_>,
        access: &crate::Access,
    ) -> Result<crate::PrescriptionRecord> {
        self.create_prescription_impl(tenant, patient, prescription, access)
    }

    fn read_prescriptions(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        patient: medconnect_domain::PatientId,
        access: &crate::Access,
    ) -> Result<Vec<crate::PrescriptionRecord>> {
        self.read_prescriptions_impl(tenant, patient, access)
    }

    fn links_of_patient(
        &self,
        patient: medconnect_domain::PatientId,
    ) -> Result<Vec<crate::LinkSummary>> {
        self.links_of_patient_impl(patient)
    }

    fn place_hold(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        scope: medconnect_domain::model::HoldScope,
        matter: &str,
        reason: &str,
        actor: &str,
    ) -> Result<medconnect_domain::model::LegalHold> {
        self.place_hold_impl(tenant, scope, matter, reason, actor)
    }

    fn release_hold(
        &mut self,
        tenant: Option<medconnect_domain::TenantId>,
        id: medconnect_domain::HoldId,
        actor: &str,
    ) -> Result<medconnect_domain::model::LegalHold> {
        self.release_hold_impl(tenant, id, actor)
    }

    fn holds(
        &self,
        tenant: Option<medconnect_domain::TenantId>,
        include_released: bool,
    ) -> Result<Vec<medconnect_domain::model::LegalHold>> {
        self.holds_impl(tenant, include_released)
    }

    fn phi_candidates(&self, active_before: DateTime<Utc>) -> Result<Vec<crate::PhiCandidate>> {
        self.phi_candidates_impl(active_before)
    }

    fn id_photo_candidates(
        &self,
        uploaded_before: DateTime<Utc>,
    ) -> Result<Vec<crate::RecordCandidate>> {
        self.id_photo_candidates_impl(uploaded_before)
    }

    fn session_candidates(
        &self,
        ended_before: DateTime<Utc>,
    ) -> Result<Vec<crate::RecordCandidate>> {
        self.session_candidates_impl(ended_before)
    }

    fn platform_sessions_due(&self, ended_before: DateTime<Utc>) -> Result<u64> {
        self.platform_sessions_due_impl(ended_before)
    }

    fn purge_platform_sessions(
        &mut self,
        ended_before: DateTime<Utc>,
        actor: &str,
        run_id: &str,
    ) -> Result<u64> {
        self.purge_platform_sessions_impl(ended_before, actor, run_id)
    }

    fn dispose(
        &mut self,
        disposals: &[crate::Disposal],
        context: &crate::DisposalContext<'_>,
    ) -> Result<Vec<crate::DisposalOutcome>> {
        self.dispose_impl(disposals, context)
    }

    fn finish_file_deletions(&mut self) -> Result<u64> {
        self.finish_file_deletions_impl()
    }

    fn apply_policy(
        &mut self,
        policy: &medconnect_domain::policy::Policy,
        actor: &str,
        allow_shorter: bool,
    ) -> Result<crate::PolicyApplied> {
        self.apply_policy_impl(policy, actor, allow_shorter)
    }

    fn applied_policy_version(&self) -> Result<Option<String>> {
        self.applied_policy_version_impl()
    }

    fn master_key_version(&self) -> Result<u32> {
        self.master_key_version_impl()
    }

    fn master_rotation_target(&self) -> Result<Option<u32>> {
        self.master_rotation_target_impl()
    }

    fn begin_master_rotation(&mut self, next_version: u32, actor: &str) -> Result<()> {
        self.begin_master_rotation_impl(next_version, actor)
    }

    fn rewrap_data_keys(&mut self, limit: u32) -> Result<u64> {
        self.rewrap_data_keys_impl(limit)
    }

    fn finish_master_rotation(&mut self, actor: &str) -> Result<u32> {
        self.finish_master_rotation_impl(actor)
    }

    fn rotate_tenant_key(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        actor: &str,
    ) -> Result<u32> {
        self.rotate_tenant_key_impl(tenant, actor)
    }

    fn append_audit(&mut self, event: medconnect_domain::audit::AuditEvent) -> Result<i64> {
        self.append_audit_impl(event)
    }

    fn verify_audit_with_key(
        &self,
        public_key: Option<&medconnect_domain::checkpoint::AuditPublicKey>,
    ) -> Result<medconnect_domain::audit::VerifyReport> {
        self.verify_audit_impl(public_key)
    }

    fn sign_audit_checkpoint(
        &mut self,
        signer: &dyn medconnect_crypto::AuditSigner,
    ) -> Result<crate::CheckpointSigned> {
        self.sign_audit_checkpoint_impl(signer)
    }

    fn audit_checkpoints(&self) -> Result<Vec<medconnect_domain::checkpoint::Checkpoint>> {
        self.audit_checkpoints_impl()
    }

    fn export_audit(
        &self,
        public_key: Option<&medconnect_domain::checkpoint::AuditPublicKey>,
        write: &mut dyn FnMut(&medconnect_domain::checkpoint::ExportLine) -> Result<()>,
    ) -> Result<crate::AuditExported> {
        self.export_audit_impl(public_key, write)
    }

    fn audit_disposal_due(
        &self,
        policy: &medconnect_domain::policy::Policy,
        as_of: DateTime<Utc>,
    ) -> Result<crate::AuditCut> {
        self.audit_disposal_due_impl(policy, as_of)
    }

    fn dispose_audit(
        &mut self,
        policy: &medconnect_domain::policy::Policy,
        as_of: DateTime<Utc>,
        signer: &dyn medconnect_crypto::AuditSigner,
        actor: &str,
    ) -> Result<crate::AuditCut> {
        self.dispose_audit_impl(policy, as_of, signer, actor)
    }

    fn audit_entries(&self, after_seq: i64, limit: u32) -> Result<Vec<crate::AuditRecord>> {
        self.audit_entries_impl(after_seq, limit)
    }

    fn read_audit_entries(
        &mut self,
        after_seq: i64,
        limit: u32,
        access: &crate::Access,
    ) -> Result<Vec<crate::AuditRecord>> {
        self.read_audit_entries_impl(after_seq, limit, access)
    }

    fn audit_tail_start(&self, count: u32) -> Result<i64> {
        self.audit_tail_start_impl(count)
    }

    fn start_run(&mut self, as_of: DateTime<Utc>) -> Result<String> {
        self.start_run_impl(as_of)
    }

    fn finish_run(&mut self, run_id: &str, status: &str, summary: &str) -> Result<()> {
        self.finish_run_impl(run_id, status, summary)
    }

    fn runs(&self, limit: u32) -> Result<Vec<crate::RunRecord>> {
        self.runs_impl(limit)
    }

    fn reapply_disposal(&mut self, entry: &crate::LedgerEntry) -> Result<crate::ReapplyOutcome> {
        self.reapply_disposal_impl(entry)
    }

    fn create_user(
        &mut self,
        user: &crate::NewUser<'_>,
        actor: &str,
    ) -> Result<medconnect_domain::UserId> {
        self.create_user_impl(user, actor)
    }

    fn user_for_login(
        &self,
        tenant_slug: Option<&str>,
        username: &str,
    ) -> Result<Option<crate::LoginUser>> {
        self.user_for_login_impl(tenant_slug, username)
    }

    fn record_login_failure(&mut self, user: crate::UserRef) -> Result<u32> {
        self.record_login_failure_impl(user)
    }

    fn record_login_success(&mut self, user: crate::UserRef) -> Result<()> {
        self.record_login_success_impl(user)
    }

    fn list_users(
        &self,
        tenant: Option<&medconnect_domain::model::Tenant>,
    ) -> Result<Vec<crate::UserSummary>> {
        self.list_users_impl(tenant)
    }

    fn set_user_disabled(
        &mut self,
        user: crate::UserRef,
        disabled: bool,
        actor: &str,
    ) -> Result<()> {
        self.set_user_disabled_impl(user, disabled, actor)
    }

    fn create_session(
        &mut self,
        user: crate::UserRef,
        token_hash: &medconnect_crypto::TokenHash,
        started_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<medconnect_domain::SessionId> {
        self.create_session_impl(user, token_hash, started_at, expires_at)
    }

    fn session_by_token_hash(
        &self,
        token_hash: &medconnect_crypto::TokenHash,
    ) -> Result<Option<crate::SessionInfo>> {
        self.session_by_token_hash_impl(token_hash)
    }

    fn end_session(
        &mut self,
        tenant: Option<medconnect_domain::TenantId>,
        session: medconnect_domain::SessionId,
    ) -> Result<bool> {
        self.end_session_impl(tenant, session)
    }

    fn create_service_token(
        &mut self,
        token: &crate::NewServiceToken<'_>,
        actor: &str,
    ) -> Result<medconnect_domain::ServiceTokenId> {
        self.create_service_token_impl(token, actor)
    }

    fn service_token_by_hash(
        &self,
        token_hash: &medconnect_crypto::TokenHash,
    ) -> Result<Option<crate::ServiceTokenInfo>> {
        self.service_token_by_hash_impl(token_hash)
    }

    fn list_service_tokens(
        &self,
        tenant: &medconnect_domain::model::Tenant,
    ) -> Result<Vec<crate::ServiceTokenSummary>> {
        self.list_service_tokens_impl(tenant)
    }

    fn revoke_service_token(
        &mut self,
        tenant: &medconnect_domain::model::Tenant,
        token: medconnect_domain::ServiceTokenId,
        actor: &str,
    ) -> Result<bool> {
        self.revoke_service_token_impl(tenant, token, actor)
    }
}
