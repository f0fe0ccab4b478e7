//! The `backup` commands: encrypted backups written to several destinations, verified and
//! restored, and the disposal ledger that keeps a restore from bringing purged data back.
//!
//! - `create.rs` takes a snapshot, seals it and writes it atomically into every destination.
//! - `verify.rs` lists backups and checks every copy: manifest, digests, key, decryption.
//! - `restore.rs` restores a verified copy into a new folder and re-applies the ledger.
//! - `manifest.rs` defines the manifest format, and `files.rs` the durable file steps.

mod create;
mod files;
mod manifest;
mod restore;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use medconnect_store::{ledger, Store};

use crate::cli::BackupCommand;
use crate::output::print_json;
use crate::Context;

/// Environment variable with the backup destinations, separated by colons.
pub const DESTINATIONS_ENV: &str = "MEDCONNECT_BACKUP_DESTINATIONS";

/// Default path of the disposal ledger inside the data directory.
const DEFAULT_LEDGER: [&str; 2] = ["ledger", "disposals.jsonl"];

impl Context {
    /// Returns the disposal ledger's path: `--ledger`, else `DATA_DIR/ledger/disposals.jsonl`.
    pub fn ledger_path(&self) -> PathBuf {
        self.ledger.clone().unwrap_or_else(|| {
            DEFAULT_LEDGER.iter().fold(self.data_dir.clone(), |path, part| path.join(part))
        })
    }
}

pub fn backup(context: &Context, command: BackupCommand) -> Result<ExitCode> {
    let on_files = matches!(
        command,
        BackupCommand::Create { .. } | BackupCommand::Verify { .. } | BackupCommand::Restore { .. }
    );
    if on_files {
        // Refuses a PostgreSQL store with what to use instead.
        context.open_embedded_store_check()?;
    }
    match command {
        BackupCommand::Create { destinations, json } => {
            create::create(context, &destinations_or_env(destinations.destinations)?, json)
        }
        BackupCommand::List { destinations, json } => {
            verify::list(&destinations_or_env(destinations.destinations)?, json)
        }
        BackupCommand::Verify { id, destinations, json } => {
            let destinations = destinations_or_env(destinations.destinations)?;
            verify::verify(context, &destinations, id.as_deref(), json)
        }
        BackupCommand::Restore { id, into, destinations, json } => {
            let destinations = destinations_or_env(destinations.destinations)?;
            restore::restore(context, &destinations, &id, &into, json)
        }
        BackupCommand::SyncLedger { json } => {
            let store = context.open_store()?;
            let path = context.ledger_path();
            let synced = sync_ledger(&*store, &path)?;
            if json {
                print_json(&serde_json::json!({ "ledger": path, "sync": synced }))?;
            } else {
                outln!(
                    "disposal ledger {}: {} entries appended, {} in total",
                    path.display(),
                    synced.appended,
                    synced.entries
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Brings the disposal ledger up to date after `lifecycle run`. The run's receipts are
/// already committed to the audit log, so a failure here loses nothing: the next sync
/// appends them.
pub fn sync_ledger_after_run(context: &Context, store: &dyn Store) -> Result<()> {
    let path = context.ledger_path();
    sync_ledger(store, &path).with_context(|| {
        format!(
            "the run completed and its receipts are in the audit log, but they could not be \
             added to the disposal ledger {}: fix the cause, then run \
             `medconnect backup sync-ledger`",
            path.display()
        )
    })?;
    Ok(())
}

fn sync_ledger(store: &dyn Store, path: &Path) -> Result<ledger::LedgerSync> {
    ledger::sync(store, path)
        .with_context(|| format!("syncing the disposal ledger {}", path.display()))
}

/// Returns the destinations given with `--destination`, else those in the environment.
fn destinations_or_env(given: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    let mut destinations = given;
    if destinations.is_empty() {
        if let Some(value) = std::env::var_os(DESTINATIONS_ENV) {
            let value = value.to_string_lossy().into_owned();
            destinations =
                value.split(':').filter(|part| !part.is_empty()).map(PathBuf::from).collect();
        }
    }
    if destinations.is_empty() {
        bail!(
            "no backup destination given: pass --destination DIR once per destination, or set \
             {DESTINATIONS_ENV}=DIR1:DIR2"
        );
    }
    Ok(destinations)
}
