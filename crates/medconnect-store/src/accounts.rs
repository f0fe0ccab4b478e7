//! Values and input checks for user accounts, login sessions and service tokens, shared by
//! both backends.
//!
//! A platform operator belongs to no tenant: its account and its sessions have no tenant
//! id, and on PostgreSQL they are read and written on the operator connection. Every other
//! account, and every service token, belongs to one tenant.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use medconnect_crypto::TokenHash;
use medconnect_domain::audit::AuditEvent;
use medconnect_domain::model::Tenant;
use medconnect_domain::time::format_instant;
use medconnect_domain::{PatientId, ServiceTokenId, SessionId, TenantId, UserId};
use serde::{Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::{Result, StoreError};

/// Most characters of a username: the length limit of an email address (RFC 5321).
pub const MAX_USERNAME_CHARS: usize = 254;

/// Most characters of a service token's name.
pub const MAX_TOKEN_NAME_CHARS: usize = 64;

/// Role of a user account or a service token, which decides what its requests may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operates the whole platform and belongs to no tenant.
    PlatformOperator,
    /// Administers one tenant.
    TenantAdmin,
    /// A clinician of one tenant.
    Provider,
    /// A patient of one tenant, with an account tied to the patient's link.
    Patient,
    /// The Storefront, a machine client of one tenant. Only service tokens have this role.
    Storefront,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::PlatformOperator,
        Role::TenantAdmin,
        Role::Provider,
        Role::Patient,
        Role::Storefront,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformOperator => "platform_operator",
            Role::TenantAdmin => "tenant_admin",
            Role::Provider => "provider",
            Role::Patient => "patient",
            Role::Storefront => "storefront",
        }
    }

    /// Returns whether a user account may have this role: every role but storefront.
    pub fn for_users(self) -> bool {
        self != Role::Storefront
    }

    /// Returns whether a service token may have this role: the tenant roles other than
    /// patient.
    pub fn for_service_tokens(self) -> bool {
        matches!(self, Role::TenantAdmin | Role::Provider | Role::Storefront)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned for a role name that is not one of [`Role::ALL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid role {0:?}: use one of platform_operator, tenant_admin, provider, patient, \
     storefront"
)]
pub struct InvalidRole(pub String);

impl FromStr for Role {
    type Err = InvalidRole;

    fn from_str(text: &str) -> std::result::Result<Self, InvalidRole> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| InvalidRole(medconnect_domain::sanitize::sanitize(text)))
    }
}

/// Parses a role read from the database.
pub(crate) fn stored_role(text: &str) -> Result<Role> {
    text.parse().map_err(|_| StoreError::Corrupt(format!("unknown stored role {text:?}")))
}

/// A user account to create.
pub struct NewUser<'a> {
    /// The tenant, or None for a platform operator.
    pub tenant: Option<&'a Tenant>,
    /// Compared without regard to case: the store keeps it in lower case.
    pub username: &'a str,
    pub role: Role,
    /// An argon2id PHC string from [`medconnect_crypto::hash_password`].
    pub password_hash: &'a str,
    /// The patient whose link a patient account belongs to; None for other roles.
    pub patient: Option<PatientId>,
}

/// The id and tenant of a user account: what methods that change an account take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRef {
    pub id: UserId,
    /// None for a platform operator.
    pub tenant_id: Option<TenantId>,
}

/// A user account as a login reads it. It carries the password hash, so its `Debug` leaves
/// the hash out.
#[derive(Clone)]
pub struct LoginUser {
    pub id: UserId,
    pub tenant_id: Option<TenantId>,
    pub role: Role,
    /// The patient of a patient account.
    pub patient: Option<PatientId>,
    pub password_hash: String,
    pub disabled: bool,
    /// Failed logins since the last successful one.
    pub failed_logins: u32,
    pub last_failed_login_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl LoginUser {
    pub fn user_ref(&self) -> UserRef {
        UserRef { id: self.id, tenant_id: self.tenant_id }
    }
}

impl fmt::Debug for LoginUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginUser")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("failed_logins", &self.failed_logins)
            .finish_non_exhaustive()
    }
}

/// Whether a session or a service token may still authenticate requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    Active,
    /// Its expiry has passed.
    Expired,
    /// The session was ended by a logout.
    Ended,
    /// The service token was revoked.
    Revoked,
    /// The session's user account is disabled.
    UserDisabled,
}

/// A login session found by its token hash, whatever its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: SessionId,
    pub user_id: UserId,
    /// None for a platform operator's session.
    pub tenant_id: Option<TenantId>,
    pub role: Role,
    /// The patient of a patient account's session.
    pub patient: Option<PatientId>,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub user_disabled: bool,
}

impl SessionInfo {
    /// Returns the session's state at `now`. A session expires at `expires_at` exactly.
    pub fn state(&self, now: DateTime<Utc>) -> CredentialState {
        if self.ended_at.is_some() {
            CredentialState::Ended
        } else if self.user_disabled {
            CredentialState::UserDisabled
        } else if now >= self.expires_at {
            CredentialState::Expired
        } else {
            CredentialState::Active
        }
    }

    pub fn user_ref(&self) -> UserRef {
        UserRef { id: self.user_id, tenant_id: self.tenant_id }
    }
}

/// SHA-256 of a certificate's DER bytes. It identifies the client certificate that a
/// storefront token is bound to. A fingerprint is no secret, because anyone with the
/// certificate can compute it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertificateFingerprint([u8; 32]);

impl CertificateFingerprint {
    /// Hashes a certificate in DER.
    pub fn of_der(der: &[u8]) -> Self {
        CertificateFingerprint(Sha256::digest(der).into())
    }

    /// Parses 64 hex digits, as the store keeps a fingerprint.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(CertificateFingerprint(bytes))
    }

    /// Formats the fingerprint as the store keeps it: 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Formats the fingerprint as lower-case hex pairs joined by `:`, as the server logs its own
/// certificate's fingerprint and as `openssl x509 -fingerprint -sha256` prints it (in upper
/// case).
impl fmt::Display for CertificateFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertificateFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertificateFingerprint({self})")
    }
}

impl Serialize for CertificateFingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A service token to create. The caller generates the token and passes only its hash.
pub struct NewServiceToken<'a> {
    pub tenant: &'a Tenant,
    /// Letters, digits, `.`, `_` and `-`, at most [`MAX_TOKEN_NAME_CHARS`].
    pub name: &'a str,
    pub role: Role,
    pub token_hash: TokenHash,
    /// None: valid until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    /// The client certificate a storefront token is bound to. Required for the storefront
    /// role and rejected for every other role.
    pub client_cert: Option<CertificateFingerprint>,
}

/// A service token found by its hash, whatever its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceTokenInfo {
    pub id: ServiceTokenId,
    pub tenant_id: TenantId,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The client certificate the token is bound to. A storefront token authenticates only
    /// over a TLS connection that presented this certificate. None for the other roles, and
    /// for storefront tokens created before binding existed, which never authenticate.
    pub client_cert: Option<CertificateFingerprint>,
}

impl ServiceTokenInfo {
    /// Returns the token's state at `now`. A token expires at `expires_at` exactly.
    pub fn state(&self, now: DateTime<Utc>) -> CredentialState {
        match (self.revoked_at, self.expires_at) {
            (Some(_), _) => CredentialState::Revoked,
            (None, Some(expires)) if now >= expires => CredentialState::Expired,
            _ => CredentialState::Active,
        }
    }
}

/// A service token as [`crate::Store::list_service_tokens`] lists it. The lookup by hash
/// returns the same fields, and neither carries the token or its hash.
pub type ServiceTokenSummary = ServiceTokenInfo;

/// A user account as [`crate::Store::list_users`] lists it, without its password hash. Its
/// `Debug` leaves the username out, because it may be an email address.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSummary {
    pub id: UserId,
    /// None for a platform operator.
    pub tenant_id: Option<TenantId>,
    /// In lower case, as the store keeps it.
    pub username: String,
    pub role: Role,
    /// The patient of a patient account.
    pub patient: Option<PatientId>,
    pub created_at: DateTime<Utc>,
    pub disabled: bool,
    /// Failed logins since the last successful one.
    pub failed_logins: u32,
    pub last_failed_login_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl UserSummary {
    pub fn user_ref(&self) -> UserRef {
        UserRef { id: self.id, tenant_id: self.tenant_id }
    }
}

impl fmt::Debug for UserSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSummary")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("role", &self.role)
            .field("patient", &self.patient)
            .field("created_at", &self.created_at)
            .field("disabled", &self.disabled)
            .field("failed_logins", &self.failed_logins)
            .field("last_failed_login_at", &self.last_failed_login_at)
            .field("last_login_at", &self.last_login_at)
            .finish_non_exhaustive()
    }
}

/// Returns the username as the store keeps it (lower case), or None when it cannot be one:
/// empty, longer than [`MAX_USERNAME_CHARS`], with surrounding spaces or control characters.
pub(crate) fn normalize_username(username: &str) -> Option<String> {
    let chars = username.chars().count();
    let valid = (1..=MAX_USERNAME_CHARS).contains(&chars)
        && username.trim() == username
        && !username.chars().any(char::is_control);
    valid.then(|| username.to_lowercase())
}

/// Checks a new account and returns its username as the store keeps it. Messages never
/// repeat the username, because it may be an email address.
pub(crate) fn check_new_user(user: &NewUser<'_>) -> Result<String> {
    let invalid = |reason: String| Err(StoreError::InvalidAccount(reason));
    let Some(username) = normalize_username(user.username) else {
        return invalid(format!(
            "the username must have 1 to {MAX_USERNAME_CHARS} characters, without control \
             characters or spaces at either end"
        ));
    };
    if !user.role.for_users() {
        return invalid(format!(
            "role {} is for service tokens: create one with `medconnect token create`",
            user.role
        ));
    }
    match (user.role, user.tenant) {
        (Role::PlatformOperator, Some(_)) => {
            return invalid("a platform_operator belongs to no tenant: omit the tenant".into())
        }
        (Role::PlatformOperator, None) => {}
        (role, None) => return invalid(format!("a {role} account needs a tenant")),
        (_, Some(_)) => {}
    }
    match (user.role, user.patient) {
        (Role::Patient, None) => {
            return invalid("a patient account needs the patient it belongs to".into())
        }
        (Role::Patient, Some(_)) => {}
        (role, Some(_)) => return invalid(format!("a {role} account cannot name a patient")),
        (_, None) => {}
    }
    if !user.password_hash.starts_with("$argon2id$") {
        return invalid(
            "the password hash is not an argon2id PHC string: hash the password with \
             medconnect_crypto::hash_password"
                .into(),
        );
    }
    Ok(username)
}

/// Checks a new service token's name and role.
pub(crate) fn check_new_service_token(token: &NewServiceToken<'_>) -> Result<()> {
    let chars = token.name.chars().count();
    let valid_name = (1..=MAX_TOKEN_NAME_CHARS).contains(&chars)
        && token.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid_name {
        return Err(StoreError::InvalidServiceToken(format!(
            "the name must have 1 to {MAX_TOKEN_NAME_CHARS} letters, digits, '.', '_' or '-'"
        )));
    }
    if !token.role.for_service_tokens() {
        return Err(StoreError::InvalidServiceToken(format!(
            "role {} cannot be given to a service token: use storefront, tenant_admin or \
             provider",
            token.role
        )));
    }
    match (token.role, token.client_cert) {
        (Role::Storefront, None) => Err(StoreError::InvalidServiceToken(
            "a storefront token needs the fingerprint of the client certificate it is bound to"
                .into(),
        )),
        (Role::Storefront, Some(_)) | (_, None) => Ok(()),
        (role, Some(_)) => Err(StoreError::InvalidServiceToken(format!(
            "a {role} token cannot be bound to a client certificate: only storefront tokens are"
        ))),
    }
}

/// Formats the actor of audit entries that a user's own login or logout writes.
pub(crate) fn user_actor(user: UserId) -> String {
    format!("user:{user}")
}

/// Builds the `session.purge` entry of one purge of platform sessions, with no tenant, the
/// deleted sessions as subjects, and the run, the count and the cutoff in the detail. It names
/// no user, username or token hash.
pub(crate) fn session_purge_event(
    actor: &str,
    run_id: &str,
    ended_before: DateTime<Utc>,
    sessions: &[String],
) -> AuditEvent {
    let detail = format!(
        "run {run_id}: {} platform sessions ended at or before {} purged",
        sessions.len(),
        format_instant(ended_before)
    );
    let mut event = AuditEvent::new(actor, "session.purge").detail(detail);
    event.subjects.extend(sessions.iter().cloned());
    event
}
