//! The one error type of this crate.
//!
//! Messages name what failed, on which key id, file or variable, and what to do next. They
//! never contain key material, plaintext or the content of a key file or environment variable.

use std::path::PathBuf;

use crate::key::KeyId;

/// Error returned by every fallible operation of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A ciphertext failed AES-GCM authentication: it was altered or truncated, was copied from
    /// another record, column, table or tenant, or was sealed under another key.
    #[error(
        "decryption failed: the ciphertext was altered or truncated, belongs to another record, \
         column, table or tenant, or was sealed under another key. Check that the record and its \
         key match, and if they do, restore the value from a backup"
    )]
    DecryptionFailed,

    /// A wrapped data key failed AES-GCM authentication: it was altered, or the master key is
    /// not the one that wrapped it.
    #[error(
        "unwrapping data key {key_id} version {key_version} failed: the wrapped key was altered, \
         or the master key is not the one that wrapped it. Check that the configured master key \
         file or variable is the right one"
    )]
    UnwrapFailed { key_id: KeyId, key_version: u32 },

    /// The bytes are shorter than the smallest valid value of their format.
    #[error(
        "{kind} is truncated: it has {len} bytes, but a valid one has at least {min}. The \
         stored value is damaged: restore it from a backup"
    )]
    Truncated { kind: &'static str, len: usize, min: usize },

    /// A wrapped data key longer than the fixed length of its format.
    #[error(
        "{kind} has {len} bytes, but a valid one has exactly {expected}. The stored value is \
         damaged: restore it from a backup"
    )]
    InvalidLength { kind: &'static str, len: usize, expected: usize },

    /// The bytes do not start with the magic of their format.
    #[error(
        "not a MedConnect {kind}: it does not start with {magic:?}, so it is unencrypted or \
         damaged"
    )]
    UnrecognizedFormat { kind: &'static str, magic: &'static str },

    /// The format version byte names a version that this build cannot read.
    #[error(
        "{kind} has format version {found}, but this build reads only version {supported}: \
         upgrade MedConnect to read it, or restore the value from a backup if it is damaged"
    )]
    UnsupportedFormatVersion { kind: &'static str, found: u8, supported: u8 },

    /// `open` received a data key other than the one the ciphertext names in its header.
    #[error(
        "the ciphertext was sealed under data key {sealed_with}, but data key {provided} was \
         provided: look up the key that `parse_header` names"
    )]
    WrongDataKey { provided: KeyId, sealed_with: KeyId },

    /// A wrapped key names another data key id or version than the row it was read from.
    #[error(
        "the wrapped key is for data key {found_id} version {found_version}, not for data key \
         {expected_id} version {expected_version}: it was stored in the wrong row"
    )]
    WrappedKeyMismatch {
        expected_id: KeyId,
        expected_version: u32,
        found_id: KeyId,
        found_version: u32,
    },

    /// A wrapped key was wrapped under another master key version than the one provided.
    #[error(
        "the data key was wrapped under master key version {wrapped_with}, but master key \
         version {provided} was provided: load master key version {wrapped_with} to unwrap it"
    )]
    MasterKeyVersionMismatch { wrapped_with: u32, provided: u32 },

    /// The keyring has no data key with this id and version.
    #[error(
        "data key {key_id} version {key_version} not found in the keyring: load that key before \
         opening its ciphertexts"
    )]
    UnknownKey { key_id: KeyId, key_version: u32 },

    /// The data key was destroyed, so its ciphertexts can no longer be decrypted.
    #[error(
        "data key {key_id} was destroyed, so its ciphertexts can no longer be decrypted \
         (crypto-shredding). This is expected for disposed records"
    )]
    KeyDestroyed { key_id: KeyId },

    /// The key file's mode lets group or other users read or write it. `key` names the key,
    /// such as "master key" or "audit signing key".
    #[error(
        "key file {path} has mode {mode:04o}, which gives group or other users access to the \
         {key}: run `chmod 600 {path}` and try again"
    )]
    KeyFilePermissionsTooOpen { path: PathBuf, mode: u32, key: &'static str },

    /// The audit signing key file does not hold an Ed25519 key in PKCS#8 form.
    #[error(
        "audit signing key file {path} is invalid: {reason}. It must hold an Ed25519 key in \
         PKCS#8 form, as `medconnect init` or `medconnect audit keygen` writes it"
    )]
    SigningKeyInvalid { path: PathBuf, reason: String },

    /// The key file's content is not a master key in hex.
    #[error(
        "key file {path} is invalid: {reason}. It must contain exactly 64 hexadecimal \
         characters and a newline (`KeyFileProvider::create` writes a new one)"
    )]
    KeyFileInvalid { path: PathBuf, reason: String },

    /// The key file could not be created, opened, read or written.
    #[error("failed to {action} key file {path}: {source}")]
    KeyFileIo {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The environment variable that should contain the master key is not set.
    #[error(
        "environment variable {name} is not set: set it to the master key as 64 hexadecimal \
         characters, or use a key file"
    )]
    EnvVarMissing { name: String },

    /// The environment variable's value is not a master key in hex.
    #[error(
        "environment variable {name} is invalid: {reason}. It must contain the master key as \
         exactly 64 hexadecimal characters"
    )]
    EnvVarInvalid { name: String, reason: String },

    /// An external key provider, such as a KMS client, failed.
    #[error("key provider {provider} failed: {message}")]
    KeyProviderFailed { provider: String, message: String },

    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {message}")]
    RandomSourceFailed { message: String },

    /// The plaintext exceeds AES-GCM's limit of 2^36 - 32 bytes per message, or the associated
    /// data exceeds this crate's limit of 2^36 bytes.
    #[error(
        "message too long for AES-GCM: plaintext of {plaintext_len} bytes and associated data \
         of {aad_len} bytes, but the plaintext may have at most 2^36 - 32 bytes and the \
         associated data at most 2^36 bytes. Split the value"
    )]
    MessageTooLong { plaintext_len: usize, aad_len: usize },

    /// A string is not a key id.
    #[error(
        "invalid key id {value:?}: expected a UUID such as 3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab"
    )]
    InvalidKeyId { value: String },

    /// A new password is shorter or longer than the limits in [`crate::password`].
    #[error(
        "the password has {found} characters, but it must have at least {min} and at most \
         {max}: choose another"
    )]
    PasswordLength { found: usize, min: usize, max: usize },

    /// Argon2 rejected its input or parameters while hashing a password.
    #[error("hashing the password failed: {reason}")]
    PasswordHashingFailed { reason: String },

    /// A stored password hash is not an argon2id PHC string this build can check.
    #[error("the stored password hash is invalid ({reason}): set a new password for the account")]
    InvalidPasswordHash { reason: String },
}

impl CryptoError {
    pub(crate) fn random_source(error: getrandom::Error) -> Self {
        CryptoError::RandomSourceFailed { message: error.to_string() }
    }
}
