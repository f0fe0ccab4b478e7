//! AES-256-GCM from `ring`, in the two calls that `envelope` and `wrap` need.
//!
//! Both work in place on the caller's buffer and keep the 16-byte tag separate, because the
//! callers lay out the nonce, ciphertext and tag of their own formats.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::error::Unspecified;

use crate::key::KEY_LEN;

/// Length of an AES-GCM nonce: 96 bits.
pub(crate) const NONCE_LEN: usize = 12;
/// Length of an AES-GCM authentication tag: 128 bits.
pub(crate) const TAG_LEN: usize = 16;
/// Maximum plaintext length of one AES-GCM message: 2^39 - 256 bits, that is 2^36 - 32 bytes
/// (NIST SP 800-38D, section 5.2.1.1). `ring` rejects longer input.
pub(crate) const MAX_PLAINTEXT_LEN: u64 = (1 << 36) - 32;
/// Maximum associated data length that this crate passes: 2^36 bytes, far below the 2^61 - 1
/// bytes that NIST SP 800-38D and `ring` allow.
pub(crate) const MAX_ASSOCIATED_LEN: u64 = 1 << 36;

/// An AES-256-GCM key, expanded for use.
pub(crate) struct Cipher(LessSafeKey);

impl Cipher {
    /// Expands `key` into AES round keys and the GHASH key.
    ///
    /// NOTE: `ring`'s `UnboundKey` and `LessSafeKey` do not wipe their memory when dropped, so
    /// the AES round keys and the GHASH key derived from `key` can remain in freed stack memory.
    /// `ring` gives no way to wipe them, and this crate forbids `unsafe`. `key` itself is
    /// borrowed from a `KeyBytes` buffer, which is wiped when dropped, and this function makes
    /// no copy of it.
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes a 32-byte key");
        Self(LessSafeKey::new(key))
    }

    /// Encrypts `in_out` in place and returns the authentication tag.
    ///
    /// Fails only when `in_out` is longer than [`MAX_PLAINTEXT_LEN`], which callers check first.
    /// On failure `in_out` may still contain plaintext.
    pub(crate) fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        associated: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Unspecified> {
        let tag = self.0.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated),
            in_out,
        )?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `in_out` in place if `tag` authenticates it with `nonce` and `associated`.
    ///
    /// `ring` decrypts before it compares tags. When they differ, `ring` 0.17.14 overwrites
    /// `in_out` with zeros before it returns the error (its documentation promises no particular
    /// content), and callers wipe the buffer when they drop it in any case.
    pub(crate) fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        associated: &[u8],
        in_out: &mut [u8],
        tag: [u8; TAG_LEN],
    ) -> Result<(), Unspecified> {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated),
                Tag::from(tag),
                in_out,
                0..,
            )
            .map(|_| ())
    }
}
