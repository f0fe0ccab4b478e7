//! Log output. Every line goes through the PHI sanitizer before it reaches standard error.

use std::io::{self, Write};

use medconnect_domain::sanitize::sanitize;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. The level comes from `MEDCONNECT_LOG` (default `warn`).
pub fn init() {
    let filter =
        EnvFilter::try_from_env("MEDCONNECT_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(SanitizingStderr)
        .init();
}

/// A writer factory whose writers sanitize each formatted event.
struct SanitizingStderr;

impl<'a> MakeWriter<'a> for SanitizingStderr {
    type Writer = SanitizingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        SanitizingWriter { buffer: Vec::new() }
    }
}

/// Buffers one event and writes it sanitized when dropped, so a line is never split across
/// two sanitizer calls.
struct SanitizingWriter {
    buffer: Vec<u8>,
}

impl Write for SanitizingWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SanitizingWriter {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let mut stderr = io::stderr().lock();
        let _ = stderr.write_all(sanitize(&text).as_bytes());
    }
}
