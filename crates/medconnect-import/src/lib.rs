//! Importers of external data sets into a MedConnect store.
//!
//! [`synthea`] reads the CSV export of the Synthea patient simulator. An import is parsed and
//! checked completely before anything is written, and then written in one transaction, so a
//! malformed row anywhere leaves the store unchanged.

pub mod synthea;

use std::path::PathBuf;

/// Error returned by an importer. Messages name the file, line and column but never the
/// cell's value, because a cell may hold PHI.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The folder or a required file is missing or unreadable.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A row is malformed or references something that does not exist.
    #[error(
        "{file}:{line}: {message}; nothing was imported: fix the row and run the import again"
    )]
    Row { file: String, line: u64, message: String },
    /// The store rejected the batch.
    #[error(transparent)]
    Store(#[from] medconnect_store::StoreError),
}
