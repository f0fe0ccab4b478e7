//! Blind indexes: keyed hashes of values, for equality lookups on encrypted columns.
//!
//! A blind index column stores `blind_index(key, domain, value)` next to the ciphertext of
//! `value`, so that a lookup by value hashes the searched value and compares hashes. Anyone who
//! has the blind index key can test guesses against the index, and equal values have equal
//! indexes, so index only values that a lookup needs.

use hmac::Mac;
use zeroize::Zeroizing;

use crate::kdf::{derive_from_bytes, derive_key, new_hmac, PURPOSE_BLIND_INDEX};
use crate::key::{DataKey, KeyBytes, MasterKey};

/// The label of the current blind index key, for [`derive_blind_index_key`].
pub const BLIND_INDEX_LABEL: &str = "medconnect-blind-index-v1";

/// The blind index domain of email addresses.
pub const EMAIL_DOMAIN: &str = "email";

/// A 256-bit HMAC-SHA256 key for blind indexes, wiped when dropped.
pub struct BlindIndexKey {
    bytes: KeyBytes,
}

impl std::fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndexKey(..)")
    }
}

/// Derives the blind index key for `label` from the master key, with HMAC-SHA256.
///
/// Pass [`BLIND_INDEX_LABEL`]. The same master key and label always give the same key, so
/// rotating the master key, or changing the label, changes every index, and each indexed
/// column then has to be recomputed from its decrypted values.
pub fn derive_blind_index_key(master: &MasterKey, label: &str) -> BlindIndexKey {
    BlindIndexKey { bytes: derive_key(master, PURPOSE_BLIND_INDEX, label) }
}

/// Derives the blind index key for `label` from a stored data key, with HMAC-SHA256.
///
/// Use this when indexes must survive master key rotation: the data key is stored wrapped and
/// is re-wrapped, not replaced, when the master key changes, so the derived key stays the same.
pub fn derive_blind_index_key_from_data_key(key: &DataKey, label: &str) -> BlindIndexKey {
    BlindIndexKey { bytes: derive_from_bytes(key.bytes(), PURPOSE_BLIND_INDEX, label) }
}

/// Returns the blind index of `value` in `domain`: 64 lowercase hex characters.
///
/// The index is HMAC-SHA256 under `key`, over the length of `domain` as a u64 big-endian, then
/// `domain`, then the normalized value. Normalizing trims leading and trailing whitespace and
/// converts to Unicode lowercase, so `" Alice@Example.com"` and `"alice@example.com"` get the
/// same index. Values that differ only in case therefore collide, so do not index case-sensitive
/// values. The domain, such as [`EMAIL_DOMAIN`], keeps equal values of different kinds apart.
pub fn blind_index(key: &BlindIndexKey, domain: &str, value: &str) -> String {
    let normalized = Zeroizing::new(value.trim().to_lowercase());

    let mut mac = new_hmac(key.bytes.as_array());
    // usize is at most 64 bits wide on every target Rust supports, so this is lossless.
    mac.update(&(domain.len() as u64).to_be_bytes());
    mac.update(domain.as_bytes());
    mac.update(normalized.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_key() -> BlindIndexKey {
        let master = MasterKey::generate(1).expect("random source works");
        derive_blind_index_key(&master, BLIND_INDEX_LABEL)
    }

    #[test]
    fn email_normalization_matches() {
        let key = index_key();

        assert_eq!(
            blind_index(&key, EMAIL_DOMAIN, "Alice@Example.com "),
            blind_index(&key, EMAIL_DOMAIN, "alice@example.com")
        );
        assert_eq!(
            blind_index(&key, EMAIL_DOMAIN, "\tALICE@EXAMPLE.COM\n"),
            blind_index(&key, EMAIL_DOMAIN, "alice@example.com")
        );
    }

    #[test]
    fn index_differs_across_domains() {
        let key = index_key();

        assert_ne!(
            blind_index(&key, EMAIL_DOMAIN, "alice@example.com"),
            blind_index(&key, "username", "alice@example.com")
        );
        // The length prefix keeps the domain and value apart.
        assert_ne!(blind_index(&key, "ab", "c"), blind_index(&key, "a", "bc"));
    }

    #[test]
    fn index_differs_across_master_keys() {
        let first = index_key();
        let second = index_key();

        assert_ne!(
            blind_index(&first, EMAIL_DOMAIN, "alice@example.com"),
            blind_index(&second, EMAIL_DOMAIN, "alice@example.com")
        );
    }

    #[test]
    fn index_differs_across_labels() {
        let master = MasterKey::generate(1).expect("random source works");
        let current = derive_blind_index_key(&master, BLIND_INDEX_LABEL);
        let next = derive_blind_index_key(&master, "medconnect-blind-index-v2");

        assert_ne!(
            blind_index(&current, EMAIL_DOMAIN, "alice@example.com"),
            blind_index(&next, EMAIL_DOMAIN, "alice@example.com")
        );
    }

    /// The expected index was computed with Python's `hmac` and `hashlib` modules from the
    /// derivation and index formulas documented above.
    #[test]
    fn index_matches_reference_value() {
        let master = MasterKey::from_bytes(1, &[7u8; 32]);
        let key = derive_blind_index_key(&master, BLIND_INDEX_LABEL);
        let index = blind_index(&key, EMAIL_DOMAIN, "alice@example.com");

        assert_eq!(index, "6ce38bf19446d32a2583f2e4583bfa87f4a8ad9abe42902718a12e9fc9f07578");
        assert_eq!(index.len(), 64);
        assert!(index.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{index}");
        assert_ne!(index, blind_index(&key, EMAIL_DOMAIN, "bob@example.com"));
    }

    #[test]
    fn debug_hides_key() {
        let key = index_key();

        assert_eq!(format!("{key:?}"), "BlindIndexKey(..)");
    }
}
