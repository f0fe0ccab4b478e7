//! Password hashing with argon2id, stored as PHC strings.
//!
//! New hashes use the parameters below. [`verify_password`] reads the parameters from the
//! stored string, so hashes made with older parameters still verify, and
//! [`needs_rehash`] tells the caller when to replace one after a successful login.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::key::fill_random;
use crate::CryptoError;

/// Memory cost in KiB: 19 MiB, OWASP's minimum for argon2id (Password Storage Cheat Sheet).
pub const PASSWORD_MEMORY_KIB: u32 = 19 * 1024;

/// Number of passes over the memory, OWASP's minimum together with 19 MiB.
pub const PASSWORD_ITERATIONS: u32 = 2;

/// Degree of parallelism (lanes).
pub const PASSWORD_PARALLELISM: u32 = 1;

/// Length of the random salt in bytes (16, as RFC 9106 recommends).
pub const PASSWORD_SALT_LEN: usize = 16;

/// Minimum length of a new password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Most characters a new password may have, so that a request cannot make the server hash
/// megabytes.
pub const MAX_PASSWORD_CHARS: usize = 1024;

fn hasher() -> Result<Argon2<'static>, CryptoError> {
    let params = Params::new(PASSWORD_MEMORY_KIB, PASSWORD_ITERATIONS, PASSWORD_PARALLELISM, None)
        .map_err(|error| CryptoError::PasswordHashingFailed { reason: error.to_string() })?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Checks the length of a new password in characters (Unicode scalar values), between
/// [`MIN_PASSWORD_CHARS`] and [`MAX_PASSWORD_CHARS`].
pub fn check_new_password(password: &str) -> Result<(), CryptoError> {
    let found = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&found) {
        return Err(CryptoError::PasswordLength {
            found,
            min: MIN_PASSWORD_CHARS,
            max: MAX_PASSWORD_CHARS,
        });
    }
    Ok(())
}

/// Hashes a password with argon2id and a random salt. Returns the PHC string, such as
/// `$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH`, which contains the parameters and the salt.
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    let mut salt = [0u8; PASSWORD_SALT_LEN];
    fill_random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|error| CryptoError::PasswordHashingFailed { reason: error.to_string() })?;
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| CryptoError::PasswordHashingFailed { reason: error.to_string() })?;
    Ok(hash.to_string())
}

/// Checks a password against a stored argon2id PHC string, with the parameters the string
/// names. Returns false for a wrong password, and an error when the stored string is not an
/// argon2id hash.
pub fn verify_password(password: &str, stored: &str) -> Result<bool, CryptoError> {
    let parsed = parse_stored(stored)?;
    match hasher()?.verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(error) => Err(CryptoError::InvalidPasswordHash { reason: error.to_string() }),
    }
}

/// Runs one password check against a fixed hash and discards the result. A login for a user
/// that does not exist calls it, so that the answer takes as long as for a wrong password
/// and does not reveal which usernames exist.
pub fn verify_password_dummy(password: &str) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("medconnect-dummy-password").ok());
    if let Some(dummy) = dummy {
        let _ = verify_password(password, dummy);
    }
}

/// Returns whether a stored hash uses other parameters than new hashes do, so that the
/// caller should store a new hash of the password it has just verified.
pub fn needs_rehash(stored: &str) -> Result<bool, CryptoError> {
    let parsed = parse_stored(stored)?;
    let params = Params::try_from(&parsed)
        .map_err(|error| CryptoError::InvalidPasswordHash { reason: error.to_string() })?;
    Ok(parsed.version != Some(Version::V0x13.into())
        || params.m_cost() != PASSWORD_MEMORY_KIB
        || params.t_cost() != PASSWORD_ITERATIONS
        || params.p_cost() != PASSWORD_PARALLELISM)
}

fn parse_stored(stored: &str) -> Result<PasswordHash<'_>, CryptoError> {
    let parsed = PasswordHash::new(stored)
        .map_err(|error| CryptoError::InvalidPasswordHash { reason: error.to_string() })?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(CryptoError::InvalidPasswordHash {
            reason: format!("algorithm {} instead of argon2id", parsed.algorithm),
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "correct horse battery";

    #[test]
    fn hash_names_parameters() {
        let hash = hash_password(PASSWORD).expect("hashed");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(!hash.contains(PASSWORD));
    }

    #[test]
    fn salts_differ() {
        let first = hash_password(PASSWORD).expect("hashed");
        let second = hash_password(PASSWORD).expect("hashed");
        assert_ne!(first, second);
    }

    #[test]
    fn verify_accepts_right_password() {
        let hash = hash_password(PASSWORD).expect("hashed");
        assert!(verify_password(PASSWORD, &hash).expect("checked"));
    }

    #[test]
    fn verify_rejects_wrong_password() {
        let hash = hash_password(PASSWORD).expect("hashed");
        assert!(!verify_password("correct horse battery!", &hash).expect("checked"));
        assert!(!verify_password("", &hash).expect("checked"));
    }

    #[test]
    fn verify_rejects_other_algorithms() {
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$2zWl3kSxDnjcKxjw5TAdGw";
        let error = verify_password(PASSWORD, argon2i).expect_err("argon2i rejected");
        assert!(matches!(error, CryptoError::InvalidPasswordHash { .. }), "{error}");
        let error = verify_password(PASSWORD, "not a hash").expect_err("garbage rejected");
        assert!(matches!(error, CryptoError::InvalidPasswordHash { .. }), "{error}");
    }

    #[test]
    fn older_parameters_verify_and_need_rehash() {
        let params = Params::new(1024, 1, 1, None).expect("params");
        let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let old = weak.hash_password(PASSWORD.as_bytes(), &salt).expect("hashed").to_string();
        assert!(verify_password(PASSWORD, &old).expect("checked"));
        assert!(needs_rehash(&old).expect("parsed"));
        let current = hash_password(PASSWORD).expect("hashed");
        assert!(!needs_rehash(&current).expect("parsed"));
    }

    #[test]
    fn new_password_length_limits() {
        assert!(check_new_password("eleven char").is_err());
        assert!(check_new_password("twelve chars").is_ok());
        // Twelve characters of two bytes each count as twelve, not 24.
        assert!(check_new_password("éééééééééééé").is_ok());
        assert!(check_new_password("ééééééééééé").is_err());
        assert!(check_new_password(&"x".repeat(MAX_PASSWORD_CHARS)).is_ok());
        assert!(check_new_password(&"x".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
    }
}
