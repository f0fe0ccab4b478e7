//! Support for tests (feature `testing`): a small blocking HTTPS client, one request per
//! connection over rustls, trusting exactly the certificate it is given; a server on a test
//! store ([`server`]); and the search for PHI in captured logs and audit entries ([`phi`]).

pub mod phi;
pub mod server;

pub use server::{TestServer, TestServerOptions};

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, StreamOwned};

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
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem).expect("reading the test CA file") {
            roots.add(cert.expect("parsing the test CA file")).expect("adding the test CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
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

    /// Sends one request with extra `headers`, `Connection: close`, and a JSON content type.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let mut stream = self.connect()?;
        let extra: String =
            headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        // A server that rejects the body early may close before reading all of it; the
        // response it sent is still worth reading.
        let _ = stream.write_all(body).and_then(|()| stream.flush());
        let raw = read_until_closed(stream)?;
        parse_response(&raw)
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
