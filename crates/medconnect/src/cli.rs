//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// MedConnect: retention, legal holds, provable disposal and a tamper-evident audit log for
/// telehealth data.
#[derive(Parser)]
#[command(name = "medconnect", version, about, max_term_width = 100)]
pub struct Cli {
    /// Data directory holding the store, its policy file and its blobs.
    #[arg(long, global = true, env = "MEDCONNECT_DATA_DIR", default_value = "./medconnect-data")]
    pub data_dir: PathBuf,

    /// Configuration file [default: DATA_DIR/medconnect.toml when it exists]. Without one,
    /// or without database_url in it, the store is the embedded one in DATA_DIR.
    #[arg(long, global = true, env = "MEDCONNECT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Retention policy file [default: DATA_DIR/policy.toml].
    #[arg(long, global = true, env = "MEDCONNECT_POLICY")]
    pub policy: Option<PathBuf>,

    /// Master key file [default: DATA_DIR/keys/master.key]. Ignored when MEDCONNECT_MASTER_KEY
    /// contains the key itself (64 hex digits).
    #[arg(long, global = true, env = "MEDCONNECT_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// Audit signing key file (Ed25519, PKCS#8, mode 0600) [default:
    /// DATA_DIR/keys/audit-signing.key]. Signs audit checkpoints; runs without it skip audit
    /// retention and the closing checkpoint, with a warning.
    #[arg(long, global = true, env = "MEDCONNECT_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key: Option<PathBuf>,

    /// Actor name recorded in audit entries [default: operator:$USER].
    #[arg(long, global = true, env = "MEDCONNECT_ACTOR")]
    pub actor: Option<String>,

    /// Disposal ledger file, best kept on another disk than the data directory
    /// [default: DATA_DIR/ledger/disposals.jsonl].
    #[arg(long, global = true, env = "MEDCONNECT_LEDGER", value_name = "FILE")]
    pub ledger: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new store in the data directory.
    Init {
        /// Let `lifecycle run` accept --as-of, for demos and tests. Every audit entry of such
        /// a store is marked as written on a simulated clock.
        #[arg(long)]
        simulated_clock: bool,
        /// PostgreSQL only: URL of a role that may create roles and schemas, used once to
        /// create them [default: database_url with the user postgres].
        #[arg(
            long,
            env = "MEDCONNECT_ADMIN_DATABASE_URL",
            value_name = "URL",
            hide_env_values = true
        )]
        admin_url: Option<String>,
    },
    /// Inspect and migrate the database of the store.
    #[command(subcommand)]
    Db(DbCommand),
    /// Show or check the retention policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create and list tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// List the patients of a tenant.
    #[command(subcommand)]
    Patient(PatientCommand),
    /// Import external data sets.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Record medical encounters, which extend PHI retention.
    #[command(subcommand)]
    Encounter(EncounterCommand),
    /// Plan, explain and run the retention jobs.
    #[command(subcommand)]
    Lifecycle(LifecycleCommand),
    /// Place, release and list legal holds.
    #[command(subcommand)]
    Hold(HoldCommand),
    /// Verify, sign, export and read the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rotate the master key or a tenant's data key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Build a simulated store from the Synthea sample data and run the whole lifecycle on it.
    Demo(DemoArgs),
    /// Create, list, verify and restore encrypted backups in several destinations.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Create, list, disable and enable user accounts of the HTTPS API.
    #[command(subcommand)]
    User(UserCommand),
    /// Create, list and revoke service tokens for machine clients such as the Storefront.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Serve the HTTPS API (TLS 1.2 and 1.3 only) and run the lifecycle on a schedule.
    /// Stops on SIGINT or SIGTERM after the requests in flight.
    Serve(ServeArgs),
    /// Print the OpenAPI 3.1 document of the HTTPS API as JSON. Reads no data directory.
    Openapi,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "MEDCONNECT_LISTEN", default_value = "127.0.0.1:8443", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Server certificate in PEM, followed by its intermediate certificates. Give it together
    /// with --tls-key. Without both, a self-signed development certificate for localhost and
    /// 127.0.0.1 is created in DATA_DIR/tls on first start and reused.
    #[arg(long, env = "MEDCONNECT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the server certificate in PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "MEDCONNECT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates in PEM that issue Storefront client certificates. With it the server
    /// requests a client certificate, rejects one these CAs did not issue, and still admits
    /// clients that send none. Without it, storefront tokens cannot authenticate.
    #[arg(long, env = "MEDCONNECT_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Time between lifecycle runs inside the server, such as 30m, 1h or 1d; the first run
    /// starts at once. 0 turns the scheduler off, for deployments where another process runs
    /// `medconnect lifecycle run`.
    #[arg(
        long,
        env = "MEDCONNECT_LIFECYCLE_INTERVAL",
        default_value = "1h",
        value_name = "DURATION",
        value_parser = parse_interval
    )]
    pub lifecycle_interval: Duration,
    /// Largest request body of every route but the ID photo upload (5 MiB), in bytes.
    #[arg(long, env = "MEDCONNECT_BODY_LIMIT", default_value_t = 64 * 1024, value_name = "BYTES")]
    pub body_limit: usize,
    /// How long shutdown waits for requests in flight and a lifecycle run under way, such as
    /// 30s.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Lifetime of a session that POST /v1/login starts, such as 30m or 12h; at least 1s.
    #[arg(
        long,
        env = "MEDCONNECT_SESSION_TTL",
        default_value = "12h",
        value_name = "DURATION",
        value_parser = parse_session_ttl
    )]
    pub session_ttl: Duration,
}

/// Parses a session lifetime: a duration of at least one second and at most 366 days.
fn parse_session_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl.is_zero() || ttl > Duration::from_secs(366 * 24 * 60 * 60) {
        return Err(format!(
            "{text:?} is not a session lifetime: give 1s to 366d, such as 30m or 12h"
        ));
    }
    Ok(ttl)
}

/// Parses a duration with a unit: seconds (`s`), minutes (`m`), hours (`h`) or days (`d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => {
            return Err(format!(
                "{text:?} is not a duration: write a whole number and a unit, s, m, h or d, such \
                 as 90s, 15m or 1h"
            ))
        }
    };
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} has no whole number before the unit"))?;
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Parses the lifecycle interval: a duration of at least a second, or `0` for off.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let interval = parse_duration(text)?;
    if interval.is_zero() {
        return Err(format!("{text:?}: write 0 to turn the scheduler off, or a positive interval"));
    }
    Ok(interval)
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print the policy in force.
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate a policy file without using it. With a store in the data directory, also
    /// check that every tenant table names an existing tenant.
    Check { file: PathBuf },
    /// Recompute every patient's retention under the policy in force. `lifecycle run` does
    /// this itself, unless the new policy shortens a retention.
    Apply {
        /// Accept a policy that moves retention instants earlier.
        #[arg(long)]
        allow_shorter: bool,
    },
    /// Print the default policy file.
    Default,
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Lowercase letters, digits and hyphens, such as `northwind`.
        slug: String,
        /// Display name [default: the slug].
        #[arg(long)]
        name: Option<String>,
    },
    /// List tenants.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PatientCommand {
    /// Print a patient's decrypted core profile. Needs the master key.
    Show {
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Patient id, as `patient list` or `patient find` prints it.
        #[arg(long)]
        patient: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Find a patient's id from the id the source system gave them.
    Find {
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Source system, such as `synthea`.
        #[arg(long, default_value = "synthea")]
        source: String,
        /// The patient's id in the source system.
        #[arg(long)]
        source_id: String,
    },
    /// List a tenant's patients with their retention under the policy in force.
    List {
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ImportCommand {
    /// Import a Synthea CSV export (patients.csv, encounters.csv, ...) into a tenant.
    Synthea {
        /// Folder holding the CSV files.
        dir: PathBuf,
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum EncounterCommand {
    /// Record an encounter for a patient and recompute their retention.
    Record {
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Patient id, as `patient list` or `patient find` prints it.
        #[arg(long)]
        patient: String,
        /// When the encounter happened [default: now]. Only simulated-clock stores accept
        /// an instant in the future.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Args)]
pub struct AsOf {
    /// Evaluate retention as of this instant (RFC 3339, or a date meaning midnight UTC)
    /// [default: now].
    #[arg(long)]
    pub as_of: Option<String>,
}

#[derive(Subcommand)]
pub enum LifecycleCommand {
    /// List what a run would dispose of and keep, and why. Changes nothing.
    Plan {
        #[command(flatten)]
        as_of: AsOf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Explain why one patient's records are kept, and until when.
    Explain {
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Patient id, as `patient list` or `patient find` prints it.
        #[arg(long)]
        patient: String,
        #[command(flatten)]
        as_of: AsOf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Dispose of everything expired that no hold protects, with a receipt per disposal.
    Run {
        /// Only on stores created with `init --simulated-clock`.
        #[command(flatten)]
        as_of: AsOf,
        /// Disposals per transaction, 1 to 5000. Holds and other writers wait for the open
        /// transaction, so large batches delay them.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5_000))]
        batch_size: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show recent runs.
    Status {
        /// Maximum number of runs to list.
        #[arg(long, default_value_t = 10)]
        limit: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold on one patient of a tenant or on the whole tenant.
    Place {
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Patient id, as `patient list` or `patient find` prints it. Pass this or
        /// --whole-tenant.
        #[arg(long, conflicts_with = "whole_tenant", required_unless_present = "whole_tenant")]
        patient: Option<String>,
        /// Hold every record of the tenant.
        #[arg(long)]
        whole_tenant: bool,
        /// Matter reference, such as a case number.
        #[arg(long)]
        matter: String,
        /// Reason for the hold, recorded in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Release a hold. Records it protected are purged by the next run if expired.
    Release { id: String },
    /// List holds.
    List {
        /// List only the holds of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Include released holds.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain and its signed checkpoints, and name the first entry or
    /// checkpoint altered, removed or reordered. With --export, verify an exported log
    /// offline instead, with only that file and the public key.
    Verify {
        /// Exported log to verify offline, as `audit export` writes it. Needs --public-key.
        #[arg(long, requires = "public_key")]
        export: Option<PathBuf>,
        /// Public key file (64 hex digits) that checkpoint signatures must verify with
        /// [default without --export: DATA_DIR/audit-public.key, when present].
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint at the last audit entry now. Needs the audit signing key.
    Checkpoint {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the audit log, with its checkpoints, to a JSON-lines file that `audit verify
    /// --export` checks offline. Signs the head first when the signing key is available.
    Export {
        /// File to write. An existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create the audit signing key, for a store created before audit checkpoints, and write
    /// its public key to DATA_DIR/audit-public.key.
    Keygen,
    /// Print audit entries as JSON lines, oldest first.
    Log {
        /// Print entries after this sequence number.
        #[arg(long, default_value_t = 0, conflicts_with = "tail")]
        after: i64,
        /// Print the last N entries instead.
        #[arg(long)]
        tail: Option<u32>,
        /// Maximum number of entries to print.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Args)]
pub struct DemoArgs {
    /// Folder of the Synthea CSV export [default: the first of ../shared/data/synthea and
    /// shared/data/synthea that exists].
    #[arg(long, env = "MEDCONNECT_SYNTHEA_DIR")]
    pub synthea: Option<PathBuf>,
    /// Replace a previous demo store in the data directory. Production stores are never
    /// replaced.
    #[arg(long)]
    pub fresh: bool,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Rotate keys. Both rotations are audited and neither re-encrypts data.
    Rotate {
        /// Re-wrap every data key under a new master key, written next to the current key
        /// file. Run it again to resume an interrupted rotation.
        #[arg(long, conflicts_with = "tenant", required_unless_present = "tenant")]
        master: bool,
        /// Start a new data key version for this tenant's new writes; older versions stay
        /// readable.
        #[arg(long)]
        tenant: Option<String>,
        /// Data keys re-wrapped per transaction.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5_000))]
        batch_size: u32,
    },
}

#[derive(Args)]
pub struct Destinations {
    /// Backup destination folder, such as one per region; repeat the option for each
    /// [default: the folders in MEDCONNECT_BACKUP_DESTINATIONS, separated by colons].
    #[arg(long = "destination", value_name = "DIR")]
    pub destinations: Vec<PathBuf>,
}

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Write an encrypted snapshot of the store (database, policy and ID photo files) into
    /// every destination, at least two. Needs the master key.
    Create {
        #[command(flatten)]
        destinations: Destinations,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the backups in every destination, with their size and whether they are complete.
    List {
        #[command(flatten)]
        destinations: Destinations,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every destination's copy: manifest, SHA-256 of every file, backup key and
    /// decryption. Exits with 1 when any destination fails. Needs the master key.
    Verify {
        /// Backup id, as `backup list` prints it [default: every complete backup found].
        id: Option<String>,
        #[command(flatten)]
        destinations: Destinations,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a new data directory from the first destination whose copy
    /// verifies, then re-apply every disposal recorded in the ledger after the backup. Needs
    /// the master key, which the restored store keeps using.
    Restore {
        /// Backup id, as `backup list` prints it.
        id: String,
        /// New data directory: must not exist or must be empty, and must not be the live one.
        #[arg(long, value_name = "NEWDIR")]
        into: PathBuf,
        #[command(flatten)]
        destinations: Destinations,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Append the disposal receipts of the audit log that the ledger lacks. `lifecycle run`
    /// and `backup create` do this themselves.
    SyncLedger {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// Show the backend, schema version and location of the store.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Apply pending schema migrations to a PostgreSQL store. Run it from one node while the
    /// others are stopped.
    Migrate {
        /// URL of the role that owns the schema [default: database_url with the user
        /// postgres].
        #[arg(
            long,
            env = "MEDCONNECT_ADMIN_DATABASE_URL",
            value_name = "URL",
            hide_env_values = true
        )]
        admin_url: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user account. The password comes from MEDCONNECT_NEW_PASSWORD or, when that
    /// is unset, from the first line of standard input, which must not be a terminal. It
    /// needs at least 12 characters.
    Create {
        /// Tenant slug, as `tenant list` prints it. Omit it for a platform_operator, who
        /// belongs to no tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Login name, compared without regard to case.
        #[arg(long)]
        username: String,
        /// platform_operator, tenant_admin, provider or patient.
        #[arg(long)]
        role: String,
        /// MedConnect id of the patient a patient account belongs to (`patient find`).
        #[arg(long)]
        patient: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the user accounts of a tenant, or the platform operators, with their role, state
    /// and last login. Usernames may be email addresses. No password hash is printed.
    List {
        /// Tenant slug, as `tenant list` prints it. Omit it to list the platform operators.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user account. It can no longer log in, and its sessions end, so their tokens
    /// get 401 from the next request on.
    Disable(UserTarget),
    /// Enable a disabled user account. It can log in again. Sessions that the disable ended
    /// stay ended.
    Enable(UserTarget),
}

/// The account that `user disable` and `user enable` change.
#[derive(Args)]
pub struct UserTarget {
    /// Tenant slug, as `tenant list` prints it. Omit it for a platform operator.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Username, as `user list` prints it, compared without regard to case.
    #[arg(long)]
    pub username: String,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a service token and print it once: only its hash is stored.
    Create(NewTokenArgs),
    /// List a tenant's service tokens, expired and revoked ones too, with their state. Prints
    /// neither the tokens nor their hashes.
    List {
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a service token: requests with it get 401 from then on. Revoking a token that
    /// is already revoked changes nothing.
    Revoke {
        /// Tenant slug, as `tenant list` prints it.
        #[arg(long)]
        tenant: String,
        /// Token id, as `token list` prints it.
        token_id: String,
    },
}

/// The service token that `token create` creates.
#[derive(Args)]
pub struct NewTokenArgs {
    /// Tenant slug, as `tenant list` prints it.
    #[arg(long)]
    pub tenant: String,
    /// Name to tell tokens apart: letters, digits, '.', '_' and '-'.
    #[arg(long)]
    pub name: String,
    /// storefront, tenant_admin or provider.
    #[arg(long, default_value = "storefront")]
    pub role: String,
    /// The Storefront's client certificate in PEM (the first certificate of the file; no
    /// key needed). Required for the storefront role and rejected for the others: the
    /// token then authenticates only over a connection that presents this certificate.
    #[arg(long, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// Days until the token expires.
    #[arg(long, value_name = "DAYS", default_value_t = 365, conflicts_with = "no_expiry")]
    pub expires_in_days: u32,
    /// Create a token that stays valid until revoked.
    #[arg(long)]
    pub no_expiry: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        let cases = [("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172_800), (" 5m ", 300)];
        for (text, seconds) in cases {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(seconds)), "{text:?}");
        }
    }

    #[test]
    fn durations_without_unit_or_number_rejected() {
        for text in ["", "10", "h", "1.5h", "-1h", "1w", "1 h", "99999999999999999999d"] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.contains(text.trim()), "{text:?}: {error}");
        }
    }

    #[test]
    fn interval_zero_turns_scheduler_off() {
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("30m"), Ok(Duration::from_secs(1800)));
        let error = parse_interval("0s").expect_err("0s is ambiguous");
        assert!(error.contains("write 0"), "{error}");
    }
}
