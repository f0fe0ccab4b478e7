//! File system steps that make backup and restore writes durable and atomic.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// Writes `bytes` to a new file at `path`, creating its folders, and flushes it to disk.
pub fn write_new_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(folder) = path.parent() {
        create_private_dirs(folder)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("flushing {} to disk", path.display()))?;
    Ok(())
}

/// Replaces the file at `path` with `bytes` atomically: writes a temporary sibling, flushes
/// it, renames it over `path` and flushes the folder.
pub fn replace_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let folder = parent_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = folder.join(format!(".{name}.tmp"));
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", temporary.display())),
    }
    write_new_synced(&temporary, bytes)?;
    fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    sync_dir(&folder)
}

/// Creates a folder and its missing parents with mode 0700.
pub fn create_private_dirs(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating folder {}", path.display()))
}

/// Flushes a folder's entries (new, renamed and removed names) to disk.
pub fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("flushing folder {} to disk", path.display()))
}

/// Flushes `root` and every folder under it to disk.
pub fn sync_tree(root: &Path) -> Result<()> {
    for entry in fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        if entry.file_type().with_context(|| format!("reading {}", root.display()))?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(root)
}

/// Returns the total size in bytes of the files under `root`.
pub fn tree_size(root: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(root) else { return 0 };
    let mut total = 0;
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => total += tree_size(&entry.path()),
            Ok(_) => total += entry.metadata().map_or(0, |m| m.len()),
            Err(_) => {}
        }
    }
    total
}

/// Returns whether `path` is a folder with no entries.
pub fn is_empty_dir(path: &Path) -> Result<bool> {
    let mut entries =
        fs::read_dir(path).with_context(|| format!("listing folder {}", path.display()))?;
    Ok(entries.next().is_none())
}

/// Removes a folder tree, ignoring one that does not exist.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// Returns the folder that contains `path`, `.` for a bare file name.
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Returns `path` made absolute with symbolic links resolved, as far as it exists: the
/// missing tail is appended as given.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut existing = absolute.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(resolved) = existing.canonicalize() {
            return tail.iter().rev().fold(resolved, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}
