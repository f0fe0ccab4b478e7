//! Key providers: where the master key (KEK) comes from.
//!
//! Two providers ship here: [`KeyFileProvider`] reads a file that only its owner may access,
//! and [`EnvKeyProvider`] reads an environment variable. Both expect the key as 64 hexadecimal
//! characters. Unix only, because the key file check reads Unix permission bits.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use crate::error::CryptoError;
use crate::key::{KeyBytes, MasterKey, KEY_LEN};

/// Number of hexadecimal characters in a master key.
const HEX_KEY_LEN: usize = 2 * KEY_LEN;
/// Maximum key file length: 64 hex characters and a "\r\n" line ending.
const MAX_KEY_FILE_LEN: usize = HEX_KEY_LEN + 2;

/// A source of the master key (KEK).
///
/// An external key management service (KMS) fits in one of two ways:
///
/// - Fetch or unwrap the KEK at startup. Keep the KEK encrypted under a KMS key, ask the KMS to
///   decrypt it in [`KeyProvider::master_key`], and return it with [`MasterKey::from_bytes`].
///   Wrapping and unwrapping data keys then stays in this process and costs no KMS round trip,
///   but the KEK is in this process's memory while it runs.
/// - Keep the KEK inside the KMS, so that it never leaves it: a provider whose wrap and unwrap
///   calls go to the KMS, each a network round trip, best cached as unwrapped data keys in a
///   [`Keyring`](crate::Keyring). NOTE: this trait returns the KEK itself, so that design needs
///   a second trait with `wrap_key` and `unwrap_key` methods, which this crate does not have yet.
///
/// Errors of an external provider go in [`CryptoError::KeyProviderFailed`].
pub trait KeyProvider {
    /// Loads the master key. May read a file or call a service, so call it at startup or on
    /// rotation, not per request.
    fn master_key(&self) -> Result<MasterKey, CryptoError>;

    /// Describes where the key comes from, for logs and messages, such as
    /// `key file /etc/medconnect/master.key (master key version 1)`. Never contains key bytes.
    fn describe(&self) -> String;
}

/// Reads the master key from a file that contains 64 hexadecimal characters and a newline, and
/// that only its owner may access (mode 0600 or stricter).
///
/// The file is read on every [`KeyProvider::master_key`] call.
#[derive(Debug, Clone)]
pub struct KeyFileProvider {
    path: PathBuf,
    master_key_version: u32,
}

impl KeyFileProvider {
    /// Creates a provider for an existing key file, with master key version 1.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), master_key_version: 1 }
    }

    /// Sets the version of the master key in this file, which is recorded in every key it
    /// wraps. Give each new master key file a higher version.
    pub fn with_master_key_version(mut self, version: u32) -> Self {
        self.master_key_version = version;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a new random master key to a new file at `path` with mode 0600, and returns a
    /// provider for it with master key version 1.
    ///
    /// Fails if the file already exists, so an existing key is never overwritten. A file left
    /// half written by a failed write is removed. The file and its directory entry are synced to
    /// disk before this returns.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, CryptoError> {
        let path = path.into();
        let key = KeyBytes::random()?;
        let mut content = Zeroizing::new([0u8; HEX_KEY_LEN + 1]);
        hex::encode_to_slice(key.as_array(), &mut content[..HEX_KEY_LEN])
            .expect("a 64-byte buffer fits the hex form of 32 bytes");
        content[HEX_KEY_LEN] = b'\n';

        write_new_private_file(&path, &content[..])?;
        Ok(Self::new(path))
    }

    /// Reads and checks the key file.
    ///
    /// Fails with [`CryptoError::KeyFilePermissionsTooOpen`] if group or other users have any
    /// access to the file, and with [`CryptoError::KeyFileInvalid`] if it is not a regular file
    /// or its content is not 64 hexadecimal characters, optionally followed by "\n" or "\r\n".
    /// Messages never contain the file's content.
    pub fn load(&self) -> Result<MasterKey, CryptoError> {
        let path = &self.path;
        let mut file = open_private_file(path, "master key")?;

        let mut content = Zeroizing::new([0u8; MAX_KEY_FILE_LEN + 1]);
        let len = read_up_to(&mut file, &mut content[..])
            .map_err(|source| io_error("read", path, source))?;
        if len > MAX_KEY_FILE_LEN {
            return Err(invalid_file(path, format!("it is longer than {MAX_KEY_FILE_LEN} bytes")));
        }

        let key = decode_hex_key(strip_line_ending(&content[..len]))
            .map_err(|reason| invalid_file(path, reason))?;
        Ok(MasterKey::from_key_bytes(self.master_key_version, key))
    }
}

impl KeyProvider for KeyFileProvider {
    fn master_key(&self) -> Result<MasterKey, CryptoError> {
        self.load()
    }

    fn describe(&self) -> String {
        format!("key file {} (master key version {})", self.path.display(), self.master_key_version)
    }
}

/// Reads the master key from an environment variable that contains 64 hexadecimal characters,
/// ignoring surrounding whitespace.
///
/// Prefer [`KeyFileProvider`] where possible: child processes inherit the environment, and
/// processes of the same user can read it through `/proc/PID/environ`. This provider does not
/// remove the variable after reading it.
#[derive(Debug, Clone)]
pub struct EnvKeyProvider {
    name: String,
    master_key_version: u32,
}

impl EnvKeyProvider {
    /// Creates a provider that reads the variable `name`, with master key version 1.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), master_key_version: 1 }
    }

    /// Sets the version of the master key in this variable, which is recorded in every key it
    /// wraps.
    pub fn with_master_key_version(mut self, version: u32) -> Self {
        self.master_key_version = version;
        self
    }

    /// Parses the variable's value, where `None` means that the variable is not set.
    fn parse(&self, value: Option<OsString>) -> Result<MasterKey, CryptoError> {
        let Some(value) = value else {
            return Err(CryptoError::EnvVarMissing { name: self.name.clone() });
        };
        let value = Zeroizing::new(value.into_vec());
        let key = decode_hex_key(value.trim_ascii())
            .map_err(|reason| CryptoError::EnvVarInvalid { name: self.name.clone(), reason })?;
        Ok(MasterKey::from_key_bytes(self.master_key_version, key))
    }
}

impl KeyProvider for EnvKeyProvider {
    fn master_key(&self) -> Result<MasterKey, CryptoError> {
        self.parse(std::env::var_os(&self.name))
    }

    fn describe(&self) -> String {
        format!(
            "environment variable {} (master key version {})",
            self.name, self.master_key_version
        )
    }
}

/// Writes `content` to a new file at `path` with mode 0600.
///
/// Fails if anything exists at `path`, so an existing key is never overwritten. A file left
/// half written by a failed write is removed. The file and its directory entry are synced to
/// disk before this returns.
pub(crate) fn write_new_private_file(path: &Path, content: &[u8]) -> Result<(), CryptoError> {
    // `create_new` fails if anything, a symbolic link included, exists at `path`. The mode
    // applies from the moment the file exists, and the umask can only remove bits from it.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| io_error("create", path, source))?;
    if let Err(source) = file.write_all(content).and_then(|()| file.sync_all()) {
        drop(file);
        // The half-written file is removed so that it is not mistaken for a key. If removal
        // fails too, the write error is still the one to report.
        let _ = std::fs::remove_file(path);
        return Err(io_error("write", path, source));
    }
    drop(file);

    // Without this, a crash could lose the new directory entry, and with it the key, after
    // data had already been encrypted or signed under it.
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| io_error("sync the directory of", path, source))
}

/// Opens a key file for reading after checking that it is a regular file that only its
/// owner may access. `key` names the key for the permission error, such as "master key".
pub(crate) fn open_private_file(path: &Path, key: &'static str) -> Result<File, CryptoError> {
    // Checked before opening too, because opening a FIFO would block until a writer comes.
    let metadata = std::fs::metadata(path).map_err(|source| io_error("open", path, source))?;
    if !metadata.is_file() {
        return Err(not_regular_file(path));
    }
    let file = File::open(path).map_err(|source| io_error("open", path, source))?;

    // The checks use the opened file, so the file read is the file checked.
    let metadata = file.metadata().map_err(|source| io_error("inspect", path, source))?;
    if !metadata.is_file() {
        return Err(not_regular_file(path));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::KeyFilePermissionsTooOpen { path: path.to_owned(), mode, key });
    }
    Ok(file)
}

/// Decodes 64 hexadecimal characters, in either case, into a key. The error is a reason for a
/// message, and never contains the input.
fn decode_hex_key(text: &[u8]) -> Result<KeyBytes, String> {
    if text.is_empty() {
        return Err("it is empty".to_owned());
    }
    if text.len() != HEX_KEY_LEN {
        return Err(format!("it contains {} characters instead of {HEX_KEY_LEN}", text.len()));
    }
    let mut key = KeyBytes::zeroed();
    if hex::decode_to_slice(text, key.as_mut_array()).is_err() {
        // Drop would wipe it too, but this makes the wipe of a partial decode explicit.
        key.as_mut_array().zeroize();
        return Err("it contains a character that is not a hexadecimal digit".to_owned());
    }
    Ok(key)
}

/// Removes one trailing "\n" or "\r\n".
fn strip_line_ending(content: &[u8]) -> &[u8] {
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    content.strip_suffix(b"\r").unwrap_or(content)
}

/// Reads until `buffer` is full or the file ends, and returns the number of bytes read. Reads
/// into a fixed buffer, so no growing buffer leaves copies of the key behind.
pub(crate) fn read_up_to(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < buffer.len() {
        match file.read(&mut buffer[len..]) {
            Ok(0) => break,
            Ok(read) => len += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(len)
}

pub(crate) fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::KeyFileIo { action, path: path.to_owned(), source }
}

fn not_regular_file(path: &Path) -> CryptoError {
    invalid_file(path, "it is not a regular file".to_owned())
}

fn invalid_file(path: &Path, reason: String) -> CryptoError {
    CryptoError::KeyFileInvalid { path: path.to_owned(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs::Permissions;

    /// A 64-character key whose content the tests look for in error messages.
    const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn write_key_file(dir: &Path, content: &str, mode: u32) -> PathBuf {
        let path = dir.join("master.key");
        std::fs::write(&path, content).expect("write test key file");
        std::fs::set_permissions(&path, Permissions::from_mode(mode)).expect("set mode");
        path
    }

    #[test]
    fn created_key_file_is_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("master.key");

        let provider = KeyFileProvider::create(&path).expect("key file created");

        let metadata = std::fs::metadata(&path).expect("key file exists");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        let content = std::fs::read_to_string(&path).expect("key file readable");
        assert_eq!(content.len(), 65);
        assert!(content.ends_with('\n'));
        assert!(content[..64].bytes().all(|b| b.is_ascii_hexdigit()));
        let key = provider.load().expect("created key file loads");
        assert_eq!(hex::encode(key.bytes()), content[..64]);
        assert_eq!(key.version(), 1);
    }

    #[test]
    fn create_keeps_existing_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write_key_file(dir.path(), &format!("{KEY_HEX}\n"), 0o600);

        let error = KeyFileProvider::create(&path).expect_err("existing file kept");

        let message = error.to_string();
        assert!(matches!(&error, CryptoError::KeyFileIo { action: "create", .. }), "{error:?}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        let content = std::fs::read_to_string(&path).expect("key file readable");
        assert_eq!(content, format!("{KEY_HEX}\n"));
    }

    #[test]
    fn key_file_loads_with_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let line_endings = [("newline", "\n"), ("none", ""), ("CRLF", "\r\n")];

        for (name, ending) in line_endings {
            let path = write_key_file(dir.path(), &format!("{KEY_HEX}{ending}"), 0o600);
            let provider = KeyFileProvider::new(&path).with_master_key_version(4);
            let key = provider.master_key().expect("valid key file loads");
            assert_eq!(hex::encode(key.bytes()), KEY_HEX, "{name}");
            assert_eq!(key.version(), 4, "{name}");
        }
    }

    #[test]
    fn uppercase_key_file_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write_key_file(dir.path(), &format!("{}\n", KEY_HEX.to_uppercase()), 0o400);

        let key = KeyFileProvider::new(&path).load().expect("uppercase hex loads");

        assert_eq!(hex::encode(key.bytes()), KEY_HEX);
    }

    #[test]
    fn open_key_file_modes_are_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let modes = [0o644, 0o640, 0o604, 0o660, 0o601, 0o610];

        for mode in modes {
            let path = write_key_file(dir.path(), &format!("{KEY_HEX}\n"), mode);
            let error = KeyFileProvider::new(&path).load().expect_err("open mode rejected");
            let message = error.to_string();

            assert!(
                matches!(error, CryptoError::KeyFilePermissionsTooOpen { mode: found, .. } if found == mode),
                "{mode:o}: {error:?}"
            );
            assert!(message.contains("chmod 600"), "{mode:o}: {message}");
            assert!(message.contains(&format!("{mode:04o}")), "{mode:o}: {message}");
            assert!(message.contains(&path.display().to_string()), "{mode:o}: {message}");
            assert!(!message.contains(KEY_HEX), "{mode:o}: {message}");
        }
    }

    #[test]
    fn invalid_key_file_content_is_not_echoed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            ("63 hex characters", format!("{}\n", &KEY_HEX[..63]), "63 characters"),
            ("65 hex characters", format!("{KEY_HEX}0\n"), "65 characters"),
            ("non-hex character", format!("{}g\n", &KEY_HEX[..63]), "not a hexadecimal"),
            ("empty", String::new(), "empty"),
            ("two lines", format!("{KEY_HEX}\n\n"), "65 characters"),
            ("too long", format!("{KEY_HEX}{KEY_HEX}\n"), "longer than 66 bytes"),
        ];

        for (name, content, reason) in cases {
            let path = write_key_file(dir.path(), &content, 0o600);
            let error = KeyFileProvider::new(&path).load().expect_err("invalid content rejected");
            let message = error.to_string();

            assert!(matches!(error, CryptoError::KeyFileInvalid { .. }), "{name}: {error:?}");
            assert!(message.contains(reason), "{name}: {message}");
            assert!(message.contains(&path.display().to_string()), "{name}: {message}");
            assert!(!message.contains(&KEY_HEX[..16]), "{name}: {message}");
        }
    }

    #[test]
    fn missing_key_file_names_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.key");

        let error = KeyFileProvider::new(&path).load().expect_err("missing file fails");

        let message = error.to_string();
        assert!(matches!(error, CryptoError::KeyFileIo { action: "open", .. }), "{error:?}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn directory_is_not_a_key_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o700)).expect("set mode");

        let error = KeyFileProvider::new(dir.path()).load().expect_err("directory rejected");

        assert!(error.to_string().contains("not a regular file"), "{error}");
    }

    #[test]
    fn fifo_is_not_a_key_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("master.key");
        let status = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(status.success(), "mkfifo failed");

        let error = KeyFileProvider::new(&path).load().expect_err("FIFO rejected");

        assert!(error.to_string().contains("not a regular file"), "{error}");
    }

    #[test]
    fn describe_contains_no_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write_key_file(dir.path(), &format!("{KEY_HEX}\n"), 0o600);
        let file = KeyFileProvider::new(&path).with_master_key_version(2);
        let env = EnvKeyProvider::new("MEDCONNECT_TEST_DESCRIBE_KEY");

        assert_eq!(file.describe(), format!("key file {} (master key version 2)", path.display()));
        assert_eq!(
            env.describe(),
            "environment variable MEDCONNECT_TEST_DESCRIBE_KEY (master key version 1)"
        );
    }

    #[test]
    fn env_missing_names_variable() {
        let provider = EnvKeyProvider::new("MEDCONNECT_TEST_KEY_THAT_IS_NEVER_SET");

        let error = provider.master_key().expect_err("unset variable fails");

        let message = error.to_string();
        assert!(matches!(error, CryptoError::EnvVarMissing { .. }), "{error:?}");
        assert!(message.contains("MEDCONNECT_TEST_KEY_THAT_IS_NEVER_SET"), "{message}");
        assert!(message.contains("is not set"), "{message}");
    }

    #[test]
    fn env_invalid_names_variable_not_value() {
        let provider = EnvKeyProvider::new("MEDCONNECT_TEST_KEY");
        let cases = [
            ("bad hex", format!("{}zz", &KEY_HEX[..62]), "not a hexadecimal"),
            ("too short", KEY_HEX[..40].to_owned(), "40 characters"),
            ("empty", String::new(), "empty"),
        ];

        for (name, value, reason) in cases {
            let error = provider.parse(Some(OsString::from(&value))).expect_err("invalid value");
            let message = error.to_string();

            assert!(matches!(error, CryptoError::EnvVarInvalid { .. }), "{name}: {error:?}");
            assert!(message.contains("MEDCONNECT_TEST_KEY"), "{name}: {message}");
            assert!(message.contains(reason), "{name}: {message}");
            if !value.is_empty() {
                assert!(!message.contains(&value), "{name}: {message}");
                assert!(!message.contains(&value[..16]), "{name}: {message}");
            }
        }
    }

    #[test]
    fn env_key_loads_from_environment() {
        // A name no other test uses. Rust's standard library serializes its own environment
        // reads and writes, so setting it while other tests run is sound.
        let name = "MEDCONNECT_CRYPTO_TEST_ENV_KEY_LOADS";
        std::env::set_var(name, format!(" {KEY_HEX}\n"));
        let bad_name = "MEDCONNECT_CRYPTO_TEST_ENV_KEY_BAD_HEX";
        let bad_value = format!("{}xy", &KEY_HEX[..62]);
        std::env::set_var(bad_name, &bad_value);

        let key = EnvKeyProvider::new(name)
            .with_master_key_version(3)
            .master_key()
            .expect("valid variable loads");
        let error = EnvKeyProvider::new(bad_name).master_key().expect_err("bad hex fails");
        std::env::remove_var(name);
        std::env::remove_var(bad_name);

        assert_eq!(hex::encode(key.bytes()), KEY_HEX);
        assert_eq!(key.version(), 3);
        let message = error.to_string();
        assert!(message.contains(bad_name), "{message}");
        assert!(!message.contains(&bad_value), "{message}");
    }
}
