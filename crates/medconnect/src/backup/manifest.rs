//! The backup manifest, backup ids, and the associated data that binds each sealed file to
//! its backup and path.
//!
//! # Layout of one destination
//!
//! ```text
//! DEST/
//!   ledger.jsonl                copy of the disposal ledger, written by the latest backup
//!   BACKUP_ID/                  a complete backup (renamed from BACKUP_ID.partial)
//!     manifest.json
//!     files/medconnect.db       the database, sealed
//!     files/policy.toml         the policy in force, sealed
//!     files/blobs/id-photos/TENANT_ID/PHOTO_ID.bin    ID photo files, sealed again
//!   BACKUP_ID.partial/          a backup being written, or one whose writing was interrupted
//! ```
//!
//! Every file under `files/` is a medconnect-crypto ciphertext (format version 1) sealed
//! under the backup's own data key, with [`file_aad`] as associated data. The manifest stores
//! that key only wrapped by the master key, and [`Manifest::tag`] authenticates the manifest
//! itself under the same key, so a changed digest, size, file list or audit position fails
//! verification.

use anyhow::{bail, Context as _, Result};
use medconnect_crypto::{open, seal, Aad, DataKey, KeyId, MasterKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the manifest format that this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside a backup folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Folder of the sealed files inside a backup folder.
pub const FILES_DIR: &str = "files";

/// Suffix of a backup folder while it is written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// File name of the ledger copy at the root of each destination.
pub const LEDGER_COPY: &str = "ledger.jsonl";

/// Version under which the backup key is wrapped and files are sealed. Each backup has its
/// own key, so there is never a second version.
pub const BACKUP_KEY_VERSION: u32 = 1;

/// The `table` value of the associated data of sealed backup files.
const FILE_AAD_TABLE: &str = "backup-file";

/// The `table` value of the associated data of the manifest tag.
const MANIFEST_AAD_TABLE: &str = "backup-manifest";

/// The manifest of one backup, stored as `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: String,
    /// When the backup was taken, on the real clock, in RFC 3339 form.
    pub created_at: String,
    /// `PRAGMA user_version` of the copied database.
    pub schema_version: i64,
    /// `production` or `simulated`.
    pub clock_mode: String,
    /// Sequence number and hash of the last audit entry in the copy.
    pub audit_head_seq: Option<i64>,
    pub audit_head_hash: Option<String>,
    /// Sequence number of the last disposal receipt in the copy, 0 when there is none. A
    /// restore re-applies every ledger entry after it.
    pub disposal_receipt_seq: i64,
    pub backup_key: WrappedBackupKey,
    pub files: Vec<FileEntry>,
    /// Blob files that a row of the copy names but that were gone when they were read,
    /// relative to the store's folder.
    #[serde(default)]
    pub missing_files: Vec<String>,
    /// Hex of an AES-GCM tag, under the backup key, over this manifest with an empty tag.
    pub manifest_tag: String,
}

/// The backup's data key, wrapped by the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedBackupKey {
    pub key_id: String,
    pub key_version: u32,
    pub master_key_version: u32,
    /// Hex of the wrapped key (medconnect-crypto wrapped key format version 1).
    pub wrapped: String,
}

/// One sealed file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the store's folder, such as `medconnect.db`. The sealed file is
    /// `files/PATH` inside the backup folder.
    pub path: String,
    /// Size of the sealed file in bytes.
    pub size: u64,
    /// Hex SHA-256 of the sealed file.
    pub sha256: String,
}

impl Manifest {
    /// Returns the bytes that the tag authenticates: the manifest's JSON with an empty tag.
    fn tagged_content(&self) -> Result<String> {
        let untagged = Manifest { manifest_tag: String::new(), ..self.clone() };
        serde_json::to_string(&untagged).context("serializing the backup manifest")
    }

    /// Computes the tag under `key` and stores it in `manifest_tag`.
    pub fn tag(&mut self, key: &DataKey) -> Result<()> {
        let content = self.tagged_content()?;
        let aad = manifest_aad(&self.backup_id, &content);
        let tag = seal(key, BACKUP_KEY_VERSION, &aad, &[])?;
        self.manifest_tag = hex::encode(tag);
        Ok(())
    }

    /// Checks the tag under `key`. Fails when any field was changed after tagging.
    pub fn check_tag(&self, key: &DataKey) -> Result<()> {
        let tag = hex::decode(&self.manifest_tag).context("manifest_tag is not hexadecimal")?;
        let content = self.tagged_content()?;
        open(key, &manifest_aad(&self.backup_id, &content), &tag).context(
            "manifest authentication failed: a field was changed after the backup was written",
        )?;
        Ok(())
    }

    /// Unwraps the backup key with the master key of the version that wrapped it, so a
    /// backup taken before a master key rotation opens with the retired key.
    pub fn unwrap_key(&self, master_for: &MasterKeyFor<'_>) -> Result<DataKey> {
        let key = &self.backup_key;
        let id = KeyId::parse(&key.key_id)?;
        let wrapped = hex::decode(&key.wrapped).context("backup_key.wrapped is not hexadecimal")?;
        let master = master_for(key.master_key_version)?;
        Ok(master.unwrap_key(&wrapped, id, key.key_version)?)
    }

    /// Returns the total size of the sealed files in bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }
}

/// Loads the master key of a given version.
pub type MasterKeyFor<'a> = dyn Fn(u32) -> Result<MasterKey> + 'a;

/// Returns the associated data of a sealed backup file: the backup id and the file's path, so
/// a file moved to another path or into another backup fails to open.
pub fn file_aad<'a>(backup_id: &'a str, path: &'a str) -> Aad<'a> {
    Aad { tenant: "", table: FILE_AAD_TABLE, column: backup_id, record: path }
}

fn manifest_aad<'a>(backup_id: &'a str, content: &'a str) -> Aad<'a> {
    Aad { tenant: "", table: MANIFEST_AAD_TABLE, column: backup_id, record: content }
}

/// Returns a new backup id: a UUID version 7, whose first 48 bits are the Unix time in
/// milliseconds, so ids sort by creation time.
pub fn new_backup_id() -> String {
    let millis = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let mut random = [0u8; 10];
    random.copy_from_slice(&Uuid::new_v4().as_bytes()[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid().to_string()
}

/// Checks that `id` is a backup id in its canonical form, a lower-case hyphenated UUID, so it
/// can name a folder.
pub fn check_backup_id(id: &str) -> Result<()> {
    match Uuid::parse_str(id) {
        Ok(uuid) if uuid.hyphenated().to_string() == id => Ok(()),
        _ => bail!(
            "invalid backup id {id:?}: expected a lower-case UUID such as \
             0190f2c4-5b1a-7c3d-8e9f-0123456789ab, as `medconnect backup list` prints it"
        ),
    }
}

/// Checks that a manifest path is relative and stays inside the backup, so a tampered
/// manifest cannot make a restore write elsewhere.
pub fn check_relative_path(path: &str) -> Result<()> {
    let inside = std::path::Path::new(path)
        .components()
        .all(|part| matches!(part, std::path::Component::Normal(_)));
    if path.is_empty() || !inside {
        bail!("file path {path:?} in the manifest is not a relative path inside the backup");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            backup_id: new_backup_id(),
            created_at: "2026-04-12T10:15:00Z".into(),
            schema_version: 3,
            clock_mode: "production".into(),
            audit_head_seq: Some(12),
            audit_head_hash: Some("ab".repeat(32)),
            disposal_receipt_seq: 9,
            backup_key: WrappedBackupKey {
                key_id: KeyId::new().to_string(),
                key_version: 1,
                master_key_version: 1,
                wrapped: String::new(),
            },
            files: vec![FileEntry { path: "medconnect.db".into(), size: 99, sha256: "cd".into() }],
            missing_files: Vec::new(),
            manifest_tag: String::new(),
        }
    }

    #[test]
    fn tag_detects_changed_fields() {
        let key = DataKey::generate(KeyId::new()).expect("random source works");
        let mut tagged = manifest();
        tagged.tag(&key).expect("tag");
        tagged.check_tag(&key).expect("untouched manifest verifies");

        let mut later_seq = tagged.clone();
        later_seq.disposal_receipt_seq = 50;
        let mut other_digest = tagged.clone();
        other_digest.files[0].sha256 = "ce".into();
        let mut fewer_files = tagged.clone();
        fewer_files.files.clear();

        for (name, changed) in
            [("receipt seq", later_seq), ("digest", other_digest), ("files", fewer_files)]
        {
            assert!(changed.check_tag(&key).is_err(), "{name} changed");
        }
    }

    #[test]
    fn backup_ids_are_canonical_and_ordered() {
        let first = new_backup_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_backup_id();

        check_backup_id(&first).expect("valid id");
        assert!(first < second, "{first} sorts before {second}");
        assert!(check_backup_id(&first.to_uppercase()).is_err());
        assert!(check_backup_id("../etc").is_err());
    }

    #[test]
    fn relative_paths_stay_inside() {
        check_relative_path("blobs/id-photos/t/p.bin").expect("inside");
        for path in ["", "/etc/passwd", "../x", "blobs/../../x", "./x"] {
            assert!(check_relative_path(path).is_err(), "{path:?}");
        }
    }
}
