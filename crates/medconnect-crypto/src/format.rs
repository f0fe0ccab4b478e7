//! The prefix shared by the binary formats of this crate: a two-byte magic, then a format
//! version byte.

use crate::error::CryptoError;

/// One binary format: its magic, the one version this build reads, and its minimum length.
pub(crate) struct Format {
    /// Name of the format in error messages.
    pub(crate) kind: &'static str,
    pub(crate) magic: &'static str,
    pub(crate) version: u8,
    pub(crate) min_len: usize,
}

impl Format {
    /// Checks, in this order, the magic, the version byte and the minimum length.
    ///
    /// The version is checked before the length, because another version may have another
    /// minimum length. A prefix of the magic that is too short to tell is reported as
    /// truncated.
    pub(crate) fn check(&self, bytes: &[u8]) -> Result<(), CryptoError> {
        let magic = self.magic.as_bytes();
        let compared = bytes.len().min(magic.len());
        if bytes[..compared] != magic[..compared] {
            return Err(CryptoError::UnrecognizedFormat { kind: self.kind, magic: self.magic });
        }

        let Some(&version) = bytes.get(magic.len()) else {
            return Err(self.truncated(bytes.len()));
        };
        if version != self.version {
            return Err(CryptoError::UnsupportedFormatVersion {
                kind: self.kind,
                found: version,
                supported: self.version,
            });
        }

        if bytes.len() < self.min_len {
            return Err(self.truncated(bytes.len()));
        }
        Ok(())
    }

    fn truncated(&self, len: usize) -> CryptoError {
        CryptoError::Truncated { kind: self.kind, len, min: self.min_len }
    }
}

/// Copies `N` bytes starting at `offset`. The caller has checked that they exist.
pub(crate) fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}
