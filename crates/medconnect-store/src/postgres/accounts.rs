//! User accounts, login sessions and service tokens.
//!
//! A tenant's accounts, sessions and tokens are written in [`PgStore::tenant_tx`], so
//! row-level security confines each write to that tenant. A platform operator's account and
//! sessions have no tenant, which row-level security never shows to the application role, so
//! they are written on the operator connection. Lookups by token hash also run there, because
//! the tenant of a request is only known once its token is found.

use chrono::{DateTime, Utc};
use medconnect_crypto::TokenHash;
use medconnect_domain::audit::{AuditEvent, Outcome};
use medconnect_domain::model::Tenant;
use medconnect_domain::time::format_instant;
use medconnect_domain::{ServiceTokenId, SessionId, TenantId, UserId};
use postgres::{Row, Transaction};

use super::records::lock_link;
use super::{PgAudit, PgStore};
use crate::accounts::{
    check_new_service_token, check_new_user, normalize_username, session_purge_event, stored_role,
};
use crate::sqlite::accounts::{
    login_event, parse_stored_fingerprint, stored_hash_matches, token_create_detail, username_scope,
};
use crate::sqlite::values::{parse_optional_instant, parse_stored_id, parse_stored_instant};
use crate::{
    LoginUser, NewServiceToken, NewUser, Result, ServiceTokenInfo, ServiceTokenSummary,
    SessionInfo, StoreError, UserRef, UserSummary,
};

/// SQLSTATE of a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

const LOGIN_COLUMNS: &str = "u.id, u.tenant_id, u.role, l.patient_id, u.password_hash, \
     u.disabled, u.failed_logins, u.last_failed_login_at, u.last_login_at";

fn login_user_from_row(row: &Row) -> Result<LoginUser> {
    Ok(LoginUser {
        id: parse_stored_id(row.get(0))?,
        tenant_id: row.get::<_, Option<&str>>(1).map(parse_stored_id).transpose()?,
        role: stored_role(row.get(2))?,
        patient: row.get::<_, Option<&str>>(3).map(parse_stored_id).transpose()?,
        password_hash: row.get(4),
        disabled: row.get(5),
        failed_logins: u32::try_from(row.get::<_, i32>(6)).unwrap_or(0),
        last_failed_login_at: parse_optional_instant(row.get(7))?,
        last_login_at: parse_optional_instant(row.get(8))?,
    })
}

const SESSION_COLUMNS: &str = "s.id, s.user_id, s.tenant_id, u.role, l.patient_id, \
     s.started_at, s.expires_at, s.ended_at, u.disabled, s.token_hash";

fn session_from_row(row: &Row) -> Result<(SessionInfo, String)> {
    let info = SessionInfo {
        id: parse_stored_id(row.get(0))?,
        user_id: parse_stored_id(row.get(1))?,
        tenant_id: row.get::<_, Option<&str>>(2).map(parse_stored_id).transpose()?,
        role: stored_role(row.get(3))?,
        patient: row.get::<_, Option<&str>>(4).map(parse_stored_id).transpose()?,
        started_at: parse_stored_instant(row.get(5))?,
        expires_at: parse_stored_instant(row.get(6))?,
        ended_at: parse_optional_instant(row.get(7))?,
        user_disabled: row.get(8),
    };
    Ok((info, row.get(9)))
}

/// Columns of a service token without its hash, which a lookup by hash selects after them.
const TOKEN_COLUMNS: &str = "id, tenant_id, name, role, created_at, expires_at, revoked_at, \
     client_cert_sha256";

fn service_token_from_row(row: &Row) -> Result<ServiceTokenInfo> {
    Ok(ServiceTokenInfo {
        id: parse_stored_id(row.get(0))?,
        tenant_id: parse_stored_id(row.get(1))?,
        name: row.get(2),
        role: stored_role(row.get(3))?,
        created_at: parse_stored_instant(row.get(4))?,
        expires_at: parse_optional_instant(row.get(5))?,
        revoked_at: parse_optional_instant(row.get(6))?,
        client_cert: parse_stored_fingerprint(row.get(7))?,
    })
}

const USER_SUMMARY_COLUMNS: &str = "u.id, u.tenant_id, u.username, u.role, l.patient_id, \
     u.created_at, u.disabled, u.failed_logins, u.last_failed_login_at, u.last_login_at";

fn user_summary_from_row(row: &Row) -> Result<UserSummary> {
    Ok(UserSummary {
        id: parse_stored_id(row.get(0))?,
        tenant_id: row.get::<_, Option<&str>>(1).map(parse_stored_id).transpose()?,
        username: row.get(2),
        role: stored_role(row.get(3))?,
        patient: row.get::<_, Option<&str>>(4).map(parse_stored_id).transpose()?,
        created_at: parse_stored_instant(row.get(5))?,
        disabled: row.get(6),
        failed_logins: u32::try_from(row.get::<_, i32>(7)).unwrap_or(0),
        last_failed_login_at: parse_optional_instant(row.get(8))?,
        last_login_at: parse_optional_instant(row.get(9))?,
    })
}

fn is_unique_violation(error: &StoreError) -> bool {
    matches!(error, StoreError::Postgres { code: Some(code), .. } if code == UNIQUE_VIOLATION)
}

impl PgStore {
    /// Runs `work` in the tenant's transaction, or on the operator connection for the
    /// platform operators, who have no tenant.
    fn account_tx<T>(
        &self,
        tenant: Option<TenantId>,
        work: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        match tenant {
            Some(tenant) => self.tenant_tx(tenant, work),
            None => self.operator_tx(work),
        }
    }

    /// Appends one entry at the end of a transaction.
    fn append_one(&self, tx: &mut Transaction<'_>, event: AuditEvent) -> Result<()> {
        let mut audit = PgAudit::begin(tx, self.now(), self.simulated())?;
        audit.append(tx, event)?;
        audit.finish(tx)
    }

    pub(crate) fn create_user_impl(&mut self, user: &NewUser<'_>, actor: &str) -> Result<UserId> {
        let username = check_new_user(user)?;
        let tenant_id = user.tenant.map(|tenant| tenant.id);
        let id = UserId::new();
        let now = format_instant(self.now());
        let result = self.account_tx(tenant_id, |tx| {
            let link = match (user.tenant, user.patient) {
                (Some(tenant), Some(patient)) => Some(lock_link(tx, tenant, patient)?),
                _ => None,
            };
            tx.execute(
                "INSERT INTO user_accounts
                     (id, tenant_id, username, role, link_id, password_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &id.to_string(),
                    &tenant_id.map(|id| id.to_string()),
                    &username,
                    &user.role.as_str(),
                    &link,
                    &user.password_hash,
                    &now,
                ],
            )?;
            let mut event = AuditEvent::new(actor, "user.create")
                .subject(id)
                .detail(format!("role {}", user.role));
            if let Some(tenant) = tenant_id {
                event = event.tenant(tenant);
            }
            if let Some(patient) = user.patient {
                event = event.subject(patient);
            }
            self.append_one(tx, event)
        });
        match result {
            Err(error) if is_unique_violation(&error) => {
                Err(StoreError::UserExists { scope: username_scope(user.tenant) })
            }
            other => other.map(|()| id),
        }
    }

    pub(crate) fn user_for_login_impl(
        &self,
        tenant_slug: Option<&str>,
        username: &str,
    ) -> Result<Option<LoginUser>> {
        let Some(username) = normalize_username(username) else {
            return Ok(None);
        };
        let tenant = match tenant_slug {
            Some(slug) => match self.tenant_by_slug_impl(slug) {
                Ok(tenant) => Some(tenant.id),
                Err(StoreError::TenantNotFound(_)) => return Ok(None),
                Err(error) => return Err(error),
            },
            None => None,
        };
        let sql = format!(
            "SELECT {LOGIN_COLUMNS} FROM user_accounts u
             LEFT JOIN patient_links l ON l.id = u.link_id
             WHERE u.username = $1 AND u.tenant_id IS NOT DISTINCT FROM $2"
        );
        let tenant_text = tenant.map(|id| id.to_string());
        let row =
            self.account_tx(tenant, |tx| Ok(tx.query_opt(&sql, &[&username, &tenant_text])?))?;
        row.as_ref().map(login_user_from_row).transpose()
    }

    pub(crate) fn list_users_impl(&self, tenant: Option<&Tenant>) -> Result<Vec<UserSummary>> {
        let sql = format!(
            "SELECT {USER_SUMMARY_COLUMNS} FROM user_accounts u
             LEFT JOIN patient_links l ON l.id = u.link_id
             WHERE u.tenant_id IS NOT DISTINCT FROM $1
             ORDER BY u.username"
        );
        let tenant_id = tenant.map(|tenant| tenant.id);
        let tenant_text = tenant_id.map(|id| id.to_string());
        let rows = self.account_tx(tenant_id, |tx| Ok(tx.query(&sql, &[&tenant_text])?))?;
        rows.iter().map(user_summary_from_row).collect()
    }

    pub(crate) fn record_login_failure_impl(&mut self, user: UserRef) -> Result<u32> {
        let now = format_instant(self.now());
        self.account_tx(user.tenant_id, |tx| {
            let row = tx.query_opt(
                "UPDATE user_accounts
                 SET failed_logins = failed_logins + 1, last_failed_login_at = $3
                 WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 RETURNING failed_logins",
                &[&user.id.to_string(), &user.tenant_id.map(|id| id.to_string()), &now],
            )?;
            let row = row.ok_or_else(|| StoreError::UserNotFound(user.id.to_string()))?;
            let count = u32::try_from(row.get::<_, i32>(0)).unwrap_or(0);
            let event = login_event(user, "login.failed")
                .outcome(Outcome::Failure)
                .detail(format!("{count} failed logins since the last successful one"));
            self.append_one(tx, event)?;
            Ok(count)
        })
    }

    pub(crate) fn record_login_success_impl(&mut self, user: UserRef) -> Result<()> {
        let now = format_instant(self.now());
        self.account_tx(user.tenant_id, |tx| {
            let changed = tx.execute(
                "UPDATE user_accounts SET failed_logins = 0, last_login_at = $3
                 WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2",
                &[&user.id.to_string(), &user.tenant_id.map(|id| id.to_string()), &now],
            )?;
            if changed == 0 {
                return Err(StoreError::UserNotFound(user.id.to_string()));
            }
            self.append_one(tx, login_event(user, "login.success"))
        })
    }

    pub(crate) fn set_user_disabled_impl(
        &mut self,
        user: UserRef,
        disabled: bool,
        actor: &str,
    ) -> Result<()> {
        let now = format_instant(self.now());
        self.account_tx(user.tenant_id, |tx| {
            let changed = tx.execute(
                "UPDATE user_accounts SET disabled = $3
                 WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2",
                &[&user.id.to_string(), &user.tenant_id.map(|id| id.to_string()), &disabled],
            )?;
            if changed == 0 {
                return Err(StoreError::UserNotFound(user.id.to_string()));
            }
            let action = if disabled { "user.disable" } else { "user.enable" };
            let mut event = AuditEvent::new(actor, action).subject(user.id);
            if disabled {
                // A stolen session must not come back when the account is enabled again.
                let ended = tx.execute(
                    "UPDATE sessions SET ended_at = $2
                     WHERE user_id = $1 AND ended_at IS NULL AND expires_at > $2",
                    &[&user.id.to_string(), &now],
                )?;
                event = event.detail(format!("sessions_ended {ended}"));
            }
            if let Some(tenant) = user.tenant_id {
                event = event.tenant(tenant);
            }
            self.append_one(tx, event)
        })
    }

    pub(crate) fn create_session_impl(
        &mut self,
        user: UserRef,
        token_hash: &TokenHash,
        started_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<SessionId> {
        let id = SessionId::new();
        let tenant = user.tenant_id.map(|id| id.to_string());
        self.account_tx(user.tenant_id, |tx| {
            // The key share lock keeps the account, and a patient's link, from being
            // deleted before the session that references them commits.
            let row = tx.query_opt(
                "SELECT link_id, disabled FROM user_accounts
                 WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 FOR KEY SHARE",
                &[&user.id.to_string(), &tenant],
            )?;
            let row = row.ok_or_else(|| StoreError::UserNotFound(user.id.to_string()))?;
            let (link, disabled): (Option<i64>, bool) = (row.get(0), row.get(1));
            if disabled {
                return Err(StoreError::UserDisabled(user.id.to_string()));
            }
            tx.execute(
                "INSERT INTO sessions
                     (id, tenant_id, user_id, link_id, token_hash, started_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &id.to_string(),
                    &tenant,
                    &user.id.to_string(),
                    &link,
                    &token_hash.to_hex(),
                    &format_instant(started_at),
                    &format_instant(expires_at),
                ],
            )?;
            self.append_one(tx, login_event(user, "session.login").subject(id))
        })?;
        Ok(id)
    }

    pub(crate) fn session_by_token_hash_impl(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<SessionInfo>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s
             JOIN user_accounts u ON u.id = s.user_id
             LEFT JOIN patient_links l ON l.id = s.link_id
             WHERE s.token_hash = $1"
        );
        // The operator connection sees every tenant, which is safe here. The hash of a
        // 256-bit random token is the secret, so only the token's holder can name the row.
        // The tenant returned is the session's own, never one the caller chose.
        let row = self.operator_tx(|tx| Ok(tx.query_opt(&sql, &[&token_hash.to_hex()])?))?;
        let Some((info, stored)) = row.as_ref().map(session_from_row).transpose()? else {
            return Ok(None);
        };
        Ok(stored_hash_matches(&stored, token_hash).then_some(info))
    }

    pub(crate) fn end_session_impl(
        &mut self,
        tenant: Option<TenantId>,
        session: SessionId,
    ) -> Result<bool> {
        let now = format_instant(self.now());
        let tenant_text = tenant.map(|id| id.to_string());
        self.account_tx(tenant, |tx| {
            let row = tx.query_opt(
                "SELECT user_id, ended_at FROM sessions
                 WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 FOR UPDATE",
                &[&session.to_string(), &tenant_text],
            )?;
            let row = row.ok_or_else(|| StoreError::SessionNotFound(session.to_string()))?;
            let (user, ended): (Option<String>, Option<String>) = (row.get(0), row.get(1));
            if ended.is_some() {
                return Ok(false);
            }
            tx.execute(
                "UPDATE sessions SET ended_at = $2 WHERE id = $1",
                &[&session.to_string(), &now],
            )?;
            let actor = match &user {
                Some(user) => format!("user:{user}"),
                None => "medconnect".to_owned(),
            };
            let mut event = AuditEvent::new(actor, "session.logout").subject(session);
            if let Some(tenant) = tenant {
                event = event.tenant(tenant);
            }
            self.append_one(tx, event)?;
            Ok(true)
        })
    }

    pub(crate) fn create_service_token_impl(
        &mut self,
        token: &NewServiceToken<'_>,
        actor: &str,
    ) -> Result<ServiceTokenId> {
        check_new_service_token(token)?;
        let id = ServiceTokenId::new();
        let now = format_instant(self.now());
        self.tenant_tx(token.tenant.id, |tx| {
            tx.execute(
                "INSERT INTO service_tokens
                     (id, tenant_id, name, role, token_hash, created_at, expires_at,
                      client_cert_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &id.to_string(),
                    &token.tenant.id.to_string(),
                    &token.name,
                    &token.role.as_str(),
                    &token.token_hash.to_hex(),
                    &now,
                    &token.expires_at.map(format_instant),
                    &token.client_cert.map(|fingerprint| fingerprint.to_hex()),
                ],
            )?;
            let event = AuditEvent::new(actor, "token.create")
                .tenant(token.tenant.id)
                .subject(id)
                .detail(token_create_detail(token));
            self.append_one(tx, event)
        })?;
        Ok(id)
    }

    pub(crate) fn service_token_by_hash_impl(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<ServiceTokenInfo>> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS}, token_hash FROM service_tokens WHERE token_hash = $1");
        // As for sessions: the hash is the secret, so searching every tenant for it is safe.
        let row = self.operator_tx(|tx| Ok(tx.query_opt(&sql, &[&token_hash.to_hex()])?))?;
        let Some(row) = row else { return Ok(None) };
        let info = service_token_from_row(&row)?;
        Ok(stored_hash_matches(row.get(8), token_hash).then_some(info))
    }

    pub(crate) fn platform_sessions_due_impl(&self, ended_before: DateTime<Utc>) -> Result<u64> {
        let count: i64 = self.operator_tx(|tx| {
            Ok(tx
                .query_one(
                    "SELECT count(*) FROM sessions WHERE tenant_id IS NULL AND ends_at <= $1",
                    &[&format_instant(ended_before)],
                )?
                .get(0))
        })?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Claims the due sessions with `FOR UPDATE SKIP LOCKED` and deletes them in the same
    /// statement, so nodes purging at once never both count a session. A session that another
    /// transaction has locked, such as a purge on another node or a logout, is skipped without
    /// waiting, and a later run purges it if it is still due. The audit head is taken after
    /// the deletion, as disposals take it last.
    pub(crate) fn purge_platform_sessions_impl(
        &mut self,
        ended_before: DateTime<Utc>,
        actor: &str,
        run_id: &str,
    ) -> Result<u64> {
        let cutoff = format_instant(ended_before);
        self.operator_tx(|tx| {
            let rows = tx.query(
                "WITH due AS (
                     SELECT id FROM sessions WHERE tenant_id IS NULL AND ends_at <= $1
                     ORDER BY id FOR UPDATE SKIP LOCKED
                 )
                 DELETE FROM sessions s USING due WHERE s.id = due.id RETURNING s.id",
                &[&cutoff],
            )?;
            let mut purged: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
            if purged.is_empty() {
                return Ok(0);
            }
            purged.sort_unstable();
            let event = session_purge_event(actor, run_id, ended_before, &purged);
            self.append_one(tx, event)?;
            Ok(purged.len() as u64)
        })
    }

    pub(crate) fn list_service_tokens_impl(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<ServiceTokenSummary>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM service_tokens WHERE tenant_id = $1
             ORDER BY created_at, id"
        );
        let tenant_text = tenant.id.to_string();
        let rows = self.tenant_tx(tenant.id, |tx| Ok(tx.query(&sql, &[&tenant_text])?))?;
        rows.iter().map(service_token_from_row).collect()
    }

    pub(crate) fn revoke_service_token_impl(
        &mut self,
        tenant: &Tenant,
        token: ServiceTokenId,
        actor: &str,
    ) -> Result<bool> {
        let now = format_instant(self.now());
        self.tenant_tx(tenant.id, |tx| {
            let row = tx.query_opt(
                "SELECT revoked_at FROM service_tokens WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
                &[&token.to_string(), &tenant.id.to_string()],
            )?;
            let row = row.ok_or_else(|| StoreError::ServiceTokenNotFound(token.to_string()))?;
            if row.get::<_, Option<String>>(0).is_some() {
                return Ok(false);
            }
            tx.execute(
                "UPDATE service_tokens SET revoked_at = $2 WHERE id = $1",
                &[&token.to_string(), &now],
            )?;
            let event = AuditEvent::new(actor, "token.revoke").tenant(tenant.id).subject(token);
            self.append_one(tx, event)?;
            Ok(true)
        })
    }
}
