//! Consistent snapshots of the database for backups, through SQLite's online backup API.

use std::fs::{self, File};
use std::io;
use std::path::{Component, Path};
use std::time::Duration;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OptionalExtension};

use super::{meta_value, open_connection, schema_version, SqliteStore, BLOB_DIR, DATABASE_FILE};
use crate::ledger::DISPOSE_ACTION;
use crate::{ClockMode, Result, StoreError};

/// Prefix of the temporary snapshot file in the data directory.
const SNAPSHOT_PREFIX: &str = ".backup-snapshot-";

/// Pages copied per step of the online backup.
const PAGES_PER_STEP: i32 = 4096;

/// Facts a backup manifest records about the database it copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub schema_version: i64,
    pub clock_mode: ClockMode,
    /// Sequence number and hash of the last audit entry, as recorded in `store_meta`.
    pub audit_head: Option<(i64, String)>,
    /// Sequence number of the last disposal receipt, 0 when there is none.
    pub disposal_receipt_seq: i64,
}

/// A copy of the database taken in one read of a consistent state.
#[derive(Debug)]
pub struct Snapshot {
    /// The copy, open for reading. Its file is already unlinked, so it disappears when this
    /// handle is dropped, also when the process crashes.
    pub database: File,
    pub facts: SnapshotFacts,
    /// Blob files that the copy's `id_photos` rows name, relative to the blob folder.
    pub blob_files: Vec<String>,
}

impl SqliteStore {
    /// Copies the database with SQLite's online backup API while holding the write lock.
    ///
    /// The copy is written to a temporary file in the data directory, opened, and unlinked
    /// before the lock is released. Holding the lock also makes any temporary snapshot file
    /// found at the start a leftover of a crashed backup, which is removed then.
    ///
    /// Blob files are not copied. They are never changed once written, and one is unlinked
    /// only after the transaction that deletes its row commits, so a caller that reads them
    /// later finds each one, unless a disposal committed after this snapshot removed it.
    pub fn snapshot(&mut self, name: &str) -> Result<Snapshot> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(StoreError::Corrupt(format!(
                "invalid snapshot name {name:?}: use letters, digits and hyphens"
            )));
        }
        // SQLite's backup API cannot read from a connection that holds a write transaction,
        // so a second connection holds the write lock while `self.conn` is copied.
        let lock = open_connection(&self.data_dir.join(DATABASE_FILE))?;
        lock.execute_batch("BEGIN IMMEDIATE")?;
        let result = self.snapshot_locked(name);
        // Nothing was written, so ending the transaction cannot lose a change.
        let ended = lock.execute_batch("ROLLBACK");
        let snapshot = result?;
        ended?;
        Ok(snapshot)
    }

    fn snapshot_locked(&mut self, name: &str) -> Result<Snapshot> {
        remove_leftover_snapshots(&self.data_dir)?;
        let path = self.data_dir.join(format!("{SNAPSHOT_PREFIX}{name}.db"));
        let copied = copy_database(&self.conn, &path);
        let opened = copied.and_then(|(facts, blob_files)| {
            let database = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
            Ok(Snapshot { database, facts, blob_files })
        });
        remove_snapshot_files(&path)?;
        opened
    }

    /// Reads the facts that a backup manifest records from this store's database.
    pub fn snapshot_facts(&self) -> Result<SnapshotFacts> {
        read_facts(&self.conn)
    }
}

/// Copies the database into a new file at `path` and returns its facts and blob files.
fn copy_database(source: &Connection, path: &Path) -> Result<(SnapshotFacts, Vec<String>)> {
    let mut copy = Connection::open(path)?;
    {
        let backup = Backup::new(source, &mut copy)?;
        backup.run_to_completion(PAGES_PER_STEP, Duration::from_millis(10), None)?;
    }
    // A single file without a write-ahead log, whatever the source's journal mode.
    copy.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
    let facts = read_facts(&copy)?;
    let blob_files = photo_files(&copy)?;
    copy.close().map_err(|(_, err)| err)?;
    Ok((facts, blob_files))
}

fn read_facts(conn: &Connection) -> Result<SnapshotFacts> {
    let clock_mode = match meta_value(conn, "clock_mode")?.as_deref() {
        Some("simulated") => ClockMode::Simulated,
        Some("production") => ClockMode::Production,
        other => return Err(StoreError::Corrupt(format!("unknown clock mode {other:?}"))),
    };
    let audit_head = match meta_value(conn, "audit_head")? {
        Some(value) => {
            let corrupt = || StoreError::Corrupt(format!("invalid recorded audit head {value:?}"));
            let (seq, hash) = value.split_once(':').ok_or_else(corrupt)?;
            Some((seq.parse().map_err(|_| corrupt())?, hash.to_owned()))
        }
        None => None,
    };
    let disposal_receipt_seq: Option<i64> = conn
        .query_row("SELECT max(seq) FROM audit_log WHERE action = ?1", [DISPOSE_ACTION], |row| {
            row.get(0)
        })
        .optional()?
        .flatten();
    Ok(SnapshotFacts {
        schema_version: schema_version(conn)?,
        clock_mode,
        audit_head,
        disposal_receipt_seq: disposal_receipt_seq.unwrap_or(0),
    })
}

/// Lists the blob files of the `id_photos` rows, checking that each is a relative path inside
/// the blob folder.
fn photo_files(conn: &Connection) -> Result<Vec<String>> {
    let mut statement = conn.prepare("SELECT file_name FROM id_photos ORDER BY file_name")?;
    let names = statement.query_map([], |row| row.get::<_, String>(0))?;
    let mut files = Vec::new();
    for name in names {
        let name = name?;
        let inside = Path::new(&name).components().all(|c| matches!(c, Component::Normal(_)));
        if name.is_empty() || !inside {
            return Err(StoreError::Corrupt(format!(
                "id_photos names file {name:?}, which is not a relative path inside {BLOB_DIR}/"
            )));
        }
        files.push(name);
    }
    Ok(files)
}

/// Removes the snapshot file at `path` and the journal files SQLite may have left beside it.
fn remove_snapshot_files(path: &Path) -> Result<()> {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(StoreError::io(file, err)),
        }
    }
    Ok(())
}

/// Removes snapshot files that a crashed backup left in the data directory. A leftover copy
/// still contains records and data keys that later runs purged, so it must not outlive them.
fn remove_leftover_snapshots(data_dir: &Path) -> Result<()> {
    let entries = fs::read_dir(data_dir).map_err(|e| StoreError::io(data_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(data_dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(SNAPSHOT_PREFIX) {
            tracing::warn!("removing a snapshot file left by an interrupted backup");
            fs::remove_file(entry.path()).map_err(|e| StoreError::io(entry.path(), e))?;
        }
    }
    Ok(())
}
