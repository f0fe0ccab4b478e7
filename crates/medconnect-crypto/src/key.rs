//! Key ids and the two kinds of secret key: data keys and the master key (KEK).
//!
//! Secret bytes live in a heap box, so moving a key moves only a pointer and leaves no copy of
//! the bytes behind, and they are overwritten with zeros when the key is dropped. No key type
//! implements `Display`, `Serialize` or a `Debug` that shows key bytes. Zeroizing is best
//! effort. The AES round keys and GHASH key that `ring` expands from a key are not wiped when
//! dropped (see the `cipher` module), nor is the HMAC state that derives keys (see the `kdf`
//! module). A swapped-out page or a core dump can still hold key bytes.

use std::fmt;

use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::CryptoError;

/// Length in bytes of every key: data keys, the master key and derived keys.
pub const KEY_LEN: usize = 32;

/// Id of a data key: a random UUID that names the key, not its bytes, and so may be logged.
///
/// One key id names all versions of one logical key, such as the key of one tenant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Uuid);

impl KeyId {
    /// Generates a new random key id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// Parses a key id from its hyphenated UUID form.
    pub fn parse(value: &str) -> Result<Self, CryptoError> {
        Uuid::parse_str(value.trim())
            .map(Self)
            .map_err(|_| CryptoError::InvalidKeyId { value: value.to_owned() })
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Returns the 16 bytes stored in ciphertext and wrapped-key headers.
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    pub(crate) fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }
}

impl Default for KeyId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0.as_hyphenated())
    }
}

impl std::str::FromStr for KeyId {
    type Err = CryptoError;

    fn from_str(value: &str) -> Result<Self, CryptoError> {
        Self::parse(value)
    }
}

/// 32 secret bytes in a heap box, overwritten with zeros when dropped.
#[derive(Clone)]
pub(crate) struct KeyBytes(Box<[u8; KEY_LEN]>);

impl KeyBytes {
    pub(crate) fn zeroed() -> Self {
        Self(Box::new([0u8; KEY_LEN]))
    }

    /// Draws the bytes from the operating system's CSPRNG.
    pub(crate) fn random() -> Result<Self, CryptoError> {
        let mut bytes = Self::zeroed();
        fill_random(bytes.as_mut_array())?;
        Ok(bytes)
    }

    pub(crate) fn as_array(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub(crate) fn as_mut_array(&mut self) -> &mut [u8; KEY_LEN] {
        &mut self.0
    }
}

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for KeyBytes {}

/// A 256-bit AES-GCM key that encrypts fields and blobs, together with its key id.
///
/// Obtain one from [`DataKey::generate`] or [`MasterKey::unwrap_key`], and store it only in
/// wrapped form. The version of a key is not part of this type: the caller keeps it next to the
/// wrapped key and passes it to [`seal`](crate::seal).
#[derive(Clone)]
pub struct DataKey {
    id: KeyId,
    bytes: KeyBytes,
}

impl DataKey {
    /// Generates a new random data key with the given id, from the operating system's CSPRNG.
    pub fn generate(id: KeyId) -> Result<Self, CryptoError> {
        Ok(Self { id, bytes: KeyBytes::random()? })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn from_key_bytes(id: KeyId, bytes: KeyBytes) -> Self {
        Self { id, bytes }
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        self.bytes.as_array()
    }
}

/// Its only secret field wipes itself on drop.
impl ZeroizeOnDrop for DataKey {}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The master key, or key-encryption key (KEK): 256 bits from which the key that wraps data
/// keys and the blind index keys are derived.
///
/// The version distinguishes master keys during rotation: every wrapped key records the
/// version of the master key that wrapped it. Obtain one from a [`KeyProvider`](crate::KeyProvider).
/// It has no `Clone`, so that each load leaves exactly one copy to drop.
pub struct MasterKey {
    version: u32,
    bytes: KeyBytes,
}

impl MasterKey {
    /// Generates a new random master key from the operating system's CSPRNG.
    pub fn generate(version: u32) -> Result<Self, CryptoError> {
        Ok(Self { version, bytes: KeyBytes::random()? })
    }

    /// Copies key bytes that an external key provider obtained, for example from a KMS.
    ///
    /// The caller still owns `bytes` and should wipe them, for example with
    /// [`zeroize::Zeroize`], once this returns.
    pub fn from_bytes(version: u32, bytes: &[u8; KEY_LEN]) -> Self {
        let mut key_bytes = KeyBytes::zeroed();
        key_bytes.as_mut_array().copy_from_slice(bytes);
        Self { version, bytes: key_bytes }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn from_key_bytes(version: u32, bytes: KeyBytes) -> Self {
        Self { version, bytes }
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        self.bytes.as_array()
    }
}

/// Its only secret field wipes itself on drop.
impl ZeroizeOnDrop for MasterKey {}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("version", &self.version).finish_non_exhaustive()
    }
}

/// Fills `buffer` from the operating system's CSPRNG (the `getrandom` system call on Linux).
pub(crate) fn fill_random(buffer: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buffer).map_err(CryptoError::random_source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_forms(bytes: &[u8]) -> [String; 2] {
        let lower = hex::encode(bytes);
        let upper = lower.to_uppercase();
        [lower, upper]
    }

    #[test]
    fn data_key_debug_hides_bytes() {
        let key = DataKey::generate(KeyId::new()).expect("random source works");
        let printed = format!("{key:?} {key:#?}");

        assert!(printed.contains(&key.id().to_string()), "{printed}");
        for form in hex_forms(key.bytes()) {
            assert!(!printed.contains(&form), "{printed}");
        }
        for form in hex_forms(&key.bytes()[..4]) {
            assert!(!printed.contains(&form), "{printed}");
        }
        assert!(!printed.contains(&format!("{:?}", &key.bytes()[..4])), "{printed}");
    }

    #[test]
    fn master_key_debug_hides_bytes() {
        let key = MasterKey::generate(3).expect("random source works");
        let printed = format!("{key:?} {key:#?}");

        assert!(printed.starts_with("MasterKey { version: 3, .. }"), "{printed}");
        for form in hex_forms(key.bytes()) {
            assert!(!printed.contains(&form), "{printed}");
        }
        for form in hex_forms(&key.bytes()[..4]) {
            assert!(!printed.contains(&form), "{printed}");
        }
        assert!(!printed.contains(&format!("{:?}", &key.bytes()[..4])), "{printed}");
    }

    #[test]
    fn generated_keys_differ() {
        let first = DataKey::generate(KeyId::new()).expect("random source works");
        let second = DataKey::generate(KeyId::new()).expect("random source works");

        assert_ne!(first.bytes(), second.bytes());
        assert_ne!(first.bytes(), &[0u8; KEY_LEN]);
    }

    #[test]
    fn key_id_round_trips_through_display() {
        let id = KeyId::new();
        let parsed = KeyId::parse(&id.to_string()).expect("display output parses");

        assert_eq!(parsed, id);
        assert_eq!(KeyId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn invalid_key_id_names_value() {
        let message = KeyId::parse("not-a-key").expect_err("not a uuid").to_string();

        assert!(message.contains("invalid key id"), "{message}");
        assert!(message.contains("\"not-a-key\""), "{message}");
    }
}
