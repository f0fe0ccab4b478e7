//! Wrapping data keys under the master key (KEK), so that they can be stored.
//!
//! # Wrapped key format, version 1
//!
//! ```text
//! offset  length  content
//!      0       2  magic "MK" (0x4d 0x4b)
//!      2       1  format version: 1
//!      3       4  version of the master key that wrapped it, u32 big-endian
//!      7      16  data key id, the UUID's 16 bytes in RFC 4122 order
//!     23       4  data key version, u32 big-endian
//!     27      12  nonce, random for every wrap
//!     39      32  AES-256-GCM ciphertext of the data key
//!     71      16  AES-GCM authentication tag
//! ```
//!
//! A wrapped key is always 87 bytes. The AES-256-GCM key is derived from the master key with
//! the purpose label [`KEY_WRAP_LABEL`] (see the `kdf` module), and the associated data is that
//! label followed by bytes 0..27. So a wrapped key whose master key version, data
//! key id or data key version was changed fails to unwrap, and so does one unwrapped with
//! another master key.

use crate::cipher::{Cipher, NONCE_LEN, TAG_LEN};
use crate::error::CryptoError;
use crate::format::{array_at, Format};
use crate::kdf::{derive_key, PURPOSE_KEY_WRAP};
use crate::key::{fill_random, DataKey, KeyBytes, KeyId, MasterKey, KEY_LEN};

/// The magic that starts every wrapped key.
pub const WRAPPED_KEY_MAGIC: &str = "MK";
/// The wrapped key format version that [`MasterKey::wrap_key`] writes.
pub const WRAPPED_KEY_FORMAT_VERSION: u8 = 1;
/// The purpose label in the associated data of every wrapped key, and the label from which the
/// wrapping key is derived.
pub const KEY_WRAP_LABEL: &str = "medconnect-data-key-wrap-v1";
/// Length of a wrapped key.
pub const WRAPPED_KEY_LEN: usize = WRAPPED_HEADER_LEN + NONCE_LEN + KEY_LEN + TAG_LEN;
const WRAPPED_HEADER_LEN: usize = 27;

const FORMAT: Format = Format {
    kind: "wrapped key",
    magic: WRAPPED_KEY_MAGIC,
    version: WRAPPED_KEY_FORMAT_VERSION,
    min_len: WRAPPED_KEY_LEN,
};

/// The header fields of a wrapped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrappedKeyHeader {
    /// Format version, always [`WRAPPED_KEY_FORMAT_VERSION`] in a header that parsed.
    pub version: u8,
    /// Version of the master key that wrapped it. Master key rotation rewraps every key whose
    /// version is not the current one.
    pub master_key_version: u32,
    pub key_id: KeyId,
    pub key_version: u32,
}

/// Parses the header of a wrapped key without unwrapping it.
///
/// The header is not authenticated until the key unwraps. Fails like
/// [`parse_header`](crate::parse_header), and with [`CryptoError::InvalidLength`] when the bytes
/// are longer than [`WRAPPED_KEY_LEN`].
pub fn parse_wrapped_key_header(bytes: &[u8]) -> Result<WrappedKeyHeader, CryptoError> {
    FORMAT.check(bytes)?;
    if bytes.len() != WRAPPED_KEY_LEN {
        return Err(CryptoError::InvalidLength {
            kind: FORMAT.kind,
            len: bytes.len(),
            expected: WRAPPED_KEY_LEN,
        });
    }
    Ok(WrappedKeyHeader {
        version: bytes[2],
        master_key_version: u32::from_be_bytes(array_at(bytes, 3)),
        key_id: KeyId::from_bytes(array_at(bytes, 7)),
        key_version: u32::from_be_bytes(array_at(bytes, 23)),
    })
}

impl MasterKey {
    /// Encrypts `key` for storage as version `key_version` of its key id.
    ///
    /// The result records this master key's version, the key id and `key_version`, and is bound
    /// to them. Fails only if the operating system's random number generator fails.
    pub fn wrap_key(&self, key: &DataKey, key_version: u32) -> Result<Vec<u8>, CryptoError> {
        let mut header = [0u8; WRAPPED_HEADER_LEN];
        header[..2].copy_from_slice(WRAPPED_KEY_MAGIC.as_bytes());
        header[2] = WRAPPED_KEY_FORMAT_VERSION;
        header[3..7].copy_from_slice(&self.version().to_be_bytes());
        header[7..23].copy_from_slice(&key.id().to_bytes());
        header[23..27].copy_from_slice(&key_version.to_be_bytes());

        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;

        let mut encrypted = KeyBytes::zeroed();
        encrypted.as_mut_array().copy_from_slice(key.bytes());
        let tag = self
            .wrapping_cipher()
            .seal_in_place(nonce, &associated_data(&header), encrypted.as_mut_array())
            .map_err(|_| CryptoError::MessageTooLong { plaintext_len: KEY_LEN, aad_len: 0 })?;

        let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(encrypted.as_array());
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts a wrapped key that was stored as version `key_version` of `key_id`.
    ///
    /// Pass the id and version from the row that the wrapped key was read from, not from the
    /// wrapped key itself: a wrapped key copied to another row then fails with
    /// [`CryptoError::WrappedKeyMismatch`]. Fails with
    /// [`CryptoError::MasterKeyVersionMismatch`] when another master key version wrapped it,
    /// and with [`CryptoError::UnwrapFailed`] when it was altered or this is not the master key
    /// that wrapped it.
    pub fn unwrap_key(
        &self,
        wrapped: &[u8],
        key_id: KeyId,
        key_version: u32,
    ) -> Result<DataKey, CryptoError> {
        let header = parse_wrapped_key_header(wrapped)?;
        if header.key_id != key_id || header.key_version != key_version {
            return Err(CryptoError::WrappedKeyMismatch {
                expected_id: key_id,
                expected_version: key_version,
                found_id: header.key_id,
                found_version: header.key_version,
            });
        }
        if header.master_key_version != self.version() {
            return Err(CryptoError::MasterKeyVersionMismatch {
                wrapped_with: header.master_key_version,
                provided: self.version(),
            });
        }

        let nonce = array_at(wrapped, WRAPPED_HEADER_LEN);
        let body_start = WRAPPED_HEADER_LEN + NONCE_LEN;
        let tag = array_at(wrapped, body_start + KEY_LEN);
        let mut bytes = KeyBytes::zeroed();
        bytes.as_mut_array().copy_from_slice(&wrapped[body_start..body_start + KEY_LEN]);
        // On failure `bytes` contains zeros or ciphertext, never key bytes, and is wiped on drop.
        self.wrapping_cipher()
            .open_in_place(
                nonce,
                &associated_data(&wrapped[..WRAPPED_HEADER_LEN]),
                bytes.as_mut_array(),
                tag,
            )
            .map_err(|_| CryptoError::UnwrapFailed { key_id, key_version })?;
        Ok(DataKey::from_key_bytes(key_id, bytes))
    }

    /// Returns the cipher under the key derived for wrapping. The derived key bytes are wiped
    /// when this returns, but the expanded key inside the cipher is not (see [`Cipher::new`]).
    fn wrapping_cipher(&self) -> Cipher {
        let key = derive_key(self, PURPOSE_KEY_WRAP, KEY_WRAP_LABEL);
        Cipher::new(key.as_array())
    }
}

fn associated_data(header: &[u8]) -> Vec<u8> {
    let mut associated = Vec::with_capacity(KEY_WRAP_LABEL.len() + header.len());
    associated.extend_from_slice(KEY_WRAP_LABEL.as_bytes());
    associated.extend_from_slice(header);
    associated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open, seal, Aad};

    const AAD: Aad<'static> =
        Aad { tenant: "t", table: "consultations", column: "notes", record: "r" };

    fn master(version: u32) -> MasterKey {
        MasterKey::generate(version).expect("random source works")
    }

    fn data_key() -> DataKey {
        DataKey::generate(KeyId::new()).expect("random source works")
    }

    #[test]
    fn wrap_round_trip() {
        let master = master(1);
        let key = data_key();
        let wrapped = master.wrap_key(&key, 3).expect("wrap succeeds");
        let unwrapped = master.unwrap_key(&wrapped, key.id(), 3).expect("unwrap succeeds");

        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        assert_eq!(unwrapped.id(), key.id());
        assert_eq!(unwrapped.bytes(), key.bytes());
        let sealed = seal(&key, 3, &AAD, b"note").expect("seal succeeds");
        let opened = open(&unwrapped, &AAD, &sealed).expect("unwrapped key opens");
        assert_eq!(opened.as_slice(), b"note");
    }

    /// The reference wrapped key was built from the layout documented above with Python's
    /// `hmac` module and the AESGCM class of `cryptography` 48.0. Its inputs: master key version
    /// 3 with 32 bytes of 7, data key bytes 0..32, key id 00112233-4455-6677-8899-aabbccddeeff,
    /// key version 2, nonce bytes 0xb0..0xbc.
    const REFERENCE_WRAPPED_KEY: &str =
        "4d4b010000000300112233445566778899aabbccddeeff00000002b0b1b2b3b4b5b6b7b8b9babbc7665c97\
         1112c7b3fe448b8e735c406dc652946cb51ef8cebfdee2842f3041b4cca138d9b69e547259ea421495a1bcc8";

    #[test]
    fn unwrap_reads_reference_wrapped_key() {
        let master = MasterKey::from_bytes(3, &[7u8; KEY_LEN]);
        let key_id = KeyId::parse("00112233-4455-6677-8899-aabbccddeeff").expect("valid id");
        let wrapped = hex::decode(REFERENCE_WRAPPED_KEY).expect("valid hex");

        let key = master.unwrap_key(&wrapped, key_id, 2).expect("reference key unwraps");

        let expected: Vec<u8> = (0..32).collect();
        assert_eq!(key.bytes().as_slice(), expected.as_slice());
        assert_eq!(key.id(), key_id);
    }

    /// `wrap_key` draws its nonce at random, so this runs its encryption step with the
    /// reference nonce and compares the bytes after the nonce.
    #[test]
    fn wrap_writes_reference_wrapped_key() {
        let master = MasterKey::from_bytes(3, &[7u8; KEY_LEN]);
        let reference = hex::decode(REFERENCE_WRAPPED_KEY).expect("valid hex");
        let (header, rest) = reference.split_at(WRAPPED_HEADER_LEN);
        let (nonce, expected) = rest.split_at(NONCE_LEN);

        let mut body: Vec<u8> = (0..32).collect();
        let tag = master
            .wrapping_cipher()
            .seal_in_place(array_at(nonce, 0), &associated_data(header), &mut body)
            .expect("seal succeeds");
        body.extend_from_slice(&tag);

        assert_eq!(hex::encode(&body), hex::encode(expected));
    }

    #[test]
    fn wrapped_key_hides_key_bytes() {
        let master = master(1);
        let key = data_key();
        let wrapped = master.wrap_key(&key, 1).expect("wrap succeeds");

        assert!(!wrapped.windows(8).any(|window| window == &key.bytes()[..8]));
    }

    #[test]
    fn header_names_versions() {
        let master = master(5);
        let key = data_key();
        let wrapped = master.wrap_key(&key, 2).expect("wrap succeeds");
        let header = parse_wrapped_key_header(&wrapped).expect("header parses");

        assert_eq!(header.version, 1);
        assert_eq!(header.master_key_version, 5);
        assert_eq!(header.key_id, key.id());
        assert_eq!(header.key_version, 2);
        assert_eq!(&wrapped[..2], b"MK");
    }

    #[test]
    fn unwrap_with_other_master_fails() {
        let key = data_key();
        let wrapped = master(1).wrap_key(&key, 1).expect("wrap succeeds");

        let error = master(1).unwrap_key(&wrapped, key.id(), 1).expect_err("other master fails");

        assert!(matches!(error, CryptoError::UnwrapFailed { .. }), "{error:?}");
        assert!(error.to_string().contains(&key.id().to_string()), "{error}");
    }

    #[test]
    fn unwrap_with_other_master_version_fails() {
        let key = data_key();
        let wrapped = master(1).wrap_key(&key, 1).expect("wrap succeeds");

        let error = master(2).unwrap_key(&wrapped, key.id(), 1).expect_err("version differs");

        assert!(
            matches!(error, CryptoError::MasterKeyVersionMismatch { wrapped_with: 1, provided: 2 }),
            "{error:?}"
        );
        assert!(error.to_string().contains("load master key version 1"), "{error}");
    }

    #[test]
    fn changed_key_id_or_version_fails() {
        let master = master(1);
        let key = data_key();
        let wrapped = master.wrap_key(&key, 1).expect("wrap succeeds");
        let other_id = KeyId::new();

        let mut with_other_id = wrapped.clone();
        with_other_id[7..23].copy_from_slice(&other_id.to_bytes());
        let mut with_other_version = wrapped.clone();
        with_other_version[23..27].copy_from_slice(&2u32.to_be_bytes());
        let mut with_other_master_version = wrapped.clone();
        with_other_master_version[3..7].copy_from_slice(&2u32.to_be_bytes());

        // The row's id and version no longer match the wrapped key's header.
        let result = master.unwrap_key(&with_other_id, key.id(), 1);
        assert!(matches!(result, Err(CryptoError::WrappedKeyMismatch { .. })), "id, row kept");
        let result = master.unwrap_key(&with_other_version, key.id(), 1);
        assert!(matches!(result, Err(CryptoError::WrappedKeyMismatch { .. })), "version, row kept");

        // Header and row changed together: the authentication tag catches it.
        let result = master.unwrap_key(&with_other_id, other_id, 1);
        assert!(matches!(result, Err(CryptoError::UnwrapFailed { .. })), "id, row changed");
        let result = master.unwrap_key(&with_other_version, key.id(), 2);
        assert!(matches!(result, Err(CryptoError::UnwrapFailed { .. })), "version, row changed");
        let other_master = MasterKey::from_bytes(2, master.bytes());
        let result = other_master.unwrap_key(&with_other_master_version, key.id(), 1);
        assert!(matches!(result, Err(CryptoError::UnwrapFailed { .. })), "master version");
    }

    #[test]
    fn wrapped_key_in_other_row_fails() {
        let master = master(1);
        let key = data_key();
        let wrapped = master.wrap_key(&key, 1).expect("wrap succeeds");
        let rows = [("other key id", KeyId::new(), 1), ("other key version", key.id(), 2)];

        for (name, key_id, key_version) in rows {
            let error =
                master.unwrap_key(&wrapped, key_id, key_version).expect_err("wrong row fails");
            let message = error.to_string();
            assert!(matches!(error, CryptoError::WrappedKeyMismatch { .. }), "{name}");
            assert!(message.contains("stored in the wrong row"), "{name}: {message}");
        }
    }

    #[test]
    fn every_byte_flip_fails_to_unwrap() {
        let master = master(1);
        let key = data_key();
        let wrapped = master.wrap_key(&key, 1).expect("wrap succeeds");

        for index in 0..wrapped.len() {
            let mut altered = wrapped.clone();
            altered[index] ^= 0x01;
            let result = master.unwrap_key(&altered, key.id(), 1);
            assert!(result.is_err(), "byte {index}");
        }
    }

    #[test]
    fn wrong_length_fails() {
        let master = master(1);
        let key = data_key();
        let wrapped = master.wrap_key(&key, 1).expect("wrap succeeds");
        let mut longer = wrapped.clone();
        longer.push(0);

        let shorter = master.unwrap_key(&wrapped[..WRAPPED_KEY_LEN - 1], key.id(), 1);
        assert!(matches!(shorter, Err(CryptoError::Truncated { len: 86, min: 87, .. })));
        let longer = master.unwrap_key(&longer, key.id(), 1);
        assert!(matches!(longer, Err(CryptoError::InvalidLength { len: 88, expected: 87, .. })));
    }
}
