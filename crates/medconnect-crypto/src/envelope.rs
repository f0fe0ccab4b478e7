//! Sealing and opening fields and blobs with AES-256-GCM under a data key.
//!
//! # Ciphertext format, version 1
//!
//! ```text
//! offset  length  content
//!      0       2  magic "MC" (0x4d 0x43)
//!      2       1  format version: 1
//!      3      16  data key id, the UUID's 16 bytes in RFC 4122 order
//!     19       4  data key version, u32 big-endian
//!     23      12  nonce, random for every seal
//!     35       n  AES-256-GCM ciphertext of the n-byte plaintext
//!   35+n      16  AES-GCM authentication tag
//! ```
//!
//! A ciphertext is 51 bytes longer than its plaintext. The associated data that AES-GCM
//! authenticates is bytes 0..23 (the header up to the nonce) followed by the canonical encoding
//! of the [`Aad`]. So changing the format version, key id or key version, or moving the
//! ciphertext to another record, column, table or tenant, makes it fail to open.
//!
//! # Nonces
//!
//! Each seal draws a fresh 96-bit nonce from the operating system's CSPRNG. After q seals under
//! one data key version, the chance that two nonces collide is about q²/2^97, so keep q below
//! 2^32 (a chance below 2^-33) by moving to a new key version before then.
//! NOTE: nothing here counts seals per key version, so the caller that rotates keys must.

use zeroize::{Zeroize, Zeroizing};

use crate::aad::Aad;
use crate::cipher::{Cipher, MAX_ASSOCIATED_LEN, MAX_PLAINTEXT_LEN, NONCE_LEN, TAG_LEN};
use crate::error::CryptoError;
use crate::format::{array_at, Format};
use crate::key::{fill_random, DataKey, KeyId};
use crate::keyring::Keyring;

/// The magic that starts every ciphertext.
pub const CIPHERTEXT_MAGIC: &str = "MC";
/// The ciphertext format version that [`seal`] writes and [`open`] reads.
pub const CIPHERTEXT_FORMAT_VERSION: u8 = 1;
/// Length of the authenticated header: magic, format version, key id and key version.
pub const HEADER_LEN: usize = 23;
/// Length of the ciphertext of an empty plaintext, the shortest valid ciphertext.
pub const MIN_CIPHERTEXT_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

const FORMAT: Format = Format {
    kind: "ciphertext",
    magic: CIPHERTEXT_MAGIC,
    version: CIPHERTEXT_FORMAT_VERSION,
    min_len: MIN_CIPHERTEXT_LEN,
};

/// The fields of a ciphertext header that tell which key opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version, always [`CIPHERTEXT_FORMAT_VERSION`] in a header that parsed.
    pub version: u8,
    pub key_id: KeyId,
    pub key_version: u32,
}

/// Parses the header of a ciphertext, so the caller can look up the key before opening it.
///
/// The header is not authenticated until the ciphertext opens, so use it only to choose a key.
/// Returns [`CryptoError::UnrecognizedFormat`] when `bytes` do not start with "MC",
/// [`CryptoError::UnsupportedFormatVersion`] for a version other than 1, and
/// [`CryptoError::Truncated`] when `bytes` are shorter than [`MIN_CIPHERTEXT_LEN`].
pub fn parse_header(bytes: &[u8]) -> Result<Header, CryptoError> {
    FORMAT.check(bytes)?;
    Ok(Header {
        version: bytes[2],
        key_id: KeyId::from_bytes(array_at(bytes, 3)),
        key_version: u32::from_be_bytes(array_at(bytes, 19)),
    })
}

/// Encrypts `plaintext` under `key` and returns the ciphertext in the format above.
///
/// `key_version` is written to the header so that [`open_with_keyring`] can find the key, so
/// pass the version under which `key` is stored. Fails only if the operating system's random
/// number generator fails, or if the plaintext exceeds 2^36 - 32 bytes or the associated data
/// 2^36 bytes.
pub fn seal(
    key: &DataKey,
    key_version: u32,
    aad: &Aad<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    seal_with(&Cipher::new(key.bytes()), &header_for(key, key_version), nonce, aad, plaintext)
}

/// Returns the ciphertext header for `key` at `key_version`.
fn header_for(key: &DataKey, key_version: u32) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(CIPHERTEXT_MAGIC.as_bytes());
    header[2] = CIPHERTEXT_FORMAT_VERSION;
    header[3..19].copy_from_slice(&key.id().to_bytes());
    header[19..23].copy_from_slice(&key_version.to_be_bytes());
    header
}

/// A data key with its AES key schedule expanded once, for sealing many values. [`seal`]
/// expands the key on every call; sealing thousands of fields under one key through a
/// `Sealer` skips that work.
pub struct Sealer {
    header: [u8; HEADER_LEN],
    cipher: Cipher,
    nonces: std::cell::RefCell<NoncePool>,
}

/// Random nonces drawn from the operating system many at a time, so that sealing thousands of
/// fields makes one system call per batch instead of one per field. Every nonce is still
/// independent and uniformly random; each is handed out once and then overwritten.
struct NoncePool {
    bytes: Zeroizing<Vec<u8>>,
    next: usize,
}

/// Nonces fetched per system call.
const NONCES_PER_BATCH: usize = 256;

impl NoncePool {
    fn new() -> Self {
        NoncePool {
            bytes: Zeroizing::new(vec![0; NONCE_LEN * NONCES_PER_BATCH]),
            next: NONCES_PER_BATCH,
        }
    }

    fn take(&mut self) -> Result<[u8; NONCE_LEN], CryptoError> {
        if self.next == NONCES_PER_BATCH {
            fill_random(&mut self.bytes)?;
            self.next = 0;
        }
        let start = self.next * NONCE_LEN;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&self.bytes[start..start + NONCE_LEN]);
        self.bytes[start..start + NONCE_LEN].fill(0);
        self.next += 1;
        Ok(nonce)
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Expands `key` for sealing under `key_version`.
    pub fn new(key: &DataKey, key_version: u32) -> Self {
        let header = header_for(key, key_version);
        Sealer {
            header,
            cipher: Cipher::new(key.bytes()),
            nonces: std::cell::RefCell::new(NoncePool::new()),
        }
    }

    /// Encrypts `plaintext` for the place `aad`, exactly as [`seal`] does.
    pub fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = self.nonces.borrow_mut().take()?;
        seal_with(&self.cipher, &self.header, nonce, aad, plaintext)
    }
}

fn seal_with(
    cipher: &Cipher,
    header: &[u8; HEADER_LEN],
    nonce: [u8; NONCE_LEN],
    aad: &Aad<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let header = *header;

    let associated = associated_data(&header, aad);
    if plaintext.len() as u64 > MAX_PLAINTEXT_LEN || associated.len() as u64 > MAX_ASSOCIATED_LEN {
        return Err(CryptoError::MessageTooLong {
            plaintext_len: plaintext.len(),
            aad_len: associated.len(),
        });
    }

    // Exact capacity: the buffer is never reallocated, so no stray copy of the plaintext is
    // left in freed memory.
    let mut out = Vec::with_capacity(MIN_CIPHERTEXT_LEN + plaintext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);

    let body = &mut out[HEADER_LEN + NONCE_LEN..];
    match cipher.seal_in_place(nonce, &associated, body) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(out)
        }
        Err(_) => {
            // Unreachable after the length check above, but the buffer contains plaintext.
            out.zeroize();
            Err(CryptoError::MessageTooLong {
                plaintext_len: plaintext.len(),
                aad_len: associated.len(),
            })
        }
    }
}

/// Decrypts a ciphertext sealed under `key` for the place `aad`.
///
/// Returns [`CryptoError::WrongDataKey`] when the header names another key id, and
/// [`CryptoError::DecryptionFailed`] when the ciphertext does not authenticate, that is when it
/// was altered or truncated, belongs to another place, or `key` is another version of the key.
/// The plaintext is returned in a buffer that is wiped when dropped, and is never released when
/// authentication fails.
pub fn open(key: &DataKey, aad: &Aad<'_>, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let header = parse_header(bytes)?;
    if header.key_id != key.id() {
        return Err(CryptoError::WrongDataKey { provided: key.id(), sealed_with: header.key_id });
    }
    decrypt(key, aad, bytes)
}

/// Decrypts a ciphertext with the key that `keyring` returns for the id and version in its
/// header.
///
/// Fails as [`open`] does, and with [`CryptoError::UnknownKey`] or
/// [`CryptoError::KeyDestroyed`] from the keyring.
pub fn open_with_keyring<K: Keyring + ?Sized>(
    keyring: &K,
    aad: &Aad<'_>,
    bytes: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let header = parse_header(bytes)?;
    let key = keyring.data_key(header.key_id, header.key_version)?;
    decrypt(&key, aad, bytes)
}

/// Decrypts `bytes`, whose header [`parse_header`] has accepted.
fn decrypt(key: &DataKey, aad: &Aad<'_>, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let header = &bytes[..HEADER_LEN];
    let nonce = array_at(bytes, HEADER_LEN);
    let body = &bytes[HEADER_LEN + NONCE_LEN..bytes.len() - TAG_LEN];
    let tag = array_at(bytes, bytes.len() - TAG_LEN);
    let associated = associated_data(header, aad);

    // `ring` decrypts before it checks the tag. On failure it zeroes this buffer (see
    // `Cipher::open_in_place`), and it is wiped on drop either way.
    let mut plaintext = Zeroizing::new(body.to_vec());
    Cipher::new(key.bytes())
        .open_in_place(nonce, &associated, &mut plaintext, tag)
        .map_err(|_| CryptoError::DecryptionFailed)?;
    Ok(plaintext)
}

/// Returns the associated data for AES-GCM: the header, then the encoded [`Aad`].
fn associated_data(header: &[u8], aad: &Aad<'_>) -> Vec<u8> {
    let mut associated = Vec::with_capacity(header.len() + aad.encoded_len());
    associated.extend_from_slice(header);
    aad.encode_into(&mut associated);
    associated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyBytes;
    use crate::keyring::InMemoryKeyring;

    const AAD: Aad<'static> = Aad {
        tenant: "0b5e0a4e-5d0c-4a5e-9f36-8f1d2c3b4a59",
        table: "patient_profiles",
        column: "email",
        record: "6c1f9e2a-7b3d-4c8e-a1f0-123456789abc",
    };

    fn data_key() -> DataKey {
        DataKey::generate(KeyId::new()).expect("random source works")
    }

    #[test]
    fn round_trip_by_size() {
        let key = data_key();
        let sizes = [("empty", 0), ("1 byte", 1), ("200 bytes", 200), ("1 MiB", 1 << 20)];

        for (name, size) in sizes {
            let plaintext: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&key, 1, &AAD, &plaintext).expect("seal succeeds");
            assert_eq!(sealed.len(), MIN_CIPHERTEXT_LEN + size, "{name}: length");

            let opened = open(&key, &AAD, &sealed).expect("open succeeds");
            assert_eq!(opened.as_slice(), plaintext.as_slice(), "{name}: plaintext");
        }
    }

    #[test]
    fn moved_ciphertext_fails() {
        let key = data_key();
        let sealed = seal(&key, 1, &AAD, b"alice@example.com").expect("seal succeeds");
        let moves = [
            ("another record", Aad { record: "6c1f9e2a-7b3d-4c8e-a1f0-123456789abd", ..AAD }),
            ("another column", Aad { column: "phone", ..AAD }),
            ("another table", Aad { table: "providers", ..AAD }),
            ("another tenant", Aad { tenant: "1b5e0a4e-5d0c-4a5e-9f36-8f1d2c3b4a59", ..AAD }),
        ];

        for (name, moved) in moves {
            let result = open(&key, &moved, &sealed);
            assert!(matches!(result, Err(CryptoError::DecryptionFailed)), "{name}");
        }
    }

    #[test]
    fn every_byte_flip_fails() {
        let key = data_key();
        let sealed = seal(&key, 1, &AAD, b"hello").expect("seal succeeds");

        for index in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[index] ^= 0xff;
            let result = open(&key, &AAD, &altered);

            match index {
                0..=1 => assert!(
                    matches!(result, Err(CryptoError::UnrecognizedFormat { .. })),
                    "magic byte {index}"
                ),
                2 => assert!(
                    matches!(
                        result,
                        Err(CryptoError::UnsupportedFormatVersion { found: 0xfe, .. })
                    ),
                    "version byte"
                ),
                3..=18 => assert!(
                    matches!(result, Err(CryptoError::WrongDataKey { .. })),
                    "key id byte {index}"
                ),
                // Key version, nonce, body and tag.
                _ => assert!(
                    matches!(result, Err(CryptoError::DecryptionFailed)),
                    "byte {index} of {}",
                    sealed.len()
                ),
            }
        }
    }

    #[test]
    fn every_byte_flip_fails_with_keyring() {
        let key = data_key();
        let mut keyring = InMemoryKeyring::new();
        keyring.insert(1, key.clone()).expect("key not destroyed");
        let sealed = seal(&key, 1, &AAD, b"hello").expect("seal succeeds");

        for index in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[index] ^= 0x01;
            let result = open_with_keyring(&keyring, &AAD, &altered);

            match index {
                0..=1 => assert!(
                    matches!(result, Err(CryptoError::UnrecognizedFormat { .. })),
                    "magic byte {index}"
                ),
                2 => assert!(
                    matches!(result, Err(CryptoError::UnsupportedFormatVersion { found: 0, .. })),
                    "version byte"
                ),
                3..=22 => assert!(
                    matches!(result, Err(CryptoError::UnknownKey { .. })),
                    "key id or version byte {index}"
                ),
                _ => assert!(matches!(result, Err(CryptoError::DecryptionFailed)), "byte {index}"),
            }
        }
        assert!(open_with_keyring(&keyring, &AAD, &sealed).is_ok(), "unaltered opens");
    }

    #[test]
    fn truncation_at_every_length_fails() {
        let key = data_key();
        let sealed = seal(&key, 1, &AAD, b"hello").expect("seal succeeds");

        for len in 0..sealed.len() {
            let error = open(&key, &AAD, &sealed[..len]).expect_err("truncated input fails");
            let message = error.to_string();

            if len < MIN_CIPHERTEXT_LEN {
                assert!(
                    matches!(error, CryptoError::Truncated { len: found, min: 51, .. } if found == len),
                    "length {len}: {error:?}"
                );
                assert!(message.contains("truncated"), "length {len}: {message}");
                assert!(message.contains(&format!("{len} bytes")), "length {len}: {message}");
            } else {
                assert!(matches!(error, CryptoError::DecryptionFailed), "length {len}: {error:?}");
                assert!(message.contains("truncated"), "length {len}: {message}");
            }
        }
    }

    /// The reference ciphertext was built from the layout documented above with the AESGCM
    /// class of Python's `cryptography` 48.0. Its inputs: key bytes 0..32, key id
    /// 00112233-4455-6677-8899-aabbccddeeff, key version 2, nonce bytes 0xa0..0xac, the place
    /// [`REFERENCE_AAD`] and the plaintext "alice@example.com".
    const REFERENCE_CIPHERTEXT: &str =
        "4d430100112233445566778899aabbccddeeff00000002a0a1a2a3a4a5a6a7a8a9aaab8774154e208b67c7\
         0308f7bf6254a3b11ded87f727d5c9ff241cf36dcc815a9827";
    const REFERENCE_AAD: Aad<'static> =
        Aad { tenant: "t1", table: "patients", column: "email", record: "r1" };

    fn reference_key() -> DataKey {
        let mut bytes = KeyBytes::zeroed();
        for (index, byte) in bytes.as_mut_array().iter_mut().enumerate() {
            *byte = index as u8;
        }
        let key_id = KeyId::parse("00112233-4455-6677-8899-aabbccddeeff").expect("valid id");
        DataKey::from_key_bytes(key_id, bytes)
    }

    #[test]
    fn open_reads_reference_ciphertext() {
        let key = reference_key();
        let key_id = key.id();
        let aad = REFERENCE_AAD;
        let sealed = hex::decode(REFERENCE_CIPHERTEXT).expect("valid hex");

        let header = parse_header(&sealed).expect("header parses");
        let opened = open(&key, &aad, &sealed).expect("reference ciphertext opens");

        assert_eq!(header.key_id, key_id);
        assert_eq!(header.key_version, 2);
        assert_eq!(opened.as_slice(), b"alice@example.com");
    }

    /// `seal` draws its nonce at random, so this runs its encryption step with the reference
    /// nonce and compares the bytes after the nonce.
    #[test]
    fn seal_writes_reference_ciphertext() {
        let key = reference_key();
        let reference = hex::decode(REFERENCE_CIPHERTEXT).expect("valid hex");
        let (header, rest) = reference.split_at(HEADER_LEN);
        let (nonce, expected) = rest.split_at(NONCE_LEN);
        let associated = associated_data(header, &REFERENCE_AAD);

        let mut body = b"alice@example.com".to_vec();
        let tag = Cipher::new(key.bytes())
            .seal_in_place(array_at(nonce, 0), &associated, &mut body)
            .expect("seal succeeds");
        body.extend_from_slice(&tag);

        assert_eq!(hex::encode(&body), hex::encode(expected));
    }

    #[test]
    fn seals_of_same_plaintext_differ() {
        let key = data_key();
        let first = seal(&key, 1, &AAD, b"same").expect("seal succeeds");
        let second = seal(&key, 1, &AAD, b"same").expect("seal succeeds");
        let nonce = HEADER_LEN..HEADER_LEN + NONCE_LEN;

        assert_ne!(first, second);
        assert_ne!(first[nonce.clone()], second[nonce]);
    }

    #[test]
    fn header_names_key_and_version() {
        let key = data_key();
        let sealed = seal(&key, 7, &AAD, b"x").expect("seal succeeds");
        let header = parse_header(&sealed).expect("header parses");

        assert_eq!(header.version, 1);
        assert_eq!(header.key_id, key.id());
        assert_eq!(header.key_version, 7);
        assert_eq!(&sealed[..2], b"MC");
    }

    #[test]
    fn unknown_format_version_is_named() {
        let key = data_key();
        let mut sealed = seal(&key, 1, &AAD, b"x").expect("seal succeeds");
        sealed[2] = 2;
        let error = open(&key, &AAD, &sealed).expect_err("version 2 is unknown");
        let message = error.to_string();

        assert!(matches!(error, CryptoError::UnsupportedFormatVersion { found: 2, .. }));
        assert!(message.contains("format version 2"), "{message}");
        assert!(message.contains("only version 1"), "{message}");
    }

    #[test]
    fn plaintext_is_not_a_ciphertext() {
        let key = data_key();
        let error = open(&key, &AAD, b"alice@example.com, plain text stored by mistake")
            .expect_err("plain text fails");

        assert!(matches!(error, CryptoError::UnrecognizedFormat { .. }), "{error:?}");
        assert!(!error.to_string().contains("alice"), "{error}");
    }

    #[test]
    fn open_with_other_key_fails() {
        let key = data_key();
        let sealed = seal(&key, 1, &AAD, b"secret").expect("seal succeeds");
        let same_id = DataKey::generate(key.id()).expect("random source works");
        let other_id = data_key();

        let same_id_result = open(&same_id, &AAD, &sealed);
        assert!(matches!(same_id_result, Err(CryptoError::DecryptionFailed)));

        let error = open(&other_id, &AAD, &sealed).expect_err("other key id fails");
        let message = error.to_string();
        assert!(matches!(error, CryptoError::WrongDataKey { .. }), "{error:?}");
        assert!(message.contains(&key.id().to_string()), "{message}");
        assert!(message.contains(&other_id.id().to_string()), "{message}");
    }

    #[test]
    fn keyring_finds_version() {
        let id = KeyId::new();
        let version_1 = DataKey::generate(id).expect("random source works");
        let version_2 = DataKey::generate(id).expect("random source works");
        let old = seal(&version_1, 1, &AAD, b"old").expect("seal succeeds");
        let new = seal(&version_2, 2, &AAD, b"new").expect("seal succeeds");
        let mut keyring = InMemoryKeyring::new();
        keyring.insert(1, version_1).expect("key not destroyed");
        keyring.insert(2, version_2).expect("key not destroyed");

        let opened_old = open_with_keyring(&keyring, &AAD, &old).expect("version 1 opens");
        let opened_new = open_with_keyring(&keyring, &AAD, &new).expect("version 2 opens");
        assert_eq!(opened_old.as_slice(), b"old");
        assert_eq!(opened_new.as_slice(), b"new");
    }

    #[test]
    fn destroyed_key_cannot_open() {
        let key = data_key();
        let key_id = key.id();
        let sealed = seal(&key, 1, &AAD, b"shred me").expect("seal succeeds");
        let mut keyring = InMemoryKeyring::new();
        keyring.insert(1, key).expect("key not destroyed");
        keyring.destroy(key_id);

        let error = open_with_keyring(&keyring, &AAD, &sealed).expect_err("key destroyed");
        assert!(matches!(error, CryptoError::KeyDestroyed { key_id: id } if id == key_id));
        assert!(error.to_string().contains(&key_id.to_string()), "{error}");
    }

    #[test]
    fn unknown_key_is_named() {
        let key = data_key();
        let sealed = seal(&key, 4, &AAD, b"x").expect("seal succeeds");
        let keyring = InMemoryKeyring::new();

        let error = open_with_keyring(&keyring, &AAD, &sealed).expect_err("key unknown");
        let message = error.to_string();
        assert!(matches!(error, CryptoError::UnknownKey { key_version: 4, .. }), "{error:?}");
        assert!(message.contains(&key.id().to_string()), "{message}");
        assert!(message.contains("version 4"), "{message}");
    }

    #[test]
    fn closure_works_as_keyring() {
        let key = data_key();
        let sealed = seal(&key, 1, &AAD, b"x").expect("seal succeeds");
        let lookup = |key_id: KeyId, key_version: u32| {
            if key_id == key.id() && key_version == 1 {
                Ok(key.clone())
            } else {
                Err(CryptoError::UnknownKey { key_id, key_version })
            }
        };

        let opened = open_with_keyring(&lookup, &AAD, &sealed).expect("closure finds key");
        assert_eq!(opened.as_slice(), b"x");
    }
}
