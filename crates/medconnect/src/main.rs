//! The `medconnect` command: a thin layer over the library crates that parses arguments,
//! opens the store, and prints results for people (tables) or scripts (`--json`).

#![allow(clippy::print_stdout, reason = "the CLI writes its results to standard output")]

/// Writes a line to standard output. When the reader has gone away (for example `| head`),
/// the process exits quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(err);
        }
    }};
}

mod accounts;
mod backup;
mod cli;
mod commands;
mod config;
mod demo;
mod keys;
mod logging;
mod output;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use clap::Parser;
use medconnect_crypto::{
    AuditSigner, AuditSigningKey, CryptoError, EnvKeyProvider, KeyFileProvider, KeyProvider,
};
use medconnect_domain::checkpoint::AuditPublicKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::policy::{Policy, DEFAULT_POLICY_TOML};
use medconnect_domain::time::parse_instant;
use medconnect_store::{ClockMode, PgStore, SqliteStore, Store};

use cli::{Cli, Command};
use config::StoreLocation;

/// File name of the policy inside the data directory.
pub const POLICY_FILE: &str = "policy.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server reports its address, certificate and scheduled runs at info; commands keep
    // their output on stdout and log only warnings by default.
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    logging::init(default_level);
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    if matches!(cli.command, Command::Openapi) {
        print!("{}", medconnect_api::openapi::document_json());
        return Ok(ExitCode::SUCCESS);
    }
    let actor = cli.actor.unwrap_or_else(default_actor);
    if actor.trim().is_empty() {
        bail!("--actor must not be empty: pass who is acting, such as operator:jdoe");
    }
    let location = config::load(&cli.data_dir, cli.config.as_deref())?;
    let context = Context {
        location,
        data_dir: cli.data_dir,
        policy: cli.policy,
        master_key_file: cli.master_key_file,
        audit_signing_key: cli.audit_signing_key,
        actor,
        ledger: cli.ledger,
    };
    match cli.command {
        Command::Init { simulated_clock, admin_url } => {
            commands::init(&context, simulated_clock, admin_url.as_deref())
        }
        Command::Db(command) => commands::db(&context, command),
        Command::Policy(command) => commands::policy(&context, command),
        Command::Tenant(command) => commands::tenant(&context, command),
        Command::Patient(command) => commands::patient(&context, command),
        Command::Import(command) => commands::import(&context, command),
        Command::Encounter(command) => commands::encounter(&context, command),
        Command::Lifecycle(command) => commands::lifecycle(&context, command),
        Command::Hold(command) => commands::hold(&context, command),
        Command::Audit(command) => commands::audit(&context, command),
        Command::Demo(args) => demo::run(&context, args),
        Command::Keys(command) => keys::run(&context, command),
        Command::Backup(command) => backup::backup(&context, command),
        Command::User(command) => accounts::user(&context, command),
        Command::Token(command) => accounts::token(&context, command),
        Command::Serve(args) => serve::run(context, args),
        Command::Openapi => unreachable!("handled before the data directory is read"),
    }
}

/// Locations of the store and its policy.
#[derive(Clone)]
pub struct Context {
    /// Backend of the store, from `medconnect.toml` and the environment.
    pub location: StoreLocation,
    pub data_dir: PathBuf,
    pub policy: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub audit_signing_key: Option<PathBuf>,
    /// Actor name recorded in audit entries.
    pub actor: String,
    /// Disposal ledger file given with `--ledger`, else [`Context::ledger_path`]'s default.
    pub ledger: Option<PathBuf>,
}

/// File name of the audit public key inside the data directory.
pub const AUDIT_PUBLIC_KEY_FILE: &str = "audit-public.key";

/// Environment variable that contains the master key itself, as 64 hex digits.
pub const MASTER_KEY_ENV: &str = "MEDCONNECT_MASTER_KEY";

/// Returns `operator:` followed by the login name, the actor when `--actor` is not given.
fn default_actor() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"));
    format!("operator:{}", user.unwrap_or_else(|_| "unknown".to_owned()))
}

impl Context {
    /// Opens the store where the configuration puts it. The store may move to another thread,
    /// as the server's store pool moves it.
    pub fn open_store(&self) -> Result<Box<dyn Store + Send>> {
        Ok(match &self.location {
            StoreLocation::Embedded => Box::new(SqliteStore::open(&self.data_dir)?),
            StoreLocation::Postgres(config) => Box::new(PgStore::open(config)?),
        })
    }

    /// Opens the embedded store, for the commands that work on its files (backups). A
    /// PostgreSQL store is refused with what to use instead.
    pub fn open_embedded_store(&self) -> Result<SqliteStore> {
        self.open_embedded_store_check()?;
        Ok(SqliteStore::open(&self.data_dir)?)
    }

    /// Fails when the store is not the embedded one, saying what to use instead.
    pub fn open_embedded_store_check(&self) -> Result<()> {
        if let StoreLocation::Postgres(_) = self.location {
            bail!(
                "this command works on the embedded store's files, and this store is on \
                 PostgreSQL: back it up with PostgreSQL's own tools (pg_dump or a base backup \
                 with WAL archiving), together with the master key file"
            );
        }
        Ok(())
    }

    /// Opens the store with the master key, for commands that read or write PHI. While a
    /// master key rotation is under way, the next master key is loaded too.
    pub fn open_store_with_key(&self) -> Result<Box<dyn Store + Send>> {
        let mut store = self.open_store()?;
        self.load_keys(&mut *store)?;
        Ok(store)
    }

    /// Loads the master key (and the next one during a rotation) into an open store.
    pub fn load_keys(&self, store: &mut dyn Store) -> Result<()> {
        let version = store.master_key_version()?;
        let master = self.key_provider(version).master_key()?;
        let next = match store.master_rotation_target()? {
            Some(target) => {
                let path = keys::next_key_path(&self.master_key_path());
                Some(KeyFileProvider::new(&path).with_master_key_version(target).master_key()?)
            }
            None => None,
        };
        store.set_master_keys(master, next)?;
        Ok(())
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys").join("master.key"))
    }

    /// Loads master key `version`: from the environment variable when set, else from the
    /// retired key file of that version when one exists (after a rotation), else from the
    /// current key file.
    pub fn master_key_for(&self, version: u32) -> Result<medconnect_crypto::MasterKey> {
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            return Ok(self.key_provider(version).master_key()?);
        }
        let retired = keys::retired_key_path(&self.master_key_path(), version);
        let path = if retired.exists() { retired } else { self.master_key_path() };
        Ok(KeyFileProvider::new(path).with_master_key_version(version).master_key()?)
    }

    /// Returns the source of master key `version`: the environment variable when set, else
    /// the key file.
    pub fn key_provider(&self, version: u32) -> Box<dyn KeyProvider> {
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            Box::new(EnvKeyProvider::new(MASTER_KEY_ENV).with_master_key_version(version))
        } else {
            Box::new(KeyFileProvider::new(self.master_key_path()).with_master_key_version(version))
        }
    }

    pub fn audit_signing_key_path(&self) -> PathBuf {
        self.audit_signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys").join("audit-signing.key"))
    }

    pub fn audit_public_key_path(&self) -> PathBuf {
        self.data_dir.join(AUDIT_PUBLIC_KEY_FILE)
    }

    /// Loads the audit signing key. The error for a missing file names the command that
    /// creates one.
    pub fn load_signing_key(&self) -> Result<AuditSigningKey> {
        let path = self.audit_signing_key_path();
        match AuditSigningKey::load(&path) {
            Ok(key) => Ok(key),
            Err(CryptoError::KeyFileIo { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                bail!(
                    "audit signing key {} not found: create one with `medconnect audit keygen`, \
                     or pass --audit-signing-key FILE (environment \
                     MEDCONNECT_AUDIT_SIGNING_KEY_FILE)",
                    path.display()
                )
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Loads the audit signing key for a command that can go on without it. When the key is
    /// unusable, prints a warning with the reason and with `skipped`, what goes undone.
    pub fn signing_key_or_warn(&self, skipped: &str) -> Option<AuditSigningKey> {
        match self.load_signing_key() {
            Ok(key) => Some(key),
            Err(err) => {
                eprintln!("warning: {skipped}: {err:#}");
                None
            }
        }
    }

    /// Loads the audit signing key, creating it when its file does not exist, and writes its
    /// public key to DATA_DIR/audit-public.key. Returns the key and whether it is new.
    pub fn ensure_signing_key(&self) -> Result<(AuditSigningKey, bool)> {
        let path = self.audit_signing_key_path();
        let (key, created) = if path.exists() {
            (self.load_signing_key()?, false)
        } else {
            commands::prepare_key_folder(&path)?;
            (AuditSigningKey::create(&path)?, true)
        };
        self.write_public_key(&key)?;
        Ok((key, created))
    }

    /// Writes the signing key's public key, 64 hex digits and a newline, for auditors.
    pub fn write_public_key(&self, key: &AuditSigningKey) -> Result<()> {
        let path = self.audit_public_key_path();
        std::fs::write(&path, format!("{}\n", key.public_key_hex()))
            .with_context(|| format!("writing the audit public key to {}", path.display()))
    }

    pub fn policy_path(&self) -> PathBuf {
        self.policy.clone().unwrap_or_else(|| self.data_dir.join(POLICY_FILE))
    }

    /// Loads and validates the policy in force. Without --policy and without a store, the
    /// missing store is the problem to report.
    pub fn load_policy(&self) -> Result<Policy> {
        let path = self.policy_path();
        if self.policy.is_none() && !path.exists() {
            self.open_store()?;
        }
        load_policy_file(&path)
    }

    /// Writes the default policy file unless one exists.
    pub fn write_default_policy(&self) -> Result<()> {
        let path = self.policy_path();
        if !path.exists() {
            std::fs::write(&path, DEFAULT_POLICY_TOML)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Reads a public key file: 64 hex digits, optionally followed by a newline.
pub fn read_public_key(path: &Path) -> Result<AuditPublicKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading public key file {}", path.display()))?;
    AuditPublicKey::from_hex(&text).with_context(|| format!("public key file {}", path.display()))
}

/// Returns the public key of a signer.
pub fn public_key_of(signer: &dyn AuditSigner) -> AuditPublicKey {
    AuditPublicKey::from_bytes(signer.public_key())
}

pub fn load_policy_file(path: &Path) -> Result<Policy> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "policy file {} not found: restore it, pass --policy FILE, or write the default \
             with `medconnect policy default > {}`",
            path.display(),
            path.display()
        ),
        Err(err) => {
            return Err(err).with_context(|| format!("reading policy file {}", path.display()))
        }
    };
    Policy::from_toml(&text).with_context(|| format!("{}", path.display()))
}

/// Parses `--as-of`, defaulting to now.
pub fn as_of_or_now(value: Option<&str>) -> Result<DateTime<Utc>> {
    match value {
        Some(value) => Ok(parse_instant(value)?),
        None => Ok(medconnect_domain::time::truncate_to_second(Utc::now())),
    }
}

/// Parses `--as-of` for a command that destroys data, which only a simulated store allows.
/// The store's clock is set to that instant so audit entries carry it.
pub fn destructive_as_of(store: &mut dyn Store, value: Option<&str>) -> Result<DateTime<Utc>> {
    let Some(value) = value else {
        return as_of_or_now(None);
    };
    if store.info()?.clock == ClockMode::Production {
        bail!(
            "--as-of {value:?} rejected: this store runs on the production clock, and a \
             simulated instant could purge records before their retention ends; run without \
             --as-of, or use a store created with `medconnect init --simulated-clock`"
        );
    }
    let as_of = parse_instant(value)?;
    store.set_clock(Box::new(FixedClock(as_of)));
    Ok(as_of)
}

/// Ends the process after a failed write to standard output. A closed pipe is the reader's
/// choice, so it exits with the status a shell reports for SIGPIPE and prints nothing.
pub fn stdout_failed(err: std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("error: writing to standard output failed: {err}");
    std::process::exit(1);
}
