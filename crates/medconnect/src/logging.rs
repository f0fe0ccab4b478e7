//! Log output. Every line goes through the PHI sanitizer before it reaches standard error.

use std::io::{self, Write};

use medconnect_domain::sanitize::sanitize;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Level names `MEDCONNECT_LOG` accepts on their own.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Installs the global subscriber. The level comes from `MEDCONNECT_LOG`, else
/// `default_level`.
pub fn init(default_level: &str) {
    let filter = match std::env::var("MEDCONNECT_LOG") {
        Err(_) => EnvFilter::new(default_level),
        // A bare word parses as a target name, so `verbose` would silently log nothing;
        // only level names are accepted without `=`.
        Ok(value) if !value.contains('=') && !LEVELS.contains(&value.trim()) => {
            eprintln!(
                "warning: MEDCONNECT_LOG={value:?} is not a level; logging at {default_level}. \
                 Use one of {}, or a directive such as medconnect_lifecycle=debug",
                LEVELS.join(", ")
            );
            EnvFilter::new(default_level)
        }
        Ok(value) => EnvFilter::try_new(&value).unwrap_or_else(|_| {
            eprintln!(
                "warning: MEDCONNECT_LOG={value:?} is not a valid filter; logging at \
                 {default_level}. Use a level such as info or debug, or a directive such as \
                 medconnect_lifecycle=debug"
            );
            EnvFilter::new(default_level)
        }),
    };
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
