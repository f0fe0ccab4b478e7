//! The disposal ledger: an append-only JSON-lines file, kept apart from the store and its
//! backups, that lists every disposal receipt of the audit log.
//!
//! A backup contains records that later runs purge. A restore re-applies every ledger entry
//! recorded after its backup was taken (see [`crate::Store::reapply_disposal`]), so a restored
//! store never brings purged data back. The ledger is derived from the audit log: [`sync`]
//! appends each `lifecycle.dispose` receipt that the ledger lacks, so receipts written while
//! the file was missing or damaged are recovered by the next sync.
//!
//! # Format
//!
//! One JSON object per line, in the order the receipts were synced:
//!
//! ```text
//! {"seq":118,"hash":"9c1e…","category":"patient_records","tenant_id":"0b5e…",
//!  "record_id":"6c1f…","keys_destroyed":["3f6f…"],"disposed_at":"2031-12-01T00:00:00Z"}
//! ```
//!
//! `seq` and `hash` are the audit entry's sequence number and chain hash. A store restored
//! from a backup continues the audit chain from the backup's head, so its sequence numbers
//! repeat numbers that the old store used. The hash distinguishes such entries.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use medconnect_domain::audit::{AuditBody, Destroyed};
use medconnect_domain::model::Category;
use medconnect_domain::TenantId;
use serde::{Deserialize, Serialize};

use crate::{Result, Store, StoreError};

/// The audit action of the entries that carry disposal receipts.
pub const DISPOSE_ACTION: &str = "lifecycle.dispose";

/// Audit entries read per page while syncing.
const SYNC_PAGE: u32 = 1000;

/// One disposal, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Sequence number of the audit entry that carries the receipt.
    pub seq: i64,
    /// Chain hash of that audit entry.
    pub hash: String,
    pub category: Category,
    /// The tenant of the disposed record. None for a core profile, which belongs to no
    /// single tenant.
    pub tenant_id: Option<TenantId>,
    /// The patient id for patient records and core profiles, else the photo or session id.
    pub record_id: String,
    /// Ids of the data keys destroyed with the record.
    #[serde(default)]
    pub keys_destroyed: Vec<String>,
    /// When the disposal committed, on the store's clock.
    pub disposed_at: DateTime<Utc>,
}

/// The result of re-applying one ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReapplyOutcome {
    /// Rows, files and data keys that the entry names were deleted.
    Applied { destroyed: Destroyed, keys_destroyed: Vec<String> },
    /// Nothing that the entry names was left in the store.
    Absent,
}

/// Result of one [`sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LedgerSync {
    /// Entries appended by this sync.
    pub appended: u64,
    /// Entries in the ledger after the sync.
    pub entries: u64,
}

/// Reads a ledger. Returns `None` when the file does not exist.
///
/// A last line without its newline is the torn end of an interrupted append, and is left
/// out. The next [`sync`] removes it and writes the entry again. Any other line that is not
/// an entry fails with [`StoreError::Corrupt`], naming the file and line.
pub fn read(path: &Path) -> Result<Option<Vec<LedgerEntry>>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StoreError::io(path, err)),
    };
    parse(path, &text).map(Some)
}

fn parse(path: &Path, text: &str) -> Result<Vec<LedgerEntry>> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    let mut entries = Vec::new();
    for (index, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(line).map_err(|err| {
            StoreError::Corrupt(format!(
                "disposal ledger {} line {} is not a ledger entry ({err}): restore the file \
                 from a backup destination's ledger.jsonl, or move it aside and run \
                 `medconnect backup sync-ledger` to rebuild it from the audit log",
                path.display(),
                index + 1
            ))
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Appends to the ledger at `path` every disposal receipt of `store` that it lacks, creating
/// the file and its folder when missing. Each append is flushed to disk before this returns.
///
/// The sync starts after the last ledger entry whose sequence number and hash match an audit
/// entry of `store`, so entries of another store lineage, such as the store a restored store
/// was copied from, never hide this store's receipts.
///
/// Nodes that share a ledger file take turns: each sync holds an exclusive lock on the file
/// while it reads and appends, so two syncs never append the same entries.
pub fn sync(store: &dyn Store, path: &Path) -> Result<LedgerSync> {
    let mut file = open_for_append(path)?;
    file.lock().map_err(|e| StoreError::io(path, e))?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| StoreError::io(path, e))?;
    let complete_len = text.rfind('\n').map_or(0, |end| end + 1);
    if complete_len < text.len() {
        tracing::warn!(
            bytes = text.len() - complete_len,
            "removing the torn last line of the disposal ledger"
        );
        file.set_len(complete_len as u64).map_err(|e| StoreError::io(path, e))?;
        file.seek(SeekFrom::End(0)).map_err(|e| StoreError::io(path, e))?;
    }
    let existing = parse(path, &text[..complete_len])?;
    // Every receipt of the audit log that the ledger lacks is appended, wherever it is missing:
    // a ledger that lost lines in the middle is repaired too, not only one that fell behind.
    let known: HashSet<(i64, &str)> = existing.iter().map(|e| (e.seq, e.hash.as_str())).collect();

    let mut lines = String::new();
    let mut appended = 0u64;
    let mut after = 0;
    loop {
        let page = store.audit_entries(after, SYNC_PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for record in &page {
            if record.body["action"].as_str() != Some(DISPOSE_ACTION) {
                continue;
            }
            if known.contains(&(record.seq, record.hash.as_str())) {
                continue;
            }
            let entry = entry_from_audit(record.seq, &record.hash, &record.body)?;
            let line = serde_json::to_string(&entry).map_err(|err| {
                StoreError::Corrupt(format!("ledger entry {} does not serialize: {err}", entry.seq))
            })?;
            lines.push_str(&line);
            lines.push('\n');
            appended += 1;
        }
    }
    if appended > 0 {
        file.write_all(lines.as_bytes()).map_err(|e| StoreError::io(path, e))?;
    }
    file.sync_all().map_err(|e| StoreError::io(path, e))?;
    tracing::info!(appended, "disposal ledger synced");
    Ok(LedgerSync { appended, entries: existing.len() as u64 + appended })
}

/// Opens the ledger for reading and appending, creating it and its folder when missing. A new
/// file's folder is flushed, so the file survives a crash.
fn open_for_append(path: &Path) -> Result<File> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&folder).map_err(|e| StoreError::io(&folder, e))?;
    let created = !path.exists();
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    if created {
        File::open(&folder)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| StoreError::io(&folder, e))?;
    }
    Ok(file)
}

/// Builds a ledger entry from a `lifecycle.dispose` audit entry's body.
fn entry_from_audit(seq: i64, hash: &str, body: &serde_json::Value) -> Result<LedgerEntry> {
    let body: AuditBody = serde_json::from_value(body.clone()).map_err(|err| {
        StoreError::Corrupt(format!("audit entry {seq} has an invalid body: {err}"))
    })?;
    let receipt = body.receipt.ok_or_else(|| {
        StoreError::Corrupt(format!("audit entry {seq} is a disposal without a receipt"))
    })?;
    Ok(LedgerEntry {
        seq,
        hash: hash.to_owned(),
        category: receipt.category,
        tenant_id: body.tenant_id,
        record_id: receipt.record_id,
        keys_destroyed: receipt.keys_destroyed,
        disposed_at: body.at,
    })
}

/// Returns the sequence number and hash of every disposal receipt in `store` with a sequence
/// number of at most `up_to`.
pub fn receipt_hashes(store: &dyn Store, up_to: i64) -> Result<HashMap<i64, String>> {
    let mut hashes = HashMap::new();
    let mut after = 0;
    while after < up_to {
        let page = store.audit_entries(after, SYNC_PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for record in page {
            if record.seq <= up_to && record.body["action"].as_str() == Some(DISPOSE_ACTION) {
                hashes.insert(record.seq, record.hash);
            }
        }
    }
    Ok(hashes)
}

/// Selects the entries that a store restored from a backup must re-apply.
///
/// These are every entry with a sequence number above `backup_receipt_seq`, the highest
/// receipt in the backup, and every earlier entry whose hash differs from the backup's receipt
/// at that number, because another store lineage wrote it. `backup_receipts` maps the backup's
/// receipt sequence numbers to their hashes, as [`receipt_hashes`] returns them.
pub fn entries_to_reapply<'a>(
    entries: &'a [LedgerEntry],
    backup_receipt_seq: i64,
    backup_receipts: &HashMap<i64, String>,
) -> Vec<&'a LedgerEntry> {
    entries
        .iter()
        .filter(|entry| {
            let in_backup =
                matches!(backup_receipts.get(&entry.seq), Some(hash) if *hash == entry.hash);
            entry.seq > backup_receipt_seq || !in_backup
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, hash: &str) -> LedgerEntry {
        LedgerEntry {
            seq,
            hash: hash.to_owned(),
            category: Category::Session,
            tenant_id: Some(TenantId::new()),
            record_id: format!("session-{seq}"),
            keys_destroyed: Vec::new(),
            disposed_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn torn_last_line_is_left_out() {
        let first = serde_json::to_string(&entry(3, "aa")).expect("serializes");
        let second = serde_json::to_string(&entry(4, "bb")).expect("serializes");
        let text = format!("{first}\n{}", &second[..second.len() / 2]);

        let entries = parse(Path::new("ledger.jsonl"), &text).expect("torn end tolerated");

        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].seq, 3);
    }

    #[test]
    fn invalid_line_names_file_and_line() {
        let first = serde_json::to_string(&entry(3, "aa")).expect("serializes");
        let text = format!("{first}\nnot json\n{first}\n");

        let error = parse(Path::new("/x/ledger.jsonl"), &text).expect_err("invalid line");

        let message = error.to_string();
        assert!(message.contains("/x/ledger.jsonl line 2"), "{message}");
        assert!(message.contains("sync-ledger"), "{message}");
    }

    #[test]
    fn reapply_selects_later_and_foreign_entries() {
        let entries =
            [entry(5, "a5"), entry(6, "b6"), entry(7, "a7"), entry(8, "a8"), entry(9, "a9")];
        let backup: HashMap<i64, String> =
            [(5, "a5".to_owned()), (6, "a6".to_owned()), (7, "a7".to_owned())].into();

        let selected: Vec<i64> =
            entries_to_reapply(&entries, 7, &backup).iter().map(|e| e.seq).collect();

        // 6 has another hash than the backup's receipt 6: another lineage disposed of it.
        assert_eq!(selected, vec![6, 8, 9]);
    }
}
