//! `GET /v1/audit` and `GET /v1/audit/verify`: the audit log, for platform operators only.
//!
//! Entries are returned as stored, and every text field of an entry was sanitized before it
//! was hashed, so they carry no PHI. Each listing appends `audit.read` with the caller's
//! actor, `after_seq`, `limit` and the count returned, in the transaction of the read, so the
//! log records who read which part of it without repeating any of it.

use axum::extract::{RawQuery, State};
use axum::Json;
use medconnect_domain::audit::VerifyReport;
use medconnect_store::{AuditRecord, Role};
use serde::Serialize;

use crate::auth::{store_failure, Caller};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::patients::access_of;
use crate::query::QueryParams;
use crate::routes::AppState;
use crate::{error_chain, BoxError};

/// Entries a listing returns when the request sets no `limit`.
pub const DEFAULT_LIMIT: u32 = 100;

/// Maximum `limit` of a listing.
pub const MAX_LIMIT: u32 = 1000;

/// The body of `GET /v1/audit`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Entries after `after_seq`, oldest first.
    pub entries: Vec<AuditRecord>,
    /// The `after_seq` of the next page: the sequence number of the last entry returned, or
    /// the request's `after_seq` when none was.
    pub next_after_seq: i64,
}

/// Lists audit entries after `?after_seq=` (default 0), at most `?limit=` (1 to 1000,
/// default 100), oldest first.
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "list_audit_entries",
    tag = "audit",
    security(("bearer" = []), ("session_cookie" = [])),
    params(
        ("after_seq" = Option<i64>, Query, description = "List entries after this sequence \
            number; default 0."),
        ("limit" = Option<u32>, Query, description = "Entries to return, 1 to 1000; default 100."),
    ),
    responses(
        (status = 200, description = "The entries, oldest first.", body = AuditPage),
        (status = 400, description = "A query parameter is unknown or invalid.", body = ErrorBody),
        (status = 403, description = "The caller is not a platform_operator.", body = ErrorBody),
        (status = 500, description = "The request could not be prepared for the audit log.",
            body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(&[Role::PlatformOperator])?;
    let params = QueryParams::parse(query.as_deref(), &["after_seq", "limit"])?;
    let after_seq = params
        .parsed("after_seq", "a sequence number of 0 or more", |value| {
            value.parse::<i64>().ok().filter(|seq| *seq >= 0)
        })?
        .unwrap_or(0);
    let limit = params
        .parsed("limit", "a number from 1 to 1000", |value| {
            value.parse::<u32>().ok().filter(|limit| (1..=MAX_LIMIT).contains(limit))
        })?
        .unwrap_or(DEFAULT_LIMIT);
    let access = access_of(&caller)?;
    let read =
        state.pool.run(move |store| store.read_audit_entries(after_seq, limit, &access)).await;
    let entries = match read {
        Ok(Ok(entries)) => entries,
        Ok(Err(error)) => return Err(store_failure(&error)),
        Err(error) => return Err(store_failure(&error)),
    };
    let next_after_seq = entries.last().map_or(after_seq, |entry| entry.seq);
    Ok(Json(AuditPage { entries, next_after_seq }))
}

/// Verifies the whole audit chain and returns the report that `medconnect audit verify
/// --json` prints. Checkpoint signatures are checked when the server has the audit public
/// key, and `signatures_checked` is true when they were. A damaged chain is a 200 with `ok`
/// false, because the check itself succeeded.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    operation_id = "verify_audit",
    tag = "audit",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The report of the chain check.", body = VerifyReport),
        (status = 400, description = "The request has a query parameter.", body = ErrorBody),
        (status = 403, description = "The caller is not a platform_operator.", body = ErrorBody),
        (status = 500, description = "The audit public key could not be loaded.",
            body = ErrorBody),
    )
)]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<VerifyReport>, ApiError> {
    caller.require(&[Role::PlatformOperator])?;
    QueryParams::parse(query.as_deref(), &[])?;
    let key_source = state.audit_public_key.clone();
    let verified = state
        .pool
        .run(move |store| -> Result<VerifyReport, VerifyFailure> {
            let key = match &key_source {
                Some(source) => source().map_err(VerifyFailure::Key)?,
                None => None,
            };
            if key.is_none() {
                tracing::warn!(
                    "audit verify: checkpoint signatures are not checked, because the server \
                     has no audit public key"
                );
            }
            store.verify_audit_with_key(key.as_ref()).map_err(VerifyFailure::Store)
        })
        .await;
    let failure = match verified {
        Ok(Ok(report)) => {
            if !report.ok {
                tracing::error!(
                    first_bad_seq = report.first_bad_seq,
                    bad_checkpoint = report.bad_checkpoint,
                    "audit verify found a damaged chain"
                );
            }
            return Ok(Json(report));
        }
        Ok(Err(failure)) => failure,
        Err(error) => return Err(store_failure(&error)),
    };
    match failure {
        VerifyFailure::Store(error) => Err(store_failure(&error)),
        VerifyFailure::Key(error) => {
            tracing::error!(cause = %error_chain(&*error), "loading the audit public key failed");
            Err(ApiError::new(
                ErrorCode::Internal,
                "the audit public key could not be loaded: the server log names the cause",
            ))
        }
    }
}

/// A failure to check the chain.
enum VerifyFailure {
    Key(BoxError),
    Store(medconnect_store::StoreError),
}
