//! Envelope encryption at rest for MedConnect.
//!
//! A master key (the key-encryption key, KEK) comes from a [`KeyProvider`] and wraps data keys:
//! one per tenant, one per patient core profile and one per patient link. Fields and blobs are
//! sealed with AES-256-GCM under a data key, with associated data ([`Aad`]) that binds each
//! ciphertext to its tenant, table, column and record. Destroying a data key, that is deleting
//! its wrapped form, leaves its ciphertexts unreadable: this is how a record is crypto-shredded.
//! Blind indexes allow equality lookups on encrypted values. An Ed25519 key signs checkpoints of
//! the audit chain.
//!
//! ```
//! use medconnect_crypto::{open, seal, Aad, DataKey, KeyId, MasterKey};
//!
//! # fn main() -> Result<(), medconnect_crypto::CryptoError> {
//! let master = MasterKey::generate(1)?;
//! let key = DataKey::generate(KeyId::new())?;
//! let wrapped = master.wrap_key(&key, 1)?; // store this, never `key`
//! let aad = Aad { tenant: "tenant-id", table: "patients", column: "email", record: "patient-id" };
//! let sealed = seal(&key, 1, &aad, b"alice@example.com")?;
//!
//! let key = master.unwrap_key(&wrapped, key.id(), 1)?;
//! assert_eq!(open(&key, &aad, &sealed)?.as_slice(), b"alice@example.com");
//! # Ok(())
//! # }
//! ```
//!
//! # Where AES-GCM comes from
//!
//! This crate implements no cipher or mode itself. AES-256-GCM (sealing, opening and key
//! wrapping) is `ring` 0.17's, whose AES-GCM code is BoringSSL's assembly. On x86_64 it
//! detects AES-NI and CLMUL at run time. Where the processor also has AVX and MOVBE, or VAES,
//! VPCLMULQDQ and AVX2, it encrypts and authenticates in one pass over the data. It replaced
//! RustCrypto's `aes-gcm` 0.10 for speed. That crate runs AES-CTR and GHASH in separate
//! passes, and on a 2-core AMD EPYC it sealed a 1 MiB blob at about a third of the rate of
//! `openssl speed` (`bench/crypto.sh` measures both). `ring` is one of the two cryptography
//! providers built into `rustls` 0.23. Cure53 audited it together with `rustls` and `webpki`
//! in 2020 (report TLS-01), that is version 0.16, before the VAES code path was added. `ring`
//! does not wipe the key schedules that it expands, as the `cipher` module notes. HMAC-SHA256
//! comes from RustCrypto's `hmac` 0.12 and `sha2` 0.10, argon2id from RustCrypto's `argon2`
//! 0.5, and randomness from the operating system through `getrandom`.
//!
//! # Modules
//!
//! - `envelope`: [`seal`], [`open`] and the versioned ciphertext format.
//! - `wrap`: [`MasterKey::wrap_key`], [`MasterKey::unwrap_key`] and the wrapped key format.
//! - `keyring`: the [`Keyring`] lookup of data keys by id and version.
//! - `blind_index`: [`blind_index`] and [`derive_blind_index_key`].
//! - `provider`: [`KeyProvider`], [`KeyFileProvider`] and [`EnvKeyProvider`].
//! - `password`: argon2id [`hash_password`] and [`verify_password`] for user accounts.
//! - `token`: random bearer tokens ([`SecretToken`]) and the [`TokenHash`] the store keeps.
//! - `signing`: the Ed25519 [`AuditSigningKey`] that signs audit checkpoints, behind the
//!   [`AuditSigner`] trait.

mod aad;
mod blind_index;
mod cipher;
mod envelope;
mod error;
mod format;
mod kdf;
mod key;
mod keyring;
mod password;
mod provider;
mod signing;
mod token;
mod wrap;

pub use aad::Aad;
pub use blind_index::{
    blind_index, derive_blind_index_key, derive_blind_index_key_from_data_key, BlindIndexKey,
    BLIND_INDEX_LABEL, EMAIL_DOMAIN,
};
pub use envelope::{
    open, open_with_keyring, parse_header, seal, Header, Sealer, CIPHERTEXT_FORMAT_VERSION,
    CIPHERTEXT_MAGIC, HEADER_LEN, MIN_CIPHERTEXT_LEN,
};
pub use error::CryptoError;
pub use key::{DataKey, KeyId, MasterKey, KEY_LEN};
pub use keyring::{InMemoryKeyring, Keyring};
pub use password::{
    check_new_password, hash_password, needs_rehash, verify_password, verify_password_dummy,
    MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, PASSWORD_ITERATIONS, PASSWORD_MEMORY_KIB,
    PASSWORD_PARALLELISM, PASSWORD_SALT_LEN,
};
pub use provider::{EnvKeyProvider, KeyFileProvider, KeyProvider};
pub use signing::{AuditSigner, AuditSigningKey, SIGNATURE_LEN, SIGNING_PUBLIC_KEY_LEN};
pub use token::{SecretToken, TokenHash, TOKEN_LEN};
pub use wrap::{
    parse_wrapped_key_header, WrappedKeyHeader, KEY_WRAP_LABEL, WRAPPED_KEY_FORMAT_VERSION,
    WRAPPED_KEY_LEN, WRAPPED_KEY_MAGIC,
};
/// The buffer type of plaintexts returned by [`open`], which wipes its content when dropped.
pub use zeroize::Zeroizing;
