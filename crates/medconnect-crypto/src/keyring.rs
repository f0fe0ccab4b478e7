//! Looking up data keys by the id and version that a ciphertext header names.

use std::collections::{HashMap, HashSet};

use crate::error::CryptoError;
use crate::key::{DataKey, KeyId};

/// A source of data keys by key id and version, used by
/// [`open_with_keyring`](crate::open_with_keyring).
///
/// A store-backed keyring reads the wrapped key from its table and unwraps it with the master
/// key. A closure `Fn(KeyId, u32) -> Result<DataKey, CryptoError>` is a keyring too.
pub trait Keyring {
    /// Returns the data key `key_id` at `key_version`.
    ///
    /// Fails with [`CryptoError::KeyDestroyed`] for a key that was destroyed, and with
    /// [`CryptoError::UnknownKey`] for one that never existed here.
    fn data_key(&self, key_id: KeyId, key_version: u32) -> Result<DataKey, CryptoError>;
}

impl<F> Keyring for F
where
    F: Fn(KeyId, u32) -> Result<DataKey, CryptoError>,
{
    fn data_key(&self, key_id: KeyId, key_version: u32) -> Result<DataKey, CryptoError> {
        self(key_id, key_version)
    }
}

/// A keyring in memory, with the key ids it has destroyed.
///
/// Useful as a cache of unwrapped keys and in tests. Destroying a key here drops, and so wipes,
/// every version of it, but crypto-shredding is complete only once the wrapped key is deleted
/// from storage (and from backups) too.
#[derive(Debug, Default)]
pub struct InMemoryKeyring {
    keys: HashMap<(KeyId, u32), DataKey>,
    destroyed: HashSet<KeyId>,
}

impl InMemoryKeyring {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` as version `key_version` of its key id, replacing a key already there.
    ///
    /// Fails with [`CryptoError::KeyDestroyed`] if this keyring destroyed that key id before.
    pub fn insert(&mut self, key_version: u32, key: DataKey) -> Result<(), CryptoError> {
        if self.destroyed.contains(&key.id()) {
            return Err(CryptoError::KeyDestroyed { key_id: key.id() });
        }
        self.keys.insert((key.id(), key_version), key);
        Ok(())
    }

    /// Drops every version of `key_id` and remembers the id as destroyed.
    pub fn destroy(&mut self, key_id: KeyId) {
        self.keys.retain(|(id, _), _| *id != key_id);
        self.destroyed.insert(key_id);
    }
}

impl Keyring for InMemoryKeyring {
    fn data_key(&self, key_id: KeyId, key_version: u32) -> Result<DataKey, CryptoError> {
        if self.destroyed.contains(&key_id) {
            return Err(CryptoError::KeyDestroyed { key_id });
        }
        self.keys
            .get(&(key_id, key_version))
            .cloned()
            .ok_or(CryptoError::UnknownKey { key_id, key_version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroy_removes_every_version() {
        let id = KeyId::new();
        let mut keyring = InMemoryKeyring::new();
        for version in 1..=3 {
            let key = DataKey::generate(id).expect("random source works");
            keyring.insert(version, key).expect("key not destroyed");
        }
        let other = DataKey::generate(KeyId::new()).expect("random source works");
        let other_id = other.id();
        keyring.insert(1, other).expect("key not destroyed");

        keyring.destroy(id);

        for version in 1..=3 {
            let result = keyring.data_key(id, version);
            assert!(matches!(result, Err(CryptoError::KeyDestroyed { .. })), "version {version}");
        }
        assert!(keyring.data_key(other_id, 1).is_ok(), "other key kept");
    }

    #[test]
    fn insert_after_destroy_fails() {
        let key = DataKey::generate(KeyId::new()).expect("random source works");
        let mut keyring = InMemoryKeyring::new();
        keyring.destroy(key.id());

        let result = keyring.insert(1, key);

        assert!(matches!(result, Err(CryptoError::KeyDestroyed { .. })));
    }
}
