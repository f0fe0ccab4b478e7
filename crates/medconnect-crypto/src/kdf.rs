//! Derivation of purpose-specific keys from the master key.
//!
//! A derived key is HMAC-SHA256 keyed with the master key, over the length of `purpose` as a
//! u64 big-endian, then `purpose`, then `label`. HMAC-SHA256 is a pseudorandom function, so
//! keys derived for different (purpose, label) pairs are independent of each other and of the
//! master key. The length prefix keeps a caller-chosen label from reproducing another purpose's
//! input. The master key itself is only ever used as this HMAC key, never as an AES key.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use crate::key::{KeyBytes, MasterKey, KEY_LEN};

/// The purpose of the key that wraps data keys.
pub(crate) const PURPOSE_KEY_WRAP: &str = "key-wrap";
/// The purpose of blind index keys.
pub(crate) const PURPOSE_BLIND_INDEX: &str = "blind-index";

/// Derives the key for `purpose` and `label` from `master`.
///
/// NOTE: the `hmac` 0.12 state contains values derived from the master key and does not wipe
/// them when dropped, so they may stay in freed stack memory.
pub(crate) fn derive_key(master: &MasterKey, purpose: &str, label: &str) -> KeyBytes {
    derive_from_bytes(master.bytes(), purpose, label)
}

/// Derives the key for `purpose` and `label` from raw key bytes, as [`derive_key`] does.
pub(crate) fn derive_from_bytes(root: &[u8; KEY_LEN], purpose: &str, label: &str) -> KeyBytes {
    let mut mac = new_hmac(root);
    // usize is at most 64 bits wide on every target Rust supports, so this is lossless.
    mac.update(&(purpose.len() as u64).to_be_bytes());
    mac.update(purpose.as_bytes());
    mac.update(label.as_bytes());

    let mut output = mac.finalize().into_bytes();
    let mut key = KeyBytes::zeroed();
    key.as_mut_array().copy_from_slice(&output);
    output.as_mut_slice().zeroize();
    key
}

/// Creates HMAC-SHA256 keyed with `key`.
pub(crate) fn new_hmac(key: &[u8; KEY_LEN]) -> Hmac<Sha256> {
    // HMAC hashes keys longer than its block and pads shorter ones, so any length is valid.
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts a key of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_differ_by_purpose_and_label() {
        let master = MasterKey::generate(1).expect("random source works");
        let wrap = derive_key(&master, PURPOSE_KEY_WRAP, "medconnect-key-wrap-v1");
        let index = derive_key(&master, PURPOSE_BLIND_INDEX, "medconnect-key-wrap-v1");
        let other_label = derive_key(&master, PURPOSE_BLIND_INDEX, "medconnect-blind-index-v1");

        assert_ne!(wrap.as_array(), index.as_array());
        assert_ne!(index.as_array(), other_label.as_array());
        assert_ne!(wrap.as_array(), master.bytes());
    }

    #[test]
    fn derivation_is_deterministic() {
        let master = MasterKey::generate(1).expect("random source works");

        let first = derive_key(&master, PURPOSE_BLIND_INDEX, "label");
        let second = derive_key(&master, PURPOSE_BLIND_INDEX, "label");

        assert_eq!(first.as_array(), second.as_array());
    }
}
