//! Stores for tests, on both backends.
//!
//! Integration tests are written once as functions of a [`Backend`] and run on each through
//! [`backend_tests!`](crate::backend_tests). A PostgreSQL store lives in a schema of its own,
//! dropped when the [`TestStore`] is, so parallel tests and runs never see each other's rows.
//!
//! The PostgreSQL server is found through `MEDCONNECT_TEST_ADMIN_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, a role that may create roles and schemas) and
//! `MEDCONNECT_TEST_DATABASE_URL` (default `postgres://127.0.0.1:5432/test`, to which the
//! store adds its own roles). When no server answers, PostgreSQL tests print that they were
//! skipped and pass, unless `MEDCONNECT_REQUIRE_POSTGRES=1` or `CI` is set: then they fail.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use medconnect_domain::clock::Clock;
use tempfile::TempDir;

use crate::{ClockMode, PgConfig, PgStore, SqliteStore, Store};

/// Default URL of the role that creates test schemas.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Default URL the test stores connect with.
pub const DEFAULT_DATABASE_URL: &str = "postgres://127.0.0.1:5432/test";

/// Prefix of every test schema, so that leftovers of killed runs can be found and dropped.
pub const SCHEMA_PREFIX: &str = "mc_test_";

/// A storage backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Creates an empty store with a simulated clock and no master key.
    pub fn create(self, clock: Box<dyn Clock>) -> TestStore {
        match self {
            Backend::Sqlite => {
                let dir = TempDir::new().expect("temporary directory for the test store");
                let data = dir.path().join("data");
                let store = SqliteStore::create(&data, ClockMode::Simulated, clock)
                    .expect("creating the SQLite test store");
                TestStore { store: Some(Box::new(store)), place: Place::Dir(dir) }
            }
            Backend::Postgres => {
                let config = pg_config(&unique_schema());
                let store = PgStore::create(&config, &admin_url(), ClockMode::Simulated, clock)
                    .expect("creating the PostgreSQL test store");
                TestStore { store: Some(Box::new(store)), place: Place::Schema(config) }
            }
        }
    }
}

/// Admin URL in force for tests.
pub fn admin_url() -> String {
    std::env::var("MEDCONNECT_TEST_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// Application URL in force for tests.
pub fn database_url() -> String {
    std::env::var("MEDCONNECT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Returns a configuration for a test schema of the given name.
pub fn pg_config(schema: &str) -> PgConfig {
    let mut config = PgConfig::new(database_url());
    config.schema = schema.to_owned();
    config
}

/// Returns a schema name that no other test of any run uses.
pub fn unique_schema() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u32 = uuid::Uuid::new_v4().as_u128() as u32;
    format!("{SCHEMA_PREFIX}{}_{n}_{random:08x}", std::process::id())
}

/// Returns whether PostgreSQL tests run. Asked once per test process; when the server does
/// not answer it says so on stderr, or panics where PostgreSQL is required.
pub fn postgres_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let url = admin_url();
        let reachable = url
            .parse::<postgres::Config>()
            .ok()
            .and_then(|mut config| {
                config.connect_timeout(std::time::Duration::from_secs(3));
                config.connect(postgres::NoTls).ok()
            })
            .is_some();
        let required = std::env::var("MEDCONNECT_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        if !reachable && required {
            panic!(
                "PostgreSQL is required here (CI or MEDCONNECT_REQUIRE_POSTGRES=1) but does not \
                 answer at MEDCONNECT_TEST_ADMIN_URL (default {DEFAULT_ADMIN_URL}): start it"
            );
        }
        if !reachable {
            eprintln!(
                "PostgreSQL tests skipped: no server answers at MEDCONNECT_TEST_ADMIN_URL \
                 (default {DEFAULT_ADMIN_URL})"
            );
        }
        reachable
    })
}

enum Place {
    Dir(TempDir),
    Schema(PgConfig),
}

/// A store that removes itself, folder or schema, when dropped.
pub struct TestStore {
    /// None only while the store is being dropped.
    store: Option<Box<dyn Store>>,
    place: Place,
}

impl TestStore {
    pub fn backend(&self) -> Backend {
        match self.place {
            Place::Dir(_) => Backend::Sqlite,
            Place::Schema(_) => Backend::Postgres,
        }
    }

    /// Opens another handle on the same store, as a second node or a restarted process
    /// would. It has no master key and the system clock until set.
    pub fn open_again(&self) -> Box<dyn Store> {
        match &self.place {
            Place::Dir(dir) => {
                Box::new(SqliteStore::open(&dir.path().join("data")).expect("reopening"))
            }
            Place::Schema(config) => Box::new(PgStore::open(config).expect("reopening")),
        }
    }

    /// Returns the data directory of a SQLite store.
    pub fn data_dir(&self) -> Option<std::path::PathBuf> {
        match &self.place {
            Place::Dir(dir) => Some(dir.path().join("data")),
            Place::Schema(_) => None,
        }
    }

    /// Returns the configuration of a PostgreSQL store.
    pub fn pg_config(&self) -> Option<&PgConfig> {
        match &self.place {
            Place::Dir(_) => None,
            Place::Schema(config) => Some(config),
        }
    }

    /// Returns the folder of a SQLite store, for tests that read its files.
    pub fn dir(&self) -> Option<&Path> {
        match &self.place {
            Place::Dir(dir) => Some(dir.path()),
            Place::Schema(_) => None,
        }
    }

    /// Makes every later audit append fail, through a trigger on `audit_log`, so that a test
    /// can check that a write whose entry cannot be appended leaves nothing behind.
    pub fn fail_audit_writes(&self) {
        match &self.place {
            Place::Dir(_) => {
                let path = self.data_dir().expect("data dir").join("medconnect.db");
                let conn = rusqlite::Connection::open(path).expect("opening the test database");
                conn.execute_batch(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log
                     BEGIN SELECT RAISE(ABORT, 'audit refused by the test'); END;",
                )
                .expect("trigger");
            }
            Place::Schema(config) => {
                let schema = &config.schema;
                let mut admin = postgres::Client::connect(&admin_url(), postgres::NoTls)
                    .expect("admin connects");
                admin
                    .batch_execute(&format!(
                        "CREATE FUNCTION \"{schema}\".refuse_audit() RETURNS trigger
                         LANGUAGE plpgsql
                         AS $$ BEGIN RAISE EXCEPTION 'audit refused by the test'; END $$;
                         CREATE TRIGGER refuse_audit BEFORE INSERT ON \"{schema}\".audit_log
                         FOR EACH ROW EXECUTE FUNCTION \"{schema}\".refuse_audit();"
                    ))
                    .expect("trigger");
            }
        }
    }
}

impl Deref for TestStore {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        self.store.as_deref().expect("the store is open until dropped")
    }
}

impl DerefMut for TestStore {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.store.as_deref_mut().expect("the store is open until dropped")
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Place::Schema(config) = &self.place {
            // Close this store's connections first, so dropping the schema waits for no one.
            self.store = None;
            if let Err(error) = PgStore::drop_schema(&admin_url(), &config.schema) {
                eprintln!("could not drop test schema {}: {error}", config.schema);
            }
        }
    }
}

/// Declares one `#[test]` per backend for each named function, which takes a [`Backend`]:
/// `sqlite::NAME` always runs, `postgres::NAME` when [`postgres_available`] says so.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::testing::Backend::Sqlite)
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if $crate::testing::postgres_available() {
                        super::$name($crate::testing::Backend::Postgres)
                    }
                }
            )*
        }
    };
}
