//! Searches what the tests capture for PHI: the log lines of the process and the audit
//! entries of a store.
//!
//! A test fixture calls [`capture_logs`] before it starts a server, which sends every
//! `tracing` event of the test process (TRACE for MedConnect's crates, DEBUG for the rest)
//! to one buffer. When the fixture ends, it calls [`assert_no_phi`] with the profiles it
//! imported and the store's audit entries. Because every fixture checks the whole buffer,
//! the last one to end in a test binary has checked the log lines of all its tests.
//!
//! A finding names the kind of value and the position of the line, never the value, so a
//! failing test prints no PHI either.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use medconnect_domain::model::NewPatientProfile;
use medconnect_store::AuditRecord;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Values shorter than this, such as a two-letter state or a sex, also occur in text that is
/// not PHI, so they are not searched.
const MIN_VALUE_CHARS: usize = 5;

/// The kind of a PHI value, as a finding reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhiKind {
    GivenName,
    FamilyName,
    Email,
    Phone,
    Address,
    Ssn,
    /// Free text that a patient or provider wrote, such as a consultation's reason.
    FreeText,
}

/// The PHI values of a set of patient profiles.
#[derive(Default)]
pub struct PhiCorpus {
    values: Vec<(PhiKind, String)>,
}

/// One PHI value found in captured text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: PhiKind,
    /// The place of the finding: `log line N` or `audit entry SEQ`.
    pub place: String,
}

impl PhiCorpus {
    pub fn new() -> Self {
        PhiCorpus::default()
    }

    /// Returns the names, contacts, street addresses and SSNs of the Synthea sample patients
    /// in `shared/data/synthea`, beside the repository.
    pub fn synthea_sample() -> Self {
        let (batch, _) = medconnect_import::synthea::read_dir(
            &synthea_sample_dir(),
            &medconnect_import::synthea::ReadOptions::default(),
        )
        .expect("reading the Synthea sample");
        let mut corpus = PhiCorpus::new();
        for profile in &batch.patients {
            corpus.add_profile(profile);
        }
        corpus
    }

    /// Adds the names, email, phone, street address and SSN of a profile.
    pub fn add_profile(&mut self, profile: &NewPatientProfile) {
        self.add(PhiKind::GivenName, &profile.given_name);
        self.add(PhiKind::FamilyName, &profile.family_name);
        self.add(PhiKind::Address, &profile.address_line);
        for (kind, value) in [
            (PhiKind::Email, &profile.email),
            (PhiKind::Phone, &profile.phone),
            (PhiKind::Ssn, &profile.ssn),
        ] {
            if let Some(value) = value {
                self.add(kind, value);
            }
        }
    }

    /// Adds one value; values shorter than five characters are ignored.
    pub fn add(&mut self, kind: PhiKind, value: &str) {
        let value = value.trim();
        if value.chars().count() >= MIN_VALUE_CHARS {
            self.values.push((kind, value.to_owned()));
        }
    }

    /// Returns how many values are searched.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Returns the kinds of PHI values that occur in `text`.
    pub fn find(&self, text: &str) -> Vec<PhiKind> {
        let mut kinds: Vec<PhiKind> = self
            .values
            .iter()
            .filter(|(_, value)| text.contains(value.as_str()))
            .map(|(kind, _)| *kind)
            .collect();
        kinds.dedup();
        kinds
    }

    /// Searches every captured log line and the given audit entries.
    pub fn scan(&self, logs: &str, audit: &[AuditRecord]) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (index, line) in logs.lines().enumerate() {
            for kind in self.find(line) {
                findings.push(Finding { kind, place: format!("log line {}", index + 1) });
            }
        }
        for entry in audit {
            for kind in self.find(&entry.body.to_string()) {
                findings.push(Finding { kind, place: format!("audit entry {}", entry.seq) });
            }
        }
        findings
    }
}

/// Returns the folder of the Synthea sample export.
pub fn synthea_sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea")
}

/// The log lines captured in this process.
static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<()> = OnceLock::new();

/// A writer that appends to [`CAPTURED`].
struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CaptureWriter {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter
    }
}

/// Sends every `tracing` event of this process to the capture buffer, from now on. Safe to
/// call from every fixture; only the first call installs the subscriber. Fails the test when
/// another global subscriber is already installed, because its events would not be searched.
pub fn capture_logs() {
    INSTALLED.get_or_init(|| {
        let filter = EnvFilter::new(
            "debug,medconnect=trace,medconnect_api=trace,medconnect_store=trace,\
             medconnect_lifecycle=trace,medconnect_import=trace,medconnect_crypto=trace",
        );
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(CaptureWriter)
            .with_ansi(false)
            .try_init()
            .expect("no other tracing subscriber in a test process that captures logs");
    });
}

/// Returns the log text captured so far.
pub fn captured_logs() -> String {
    let captured = CAPTURED.lock().unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(&captured).into_owned()
}

/// Fails the test when a value of `corpus` occurs in a captured log line or in `audit`, naming
/// the kind and place of each finding but not the value. Checks that logs were captured at
/// all, so a broken capture cannot pass as a clean one.
pub fn assert_no_phi(corpus: &PhiCorpus, audit: &[AuditRecord]) {
    assert!(!corpus.is_empty(), "the PHI corpus is empty: nothing would be found");
    let logs = captured_logs();
    assert!(
        INSTALLED.get().is_some() && !logs.is_empty(),
        "no log lines captured: call capture_logs() before starting the server"
    );
    let findings = corpus.scan(&logs, audit);
    assert!(findings.is_empty(), "PHI found in captured output: {findings:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> NewPatientProfile {
        NewPatientProfile {
            given_name: "Alice368".into(),
            family_name: "Gleason633".into(),
            address_line: "406 Kohler Camp".into(),
            ssn: Some("999-49-3983".into()),
            email: Some("alice@example.test".into()),
            phone: Some("555-0100".into()),
            state: "NE".into(),
            ..NewPatientProfile::default()
        }
    }

    #[test]
    fn finds_each_kind_and_names_no_value() {
        let mut corpus = PhiCorpus::new();
        corpus.add_profile(&profile());
        assert_eq!(corpus.len(), 6);
        let logs = "ok line\nrequest for Gleason633 failed\nsent to alice@example.test\n";
        let findings = corpus.scan(logs, &[]);
        assert_eq!(
            findings,
            vec![
                Finding { kind: PhiKind::FamilyName, place: "log line 2".into() },
                Finding { kind: PhiKind::Email, place: "log line 3".into() },
            ]
        );
        assert!(!format!("{findings:?}").contains("Gleason633"));
    }

    #[test]
    fn searches_audit_entry_bodies() {
        let mut corpus = PhiCorpus::new();
        corpus.add_profile(&profile());
        let entry = AuditRecord {
            seq: 42,
            hash: String::new(),
            body: serde_json::json!({ "detail": "lives at 406 Kohler Camp" }),
        };
        let findings = corpus.scan("", &[entry]);
        assert_eq!(
            findings,
            vec![Finding { kind: PhiKind::Address, place: "audit entry 42".into() }]
        );
    }

    #[test]
    fn short_values_are_not_searched() {
        let mut corpus = PhiCorpus::new();
        corpus.add(PhiKind::GivenName, "Al");
        assert!(corpus.is_empty());
        assert!(corpus.scan("Al was here", &[]).is_empty());
    }

    #[test]
    fn synthea_sample_holds_names_and_addresses() {
        let corpus = PhiCorpus::synthea_sample();
        assert!(corpus.find("record of Alice368").contains(&PhiKind::GivenName));
        assert!(corpus.find("406 Kohler Camp").contains(&PhiKind::Address));
        assert!(corpus.find("999-49-3983").contains(&PhiKind::Ssn));
        assert!(corpus.find("patient 982192b6-6843-4011-ef46-32caaf87d8a9").is_empty());
    }
}
