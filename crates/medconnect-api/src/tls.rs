//! TLS for the listener: rustls with the `ring` provider, TLS 1.2 and TLS 1.3 only.
//!
//! The certificate and key come from PEM files, or, when none are given, from a self-signed
//! development certificate for `localhost` and `127.0.0.1` that is generated on first start
//! into a folder of the data directory and reused afterwards.
//!
//! With a client CA file the server also requests a certificate from every client. A client that
//! sends one that the CA did not issue fails the handshake. A client that sends none still
//! connects, because people and operators authenticate with tokens alone. The verified
//! certificate's fingerprint reaches the handlers as [`ClientCertificate`], and
//! [`crate::auth`] binds storefront tokens to it.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::Extensions;
use chrono::{Datelike as _, Utc};
use medconnect_store::CertificateFingerprint;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::RootCertStore;
use sha2::{Digest as _, Sha256};

/// File name of the development certificate inside its folder.
pub const DEV_CERT_FILE: &str = "dev-cert.pem";
/// File name of the development certificate's private key inside its folder.
pub const DEV_KEY_FILE: &str = "dev-key.pem";
/// Names the development certificate is valid for.
pub const DEV_CERT_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// Days the development certificate is valid for.
const DEV_CERT_DAYS: i64 = 365;
/// Age at which a development certificate is replaced on start, a month before it expires.
const DEV_CERT_RENEW_AFTER: Duration = Duration::from_secs(335 * 24 * 60 * 60);

/// Source of the server's certificate and key.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files the operator provides.
    Files(TlsFiles),
    /// A self-signed development certificate kept in this folder, created when missing.
    Development { dir: PathBuf },
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server certificate first, then any intermediate certificates.
    pub cert: PathBuf,
    /// The private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// Errors loading or creating the server certificate. None of them contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("reading {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The certificate file contains no usable PEM certificate.
    #[error(
        "certificate file {} contains no PEM certificate (-----BEGIN CERTIFICATE-----): pass \
         the server certificate, followed by its intermediates, in PEM",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    /// The key file contains no usable PEM private key. The parser's own message is left out
    /// because it can quote a line of the key.
    #[error(
        "key file {} contains no PEM private key: pass a PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key \
         in PEM",
        path.display()
    )]
    NoKey { path: PathBuf },
    /// rustls rejected the certificate or key, for example a key that does not match the
    /// certificate.
    #[error("the certificate {} and key {} are not usable: {source}", cert.display(), key.display())]
    Rejected { cert: PathBuf, key: PathBuf, source: rustls::Error },
    /// Generating the development certificate failed.
    #[error("generating the development certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing the development certificate or its folder failed.
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// The client CA file contains no usable PEM certificate.
    #[error(
        "client CA file {} contains no PEM certificate (-----BEGIN CERTIFICATE-----): pass the \
         certificates of the CAs that issue Storefront client certificates, in PEM",
        path.display()
    )]
    NoClientCa { path: PathBuf },
    /// A certificate of the client CA file cannot serve as a trust anchor.
    #[error(
        "client CA file {}: certificate {index} is not a usable CA certificate: {source}",
        path.display()
    )]
    ClientCaRejected { path: PathBuf, index: usize, source: rustls::Error },
    /// The client certificate file contains no usable PEM certificate.
    #[error(
        "client certificate file {} contains no PEM certificate (-----BEGIN CERTIFICATE-----): \
         pass the Storefront's client certificate in PEM; its private key is not needed",
        path.display()
    )]
    NoClientCertificate { path: PathBuf },
    /// rustls could not build the client certificate verifier from the client CA file.
    #[error("client CA file {}: {source}", path.display())]
    ClientVerifier { path: PathBuf, source: VerifierBuilderError },
}

/// A rustls server configuration with what the log reports about its certificate.
pub struct LoadedTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate file in use.
    pub cert_path: PathBuf,
    /// SHA-256 of the server certificate's DER bytes, as lowercase hex pairs joined by `:`.
    pub fingerprint: String,
    /// Whether a development certificate was generated during this load.
    pub generated: bool,
    /// Number of CA certificates that client certificates are verified against; 0 when the
    /// server requests no client certificate.
    pub client_cas: usize,
}

/// The verified client certificate of the connection a request came over. The server puts an
/// `Option<ClientCertificate>` into the extensions of every request: None when the client
/// sent no certificate or the server has no client CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate {
    /// SHA-256 of the client's leaf certificate in DER.
    pub sha256: CertificateFingerprint,
}

impl ClientCertificate {
    /// Returns the client certificate that the server recorded in a request's extensions.
    pub fn of_request(extensions: &Extensions) -> Option<ClientCertificate> {
        extensions.get::<Option<ClientCertificate>>().copied().flatten()
    }

    /// Returns the leaf certificate of a completed handshake, which rustls has verified
    /// against the client CAs, or None when the client sent none.
    pub fn of_connection(connection: &rustls::ServerConnection) -> Option<ClientCertificate> {
        let leaf = connection.peer_certificates()?.first()?;
        Some(ClientCertificate { sha256: CertificateFingerprint::of_der(leaf.as_ref()) })
    }
}

/// Loads the certificate and key from `source` and builds the server configuration, without
/// client certificates. A development certificate is created first when its files are
/// missing or near expiry.
pub fn load(source: &TlsSource) -> Result<LoadedTls, TlsError> {
    load_with_client_ca(source, None)
}

/// Loads the certificate and key as [`load`] does and, with `client_ca`, verifies client
/// certificates against the CA certificates in that PEM file.
pub fn load_with_client_ca(
    source: &TlsSource,
    client_ca: Option<&Path>,
) -> Result<LoadedTls, TlsError> {
    let client_roots = client_ca.map(read_client_roots).transpose()?;
    let client_cas = client_roots.as_ref().map_or(0, |roots| roots.len());
    let (files, generated) = match source {
        TlsSource::Files(files) => {
            warn_if_key_readable_by_others(&files.key);
            (files.clone(), false)
        }
        TlsSource::Development { dir } => ensure_dev_certificate(dir)?,
    };
    let chain = read_certificates(&files.cert)?;
    let key = read_key(&files.key)?;
    let fingerprint = fingerprint(&chain[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match (client_roots, client_ca) {
        (Some(roots), Some(path)) => {
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = builder
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::ClientVerifier { path: path.to_owned(), source })?;
            Some(verifier)
        }
        _ => None,
    };
    let config = server_config(provider, chain, key, verifier).map_err(|source| {
        TlsError::Rejected { cert: files.cert.clone(), key: files.key.clone(), source }
    })?;
    Ok(LoadedTls {
        config: Arc::new(config),
        cert_path: files.cert,
        fingerprint,
        generated,
        client_cas,
    })
}

/// Builds a server configuration that accepts TLS 1.3 and TLS 1.2 only, with the provider's
/// cipher suites (for `ring`, AEAD suites with forward secrecy), and offers HTTP/1.1 by ALPN.
/// With `client_verifier` the server requests a client certificate and checks it with that
/// verifier.
pub fn server_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Returns the fingerprint of the first certificate in a PEM file: the leaf, when the file
/// contains a chain. Other PEM sections, such as a private key, are skipped.
pub fn client_certificate_fingerprint(path: &Path) -> Result<CertificateFingerprint, TlsError> {
    let bytes = read_file("client certificate file", path)?;
    let no_certificate = || TlsError::NoClientCertificate { path: path.to_owned() };
    let leaf = match CertificateDer::pem_slice_iter(&bytes).next() {
        Some(Ok(leaf)) => leaf,
        Some(Err(_)) | None => return Err(no_certificate()),
    };
    // A section that is not X.509 could never match a handshake's certificate.
    rustls::server::ParsedCertificate::try_from(&leaf).map_err(|_| no_certificate())?;
    Ok(CertificateFingerprint::of_der(leaf.as_ref()))
}

/// Reads the CA certificates that client certificates must chain to.
fn read_client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let bytes = read_file("client CA file", path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NoClientCa { path: path.to_owned() })?;
    if certs.is_empty() {
        return Err(TlsError::NoClientCa { path: path.to_owned() });
    }
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|source| TlsError::ClientCaRejected {
            path: path.to_owned(),
            index: index + 1,
            source,
        })?;
    }
    Ok(roots)
}

/// Returns the SHA-256 fingerprint of a certificate as lowercase hex pairs joined by `:`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let pairs: Vec<String> = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    pairs.join(":")
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file("certificate file", path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NoCertificate { path: path.to_owned() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file("key file", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoKey { path: path.to_owned() })
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

/// Logs a warning when group or other users may read the TLS key. It is not an error,
/// because certificate tooling and secret mounts often deliver keys with such modes.
fn warn_if_key_readable_by_others(path: &Path) {
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:o}"),
                "the TLS key file is accessible to other users: run chmod 600 on it"
            );
        }
    }
}

/// Returns the development certificate files in `dir`, generating them when either is
/// missing or the certificate is close to expiry.
fn ensure_dev_certificate(dir: &Path) -> Result<(TlsFiles, bool), TlsError> {
    let files = TlsFiles { cert: dir.join(DEV_CERT_FILE), key: dir.join(DEV_KEY_FILE) };
    if files.key.is_file() && !needs_renewal(&files.cert) {
        return Ok((files, false));
    }
    create_private_dir(dir)?;
    let (cert_pem, key_pem) = generate_dev_certificate()?;
    // The key is written first, so a certificate file present on disk always has its key.
    write_file(&files.key, key_pem.as_bytes(), 0o600)?;
    write_file(&files.cert, cert_pem.as_bytes(), 0o644)?;
    Ok((files, true))
}

/// Returns whether the certificate file is missing or older than the renewal age.
fn needs_renewal(cert: &Path) -> bool {
    let modified = std::fs::metadata(cert).and_then(|metadata| metadata.modified());
    match modified {
        Ok(modified) => {
            SystemTime::now().duration_since(modified).is_ok_and(|age| age > DEV_CERT_RENEW_AFTER)
        }
        Err(_) => true,
    }
}

/// Generates a self-signed ECDSA P-256 certificate for [`DEV_CERT_NAMES`], valid from
/// yesterday for [`DEV_CERT_DAYS`] days, and returns the certificate and key as PEM.
fn generate_dev_certificate() -> Result<(String, String), TlsError> {
    let names: Vec<String> = DEV_CERT_NAMES.iter().map(|name| (*name).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names)?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, "medconnect development certificate");
    params.distinguished_name = subject;
    let today = Utc::now().date_naive();
    let from = today - chrono::Days::new(1);
    let until = today + chrono::Days::new(DEV_CERT_DAYS as u64);
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(until.year(), until.month() as u8, until.day() as u8);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// Writes `content` to `path` with `mode`, replacing the file, and syncs it to disk.
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write { path: path.to_owned(), source };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    // The mode given to open applies only to a new file, so an older file is narrowed too.
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(failed)?;
    file.write_all(content).and_then(|()| file.sync_all()).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_created_once_then_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls_dir = dir.path().join("tls");
        let source = TlsSource::Development { dir: tls_dir.clone() };

        let first = load(&source).expect("first load");
        assert!(first.generated);
        assert_eq!(first.cert_path, tls_dir.join(DEV_CERT_FILE));
        let key_mode =
            std::fs::metadata(tls_dir.join(DEV_KEY_FILE)).expect("key").permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&tls_dir).expect("dir").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let second = load(&source).expect("second load");
        assert!(!second.generated);
        assert_eq!(second.fingerprint, first.fingerprint);
    }

    #[test]
    fn dev_certificate_regenerated_without_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = TlsSource::Development { dir: dir.path().to_owned() };
        let first = load(&source).expect("first load");
        std::fs::remove_file(dir.path().join(DEV_KEY_FILE)).expect("remove key");
        let second = load(&source).expect("second load");
        assert!(second.generated);
        assert_ne!(second.fingerprint, first.fingerprint);
    }

    #[test]
    fn fingerprint_is_sha256_in_hex_pairs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let loaded = load(&TlsSource::Development { dir: dir.path().to_owned() }).expect("load");
        assert_eq!(loaded.fingerprint.len(), 32 * 3 - 1);
        assert!(loaded.fingerprint.split(':').all(|pair| pair.len() == 2
            && pair.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())));
    }

    #[test]
    fn key_file_errors_never_quote_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = load(&TlsSource::Development { dir: dir.path().to_owned() }).expect("load");
        let key = dir.path().join("broken-key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nsecretmaterial!!\n").expect("write");
        let files = TlsFiles { cert: dev.cert_path.clone(), key: key.clone() };
        let error = load(&TlsSource::Files(files)).err().expect("rejected");
        let message = error.to_string();
        assert!(matches!(error, TlsError::NoKey { .. }), "{message}");
        assert!(message.contains("broken-key.pem"), "{message}");
        assert!(!message.contains("secretmaterial"), "{message}");
    }

    #[test]
    fn certificate_file_without_pem_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = load(&TlsSource::Development { dir: dir.path().to_owned() }).expect("load");
        let cert = dir.path().join("not-a-cert.pem");
        std::fs::write(&cert, "hello\n").expect("write");
        let files = TlsFiles { cert, key: dir.path().join(DEV_KEY_FILE) };
        let error = load(&TlsSource::Files(files)).err().expect("rejected");
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        let _ = dev;
    }

    #[test]
    fn client_certificate_fingerprint_is_of_leaf() {
        let dir = tempfile::tempdir().expect("temp dir");
        let leaf = rcgen::generate_simple_self_signed(vec!["leaf.test".to_owned()]).expect("leaf");
        let other =
            rcgen::generate_simple_self_signed(vec!["other.test".to_owned()]).expect("other");
        let chain = dir.path().join("chain.pem");
        let pem =
            format!("{}{}{}", leaf.signing_key.serialize_pem(), leaf.cert.pem(), other.cert.pem());
        std::fs::write(&chain, pem).expect("write");
        let fingerprint = client_certificate_fingerprint(&chain).expect("fingerprint");
        assert_eq!(fingerprint, CertificateFingerprint::of_der(leaf.cert.der()));
        assert_eq!(fingerprint.to_string(), self::fingerprint(leaf.cert.der()));
    }

    #[test]
    fn client_certificate_file_without_certificate_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, rcgen::KeyPair::generate().expect("key").serialize_pem())
            .expect("write");
        let not_x509 = dir.path().join("not-x509.pem");
        std::fs::write(
            &not_x509,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for path in [key, not_x509] {
            let error = client_certificate_fingerprint(&path).expect_err("rejected");
            assert!(matches!(error, TlsError::NoClientCertificate { .. }), "{error}");
            assert!(!error.to_string().contains("PRIVATE KEY"), "{error}");
        }
    }

    #[test]
    fn client_ca_file_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = TlsSource::Development { dir: dir.path().join("tls") };
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let error = load_with_client_ca(&source, Some(&empty)).err().expect("rejected");
        assert!(matches!(error, TlsError::NoClientCa { .. }), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = load_with_client_ca(&source, Some(&missing)).err().expect("rejected");
        assert!(error.to_string().contains("client CA file"), "{error}");

        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).expect("ca");
        let two = dir.path().join("two.pem");
        std::fs::write(&two, format!("{}{}", ca.cert.pem(), ca.cert.pem())).expect("write");
        let loaded = load_with_client_ca(&source, Some(&two)).expect("loaded");
        assert_eq!(loaded.client_cas, 2);
        assert_eq!(load(&source).expect("loaded").client_cas, 0);
    }

    #[test]
    fn key_of_another_certificate_rejected() {
        let first = tempfile::tempdir().expect("temp dir");
        let second = tempfile::tempdir().expect("temp dir");
        load(&TlsSource::Development { dir: first.path().to_owned() }).expect("first");
        load(&TlsSource::Development { dir: second.path().to_owned() }).expect("second");
        let files = TlsFiles {
            cert: first.path().join(DEV_CERT_FILE),
            key: second.path().join(DEV_KEY_FILE),
        };
        let error = load(&TlsSource::Files(files)).err().expect("rejected");
        assert!(matches!(error, TlsError::Rejected { .. }), "{error}");
    }
}
