//! `backup create`: a consistent snapshot of the store, sealed under a new backup key and
//! written atomically into every destination.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use medconnect_crypto::{seal, DataKey, KeyId, MasterKey};
use medconnect_domain::audit::AuditEvent;
use medconnect_domain::time::format_instant;
use medconnect_store::sqlite::{Snapshot, BLOB_DIR, DATABASE_FILE};
use medconnect_store::{ledger, Store};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::files::{remove_tree, replace_synced, resolve, sync_dir, sync_tree, write_new_synced};
use super::manifest::{
    file_aad, new_backup_id, FileEntry, Manifest, WrappedBackupKey, BACKUP_KEY_VERSION, FILES_DIR,
    FORMAT_VERSION, LEDGER_COPY, MANIFEST_FILE, PARTIAL_SUFFIX,
};
use crate::output::print_json;
use crate::{Context, POLICY_FILE};

/// Minimum number of destinations a backup is written to, one per region.
const MIN_DESTINATIONS: usize = 2;

/// One destination while the backup is written into its `ID.partial` folder.
struct Writer {
    root: PathBuf,
    partial: PathBuf,
    complete: PathBuf,
    /// The first failure. A failed destination is skipped and its partial folder removed.
    failure: Option<anyhow::Error>,
}

impl Writer {
    fn start(root: &Path, backup_id: &str) -> Self {
        let partial = root.join(format!("{backup_id}{PARTIAL_SUFFIX}"));
        let complete = root.join(backup_id);
        let mut writer = Writer { root: root.to_owned(), partial, complete, failure: None };
        let created = fs::DirBuilder::new()
            .mode(0o700)
            .create(&writer.partial)
            .with_context(|| format!("creating {}", writer.partial.display()));
        if let Err(err) = created {
            writer.failure = Some(err);
        }
        writer
    }

    fn write(&mut self, relative: &str, bytes: &[u8]) {
        if self.failure.is_none() {
            let path = self.partial.join(FILES_DIR).join(relative);
            if let Err(err) = write_new_synced(&path, bytes) {
                self.fail(err);
            }
        }
    }

    /// Writes the manifest, flushes every folder, then renames `ID.partial` to `ID`.
    fn finish(&mut self, manifest_json: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        let finished = write_new_synced(&self.partial.join(MANIFEST_FILE), manifest_json)
            .and_then(|()| sync_tree(&self.partial))
            .and_then(|()| {
                fs::rename(&self.partial, &self.complete).with_context(|| {
                    format!("renaming {} to {}", self.partial.display(), self.complete.display())
                })
            })
            .and_then(|()| sync_dir(&self.root));
        if let Err(err) = finished {
            self.fail(err);
        }
    }

    fn fail(&mut self, err: anyhow::Error) {
        if let Err(cleanup) = remove_tree(&self.partial) {
            tracing::warn!(error = %cleanup, "removing a failed backup's partial folder failed");
        }
        self.failure = Some(err);
    }
}

#[derive(Serialize)]
struct DestinationResult {
    path: PathBuf,
    ok: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct CreateReport {
    backup_id: String,
    created_at: String,
    files: usize,
    bytes: u64,
    disposal_receipt_seq: i64,
    missing_files: Vec<String>,
    ledger: PathBuf,
    ledger_entries: u64,
    destinations: Vec<DestinationResult>,
}

// TODO: no command deletes old backups or abandoned `ID.partial` folders. Until one exists, a
// backup keeps records purged after it, readable with the master key, until an operator
// deletes its folder.
pub fn create(context: &Context, destinations: &[PathBuf], json: bool) -> Result<ExitCode> {
    let destinations = check_destinations(context, destinations)?;
    let mut store = context.open_embedded_store()?;
    let master = context.master_key_for(store.master_key_version()?)?;

    // The sync brings the ledger up to date, so that the copy written beside this backup
    // lists every disposal committed before it.
    let ledger_path = context.ledger_path();
    let synced = ledger::sync(&store, &ledger_path)
        .with_context(|| format!("syncing the disposal ledger {}", ledger_path.display()))?;

    let backup_id = new_backup_id();
    let created_at = format_instant(chrono::Utc::now());
    let snapshot = store.snapshot(&backup_id)?;
    let mut writers: Vec<Writer> =
        destinations.iter().map(|root| Writer::start(root, &backup_id)).collect();
    let sealed = seal_snapshot(context, &master, snapshot, &backup_id, &created_at, &mut writers);
    let manifest = match sealed {
        Ok(manifest) => manifest,
        Err(err) => {
            for writer in writers.iter_mut().filter(|w| w.failure.is_none()) {
                writer.fail(anyhow!("backup abandoned"));
            }
            return Err(err);
        }
    };
    let manifest_json =
        serde_json::to_vec_pretty(&manifest).context("serializing the backup manifest")?;
    for writer in &mut writers {
        writer.finish(&manifest_json);
    }
    let missing_files = manifest.missing_files.clone();

    // A second copy of the ledger beside the backups, for a restore that lost the live one.
    let ledger_bytes = fs::read(&ledger_path)
        .with_context(|| format!("reading the disposal ledger {}", ledger_path.display()))?;
    for writer in writers.iter_mut().filter(|w| w.failure.is_none()) {
        if let Err(err) = replace_synced(&writer.root.join(LEDGER_COPY), &ledger_bytes) {
            writer.failure = Some(err.context("copying the disposal ledger"));
        }
    }

    let written = writers.iter().filter(|w| w.failure.is_none()).count();
    let report = CreateReport {
        backup_id: backup_id.clone(),
        created_at,
        files: manifest.files.len(),
        bytes: manifest.total_size(),
        disposal_receipt_seq: manifest.disposal_receipt_seq,
        missing_files,
        ledger: ledger_path,
        ledger_entries: synced.entries,
        destinations: writers
            .iter()
            .map(|w| DestinationResult {
                path: w.root.clone(),
                ok: w.failure.is_none(),
                error: w.failure.as_ref().map(|err| format!("{err:#}")),
            })
            .collect(),
    };
    if written > 0 {
        let detail = format!(
            "backup {backup_id} written to {written} of {} destinations: {} files, {} bytes, \
             disposal receipts up to audit entry {}",
            writers.len(),
            report.files,
            report.bytes,
            report.disposal_receipt_seq
        );
        store.append_audit(
            AuditEvent::new(&context.actor, "backup.create").subject(&backup_id).detail(detail),
        )?;
    }
    print_report(&report, json)?;

    if written < writers.len() {
        let failed: Vec<String> = report
            .destinations
            .iter()
            .filter(|d| !d.ok)
            .map(|d| format!("{}: {}", d.path.display(), d.error.as_deref().unwrap_or("failed")))
            .collect();
        bail!(
            "backup {backup_id} is complete in {written} of {} destinations; failed: {}. Fix \
             the cause and run `medconnect backup create` again",
            writers.len(),
            failed.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Seals the snapshot's database, the policy file and the ID photo files under a new backup
/// key, writes them into every destination's partial folder, and returns the tagged manifest.
fn seal_snapshot(
    context: &Context,
    master: &MasterKey,
    mut snapshot: Snapshot,
    backup_id: &str,
    created_at: &str,
    writers: &mut [Writer],
) -> Result<Manifest> {
    let backup_key = DataKey::generate(KeyId::new())?;
    let mut sealer = Sealer { backup_id, key: &backup_key, files: Vec::new() };
    let mut database = Vec::new();
    snapshot.database.read_to_end(&mut database).context("reading the database snapshot")?;
    sealer.add(DATABASE_FILE, &database, writers)?;
    drop(database);

    let policy_path = context.policy_path();
    match fs::read(&policy_path) {
        Ok(policy) => sealer.add(POLICY_FILE, &policy, writers)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", policy_path.display())),
    }

    let blob_root = context.data_dir.join(BLOB_DIR);
    let mut missing_files = Vec::new();
    for relative in &snapshot.blob_files {
        let path = blob_root.join(relative);
        let stored = format!("{BLOB_DIR}/{relative}");
        match fs::read(&path) {
            Ok(bytes) => sealer.add(&stored, &bytes, writers)?,
            // A disposal that committed after the snapshot unlinked it. That disposal is
            // in the ledger, and a restore re-applies it.
            Err(err) if err.kind() == io::ErrorKind::NotFound => missing_files.push(stored),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    let facts = &snapshot.facts;
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        backup_id: backup_id.to_owned(),
        created_at: created_at.to_owned(),
        schema_version: facts.schema_version,
        clock_mode: facts.clock_mode.as_str().to_owned(),
        audit_head_seq: facts.audit_head.as_ref().map(|(seq, _)| *seq),
        audit_head_hash: facts.audit_head.as_ref().map(|(_, hash)| hash.clone()),
        disposal_receipt_seq: facts.disposal_receipt_seq,
        backup_key: wrap_backup_key(master, &backup_key)?,
        files: sealer.files,
        missing_files,
        manifest_tag: String::new(),
    };
    manifest.tag(&backup_key)?;
    Ok(manifest)
}

/// Seals each file once and hands the same bytes to every destination.
struct Sealer<'a> {
    backup_id: &'a str,
    key: &'a DataKey,
    files: Vec<FileEntry>,
}

impl Sealer<'_> {
    // TODO: each file is read and sealed whole in memory, because medconnect-crypto seals one
    // message at a time. A database of several GiB needs that much free memory, twice.
    fn add(&mut self, relative: &str, plaintext: &[u8], writers: &mut [Writer]) -> Result<()> {
        let sealed =
            seal(self.key, BACKUP_KEY_VERSION, &file_aad(self.backup_id, relative), plaintext)
                .with_context(|| format!("sealing {relative}"))?;
        for writer in writers.iter_mut() {
            writer.write(relative, &sealed);
        }
        if writers.iter().all(|w| w.failure.is_some()) {
            let first = writers.iter().find_map(|w| w.failure.as_ref());
            return Err(anyhow!(
                "writing the backup failed in every destination: {}",
                first.map(|err| format!("{err:#}")).unwrap_or_default()
            ));
        }
        self.files.push(FileEntry {
            path: relative.to_owned(),
            size: sealed.len() as u64,
            sha256: hex::encode(Sha256::digest(&sealed)),
        });
        Ok(())
    }
}

fn wrap_backup_key(master: &MasterKey, key: &DataKey) -> Result<WrappedBackupKey> {
    Ok(WrappedBackupKey {
        key_id: key.id().to_string(),
        key_version: BACKUP_KEY_VERSION,
        master_key_version: master.version(),
        wrapped: hex::encode(master.wrap_key(key, BACKUP_KEY_VERSION)?),
    })
}

/// Checks that there are at least two distinct destinations, that each is an existing folder,
/// and that none is inside the data directory, which a backup must survive.
fn check_destinations(context: &Context, destinations: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let data_dir = resolve(&context.data_dir);
    let mut seen = HashSet::new();
    let mut checked = Vec::new();
    for destination in destinations {
        let resolved = resolve(destination);
        if !resolved.is_dir() {
            bail!(
                "backup destination {} is not an existing folder: create it, or mount the \
                 volume it lives on",
                destination.display()
            );
        }
        if resolved.starts_with(&data_dir) {
            bail!(
                "backup destination {} is inside the data directory {}: choose a folder on \
                 another disk or in another region",
                destination.display(),
                context.data_dir.display()
            );
        }
        if seen.insert(resolved.clone()) {
            checked.push(resolved);
        }
    }
    if checked.len() < MIN_DESTINATIONS {
        bail!(
            "backup create needs at least {MIN_DESTINATIONS} distinct destinations, one per \
             region, but got {}: pass --destination DIR once for each, or set {}=DIR1:DIR2",
            checked.len(),
            super::DESTINATIONS_ENV
        );
    }
    Ok(checked)
}

fn print_report(report: &CreateReport, json: bool) -> Result<()> {
    if json {
        return print_json(report);
    }
    outln!(
        "backup {} created at {}: {} files, {} bytes sealed",
        report.backup_id,
        report.created_at,
        report.files,
        report.bytes
    );
    outln!(
        "  disposal receipts up to audit entry {}; ledger {} has {} entries",
        report.disposal_receipt_seq,
        report.ledger.display(),
        report.ledger_entries
    );
    for destination in &report.destinations {
        match &destination.error {
            None => outln!("  {}: complete", destination.path.display()),
            Some(error) => outln!("  {}: FAILED: {error}", destination.path.display()),
        }
    }
    for missing in &report.missing_files {
        eprintln!(
            "warning: {missing} was removed by a disposal during the backup; a restore \
             re-applies that disposal from the ledger"
        );
    }
    Ok(())
}
