//! `backup restore`: decrypts a verified copy into a new data directory, then re-applies
//! every disposal that the ledger recorded after the backup was taken, before the folder
//! takes its final name.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context as _, Result};
use medconnect_crypto::DataKey;
use medconnect_domain::audit::AuditEvent;
use medconnect_store::ledger::{self, LedgerEntry};
use medconnect_store::sqlite::DATABASE_FILE;
use medconnect_store::{ReapplyOutcome, SqliteStore, Store};
use serde::Serialize;

use super::files::{
    create_private_dirs, is_empty_dir, parent_of, remove_tree, resolve, sync_dir, sync_tree,
    write_new_synced,
};
use super::manifest::{check_backup_id, Manifest, LEDGER_COPY};
use super::verify::{check_copy, read_sealed_file, Problem};
use crate::output::print_json;
use crate::Context;

#[derive(Serialize)]
struct SkippedDestination {
    path: PathBuf,
    problems: Vec<Problem>,
}

/// Totals of the ledger entries a restore re-applied.
#[derive(Debug, Default, Serialize)]
struct Reapplied {
    /// Entries recorded after the backup, or from another store lineage.
    selected: u64,
    applied: u64,
    already_absent: u64,
    rows: u64,
    files: u64,
    keys_destroyed: u64,
}

#[derive(Serialize)]
struct RestoreReport {
    backup_id: String,
    created_at: String,
    into: PathBuf,
    destination: PathBuf,
    skipped_destinations: Vec<SkippedDestination>,
    ledger: PathBuf,
    ledger_source: &'static str,
    disposal_receipt_seq: i64,
    reapplied: Reapplied,
}

pub fn restore(
    context: &Context,
    destinations: &[PathBuf],
    backup_id: &str,
    into: &Path,
    json: bool,
) -> Result<ExitCode> {
    check_backup_id(backup_id)?;
    check_target(context, into)?;
    let master = |version: u32| context.master_key_for(version);

    let mut skipped = Vec::new();
    let mut chosen = None;
    for destination in destinations {
        let checked = check_copy(destination, backup_id, &master);
        match checked.verified {
            Some(verified) => {
                chosen = Some((destination.clone(), verified));
                break;
            }
            None => {
                let problems = checked.problems;
                eprintln!(
                    "warning: skipping destination {}: its copy of backup {backup_id} does not \
                     verify: {}",
                    destination.display(),
                    summarize(&problems)
                );
                skipped.push(SkippedDestination { path: destination.clone(), problems });
            }
        }
    }
    let Some((destination, (manifest, key))) = chosen else {
        bail!(
            "no destination has a copy of backup {backup_id} that verifies, so nothing was \
             written: {}. Run `medconnect backup verify {backup_id}` for every problem",
            skipped
                .iter()
                .map(|s| format!("{}: {}", s.path.display(), summarize(&s.problems)))
                .collect::<Vec<_>>()
                .join("; ")
        );
    };

    let (ledger_path, ledger_source, entries) = load_ledger(context, destinations)?;
    let staging = staging_path(into, backup_id);
    let restored = restore_into(context, &destination, &manifest, &key, &entries, &staging)
        .and_then(|reapplied| {
            fs::rename(&staging, into)
                .with_context(|| format!("renaming {} to {}", staging.display(), into.display()))?;
            Ok(reapplied)
        });
    let reapplied = match restored {
        Ok(reapplied) => reapplied,
        Err(err) => {
            if let Err(cleanup) = remove_tree(&staging) {
                eprintln!("warning: removing {} failed: {cleanup:#}", staging.display());
            }
            return Err(err.context(format!(
                "restoring backup {backup_id} failed, so {} was not created",
                into.display()
            )));
        }
    };
    sync_dir(&parent_of(into))?;

    let report = RestoreReport {
        backup_id: backup_id.to_owned(),
        created_at: manifest.created_at.clone(),
        into: into.to_owned(),
        destination,
        skipped_destinations: skipped,
        ledger: ledger_path,
        ledger_source,
        disposal_receipt_seq: manifest.disposal_receipt_seq,
        reapplied,
    };
    print_report(&report, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Rejects a target that exists and is not an empty folder, and the live data directory or
/// a folder inside it.
fn check_target(context: &Context, into: &Path) -> Result<()> {
    let target = resolve(into);
    let data_dir = resolve(&context.data_dir);
    if target.starts_with(&data_dir) {
        bail!(
            "cannot restore into {}: it is the live data directory {} or inside it. Restore \
             into a new folder, check the result, then switch to it",
            into.display(),
            context.data_dir.display()
        );
    }
    if into.exists() && !(into.is_dir() && is_empty_dir(into)?) {
        bail!(
            "cannot restore into {}: it exists and is not an empty folder. Choose a new folder",
            into.display()
        );
    }
    Ok(())
}

/// Returns the hidden sibling folder that a restore is written into before it is renamed.
fn staging_path(into: &Path, backup_id: &str) -> PathBuf {
    let name = into.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent_of(into).join(format!(".{name}.restoring-{backup_id}"))
}

/// Decrypts every file into `staging`, opens the store there, re-applies the ledger entries
/// after the backup and records both steps in its audit log.
fn restore_into(
    context: &Context,
    destination: &Path,
    manifest: &Manifest,
    key: &DataKey,
    entries: &[LedgerEntry],
    staging: &Path,
) -> Result<Reapplied> {
    remove_tree(staging)?;
    create_private_dirs(staging)?;
    let folder = destination.join(&manifest.backup_id);
    for entry in &manifest.files {
        // Read and authenticated again: the copy may have changed since it was verified.
        let plaintext = read_sealed_file(&folder, manifest, &entry.path, Some(key))
            .map_err(|problem| anyhow!("{}: {problem}", destination.display()))?
            .ok_or_else(|| anyhow!("{} was not decrypted", entry.path))?;
        write_new_synced(&staging.join(&entry.path), &plaintext)?;
    }
    if !staging.join(DATABASE_FILE).is_file() {
        bail!("backup {} contains no {DATABASE_FILE}", manifest.backup_id);
    }

    let mut store = SqliteStore::open(staging)?;
    let facts = store.snapshot_facts()?;
    if facts.disposal_receipt_seq != manifest.disposal_receipt_seq {
        bail!(
            "backup {} is inconsistent: its manifest records disposal receipts up to audit entry \
             {}, but its database up to {}",
            manifest.backup_id,
            manifest.disposal_receipt_seq,
            facts.disposal_receipt_seq
        );
    }
    let reapplied = reapply(&mut store, entries, manifest.disposal_receipt_seq)?;

    let detail = format!(
        "{} of {} disposal ledger entries after audit entry {} re-applied: {} rows, {} files, \
         {} data keys destroyed; {} already absent",
        reapplied.applied,
        reapplied.selected,
        manifest.disposal_receipt_seq,
        reapplied.rows,
        reapplied.files,
        reapplied.keys_destroyed,
        reapplied.already_absent
    );
    let actor = &context.actor;
    store.append_audit(
        AuditEvent::new(actor, "backup.reapply").subject(&manifest.backup_id).detail(detail),
    )?;
    let head = manifest.audit_head_seq.unwrap_or(0);
    let detail = format!(
        "restored backup {} taken at {} with audit head {head}",
        manifest.backup_id, manifest.created_at
    );
    store.append_audit(
        AuditEvent::new(actor, "backup.restore").subject(&manifest.backup_id).detail(detail),
    )?;
    // Closing the last connection checkpoints the write-ahead log into the database file.
    drop(store);
    sync_tree(staging)?;
    Ok(reapplied)
}

/// Re-applies every ledger entry recorded after the backup, or from another store lineage.
fn reapply(
    store: &mut SqliteStore,
    entries: &[LedgerEntry],
    receipt_seq: i64,
) -> Result<Reapplied> {
    let in_backup = ledger::receipt_hashes(&*store, receipt_seq)?;
    let selected = ledger::entries_to_reapply(entries, receipt_seq, &in_backup);
    let mut totals = Reapplied { selected: selected.len() as u64, ..Reapplied::default() };
    for entry in selected {
        let outcome = store.reapply_disposal(entry).with_context(|| {
            format!("re-applying disposal ledger entry {} ({})", entry.seq, entry.category)
        })?;
        match outcome {
            ReapplyOutcome::Applied { destroyed, keys_destroyed } => {
                totals.applied += 1;
                totals.rows += destroyed.rows;
                totals.files += destroyed.files;
                totals.keys_destroyed += keys_destroyed.len() as u64;
            }
            ReapplyOutcome::Absent => totals.already_absent += 1,
        }
    }
    Ok(totals)
}

/// Reads the disposal ledger: the live one, brought up to date from the live store when one
/// exists, else the newest copy among the destinations. Fails when there is none, because a
/// restore without it could bring purged records back.
fn load_ledger(
    context: &Context,
    destinations: &[PathBuf],
) -> Result<(PathBuf, &'static str, Vec<LedgerEntry>)> {
    let live = context.ledger_path();
    if context.data_dir.join(DATABASE_FILE).is_file() {
        let synced = context
            .open_store()
            .and_then(|store| ledger::sync(&*store, &live).map_err(anyhow::Error::from));
        if let Err(err) = synced {
            eprintln!(
                "warning: the disposal ledger {} could not be brought up to date from the live \
                 store in {}: {err:#}",
                live.display(),
                context.data_dir.display()
            );
        }
    }
    if let Some(entries) = ledger::read(&live)? {
        return Ok((live, "live", entries));
    }

    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for destination in destinations {
        let copy = destination.join(LEDGER_COPY);
        if let Ok(modified) = fs::metadata(&copy).and_then(|m| m.modified()) {
            if !matches!(&newest, Some((time, _)) if *time >= modified) {
                newest = Some((modified, copy));
            }
        }
    }
    let Some((_, copy)) = newest else {
        bail!(
            "no disposal ledger found: {} is missing and no destination has a {LEDGER_COPY}. \
             Without it the restore could bring purged records back: pass --ledger FILE with \
             the ledger's location",
            live.display()
        );
    };
    eprintln!(
        "warning: the live disposal ledger {} is missing; using the newest copy {}",
        live.display(),
        copy.display()
    );
    let entries = ledger::read(&copy)?.unwrap_or_default();
    Ok((copy, "destination copy", entries))
}

fn summarize(problems: &[Problem]) -> String {
    let shown: Vec<String> = problems.iter().take(3).map(ToString::to_string).collect();
    let more = problems.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} (and {more} more)", shown.join("; "))
    } else {
        shown.join("; ")
    }
}

fn print_report(report: &RestoreReport, json: bool) -> Result<()> {
    if json {
        return print_json(report);
    }
    outln!(
        "restored backup {} (taken at {}) from {} into {}",
        report.backup_id,
        report.created_at,
        report.destination.display(),
        report.into.display()
    );
    for skipped in &report.skipped_destinations {
        outln!("  skipped {}: {}", skipped.path.display(), summarize(&skipped.problems));
    }
    let r = &report.reapplied;
    outln!(
        "  ledger {} ({}): {} entries after audit entry {}; {} re-applied, {} already absent",
        report.ledger.display(),
        report.ledger_source,
        r.selected,
        report.disposal_receipt_seq,
        r.applied,
        r.already_absent
    );
    outln!(
        "  the restored store uses the same master key: pass --master-key-file FILE or set \
         MEDCONNECT_MASTER_KEY when you use it"
    );
    Ok(())
}
