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

mod backup;
mod cli;
mod commands;
mod demo;
mod logging;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use clap::Parser;
use medconnect_crypto::{EnvKeyProvider, KeyFileProvider, KeyProvider};
use medconnect_domain::clock::FixedClock;
use medconnect_domain::policy::{Policy, DEFAULT_POLICY_TOML};
use medconnect_domain::time::parse_instant;
use medconnect_store::{ClockMode, SqliteStore};

use cli::{Cli, Command};

/// File name of the policy inside the data directory.
pub const POLICY_FILE: &str = "policy.toml";

fn main() -> ExitCode {
    logging::init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let actor = cli.actor.unwrap_or_else(default_actor);
    if actor.trim().is_empty() {
        bail!("--actor must not be empty: pass who is acting, such as operator:jdoe");
    }
    let context = Context {
        data_dir: cli.data_dir,
        policy: cli.policy,
        master_key_file: cli.master_key_file,
        actor,
        ledger: cli.ledger,
    };
    match cli.command {
        Command::Init { simulated_clock } => commands::init(&context, simulated_clock),
        Command::Policy(command) => commands::policy(&context, command),
        Command::Tenant(command) => commands::tenant(&context, command),
        Command::Patient(command) => commands::patient(&context, command),
        Command::Import(command) => commands::import(&context, command),
        Command::Encounter(command) => commands::encounter(&context, command),
        Command::Lifecycle(command) => commands::lifecycle(&context, command),
        Command::Hold(command) => commands::hold(&context, command),
        Command::Audit(command) => commands::audit(&context, command),
        Command::Demo(args) => demo::run(&context, args),
        Command::Backup(command) => backup::backup(&context, command),
    }
}

/// Locations of the store and its policy.
pub struct Context {
    pub data_dir: PathBuf,
    pub policy: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    /// Who is acting, recorded in audit entries.
    pub actor: String,
    /// Disposal ledger file given with `--ledger`, else [`Context::ledger_path`]'s default.
    pub ledger: Option<PathBuf>,
}

/// Environment variable that holds the master key itself, as 64 hex digits.
pub const MASTER_KEY_ENV: &str = "MEDCONNECT_MASTER_KEY";

/// Returns `operator:` followed by the login name, the actor when `--actor` is not given.
fn default_actor() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"));
    format!("operator:{}", user.unwrap_or_else(|_| "unknown".to_owned()))
}

impl Context {
    pub fn open_store(&self) -> Result<SqliteStore> {
        Ok(SqliteStore::open(&self.data_dir)?)
    }

    /// Opens the store with the master key, for commands that read or write PHI.
    pub fn open_store_with_key(&self) -> Result<SqliteStore> {
        let mut store = self.open_store()?;
        store.set_master_key(self.key_provider().master_key()?);
        Ok(store)
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys").join("master.key"))
    }

    /// Returns the master key source: the environment variable when set, else the key file.
    pub fn key_provider(&self) -> Box<dyn KeyProvider> {
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            Box::new(EnvKeyProvider::new(MASTER_KEY_ENV))
        } else {
            Box::new(KeyFileProvider::new(self.master_key_path()))
        }
    }

    pub fn policy_path(&self) -> PathBuf {
        self.policy.clone().unwrap_or_else(|| self.data_dir.join(POLICY_FILE))
    }

    /// Loads and validates the policy in force. Without --policy and without a store, the
    /// missing store is the problem to report.
    pub fn load_policy(&self) -> Result<Policy> {
        let path = self.policy_path();
        if self.policy.is_none() && !path.exists() {
            SqliteStore::open(&self.data_dir)?;
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
pub fn destructive_as_of(store: &mut SqliteStore, value: Option<&str>) -> Result<DateTime<Utc>> {
    let Some(value) = value else {
        return as_of_or_now(None);
    };
    if store.clock_mode() == ClockMode::Production {
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
