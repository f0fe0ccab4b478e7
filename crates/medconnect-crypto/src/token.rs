//! Bearer tokens for sessions and service clients, stored only as their SHA-256.
//!
//! A token is 32 random bytes, handed to its holder once as 64 lower-case hex digits. The
//! store keeps [`TokenHash`], the SHA-256 of the 32 bytes, so a copy of the database does
//! not let anyone act as the holder. The store finds a token by its hash with an index
//! lookup. That comparison is not constant-time, but its timing can only reveal bits of a
//! SHA-256 output, from which no token can be computed. [`TokenHash::matches`] compares in
//! constant time where Rust code compares a token with a stored hash.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::key::fill_random;
use crate::CryptoError;

/// Number of random bytes in a token.
pub const TOKEN_LEN: usize = 32;

/// A token in its text form, as its holder sends it. Its `Debug` shows no digit of it, and
/// its memory is wiped when dropped.
pub struct SecretToken {
    text: Zeroizing<String>,
    hash: TokenHash,
}

impl SecretToken {
    /// Draws a new token from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; TOKEN_LEN]);
        fill_random(bytes.as_mut())?;
        Ok(SecretToken {
            text: Zeroizing::new(hex::encode(bytes.as_ref())),
            hash: TokenHash(Sha256::digest(bytes.as_ref()).into()),
        })
    }

    /// Returns the text to hand to the holder, once.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Returns the hash to store.
    pub fn hash(&self) -> TokenHash {
        self.hash
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(..)")
    }
}

/// SHA-256 of a token's 32 bytes: what the store keeps and looks tokens up by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a token as its holder sent it. Returns None unless it is exactly 64 hex digits,
    /// so the caller
    /// rejects a malformed token as it rejects an unknown one.
    pub fn of_token(token: &str) -> Option<Self> {
        if token.len() != TOKEN_LEN * 2 {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; TOKEN_LEN]);
        hex::decode_to_slice(token, bytes.as_mut()).ok()?;
        Some(TokenHash(Sha256::digest(bytes.as_ref()).into()))
    }

    /// Parses a stored hash from 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(TokenHash(bytes))
    }

    /// Formats the hash as the store keeps it: 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Compares with another hash in constant time.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// Shows only the first 8 hex digits: enough to tell two hashes apart in a test failure.
impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}..)", &hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_64_hex_digits() {
        let token = SecretToken::generate().expect("token");
        assert_eq!(token.expose().len(), 64);
        assert!(token.expose().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn tokens_differ() {
        let first = SecretToken::generate().expect("token");
        let second = SecretToken::generate().expect("token");
        assert_ne!(first.expose(), second.expose());
        assert!(!first.hash().matches(&second.hash()));
    }

    #[test]
    fn hash_is_sha256_of_bytes() {
        let token = "00".repeat(32);
        let hash = TokenHash::of_token(&token).expect("valid token");
        // SHA-256 of 32 zero bytes.
        assert_eq!(
            hash.to_hex(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }

    #[test]
    fn sent_token_matches_stored_hash() {
        let token = SecretToken::generate().expect("token");
        let stored = TokenHash::from_hex(&token.hash().to_hex()).expect("stored hash parses");
        let sent = TokenHash::of_token(token.expose()).expect("sent token parses");
        assert!(sent.matches(&stored));
        assert_eq!(sent, stored);
    }

    #[test]
    fn malformed_tokens_rejected() {
        assert!(TokenHash::of_token("").is_none());
        assert!(TokenHash::of_token(&"0".repeat(63)).is_none());
        assert!(TokenHash::of_token(&"0".repeat(65)).is_none());
        assert!(TokenHash::of_token(&"g".repeat(64)).is_none());
    }

    #[test]
    fn debug_hides_secret() {
        let token = SecretToken::generate().expect("token");
        let shown = format!("{token:?}");
        assert!(!shown.contains(&token.expose()[..8]), "{shown}");
        let hash = format!("{:?}", token.hash());
        assert!(!hash.contains(&token.hash().to_hex()), "{hash}");
    }
}
