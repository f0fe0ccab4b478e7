//! `medconnect.toml`: which backend holds the store, and how nodes reach it.
//!
//! Every setting can be overridden by an environment variable of the same name in upper case
//! with the prefix `MEDCONNECT_`, so that containers and services set them without a file.
//! Without `database_url` the store is the embedded SQLite one in the data directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use medconnect_store::PgConfig;
use serde::Deserialize;

/// File name of the configuration inside the data directory.
pub const CONFIG_FILE: &str = "medconnect.toml";

/// The settings of `medconnect.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    operator_database_url: Option<String>,
    database_schema: Option<String>,
    node_name: Option<String>,
}

/// Location of the store.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// The embedded store in the data directory.
    Embedded,
    /// A PostgreSQL schema shared by several nodes.
    Postgres(PgConfig),
}

impl StoreLocation {
    pub fn backend_name(&self) -> &'static str {
        match self {
            StoreLocation::Embedded => "sqlite",
            StoreLocation::Postgres(_) => "postgres",
        }
    }
}

/// Reads the configuration: `explicit` when given (it must exist), else
/// DATA_DIR/medconnect.toml when it exists, then applies the environment overrides.
pub fn load(data_dir: &Path, explicit: Option<&Path>) -> Result<StoreLocation> {
    let path: Option<PathBuf> = match explicit {
        Some(path) => Some(path.to_owned()),
        None => Some(data_dir.join(CONFIG_FILE)).filter(|path| path.is_file()),
    };
    let mut settings = match &path {
        Some(path) => read_file(path)?,
        None => FileSettings::default(),
    };
    override_from_env(&mut settings.database_url, "MEDCONNECT_DATABASE_URL");
    override_from_env(&mut settings.operator_database_url, "MEDCONNECT_OPERATOR_DATABASE_URL");
    override_from_env(&mut settings.database_schema, "MEDCONNECT_DATABASE_SCHEMA");
    override_from_env(&mut settings.node_name, "MEDCONNECT_NODE_NAME");
    let Some(database_url) = settings.database_url else {
        if settings.operator_database_url.is_some() || settings.database_schema.is_some() {
            bail!(
                "operator_database_url and database_schema apply to PostgreSQL only: set \
                 database_url in {CONFIG_FILE} or MEDCONNECT_DATABASE_URL too, or remove them"
            );
        }
        return Ok(StoreLocation::Embedded);
    };
    let mut config = PgConfig::new(database_url);
    config.operator_database_url = settings.operator_database_url;
    if let Some(schema) = settings.database_schema {
        config.schema = schema;
    }
    if let Some(node) = settings.node_name {
        if node.trim().is_empty() || node.len() > 63 {
            bail!("node_name {node:?} is not usable: give 1 to 63 characters, such as node-1");
        }
        config.node = node;
    }
    Ok(StoreLocation::Postgres(config))
}

fn override_from_env(setting: &mut Option<String>, variable: &str) {
    if let Ok(value) = std::env::var(variable) {
        if !value.is_empty() {
            *setting = Some(value);
        }
    }
}

fn read_file(path: &Path) -> Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration file {}", path.display()))?;
    // The parser's own message quotes the offending line, which may hold a password, so only
    // its description and the line number are shown.
    toml::from_str(&text).map_err(|err| {
        let line = err.span().map(|span| text[..span.start].matches('\n').count() + 1);
        let place = line.map(|line| format!(" line {line}")).unwrap_or_default();
        anyhow::anyhow!("configuration file {}{place}: {}", path.display(), err.message().trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, text).expect("writing the test configuration");
        path
    }

    #[test]
    fn no_file_means_the_embedded_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = load(dir.path(), None).expect("loads");
        assert!(matches!(location, StoreLocation::Embedded));
    }

    #[test]
    fn file_in_the_data_dir_selects_postgres() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(
            dir.path(),
            "database_url = \"postgres://127.0.0.1/test\"\ndatabase_schema = \"clinic\"\n\
             node_name = \"node-2\"\n",
        );
        let StoreLocation::Postgres(config) = load(dir.path(), None).expect("loads") else {
            panic!("expected PostgreSQL");
        };
        assert_eq!(config.database_url, "postgres://127.0.0.1/test");
        assert_eq!(config.schema, "clinic");
        assert_eq!(config.node, "node-2");
        assert_eq!(config.operator_database_url, None);
    }

    #[test]
    fn unknown_setting_hides_value() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(
            dir.path(),
            "database_url = \"postgres://127.0.0.1/test\"\ndatabse_password = \"hunter2\"\n",
        );
        let message = format!("{:#}", load(dir.path(), Some(&path)).expect_err("rejected"));
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("databse_password"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn explicit_file_must_exist() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("elsewhere.toml");
        let message = format!("{:#}", load(dir.path(), Some(&missing)).expect_err("rejected"));
        assert!(message.contains("elsewhere.toml"), "{message}");
    }

    #[test]
    fn schema_without_url_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "database_schema = \"clinic\"\n");
        let message = format!("{:#}", load(dir.path(), None).expect_err("rejected"));
        assert!(message.contains("database_url"), "{message}");
    }
}
