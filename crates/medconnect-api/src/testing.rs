//! Support for tests (feature `testing`). [`HttpsClient`] is a small blocking HTTPS client
//! that sends one request per connection over rustls, trusts exactly the certificate it is
//! given and can offer a client certificate that [`TestCa`] issues. [`server`] runs a server
//! on a test store, and [`phi`] searches captured logs and audit entries for PHI.

pub mod phi;
pub mod server;

pub use server::{TestServer, TestServerOptions};

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medconnect_store::CertificateFingerprint;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, RootCertStore, StreamOwned,
};

/// How long a test waits for the server on one socket operation before failing.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one server that trusts only the certificate in a PEM file.
pub struct HttpsClient {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
}

/// A response: status, headers and the whole body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Returns the first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the body as JSON, failing the test with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.text()))
    }
}

impl HttpsClient {
    /// Creates a client that offers TLS 1.3 and TLS 1.2 and trusts the certificate in `ca_pem`.
    pub fn new(addr: SocketAddr, ca_pem: &Path) -> Self {
        HttpsClient::with_versions(
            addr,
            ca_pem,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }

    /// Creates a client that offers only `versions` and trusts the certificate in `ca_pem`.
    pub fn with_versions(
        addr: SocketAddr,
        ca_pem: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        HttpsClient::configured(addr, ca_pem, versions, None)
    }

    /// Creates a client that offers TLS 1.3 and TLS 1.2, trusts the certificate in `ca_pem`,
    /// and offers `client_cert` when the server requests a client certificate.
    pub fn with_client_certificate(
        addr: SocketAddr,
        ca_pem: &Path,
        client_cert: &ClientCertFiles,
    ) -> Self {
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        HttpsClient::configured(addr, ca_pem, &versions, Some(client_cert))
    }

    /// Creates a client that offers only `versions`, trusts the certificate in `ca_pem`, and
    /// offers `client_cert`, if any, when the server requests a client certificate.
    pub fn configured(
        addr: SocketAddr,
        ca_pem: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
        client_cert: Option<&ClientCertFiles>,
    ) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem).expect("reading the test CA file") {
            roots.add(cert.expect("parsing the test CA file")).expect("adding the test CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let chain = CertificateDer::pem_file_iter(&files.cert)
                    .expect("reading the client certificate")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("parsing the client certificate");
                let key = PrivateKeyDer::from_pem_file(&files.key).expect("reading the client key");
                builder.with_client_auth_cert(chain, key).expect("client certificate and key")
            }
        };
        HttpsClient { addr, config: Arc::new(config) }
    }

    /// Completes a TLS handshake and returns the negotiated version.
    pub fn handshake(&self) -> Result<ProtocolVersion, std::io::Error> {
        let mut stream = self.connect()?;
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        let version = stream.conn.protocol_version();
        version.ok_or_else(|| std::io::Error::other("no protocol version after the handshake"))
    }

    /// Sends a GET request and returns the response, failing the test on a transport error.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[]).unwrap_or_else(|error| panic!("GET {path}: {error}"))
    }

    /// Sends one request with `Connection: close` and reads the response to the end.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<HttpResponse> {
        self.request_with(method, path, &[], body)
    }

    /// Sends a GET request with `Authorization: Bearer TOKEN`.
    pub fn get_with_token(&self, path: &str, token: &str) -> HttpResponse {
        let authorization = format!("Bearer {token}");
        self.request_with("GET", path, &[("Authorization", &authorization)], b"")
            .unwrap_or_else(|error| panic!("GET {path}: {error}"))
    }

    /// Sends a POST request of `body` as JSON with `Authorization: Bearer TOKEN`, failing the
    /// test on a transport error.
    pub fn post_with_token(&self, path: &str, token: &str, body: &[u8]) -> HttpResponse {
        let authorization = format!("Bearer {token}");
        self.request_with("POST", path, &[("Authorization", &authorization)], body)
            .unwrap_or_else(|error| panic!("POST {path}: {error}"))
    }

    /// Sends one request with extra `headers`, `Connection: close`, and a JSON content type
    /// unless `headers` name another.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        self.request_typed(method, path, Some("application/json"), headers, body)
    }

    /// Sends one request with extra `headers`, `Connection: close`, and `content_type`, or no
    /// `Content-Type` header when it is None.
    pub fn request_typed(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        self.send(method, path, content_type, headers, body).map(|(_, response)| response)
    }

    /// Sends a GET request with `Authorization: Bearer TOKEN`, and returns the response with
    /// the kind of TLS handshake the connection made: full, or resumed from an earlier one.
    pub fn get_with_token_and_handshake(
        &self,
        path: &str,
        token: &str,
    ) -> (Option<HandshakeKind>, HttpResponse) {
        let authorization = format!("Bearer {token}");
        self.send("GET", path, Some("application/json"), &[("Authorization", &authorization)], b"")
            .unwrap_or_else(|error| panic!("GET {path}: {error}"))
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(Option<HandshakeKind>, HttpResponse)> {
        let mut stream = self.connect()?;
        let mut extra: String =
            headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
        let has_type = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if let Some(content_type) = content_type.filter(|_| !has_type) {
            extra.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        // A server that rejects the body early may close before reading all of it; the
        // response it sent is still worth reading.
        let _ = stream.write_all(body).and_then(|()| stream.flush());
        let handshake = stream.conn.handshake_kind();
        let raw = read_until_closed(stream)?;
        Ok((handshake, parse_response(&raw)?))
    }

    fn connect(&self) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let sock = TcpStream::connect(self.addr)?;
        sock.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        sock.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let conn =
            ClientConnection::new(Arc::clone(&self.config), name).map_err(std::io::Error::other)?;
        Ok(StreamOwned::new(conn, sock))
    }
}

/// Reads the decrypted bytes until the server closes the connection. Unlike reading through
/// the stream, this never writes, so request bytes the server refused to read (a rejected body)
/// cannot turn the read into a broken pipe.
fn read_until_closed(stream: StreamOwned<ClientConnection, TcpStream>) -> std::io::Result<Vec<u8>> {
    let StreamOwned { mut conn, mut sock } = stream;
    let mut raw = Vec::new();
    loop {
        match conn.read_tls(&mut sock) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error)
                if error.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() =>
            {
                break
            }
            Err(error) => return Err(error),
        }
        let state = conn.process_new_packets().map_err(std::io::Error::other)?;
        let mut plain = vec![0; state.plaintext_bytes_to_read()];
        conn.reader().read_exact(&mut plain)?;
        raw.extend_from_slice(&plain);
        if state.peer_has_closed() {
            break;
        }
    }
    Ok(raw)
}

/// Parses an HTTP/1.1 response with a `Content-Length` body, or a body that runs to the end.
fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| invalid("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| invalid("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let length = headers.iter().find(|(name, _)| name == "content-length");
    if let Some(length) = length.and_then(|(_, value)| value.parse::<usize>().ok()) {
        body.truncate(length);
    }
    Ok(HttpResponse { status, headers, body })
}

/// A client certificate and its key as PEM files, with the certificate's fingerprint.
#[derive(Debug, Clone)]
pub struct ClientCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the certificate in DER.
    pub sha256: CertificateFingerprint,
}

/// A certificate authority for tests, with its certificate in a PEM file, that issues client
/// certificates. Each CA has its own ECDSA P-256 key, so two CAs never verify each other's
/// certificates.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
    /// The CA certificate in PEM, for `--client-ca`.
    pub cert: PathBuf,
}

impl TestCa {
    /// Creates a CA named `name` and writes its certificate to `dir/NAME-ca.pem`.
    pub fn create(dir: &Path, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("CA parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).expect("writing the CA certificate");
        TestCa { issuer: rcgen::Issuer::new(params, key), dir: dir.to_owned(), cert: path }
    }

    /// Issues a client certificate for `name`, with the client authentication extended key
    /// usage, and writes it to `dir/NAME.pem` and its key to `dir/NAME-key.pem`.
    pub fn issue_client(&self, name: &str) -> ClientCertFiles {
        self.issue_client_with(name, |_| {})
    }

    /// Issues a client certificate for `name` that expired in 2000.
    pub fn issue_expired_client(&self, name: &str) -> ClientCertFiles {
        self.issue_client_with(name, |params| {
            params.not_before = rcgen::date_time_ymd(1999, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 1, 1);
        })
    }

    fn issue_client_with(
        &self,
        name: &str,
        adjust: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> ClientCertFiles {
        let mut params =
            rcgen::CertificateParams::new(vec![format!("{name}.test")]).expect("parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        adjust(&mut params);
        let key = rcgen::KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.issuer).expect("client certificate");
        let files = ClientCertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
            sha256: CertificateFingerprint::of_der(cert.der()),
        };
        std::fs::write(&files.cert, cert.pem()).expect("writing the client certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("writing the client key");
        files
    }
}
