//! The audit signing key: an Ed25519 key that signs checkpoints of the audit chain.
//!
//! The key file contains the key in PKCS#8 form (the bytes `ring` generates), with mode 0600,
//! like the master key file. The public key is what auditors get; checking a signature needs
//! only that, and lives in `medconnect_domain::checkpoint`. Signing goes through the
//! [`AuditSigner`] trait, so a signer backed by an external key service can replace the file.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::error::CryptoError;
use crate::provider::{io_error, open_private_file, read_up_to, write_new_private_file};

/// Length of an Ed25519 public key in bytes.
pub const SIGNING_PUBLIC_KEY_LEN: usize = 32;

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Largest key file accepted. `ring` writes 83 bytes; anything much larger is not a key.
const MAX_SIGNING_KEY_FILE_LEN: usize = 1024;

/// Something that signs audit checkpoints with Ed25519.
pub trait AuditSigner: fmt::Debug + Send + Sync {
    /// Returns the Ed25519 public key that verifies this signer's signatures.
    fn public_key(&self) -> [u8; SIGNING_PUBLIC_KEY_LEN];

    /// Signs `message`. A signer backed by a remote service may fail.
    fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], CryptoError>;
}

/// An Ed25519 signing key loaded from, or created in, a key file. Its `Debug` shows the path
/// and the public key, never the private key.
pub struct AuditSigningKey {
    pair: Ed25519KeyPair,
    path: PathBuf,
}

impl AuditSigningKey {
    /// Generates a new key and writes it to a new file at `path` with mode 0600.
    ///
    /// Fails if anything exists at `path`, so an existing key is never overwritten. The file
    /// and its directory entry are synced to disk before this returns.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, CryptoError> {
        let path = path.into();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
            CryptoError::RandomSourceFailed { message: "Ed25519 key generation failed".into() }
        })?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|err| invalid(&path, err))?;
        write_new_private_file(&path, &pkcs8)?;
        Ok(AuditSigningKey { pair, path })
    }

    /// Reads and checks the key file.
    ///
    /// Fails with [`CryptoError::KeyFilePermissionsTooOpen`] if group or other users have any
    /// access to the file, and with [`CryptoError::SigningKeyInvalid`] if it is not a regular
    /// file or does not hold an Ed25519 key in PKCS#8 form. Messages never contain the file's
    /// content.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, CryptoError> {
        let path = path.into();
        let mut file = open_private_file(&path, "audit signing key").map_err(|err| match err {
            CryptoError::KeyFileInvalid { path, reason } => {
                CryptoError::SigningKeyInvalid { path, reason }
            }
            other => other,
        })?;
        let mut content = Zeroizing::new([0u8; MAX_SIGNING_KEY_FILE_LEN + 1]);
        let len = read_up_to(&mut file, &mut content[..])
            .map_err(|source| io_error("read", &path, source))?;
        if len > MAX_SIGNING_KEY_FILE_LEN {
            let reason = format!("it is longer than {MAX_SIGNING_KEY_FILE_LEN} bytes");
            return Err(CryptoError::SigningKeyInvalid { path, reason });
        }
        let pair =
            Ed25519KeyPair::from_pkcs8(&content[..len]).map_err(|err| invalid(&path, err))?;
        Ok(AuditSigningKey { pair, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the public key as 64 lowercase hex digits, the form of `audit-public.key`.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }
}

impl AuditSigner for AuditSigningKey {
    fn public_key(&self) -> [u8; SIGNING_PUBLIC_KEY_LEN] {
        let mut key = [0u8; SIGNING_PUBLIC_KEY_LEN];
        key.copy_from_slice(self.pair.public_key().as_ref());
        key
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], CryptoError> {
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        Ok(signature)
    }
}

impl fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSigningKey")
            .field("path", &self.path)
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

fn invalid(path: &Path, err: ring::error::KeyRejected) -> CryptoError {
    CryptoError::SigningKeyInvalid {
        path: path.to_owned(),
        reason: format!("ring rejected the key ({err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use ring::signature::{UnparsedPublicKey, ED25519};

    #[test]
    fn created_key_signs_and_loads_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit-signing.key");
        let key = AuditSigningKey::create(&path).expect("key created");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let loaded = AuditSigningKey::load(&path).expect("key loads");
        assert_eq!(loaded.public_key_hex(), key.public_key_hex());
        let signature = loaded.sign(b"message").expect("signed");
        let public = key.public_key();
        let verified = UnparsedPublicKey::new(&ED25519, &public).verify(b"message", &signature);
        assert!(verified.is_ok());
        let debug = format!("{loaded:?}");
        assert!(debug.contains(&key.public_key_hex()), "{debug}");
    }

    #[test]
    fn create_keeps_existing_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit-signing.key");
        std::fs::write(&path, b"keep me").expect("write");
        let error = AuditSigningKey::create(&path).expect_err("existing file kept");
        assert!(matches!(error, CryptoError::KeyFileIo { action: "create", .. }), "{error:?}");
        assert_eq!(std::fs::read(&path).expect("read"), b"keep me");
    }

    #[test]
    fn loose_key_file_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit-signing.key");
        AuditSigningKey::create(&path).expect("key created");
        let content = std::fs::read(&path).expect("read");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");

        let error = AuditSigningKey::load(&path).expect_err("loose file rejected");
        let message = error.to_string();
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains("audit signing key"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!message.contains(&hex::encode(&content)[..16]), "{message}");
    }

    #[test]
    fn invalid_key_file_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit-signing.key");
        write_new_private_file(&path, b"not a key").expect("written");
        let error = AuditSigningKey::load(&path).expect_err("invalid file rejected");
        assert!(matches!(error, CryptoError::SigningKeyInvalid { .. }), "{error:?}");
        assert!(error.to_string().contains("PKCS#8"), "{error}");
    }
}
