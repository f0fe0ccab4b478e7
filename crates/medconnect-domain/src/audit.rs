//! The audit entry model, its hash chain and chain verification.
//!
//! Each entry is serialized to a canonical JSON body that includes its sequence number and
//! the hash of the entry before it. The entry's hash is SHA-256 over a domain tag, the
//! previous hash and the body, so editing, removing or reordering any stored entry breaks the
//! chain at that entry. Every text field is passed through [`crate::sanitize::sanitize`]
//! before it is hashed, so no PHI can reach the log through this type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::TenantId;
use crate::model::Category;
use crate::policy::Rule;
use crate::sanitize::sanitize;

/// Version of the body format. Bodies written with version 1 must verify forever.
pub const BODY_FORMAT_VERSION: u32 = 1;

/// The previous-hash value of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Result of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Skipped,
    /// The record a read asked for does not exist in the caller's tenant: missing, or
    /// another tenant's, which the caller must not be able to tell apart.
    NotFound,
}

/// Amounts one disposal destroyed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroyed {
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Proof of one disposal, carried by its audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisposalReceipt {
    pub category: Category,
    /// Opaque id of the disposed record (a patient id for patient records and profiles).
    pub record_id: String,
    pub rule: Rule,
    pub retention_until: DateTime<Utc>,
    pub policy_version: String,
    pub destroyed: Destroyed,
    /// SHA-256 over the destroyed rows and file contents, in the order they were destroyed.
    pub digest: String,
    /// Ids of the data keys destroyed with the records (crypto-shredding). Receipts written
    /// before encryption at rest have none, and their stored bodies omit the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys_destroyed: Vec<String>,
}

/// An audit event before it is stored. Build it, then hand it to the store, which assigns
/// the sequence number, time and chain hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub actor: String,
    pub action: String,
    pub tenant_id: Option<TenantId>,
    pub subjects: Vec<String>,
    pub outcome: Outcome,
    pub detail: String,
    pub receipt: Option<DisposalReceipt>,
}

impl AuditEvent {
    /// Starts a successful event with no tenant, subjects or detail.
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        AuditEvent {
            actor: actor.into(),
            action: action.into(),
            tenant_id: None,
            subjects: Vec::new(),
            outcome: Outcome::Success,
            detail: String::new(),
            receipt: None,
        }
    }

    pub fn tenant(mut self, tenant_id: TenantId) -> Self {
        self.tenant_id = Some(tenant_id);
        self
    }

    pub fn subject(mut self, id: impl ToString) -> Self {
        self.subjects.push(id.to_string());
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn receipt(mut self, receipt: DisposalReceipt) -> Self {
        self.receipt = Some(receipt);
        self
    }

    /// Builds the body to store, sanitizing every text field.
    pub fn into_body(
        self,
        seq: i64,
        at: DateTime<Utc>,
        simulated_clock: bool,
        prev_hash: &str,
    ) -> AuditBody {
        AuditBody {
            format: BODY_FORMAT_VERSION,
            seq,
            at,
            simulated_clock,
            actor: sanitize(&self.actor),
            action: sanitize(&self.action),
            tenant_id: self.tenant_id,
            subjects: self.subjects.iter().map(|s| sanitize(s)).collect(),
            outcome: self.outcome,
            detail: sanitize(&self.detail),
            // The policy version is not sanitized: `Policy::from_toml` restricts the label to
            // letters, digits and `._-`, and a label like 2026-04-01 would read as a date.
            receipt: self.receipt.map(|mut receipt| {
                receipt.record_id = sanitize(&receipt.record_id);
                receipt
            }),
            prev_hash: prev_hash.to_owned(),
        }
    }
}

/// The stored, hashed form of an audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBody {
    pub format: u32,
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// True when the store runs on a simulated clock, so `at` is not real time.
    pub simulated_clock: bool,
    pub actor: String,
    pub action: String,
    pub tenant_id: Option<TenantId>,
    pub subjects: Vec<String>,
    pub outcome: Outcome,
    pub detail: String,
    pub receipt: Option<DisposalReceipt>,
    pub prev_hash: String,
}

impl AuditBody {
    /// Serializes the body in its canonical form: struct field order, no extra whitespace.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).expect("audit bodies always serialize")
    }
}

/// Computes an entry's hash from the previous hash and its canonical body.
pub fn chain_hash(prev_hash: &str, canonical_body: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"medconnect-audit-v1\n");
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_body.as_bytes());
    hex::encode(hasher.finalize())
}

/// One audit row as read back from storage. An export line of type `entry` carries these
/// fields as they are stored, `body` byte for byte, because the hashes cover it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEntry {
    pub seq: i64,
    /// The `at` column, kept beside the body for queries.
    pub at: String,
    /// The `tenant_id` column, kept beside the body for queries.
    pub tenant_id: Option<String>,
    pub action: String,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The kind of damage verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Breach {
    /// The entry's content no longer matches its hash.
    Altered,
    /// One or more entries before this one are missing.
    Removed,
    /// The entry is intact but no longer follows the entry it was written after.
    Reordered,
    /// Entries after the last one present were removed.
    Truncated,
    /// A checkpoint's signature does not verify, or another key signed it.
    Signature,
    /// Entries after the last signed checkpoint are covered by no signature (export only).
    Unsigned,
    /// The export file is not in the expected format, or its header does not match it.
    Malformed,
}

/// The result of verifying the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyReport {
    pub ok: bool,
    pub entries: u64,
    /// Sequence number of the first entry present: 1, or the entry after the checkpoint kept
    /// when retention last removed old entries.
    pub first_seq: Option<i64>,
    pub head_seq: Option<i64>,
    pub head_hash: Option<String>,
    /// Sequence number of the first damaged entry.
    pub first_bad_seq: Option<i64>,
    pub breach: Option<Breach>,
    /// Number of signed checkpoints found.
    pub checkpoints: u64,
    /// True when checkpoint signatures were checked against a public key.
    pub signatures_checked: bool,
    /// Sequence number of the latest checkpoint that matched its entry.
    pub signed_seq: Option<i64>,
    /// Sequence number of the checkpoint that failed, when a checkpoint failed.
    pub bad_checkpoint: Option<i64>,
    pub message: String,
}

impl VerifyReport {
    /// Marks the report as failed at an entry or a checkpoint.
    pub(crate) fn fail(
        &mut self,
        breach: Breach,
        first_bad_seq: Option<i64>,
        bad_checkpoint: Option<i64>,
        message: String,
    ) {
        self.ok = false;
        self.breach = Some(breach);
        self.first_bad_seq = first_bad_seq;
        self.bad_checkpoint = bad_checkpoint;
        self.message = message;
    }
}

/// Incrementally verifies a chain fed in sequence order.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    recent_hashes: Vec<String>,
    entries: u64,
    first_seq: Option<i64>,
    failure: Option<(i64, Breach, String)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::from_checkpoint(0, GENESIS_HASH)
    }
}

impl ChainVerifier {
    /// Starts after entry `seq` whose hash is `hash`, as taken from a trusted checkpoint, so
    /// the next entry must be `seq + 1` and link to `hash`. The default starts at entry 1.
    pub fn from_checkpoint(seq: i64, hash: &str) -> Self {
        ChainVerifier {
            expected_seq: seq + 1,
            prev_hash: hash.to_owned(),
            recent_hashes: Vec::new(),
            entries: 0,
            first_seq: None,
            failure: None,
        }
    }

    /// Returns true once an entry failed verification.
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Checks the next stored entry. After the first failure further entries are ignored.
    pub fn push(&mut self, entry: &StoredEntry) {
        if self.failure.is_some() {
            return;
        }
        self.entries += 1;
        self.first_seq.get_or_insert(entry.seq);
        if let Some((breach, message)) = self.check(entry) {
            self.failure = Some((entry.seq, breach, message));
            return;
        }
        self.recent_hashes.push(entry.hash.clone());
        if self.recent_hashes.len() > 64 {
            self.recent_hashes.remove(0);
        }
        self.prev_hash = entry.hash.clone();
        self.expected_seq = entry.seq + 1;
    }

    fn check(&self, entry: &StoredEntry) -> Option<(Breach, String)> {
        let seq = entry.seq;
        if chain_hash(&entry.prev_hash, &entry.body) != entry.hash {
            return Some((
                Breach::Altered,
                format!("entry {seq} was altered: its content does not match its hash"),
            ));
        }
        let body: AuditBody = match serde_json::from_str(&entry.body) {
            Ok(body) => body,
            Err(_) => {
                return Some((
                    Breach::Altered,
                    format!("entry {seq} was altered: its body is not valid JSON"),
                ))
            }
        };
        let at = crate::time::format_instant(body.at);
        let tenant = body.tenant_id.map(|id| id.to_string());
        if at != entry.at || tenant != entry.tenant_id {
            return Some((
                Breach::Altered,
                format!(
                    "entry {seq} was altered: its time or tenant column differs from its content"
                ),
            ));
        }
        if body.seq != seq || body.action != entry.action || body.prev_hash != entry.prev_hash {
            return Some((
                Breach::Reordered,
                format!(
                    "entry {seq} was moved: its stored position does not match its signed content"
                ),
            ));
        }
        if seq > self.expected_seq {
            let missing = self.expected_seq;
            return Some((
                Breach::Removed,
                format!(
                    "entry {missing} was removed (the chain jumps from {} to {seq})",
                    missing - 1
                ),
            ));
        }
        if entry.prev_hash != self.prev_hash {
            if self.recent_hashes.contains(&entry.prev_hash) {
                return Some((Breach::Reordered, format!("entry {seq} is out of order: it follows an earlier entry than the one before it")));
            }
            return Some((
                Breach::Removed,
                format!(
                    "entry {seq} does not follow entry {}: an entry was removed or replaced",
                    seq - 1
                ),
            ));
        }
        None
    }

    /// Finishes verification. `recorded_head` is the head sequence number and hash the store
    /// recorded when it last appended, which detects removal of entries at the end.
    pub fn finish(self, recorded_head: Option<(i64, String)>) -> VerifyReport {
        let mut report = self.finish_chain();
        if !report.ok {
            return report;
        }
        let head_seq = report.head_seq.unwrap_or(0);
        match recorded_head {
            None => {
                let message = "the recorded head of the log is missing although the log has \
                               entries: entries may have been cut from the end"
                    .to_owned();
                report.fail(Breach::Truncated, Some(head_seq + 1), None, message);
            }
            Some((recorded_seq, _)) if recorded_seq > head_seq => {
                let message = format!(
                    "entries {} to {recorded_seq} were removed from the end of the log",
                    head_seq + 1
                );
                report.fail(Breach::Truncated, Some(head_seq + 1), None, message);
            }
            Some((recorded_seq, recorded_hash))
                if recorded_seq == head_seq
                    && Some(&recorded_hash) != report.head_hash.as_ref() =>
            {
                let message =
                    format!("entry {head_seq} was altered: it does not match the recorded head");
                report.fail(Breach::Altered, Some(head_seq), None, message);
            }
            Some(_) => {}
        }
        report
    }

    /// Finishes verification without a recorded head, for a log whose end is vouched for
    /// otherwise, such as an export whose last entry a signed checkpoint covers.
    pub fn finish_chain(self) -> VerifyReport {
        let head_seq = if self.entries == 0 { None } else { Some(self.expected_seq - 1) };
        let mut report = VerifyReport {
            ok: true,
            entries: self.entries,
            first_seq: self.first_seq,
            head_seq,
            head_hash: head_seq.map(|_| self.prev_hash.clone()),
            message: format!("audit chain intact: {} entries", self.entries),
            ..VerifyReport::default()
        };
        if let Some((seq, breach, message)) = self.failure {
            report.fail(breach, Some(seq), None, message);
        } else if self.entries == 0 {
            let message = "the audit log is empty, but every store writes an entry when it is \
                           created: the log was cut"
                .to_owned();
            report.fail(Breach::Truncated, Some(self.expected_seq), None, message);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_instant;

    fn chain(count: i64) -> Vec<StoredEntry> {
        let at = parse_instant("2026-12-04T10:00:00Z").expect("instant");
        let mut prev = GENESIS_HASH.to_owned();
        let mut entries = Vec::new();
        for seq in 1..=count {
            let body = AuditEvent::new("operator", "test.event")
                .detail(format!("event {seq}"))
                .into_body(seq, at, false, &prev)
                .to_canonical_json();
            let hash = chain_hash(&prev, &body);
            entries.push(StoredEntry {
                seq,
                at: "2026-12-04T10:00:00Z".into(),
                tenant_id: None,
                action: "test.event".into(),
                body,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            });
            prev = hash;
        }
        entries
    }

    fn verify(entries: &[StoredEntry], head: Option<(i64, String)>) -> VerifyReport {
        let mut verifier = ChainVerifier::default();
        entries.iter().for_each(|e| verifier.push(e));
        verifier.finish(head)
    }

    fn head_of(entries: &[StoredEntry]) -> Option<(i64, String)> {
        entries.last().map(|e| (e.seq, e.hash.clone()))
    }

    #[test]
    fn intact_chain_verifies() {
        let entries = chain(5);
        let report = verify(&entries, head_of(&entries));
        assert!(report.ok, "{}", report.message);
        assert_eq!(report.entries, 5);
        assert_eq!(report.head_seq, Some(5));
    }

    #[test]
    fn edited_body_is_altered() {
        let mut entries = chain(5);
        let head = head_of(&entries);
        entries[2].body = entries[2].body.replace("event 3", "event 9");
        let report = verify(&entries, head);
        assert_eq!(report.breach, Some(Breach::Altered));
        assert_eq!(report.first_bad_seq, Some(3));
    }

    #[test]
    fn deleted_entry_is_removed() {
        let mut entries = chain(5);
        let head = head_of(&entries);
        entries.remove(1);
        let report = verify(&entries, head);
        assert_eq!(report.breach, Some(Breach::Removed));
        assert_eq!(report.first_bad_seq, Some(3));
        assert!(report.message.contains("entry 2 was removed"), "{}", report.message);
    }

    #[test]
    fn swapped_entries_are_reordered() {
        let mut entries = chain(5);
        let head = head_of(&entries);
        // Rows keep their sequence numbers; their contents trade places.
        let (second, third) = (entries[1].clone(), entries[2].clone());
        entries[1] = StoredEntry { seq: 2, ..third };
        entries[2] = StoredEntry { seq: 3, ..second };
        let report = verify(&entries, head);
        assert_eq!(report.breach, Some(Breach::Reordered));
        assert_eq!(report.first_bad_seq, Some(2));
    }

    #[test]
    fn missing_head_is_truncated() {
        let entries = chain(3);
        let report = verify(&entries, None);
        assert_eq!(report.breach, Some(Breach::Truncated));
    }

    #[test]
    fn edited_index_column_is_altered() {
        let mut entries = chain(3);
        let head = head_of(&entries);
        entries[1].at = "2020-01-01T00:00:00Z".into();
        let report = verify(&entries, head);
        assert_eq!(report.breach, Some(Breach::Altered));
        assert_eq!(report.first_bad_seq, Some(2));
    }

    #[test]
    fn removed_tail_is_truncated() {
        let mut entries = chain(5);
        let head = head_of(&entries);
        entries.truncate(3);
        let report = verify(&entries, head);
        assert_eq!(report.breach, Some(Breach::Truncated));
        assert_eq!(report.first_bad_seq, Some(4));
    }

    #[test]
    fn event_text_is_sanitized_before_hashing() {
        let at = parse_instant("2026-12-04T10:00:00Z").expect("instant");
        let body = AuditEvent::new("operator", "note")
            .detail("called Alice368 Gleason633 at (402) 555-0123")
            .into_body(1, at, false, GENESIS_HASH);
        assert!(!body.detail.contains("Alice368"), "{}", body.detail);
        assert!(!body.detail.contains("555-0123"), "{}", body.detail);
    }
}
