//! Callers of reads and changes of patient data through the API, and the audit entries that
//! record them.
//!
//! An [`Access`] names the caller by its account or service token id, its role and the id of
//! the request, never by anything it typed, so an entry built from it carries no PHI. The
//! audited reads of [`crate::Store`] write one entry each, in the transaction of the read:
//! outcome `success` with the ids read, or `not_found` naming only the id asked for, in the
//! caller's tenant. A read that fails for another reason (no master key, a database error)
//! writes no entry, because it neither disclosed nor decided anything.

use std::fmt;

use medconnect_domain::audit::{AuditEvent, Outcome};
use medconnect_domain::model::Tenant;
use medconnect_domain::{PatientId, ServiceTokenId, UserId};

use crate::accounts::user_actor;
use crate::{LinkDetail, PatientProfileView, Role, StoreError};

/// Most characters of a request id.
pub const MAX_REQUEST_ID_CHARS: usize = 64;

/// The caller of an audited read or write: an account or service token, its role and the
/// request it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    actor: String,
    role: Role,
    request_id: String,
}

/// Error returned for a request id that an audit entry cannot carry unchanged.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid request id of {0} characters: use 1 to 64 lowercase letters, digits and hyphens, \
     such as a UUID"
)]
pub struct InvalidRequestId(pub usize);

impl Access {
    /// Returns the access of a user account, recorded as `user:<id>` like the user's own logins.
    pub fn user(user: UserId, role: Role, request_id: &str) -> Result<Self, InvalidRequestId> {
        Self::new(user_actor(user), role, request_id)
    }

    /// Returns the access of a service token, recorded as `token:<id>`.
    pub fn token(
        token: ServiceTokenId,
        role: Role,
        request_id: &str,
    ) -> Result<Self, InvalidRequestId> {
        Self::new(format!("token:{token}"), role, request_id)
    }

    fn new(actor: String, role: Role, request_id: &str) -> Result<Self, InvalidRequestId> {
        let valid = (1..=MAX_REQUEST_ID_CHARS).contains(&request_id.len())
            && request_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(InvalidRequestId(request_id.chars().count()));
        }
        Ok(Access { actor, role, request_id: request_id.to_owned() })
    }

    /// Returns the actor of the entries this access writes: `user:<id>` or `token:<id>`.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Starts the entry of an access to `tenant`: actor, action, tenant, and a detail of
    /// `role=<role> request=<id>`.
    pub fn event(&self, tenant: &Tenant, action: &str) -> AuditEvent {
        AuditEvent::new(&self.actor, action).tenant(tenant.id).detail(self.to_string())
    }

    /// Starts the entry of an access that belongs to no tenant, such as a platform operator
    /// reading the audit log: actor, action and the detail of [`Access::event`].
    pub fn platform_event(&self, action: &str) -> AuditEvent {
        AuditEvent::new(&self.actor, action).detail(self.to_string())
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "role={} request={}", self.role, self.request_id)
    }
}

/// A linked patient as the API shows it: the link with its counts, and the decrypted core
/// profile. It contains PHI, so it has no `Debug`.
#[derive(Clone, serde::Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(
        description = "A linked patient: the link with its counts, and the decrypted core profile."
    )
)]
pub struct PatientRecord {
    pub link: LinkDetail,
    pub profile: PatientProfileView,
}

/// One read of [`crate::Store::read_patients`]: a patient of `tenant`, read for `access`.
#[derive(Debug, Clone)]
pub struct PatientRead {
    pub tenant: Tenant,
    pub patient: PatientId,
    pub access: Access,
}

/// Returns whether an error says that the tenant has no such record, which an audited read
/// records as `not_found`.
pub(crate) fn is_not_found(error: &StoreError) -> bool {
    matches!(error, StoreError::PatientNotFound { .. } | StoreError::PhotoNotFound { .. })
}

/// Finishes the entry of an audited read from its result: `success`, or `not_found`. Returns
/// None for other errors, which write no entry.
pub(crate) fn read_event<T>(
    event: AuditEvent,
    result: &Result<T, StoreError>,
) -> Option<AuditEvent> {
    match result {
        Ok(_) => Some(event),
        Err(error) if is_not_found(error) => Some(event.outcome(Outcome::NotFound)),
        Err(_) => None,
    }
}

/// Returns the `audit.read` entry of a read of the audit log: who read it, the range asked
/// for and how many entries it returned, but none of their content.
pub(crate) fn audit_read_event(
    access: &Access,
    after_seq: i64,
    limit: u32,
    count: usize,
) -> AuditEvent {
    let event = access.platform_event("audit.read");
    let detail = format!("{} after_seq={after_seq} limit={limit} count={count}", event.detail);
    event.detail(detail)
}
