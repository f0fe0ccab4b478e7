//! Signed checkpoints of the audit chain, and offline verification of an exported log.
//!
//! A checkpoint is an Ed25519 signature over the hash of one entry, the chain head when it
//! was signed. That hash commits to every entry before it, so a valid signature vouches for
//! the whole chain up to that entry. Someone who rewrites the database can recompute the
//! hashes, but cannot sign the new head without the private key, which never enters the
//! database. When retention removes old entries, the checkpoint at the last removed entry is
//! kept, and verification starts from it.
//!
//! This module contains the pure parts: the signed message ([`checkpoint_message`]), signature
//! checks against a public key ([`AuditPublicKey`]), the [`LogVerifier`] shared by the store
//! and by offline verification, and the export format ([`ExportLine`], [`verify_export`]).
//!
//! Verification lives here and uses `ring`, because checking an Ed25519 signature is a pure
//! function of public key, message and signature, so an auditor's verifier needs no store,
//! file or key provider. Signing needs the private key from a file and so lives in
//! `medconnect-crypto` (`AuditSigningKey`).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::audit::{Breach, ChainVerifier, StoredEntry, VerifyReport};
use crate::time::format_instant;

/// The first line of every signed checkpoint message. A new layout gets a new tag.
pub const CHECKPOINT_TAG: &str = "medconnect-audit-checkpoint-v1";

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Value of the `format` field of an export header.
pub const EXPORT_FORMAT: &str = "medconnect-audit-export";

/// The export format version this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// Returns the bytes a checkpoint signs, ASCII with `\n` between fields and none at the end:
///
/// ```text
/// medconnect-audit-checkpoint-v1\n{seq}\n{head_hash}\n{at}\n{entries}
/// ```
///
/// - `seq`: sequence number of the entry the checkpoint covers, in decimal.
/// - `head_hash`: that entry's hash as stored, 64 lowercase hex digits.
/// - `at`: when the checkpoint was signed, as stored: `YYYY-MM-DDTHH:MM:SSZ` (UTC).
/// - `entries`: how many entries the log held up to and including `seq` when it was signed,
///   in decimal. It is below `seq` once retention has removed older entries.
///
/// The fields are used exactly as stored, so a verifier rebuilds the message from a stored or
/// exported checkpoint without reformatting anything.
pub fn checkpoint_message(seq: i64, head_hash: &str, at: &str, entries: i64) -> Vec<u8> {
    format!("{CHECKPOINT_TAG}\n{seq}\n{head_hash}\n{at}\n{entries}").into_bytes()
}

/// An Ed25519 public key that verifies checkpoint signatures. It is public: printing it is
/// fine, and `DATA_DIR/audit-public.key` contains it as 64 hex digits for auditors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuditPublicKey([u8; PUBLIC_KEY_LEN]);

/// A public key that is not 64 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid audit public key: {reason}. It must be 64 hexadecimal digits, as \
     DATA_DIR/audit-public.key holds it"
)]
pub struct InvalidPublicKey {
    reason: String,
}

impl AuditPublicKey {
    pub fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        AuditPublicKey(bytes)
    }

    /// Parses 64 hex digits, ignoring surrounding whitespace such as a final newline.
    pub fn from_hex(text: &str) -> Result<Self, InvalidPublicKey> {
        let text = text.trim();
        if text.len() != 2 * PUBLIC_KEY_LEN {
            let reason = format!("it has {} characters instead of 64", text.len());
            return Err(InvalidPublicKey { reason });
        }
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidPublicKey {
            reason: "it contains a character that is not a hexadecimal digit".to_owned(),
        })?;
        Ok(AuditPublicKey(bytes))
    }

    /// Returns the key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Returns true when `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(message, signature).is_ok()
    }
}

impl fmt::Debug for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditPublicKey({})", self.to_hex())
    }
}

impl fmt::Display for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A signed checkpoint as stored in `audit_checkpoints` and written to an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Sequence number of the entry this checkpoint covers.
    pub seq: i64,
    /// Hash of that entry.
    pub head_hash: String,
    /// When it was signed, `YYYY-MM-DDTHH:MM:SSZ`.
    pub at: String,
    /// Entries the log held up to and including `seq` when it was signed.
    pub entries: i64,
    /// The signing key's public key, 64 hex digits.
    pub public_key: String,
    /// The Ed25519 signature of [`checkpoint_message`], 128 hex digits.
    pub signature: String,
}

impl Checkpoint {
    /// Builds a checkpoint from a signature made by `public_key` over [`Self::message_for`].
    pub fn new(
        seq: i64,
        head_hash: &str,
        at: DateTime<Utc>,
        entries: i64,
        public_key: &AuditPublicKey,
        signature: &[u8],
    ) -> Self {
        Checkpoint {
            seq,
            head_hash: head_hash.to_owned(),
            at: format_instant(at),
            entries,
            public_key: public_key.to_hex(),
            signature: hex::encode(signature),
        }
    }

    /// Returns the message a checkpoint of these values signs.
    pub fn message_for(seq: i64, head_hash: &str, at: DateTime<Utc>, entries: i64) -> Vec<u8> {
        checkpoint_message(seq, head_hash, &format_instant(at), entries)
    }

    /// Returns the message this checkpoint signs.
    pub fn message(&self) -> Vec<u8> {
        checkpoint_message(self.seq, &self.head_hash, &self.at, self.entries)
    }

    /// Checks that `key` signed this checkpoint. The error is the reason, for a report.
    pub fn check(&self, key: &AuditPublicKey) -> Result<(), String> {
        let seq = self.seq;
        if !self.public_key.eq_ignore_ascii_case(&key.to_hex()) {
            return Err(format!(
                "checkpoint {seq} was signed by another key ({}), not by the public key given \
                 ({key}): check that the right public key file was given",
                short(&self.public_key)
            ));
        }
        let mut signature = [0u8; SIGNATURE_LEN];
        let decoded = self.signature.len() == 2 * SIGNATURE_LEN
            && hex::decode_to_slice(&self.signature, &mut signature).is_ok();
        if !decoded || !key.verifies(&self.message(), &signature) {
            return Err(format!(
                "checkpoint {seq} has an invalid signature: the checkpoint (its sequence \
                 number, hash, time or entry count) or its signature was altered"
            ));
        }
        Ok(())
    }
}

/// Returns the first 16 characters of a hex value, enough to tell keys apart in a message.
fn short(hex_value: &str) -> String {
    let head: String = hex_value.chars().take(16).collect();
    format!("{head}...")
}

/// Action of the audit entry that records a retention cut.
pub const CUT_ACTION: &str = "audit.dispose";

/// Returns the subject that names a retention cut through entry `seq`, carried by the
/// `audit.dispose` entry so that verification can tell a real cut from deleted entries.
pub fn cut_subject(seq: i64) -> String {
    format!("audit-cut:{seq}")
}

/// Returns true when `entry`, an `audit.dispose` entry, names a cut through `anchor`.
fn names_cut(entry: &StoredEntry, anchor: i64) -> bool {
    let expected = cut_subject(anchor);
    serde_json::from_str::<crate::audit::AuditBody>(&entry.body)
        .is_ok_and(|body| body.subjects.contains(&expected))
}

/// Verifies a log fed in sequence order together with its checkpoints.
///
/// It extends [`ChainVerifier`] in three ways. When the first entry is not entry 1, the chain
/// starts from the checkpoint at the entry before it, which retention keeps when it removes
/// older entries, and a signed `audit.dispose` entry must name that cut. Every checkpoint must match the entry it covers. With a public key, every
/// checkpoint's signature must verify with that key.
#[derive(Debug)]
pub struct LogVerifier {
    chain: Option<ChainVerifier>,
    checkpoints: BTreeMap<i64, Checkpoint>,
    key: Option<AuditPublicKey>,
    anchor: Option<i64>,
    /// Whether an `audit.dispose` entry names the anchor as a retention cut.
    cut_recorded: bool,
    /// Whether a log that starts after entry 1 must show the cut that removed the rest.
    require_cut: bool,
    signed_seq: Option<i64>,
    failure: Option<(Breach, Option<i64>, Option<i64>, String)>,
}

impl LogVerifier {
    /// Starts verification with every checkpoint of the log. With `key`, each checkpoint's
    /// signature is checked here, before any entry.
    pub fn new(checkpoints: Vec<Checkpoint>, key: Option<AuditPublicKey>) -> Self {
        let mut verifier = LogVerifier {
            chain: None,
            checkpoints: BTreeMap::new(),
            key,
            anchor: None,
            cut_recorded: false,
            require_cut: true,
            signed_seq: None,
            failure: None,
        };
        for checkpoint in checkpoints {
            let seq = checkpoint.seq;
            if verifier.failure.is_none() {
                if verifier.checkpoints.contains_key(&seq) {
                    let message = format!("checkpoint {seq} appears twice");
                    verifier.failure = Some((Breach::Malformed, None, Some(seq), message));
                } else if let Some(Err(message)) = key.map(|key| checkpoint.check(&key)) {
                    verifier.failure = Some((Breach::Signature, None, Some(seq), message));
                }
            }
            verifier.checkpoints.insert(seq, checkpoint);
        }
        verifier
    }

    /// Trusts the checkpoint the entries start after, for checking only the entries written
    /// since a checkpoint the store itself signed. A full verification never does this.
    pub fn trusting_anchor(mut self) -> Self {
        self.require_cut = false;
        self
    }

    /// Checks the next entry. After the first failure further entries are ignored.
    pub fn push(&mut self, entry: &StoredEntry) {
        if self.failure.is_some() {
            return;
        }
        if self.chain.is_none() {
            let start = if entry.seq <= 1 {
                ChainVerifier::default()
            } else {
                let anchor = entry.seq - 1;
                // A checkpoint alone does not prove a retention cut: `finish` also requires the
                // signed `audit.dispose` entry that names this cut.
                let Some(checkpoint) = self.checkpoints.get(&anchor) else {
                    let message = format!(
                        "entries 1 to {anchor} are missing and no signed checkpoint at entry \
                         {anchor} vouches for entry {}: entries were removed from the start of \
                         the log",
                        entry.seq
                    );
                    self.failure = Some((Breach::Removed, Some(entry.seq), None, message));
                    return;
                };
                self.anchor = Some(anchor);
                ChainVerifier::from_checkpoint(anchor, &checkpoint.head_hash)
            };
            self.chain = Some(start);
        }
        let Some(chain) = self.chain.as_mut() else {
            return;
        };
        chain.push(entry);
        if chain.failed() {
            return;
        }
        if entry.action == CUT_ACTION && self.anchor.is_some_and(|anchor| names_cut(entry, anchor))
        {
            self.cut_recorded = true;
        }
        if let Some(checkpoint) = self.checkpoints.get(&entry.seq) {
            if checkpoint.head_hash != entry.hash {
                let seq = entry.seq;
                let message = format!(
                    "entry {seq} does not match signed checkpoint {seq}: the log was rewritten \
                     after the checkpoint was signed"
                );
                self.failure = Some((Breach::Altered, Some(seq), Some(seq), message));
                return;
            }
            self.signed_seq = Some(entry.seq);
        }
    }

    /// Finishes verification. A store passes the head it recorded; an export passes `None`
    /// and `require_signed_head`, because there the last checkpoint vouches for the end.
    pub fn finish(
        self,
        recorded_head: Option<Option<(i64, String)>>,
        require_signed_head: bool,
    ) -> VerifyReport {
        let chain = self.chain.unwrap_or_default();
        let mut report = match recorded_head {
            Some(head) => chain.finish(head),
            None => chain.finish_chain(),
        };
        report.checkpoints = self.checkpoints.len() as u64;
        report.signatures_checked = self.key.is_some();
        report.signed_seq = self.signed_seq;

        if let Some((breach, first_bad_seq, bad_checkpoint, message)) = self.failure {
            report.fail(breach, first_bad_seq, bad_checkpoint, message);
            return report;
        }
        if !report.ok {
            return report;
        }

        let first = report.first_seq.unwrap_or(1);
        let last = report.head_seq.unwrap_or(0);
        let anchor = self.anchor.unwrap_or(0);
        if self.require_cut && self.anchor.is_some() && !self.cut_recorded {
            let message = format!(
                "entries 1 to {anchor} are missing, and no `{CUT_ACTION}` entry records a \
                 retention cut at entry {anchor}: entries were removed from the start of the log"
            );
            report.fail(Breach::Removed, Some(anchor + 1), None, message);
            return report;
        }
        if let Some(seq) = self.checkpoints.keys().copied().find(|&seq| seq < anchor.max(1)) {
            let message = format!(
                "checkpoint {seq} covers entry {seq}, which precedes the log's first entry \
                 {first}: it does not belong to this log"
            );
            report.fail(Breach::Malformed, None, Some(seq), message);
            return report;
        }
        if let Some(seq) = self.checkpoints.keys().copied().find(|&seq| seq > last) {
            let message = format!(
                "checkpoint {seq} covers entry {seq}, but the log ends at entry {last}: entries \
                 {} to {seq} were cut from the end",
                last + 1
            );
            report.fail(Breach::Truncated, Some(last + 1), Some(seq), message);
            return report;
        }

        if require_signed_head && self.signed_seq != Some(last) {
            let message = match self.signed_seq.or(self.anchor) {
                Some(signed) => format!(
                    "entries {} to {last} follow the last signed checkpoint (entry {signed}), so \
                     no signature covers them: export again where the signing key is \
                     available, so that export signs the head",
                    signed + 1
                ),
                None => "the log has no signed checkpoint, so no signature covers it: export \
                         again where the signing key is available, so that export signs the \
                         head"
                    .to_owned(),
            };
            let from = self.signed_seq.or(self.anchor).map_or(first, |seq| seq + 1);
            report.fail(Breach::Unsigned, Some(from), None, message);
            return report;
        }
        report.message = intact_message(&report, self.key.as_ref());
        report
    }
}

fn intact_message(report: &VerifyReport, key: Option<&AuditPublicKey>) -> String {
    let first = report.first_seq.unwrap_or(1);
    let last = report.head_seq.unwrap_or(0);
    let mut message =
        format!("audit chain intact: {} entries (seq {first} to {last})", report.entries);
    if first > 1 {
        message.push_str(&format!(", starting after the signed checkpoint at entry {}", first - 1));
    }
    let count = match report.checkpoints {
        1 => "1 checkpoint".to_owned(),
        n => format!("{n} checkpoints"),
    };
    match (key, report.signed_seq) {
        (Some(key), Some(signed)) => message.push_str(&format!(
            "; {count} signed by public key {}, the latest at entry {signed}",
            short(&key.to_hex())
        )),
        (Some(_), None) => message.push_str(&format!("; {count}, none at a present entry")),
        (None, _) => {
            message.push_str(&format!("; {count}, signatures not checked (no public key)"))
        }
    }
    message
}

/// The first line of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// [`EXPORT_VERSION`] when written by this build.
    pub version: u32,
    /// When the store was created, `YYYY-MM-DDTHH:MM:SSZ`.
    pub store_created_at: String,
    /// The public key of the store's signing key, when known.
    pub public_key: Option<String>,
    /// Number of `entry` lines that follow.
    pub entries: u64,
    /// Number of `checkpoint` lines that follow.
    pub checkpoints: u64,
}

/// One line of an export file: JSON with a `type` field of `header`, `entry` or
/// `checkpoint`. A file has one header line, then every stored entry in sequence order,
/// then every checkpoint in sequence order, each line ending with `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportLine {
    Header(ExportHeader),
    Entry(StoredEntry),
    Checkpoint(Checkpoint),
}

impl ExportLine {
    /// Serializes the line as compact JSON without the final newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("export lines always serialize")
    }
}

/// Verifies an export file, given as its bytes, with only the public key an auditor holds.
///
/// Every entry's hash and link is recomputed, from entry 1 or from the signed checkpoint
/// before the first entry. Every checkpoint must be signed by `key` and match its entry, and
/// a signed checkpoint must cover the last entry. The header must name the same public key
/// and announce the number of lines found. When entry 1 is present, the store's creation
/// time in the header must be that entry's time.
pub fn verify_export(bytes: &[u8], key: &AuditPublicKey) -> VerifyReport {
    let (header, entries, checkpoints) = match parse_export(bytes) {
        Ok(parsed) => parsed,
        Err(message) => return malformed(message),
    };
    if let Some(report) = check_header(&header, key, entries.len(), checkpoints.len()) {
        return report;
    }

    let mut verifier = LogVerifier::new(checkpoints, Some(*key));
    for entry in &entries {
        verifier.push(entry);
    }
    let mut report = verifier.finish(None, true);

    // TODO: after a retention cut entry 1 is gone, and no signature covers the header's
    // `store_created_at`, so an edit of it goes unnoticed.
    let first_entry = entries.first().filter(|entry| entry.seq == 1);
    if let Some(first) =
        first_entry.filter(|first| report.ok && first.at != header.store_created_at)
    {
        report.fail(
            Breach::Malformed,
            Some(first.seq),
            None,
            "the header's store creation time differs from entry 1, which the store wrote when \
             it was created: the header was edited"
                .to_owned(),
        );
    }
    report
}

/// Splits an export into its header, entries and checkpoints. The error names the line.
fn parse_export(bytes: &[u8]) -> Result<(ExportHeader, Vec<StoredEntry>, Vec<Checkpoint>), String> {
    let mut header: Option<ExportHeader> = None;
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let parsed = std::str::from_utf8(line)
            .map_err(|_| "it is not UTF-8".to_owned())
            .and_then(|line| serde_json::from_str::<ExportLine>(line).map_err(|e| e.to_string()))
            .map_err(|reason| format!("line {number} of the export is invalid: {reason}"))?;
        match (parsed, number) {
            (ExportLine::Header(found), 1) => header = Some(found),
            (ExportLine::Header(_), _) => return Err(format!("line {number} is a second header")),
            (_, 1) => return Err("line 1 is not the export header".to_owned()),
            (ExportLine::Entry(entry), _) => entries.push(entry),
            (ExportLine::Checkpoint(checkpoint), _) => checkpoints.push(checkpoint),
        }
    }
    let header = header.ok_or_else(|| "the export is empty: it has no header line".to_owned())?;
    Ok((header, entries, checkpoints))
}

/// Checks the header against the build, the public key given and the lines found. Returns a
/// failed report when it does not match.
fn check_header(
    header: &ExportHeader,
    key: &AuditPublicKey,
    entries: usize,
    checkpoints: usize,
) -> Option<VerifyReport> {
    if header.format != EXPORT_FORMAT || header.version != EXPORT_VERSION {
        return Some(malformed(format!(
            "the header names format {:?} version {}, but this build reads {EXPORT_FORMAT:?} \
             version {EXPORT_VERSION}",
            header.format, header.version
        )));
    }
    if let Some(named) = header.public_key.as_deref() {
        if !named.eq_ignore_ascii_case(&key.to_hex()) {
            let mut report = VerifyReport { signatures_checked: true, ..VerifyReport::default() };
            let message = format!(
                "the export names public key {}, but verification was given public key {}: it \
                 was signed by another key, or the wrong public key file was given",
                short(named),
                short(&key.to_hex())
            );
            report.fail(Breach::Signature, None, None, message);
            return Some(report);
        }
    }
    if header.entries != entries as u64 || header.checkpoints != checkpoints as u64 {
        return Some(malformed(format!(
            "the header announces {} entries and {} checkpoints, but the file contains {entries} \
             and {checkpoints}: the file was cut or edited",
            header.entries, header.checkpoints
        )));
    }
    None
}

fn malformed(message: String) -> VerifyReport {
    let mut report = VerifyReport { signatures_checked: true, ..VerifyReport::default() };
    report.fail(Breach::Malformed, None, None, message);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{chain_hash, AuditEvent, GENESIS_HASH};
    use crate::time::parse_instant;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key_pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key generated");
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key parses")
    }

    fn public(pair: &Ed25519KeyPair) -> AuditPublicKey {
        let bytes: [u8; 32] = pair.public_key().as_ref().try_into().expect("32 bytes");
        AuditPublicKey::from_bytes(bytes)
    }

    fn chain(from: i64, to: i64) -> Vec<StoredEntry> {
        chain_with_cut(from, to, None)
    }

    /// Builds entries 1 to `to` and keeps those from `from`. With `cut`, the entry after the
    /// cut is the `audit.dispose` entry that records it, as the store writes it.
    fn chain_with_cut(from: i64, to: i64, cut: Option<i64>) -> Vec<StoredEntry> {
        let at = parse_instant("2026-12-04T10:00:00Z").expect("instant");
        let mut prev = GENESIS_HASH.to_owned();
        let mut entries = Vec::new();
        for seq in 1..=to {
            let records_cut = cut.filter(|c| c + 1 == seq);
            let action = if records_cut.is_some() { CUT_ACTION } else { "test.event" };
            let mut event = AuditEvent::new("operator", action).detail(format!("event {seq}"));
            if let Some(c) = records_cut {
                event = event.subject(cut_subject(c));
            }
            let body = event.into_body(seq, at, false, &prev).to_canonical_json();
            let hash = chain_hash(&prev, &body);
            entries.push(StoredEntry {
                seq,
                at: "2026-12-04T10:00:00Z".into(),
                tenant_id: None,
                action: action.into(),
                body,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            });
            prev = hash;
        }
        entries.retain(|e| e.seq >= from);
        entries
    }

    fn sign(pair: &Ed25519KeyPair, entry: &StoredEntry, entries: i64) -> Checkpoint {
        let at = parse_instant("2026-12-05T00:00:00Z").expect("instant");
        let message = Checkpoint::message_for(entry.seq, &entry.hash, at, entries);
        let signature = pair.sign(&message);
        Checkpoint::new(entry.seq, &entry.hash, at, entries, &public(pair), signature.as_ref())
    }

    fn export(entries: &[StoredEntry], checkpoints: &[Checkpoint], key: &str) -> String {
        let header = ExportHeader {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            store_created_at: "2026-12-04T10:00:00Z".into(),
            public_key: Some(key.to_owned()),
            entries: entries.len() as u64,
            checkpoints: checkpoints.len() as u64,
        };
        let mut lines = vec![ExportLine::Header(header).to_json()];
        lines.extend(entries.iter().map(|e| ExportLine::Entry(e.clone()).to_json()));
        lines.extend(checkpoints.iter().map(|c| ExportLine::Checkpoint(c.clone()).to_json()));
        lines.join("\n") + "\n"
    }

    #[test]
    fn message_layout_is_fixed() {
        let message = checkpoint_message(42, "ab", "2026-12-05T00:00:00Z", 40);
        assert_eq!(message, b"medconnect-audit-checkpoint-v1\n42\nab\n2026-12-05T00:00:00Z\n40");
    }

    #[test]
    fn public_key_parses_hex() {
        let key = public(&key_pair());
        assert_eq!(AuditPublicKey::from_hex(&format!("{key}\n")), Ok(key));
        let short = AuditPublicKey::from_hex("abcd").expect_err("short key rejected");
        assert!(short.to_string().contains("4 characters instead of 64"), "{short}");
        let bad = AuditPublicKey::from_hex(&"zz".repeat(32)).expect_err("non-hex rejected");
        assert!(bad.to_string().contains("not a hexadecimal digit"), "{bad}");
    }

    #[test]
    fn export_verifies_with_its_key() {
        let pair = key_pair();
        let entries = chain(1, 6);
        let checkpoints = [sign(&pair, &entries[2], 3), sign(&pair, &entries[5], 6)];
        let file = export(&entries, &checkpoints, &public(&pair).to_hex());
        let report = verify_export(file.as_bytes(), &public(&pair));
        assert!(report.ok, "{}", report.message);
        assert_eq!(report.entries, 6);
        assert_eq!(report.signed_seq, Some(6));
        assert_eq!(report.checkpoints, 2);
    }

    #[test]
    fn export_after_cut_verifies_from_kept_checkpoint() {
        let pair = key_pair();
        let full = chain_with_cut(1, 8, Some(4));
        let cut = sign(&pair, &full[3], 4);
        let head = sign(&pair, &full[7], 4);
        let entries = chain_with_cut(5, 8, Some(4));
        let file = export(&entries, &[cut, head], &public(&pair).to_hex());
        let report = verify_export(file.as_bytes(), &public(&pair));
        assert!(report.ok, "{}", report.message);
        assert_eq!(report.first_seq, Some(5));
        assert!(report.message.contains("after the signed checkpoint at entry 4"), "{report:?}");
    }

    #[test]
    fn ordinary_checkpoint_is_not_a_cut() {
        // Entries before a checkpoint deleted by hand, with no audit.dispose entry recording
        // a retention cut there.
        let pair = key_pair();
        let full = chain(1, 8);
        let checkpoint = sign(&pair, &full[3], 4);
        let head = sign(&pair, &full[7], 8);
        let file = export(&chain(5, 8), &[checkpoint, head], &public(&pair).to_hex());
        let report = verify_export(file.as_bytes(), &public(&pair));
        assert!(!report.ok, "{}", report.message);
        assert_eq!(report.breach, Some(Breach::Removed), "{}", report.message);
        assert!(report.message.contains("no `audit.dispose` entry"), "{}", report.message);
    }

    #[test]
    fn export_without_anchor_fails() {
        let pair = key_pair();
        let full = chain(1, 8);
        let head = sign(&pair, &full[7], 8);
        let file = export(&chain(5, 8), &[head], &public(&pair).to_hex());
        let report = verify_export(file.as_bytes(), &public(&pair));
        assert_eq!(report.breach, Some(Breach::Removed), "{}", report.message);
        assert_eq!(report.first_bad_seq, Some(5));
        assert!(report.message.contains("entries 1 to 4 are missing"), "{}", report.message);
    }

    #[test]
    fn unsigned_tail_fails() {
        let pair = key_pair();
        let entries = chain(1, 6);
        let file = export(&entries, &[sign(&pair, &entries[3], 4)], &public(&pair).to_hex());
        let report = verify_export(file.as_bytes(), &public(&pair));
        assert_eq!(report.breach, Some(Breach::Unsigned), "{}", report.message);
        assert_eq!(report.first_bad_seq, Some(5));
        assert!(report.message.contains("entries 5 to 6"), "{}", report.message);
    }

    #[test]
    fn other_key_fails() {
        let (signer, other) = (key_pair(), key_pair());
        let entries = chain(1, 3);
        let checkpoint = sign(&signer, &entries[2], 3);
        // The header names the key the auditor holds, so the checkpoint itself must fail.
        let file = export(&entries, &[checkpoint], &public(&other).to_hex());
        let report = verify_export(file.as_bytes(), &public(&other));
        assert_eq!(report.breach, Some(Breach::Signature), "{}", report.message);
        assert_eq!(report.bad_checkpoint, Some(3));
        assert!(report.message.contains("signed by another key"), "{}", report.message);
    }

    #[test]
    fn checkpoint_that_does_not_match_its_entry_fails() {
        let pair = key_pair();
        let entries = chain(1, 3);
        let mut forged = entries[2].clone();
        forged.hash = "f".repeat(64);
        let checkpoint = sign(&pair, &forged, 3);
        let mut verifier = LogVerifier::new(vec![checkpoint], Some(public(&pair)));
        entries.iter().for_each(|e| verifier.push(e));
        let report = verifier.finish(None, true);
        assert_eq!(report.breach, Some(Breach::Altered), "{}", report.message);
        assert_eq!(report.bad_checkpoint, Some(3));
    }

    #[test]
    fn any_changed_field_fails() {
        let pair = key_pair();
        let entries = chain(1, 4);
        let checkpoint = sign(&pair, &entries[3], 4);
        let file = export(&entries, &[checkpoint], &public(&pair).to_hex());
        let lines: Vec<&str> = file.lines().collect();
        // (line index, text to replace, replacement, expected breach)
        let cases = [
            (2, "event 2", "event 7", Breach::Altered),
            (3, "\"seq\":3", "\"seq\":5", Breach::Reordered),
            (4, "\"at\":\"2026-12-04T10", "\"at\":\"2026-12-04T11", Breach::Altered),
            (5, "\"entries\":4", "\"entries\":5", Breach::Signature),
            (5, "\"at\":\"2026-12-05", "\"at\":\"2026-12-06", Breach::Signature),
            (0, "\"entries\":4", "\"entries\":3", Breach::Malformed),
            (0, "2026-12-04T10", "2026-12-04T09", Breach::Malformed),
        ];
        for (line, from, to, breach) in cases {
            let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
            assert!(edited[line].contains(from), "line {line} lacks {from:?}");
            edited[line] = edited[line].replacen(from, to, 1);
            let text = edited.join("\n");
            let report = verify_export(text.as_bytes(), &public(&pair));
            assert!(!report.ok, "{from:?} -> {to:?} verified");
            assert_eq!(report.breach, Some(breach), "{from:?}: {}", report.message);
        }
    }
}
