//! `backup list` and `backup verify`, and the check of one copy that restore also runs.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use medconnect_crypto::{open, DataKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::files::tree_size;
use super::manifest::{
    check_backup_id, check_relative_path, file_aad, Manifest, MasterKeyFor, FILES_DIR,
    FORMAT_VERSION, MANIFEST_FILE, PARTIAL_SUFFIX,
};
use crate::output::print_json;
use crate::Context;

/// One thing wrong with a copy: the file it concerns, if any, and what is wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub file: Option<String>,
    pub problem: String,
}

impl Problem {
    fn copy(problem: impl Into<String>) -> Self {
        Problem { file: None, problem: problem.into() }
    }

    fn file(file: &str, problem: impl Into<String>) -> Self {
        Problem { file: Some(file.to_owned()), problem: problem.into() }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

/// The outcome of checking one destination's copy of one backup.
pub struct CheckedCopy {
    pub problems: Vec<Problem>,
    /// The manifest and the unwrapped backup key, when every check passed.
    pub verified: Option<(Manifest, DataKey)>,
    pub files: usize,
}

/// Checks one copy: the manifest is present, valid and authentic, the backup key unwraps, and
/// every file has the size and SHA-256 the manifest records and decrypts.
pub fn check_copy(destination: &Path, backup_id: &str, master: &MasterKeyFor<'_>) -> CheckedCopy {
    let mut problems = Vec::new();
    let fail = |problems: Vec<Problem>| CheckedCopy { problems, verified: None, files: 0 };

    if !destination.is_dir() {
        return fail(vec![Problem::copy("destination folder not found")]);
    }
    let folder = destination.join(backup_id);
    if !folder.is_dir() {
        let partial = destination.join(format!("{backup_id}{PARTIAL_SUFFIX}"));
        let problem = if partial.is_dir() {
            format!("only the incomplete copy {backup_id}{PARTIAL_SUFFIX} exists")
        } else {
            format!("backup {backup_id} not found")
        };
        return fail(vec![Problem::copy(problem)]);
    }

    let manifest = match read_manifest(&folder) {
        Ok(manifest) => manifest,
        Err(problem) => return fail(vec![problem]),
    };
    if manifest.backup_id != backup_id {
        let found = &manifest.backup_id;
        return fail(vec![Problem::file(MANIFEST_FILE, format!("names backup {found}"))]);
    }

    let key = match manifest.unwrap_key(master) {
        Ok(key) => Some(key),
        Err(err) => {
            problems.push(Problem::file(
                MANIFEST_FILE,
                format!("the backup key does not unwrap with this master key: {err:#}"),
            ));
            None
        }
    };
    if let Some(key) = &key {
        if let Err(err) = manifest.check_tag(key) {
            problems.push(Problem::file(MANIFEST_FILE, format!("{err:#}")));
        }
    }

    for entry in &manifest.files {
        if let Err(problem) = check_file(&folder, &manifest, &entry.path, key.as_ref()) {
            problems.push(problem);
        }
    }
    let files = manifest.files.len();
    match key {
        Some(key) if problems.is_empty() => {
            CheckedCopy { problems, verified: Some((manifest, key)), files }
        }
        _ => CheckedCopy { problems, verified: None, files },
    }
}

fn read_manifest(folder: &Path) -> Result<Manifest, Problem> {
    let path = folder.join(MANIFEST_FILE);
    let text = fs::read_to_string(&path)
        .map_err(|err| Problem::file(MANIFEST_FILE, format!("cannot be read: {err}")))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|err| Problem::file(MANIFEST_FILE, format!("is not a valid manifest: {err}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(Problem::file(
            MANIFEST_FILE,
            format!(
                "has format version {}, but this build reads only version {FORMAT_VERSION}: \
                 use the MedConnect version that wrote it",
                manifest.format_version
            ),
        ));
    }
    Ok(manifest)
}

/// Reads one sealed file of a verified or unverified copy, checks its size and digest
/// against the manifest and, with the key, decrypts it. Returns the plaintext.
pub fn read_sealed_file(
    folder: &Path,
    manifest: &Manifest,
    path: &str,
    key: Option<&DataKey>,
) -> Result<Option<medconnect_crypto::Zeroizing<Vec<u8>>>, Problem> {
    let shown = format!("{FILES_DIR}/{path}");
    check_relative_path(path).map_err(|err| Problem::file(&shown, format!("{err:#}")))?;
    let Some(entry) = manifest.files.iter().find(|entry| entry.path == path) else {
        return Err(Problem::file(&shown, "not listed in the manifest"));
    };
    let sealed = fs::read(folder.join(FILES_DIR).join(path))
        .map_err(|err| Problem::file(&shown, format!("cannot be read: {err}")))?;
    if sealed.len() as u64 != entry.size {
        return Err(Problem::file(
            &shown,
            format!("has {} bytes, but the manifest records {}", sealed.len(), entry.size),
        ));
    }
    if hex::encode(Sha256::digest(&sealed)) != entry.sha256 {
        return Err(Problem::file(
            &shown,
            "its SHA-256 does not match the manifest: the file was altered or damaged",
        ));
    }
    let Some(key) = key else { return Ok(None) };
    let plaintext = open(key, &file_aad(&manifest.backup_id, path), &sealed)
        .map_err(|err| Problem::file(&shown, format!("does not decrypt: {err}")))?;
    Ok(Some(plaintext))
}

fn check_file(
    folder: &Path,
    manifest: &Manifest,
    path: &str,
    key: Option<&DataKey>,
) -> Result<(), Problem> {
    read_sealed_file(folder, manifest, path, key).map(drop)
}

/// One backup folder found in a destination.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub id: String,
    pub created_at: Option<String>,
    /// Bytes on disk under the folder.
    pub size: u64,
    /// True for a renamed folder with a readable manifest.
    pub complete: bool,
}

/// Lists the backup folders of one destination, ordered by id, which is creation order.
pub fn list_destination(destination: &Path) -> std::io::Result<Vec<Listed>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(destination)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let (id, partial) = match name.strip_suffix(PARTIAL_SUFFIX) {
            Some(id) => (id.to_owned(), true),
            None => (name.clone(), false),
        };
        if check_backup_id(&id).is_err() {
            continue;
        }
        let manifest = if partial { None } else { read_manifest(&entry.path()).ok() };
        found.push(Listed {
            id,
            created_at: manifest.as_ref().map(|m| m.created_at.clone()),
            size: tree_size(&entry.path()),
            complete: manifest.is_some(),
        });
    }
    found.sort_by(|a, b| (&a.id, a.complete).cmp(&(&b.id, b.complete)));
    Ok(found)
}

#[derive(Serialize)]
struct ListedDestination {
    path: PathBuf,
    error: Option<String>,
    backups: Vec<Listed>,
}

pub fn list(destinations: &[PathBuf], json: bool) -> Result<ExitCode> {
    let listed: Vec<ListedDestination> = destinations
        .iter()
        .map(|path| match list_destination(path) {
            Ok(backups) => ListedDestination { path: path.clone(), error: None, backups },
            Err(err) => ListedDestination {
                path: path.clone(),
                error: Some(format!("cannot be listed: {err}")),
                backups: Vec::new(),
            },
        })
        .collect();
    if json {
        print_json(&listed)?;
        return Ok(ExitCode::SUCCESS);
    }
    for destination in &listed {
        if let Some(error) = &destination.error {
            outln!("destination {}: {error}", destination.path.display());
            continue;
        }
        outln!("destination {}", destination.path.display());
        if destination.backups.is_empty() {
            outln!("  no backups");
        }
        for backup in &destination.backups {
            outln!(
                "  {}  {:<20}  {:>12} bytes  {}",
                backup.id,
                backup.created_at.as_deref().unwrap_or("-"),
                backup.size,
                if backup.complete { "complete" } else { "incomplete" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct VerifiedBackup {
    id: String,
    ok: bool,
    files: usize,
    problems: Vec<Problem>,
}

#[derive(Serialize)]
struct VerifiedDestination {
    path: PathBuf,
    ok: bool,
    problems: Vec<Problem>,
    backups: Vec<VerifiedBackup>,
    /// Interrupted copies, which are not checked.
    incomplete: Vec<String>,
}

#[derive(Serialize)]
struct VerifyReport {
    ok: bool,
    destinations: Vec<VerifiedDestination>,
}

pub fn verify(
    context: &Context,
    destinations: &[PathBuf],
    id: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    if let Some(id) = id {
        check_backup_id(id)?;
    }
    let master = |version: u32| context.master_key_for(version);
    let listings: Vec<_> = destinations.iter().map(|d| list_destination(d)).collect();
    // Without an id, every backup complete in some destination must be in all of them.
    let ids: BTreeSet<String> = match id {
        Some(id) => [id.to_owned()].into(),
        None => listings
            .iter()
            .flatten()
            .flatten()
            .filter(|listed| listed.complete)
            .map(|listed| listed.id.clone())
            .collect(),
    };

    let mut report = VerifyReport { ok: true, destinations: Vec::new() };
    for (path, listing) in destinations.iter().zip(listings) {
        let mut destination = VerifiedDestination {
            path: path.clone(),
            ok: true,
            problems: Vec::new(),
            backups: Vec::new(),
            incomplete: Vec::new(),
        };
        match listing {
            Err(err) => {
                let problem = if path.exists() {
                    format!("destination folder cannot be listed: {err}")
                } else {
                    "destination folder not found".to_owned()
                };
                destination.problems.push(Problem::copy(problem));
            }
            Ok(listed) => {
                destination.incomplete = listed
                    .iter()
                    .filter(|l| !l.complete && !ids.contains(&l.id))
                    .map(|l| l.id.clone())
                    .collect();
                for backup_id in &ids {
                    let checked = check_copy(path, backup_id, &master);
                    destination.backups.push(VerifiedBackup {
                        id: backup_id.clone(),
                        ok: checked.verified.is_some(),
                        files: checked.files,
                        problems: checked.problems,
                    });
                }
            }
        }
        if ids.is_empty() && destination.problems.is_empty() {
            destination.problems.push(Problem::copy("no complete backup found"));
        }
        destination.ok =
            destination.problems.is_empty() && destination.backups.iter().all(|b| b.ok);
        report.ok &= destination.ok;
        report.destinations.push(destination);
    }

    if json {
        print_json(&report)?;
    } else {
        print_verify(&report);
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_verify(report: &VerifyReport) {
    for destination in &report.destinations {
        let state = if destination.ok { "ok" } else { "FAILED" };
        outln!("destination {}: {state}", destination.path.display());
        for problem in &destination.problems {
            outln!("  {problem}");
        }
        for backup in &destination.backups {
            if backup.ok {
                outln!("  backup {}: ok, {} files verified", backup.id, backup.files);
            } else {
                outln!("  backup {}: FAILED", backup.id);
                for problem in &backup.problems {
                    outln!("    {problem}");
                }
            }
        }
        for id in &destination.incomplete {
            outln!("  backup {id}: incomplete (interrupted while written), not checked");
        }
    }
    if report.ok {
        outln!("every destination verified");
    }
}
