//! User accounts, login sessions and service tokens.

use chrono::{DateTime, Utc};
use medconnect_crypto::TokenHash;
use medconnect_domain::audit::{AuditEvent, Outcome};
use medconnect_domain::model::Tenant;
use medconnect_domain::time::format_instant;
use medconnect_domain::{ServiceTokenId, SessionId, TenantId, UserId};
use rusqlite::{OptionalExtension, Row};

use super::audit::AuditAppender;
use super::records::link_key;
use super::values::{parse_optional_instant, parse_stored_id, parse_stored_instant};
use super::SqliteStore;
use crate::accounts::{
    check_new_service_token, check_new_user, normalize_username, session_purge_event, stored_role,
    user_actor,
};
use crate::{
    CertificateFingerprint, LoginUser, NewServiceToken, NewUser, Result, ServiceTokenInfo,
    ServiceTokenSummary, SessionInfo, StoreError, UserRef, UserSummary,
};

const LOGIN_COLUMNS: &str = "u.id, u.tenant_id, u.role, l.patient_id, u.password_hash, \
     u.disabled, u.failed_logins, u.last_failed_login_at, u.last_login_at";

fn login_user_from_row(row: &Row<'_>) -> Result<LoginUser> {
    Ok(LoginUser {
        id: parse_stored_id(&row.get::<_, String>(0)?)?,
        tenant_id: row.get::<_, Option<String>>(1)?.as_deref().map(parse_stored_id).transpose()?,
        role: stored_role(&row.get::<_, String>(2)?)?,
        patient: row.get::<_, Option<String>>(3)?.as_deref().map(parse_stored_id).transpose()?,
        password_hash: row.get(4)?,
        disabled: row.get(5)?,
        failed_logins: row.get(6)?,
        last_failed_login_at: parse_optional_instant(row.get(7)?)?,
        last_login_at: parse_optional_instant(row.get(8)?)?,
    })
}

const SESSION_COLUMNS: &str = "s.id, s.user_id, s.tenant_id, u.role, l.patient_id, \
     s.started_at, s.expires_at, s.ended_at, u.disabled, s.token_hash";

fn session_from_row(row: &Row<'_>) -> Result<(SessionInfo, String)> {
    let info = SessionInfo {
        id: parse_stored_id(&row.get::<_, String>(0)?)?,
        user_id: parse_stored_id(&row.get::<_, String>(1)?)?,
        tenant_id: row.get::<_, Option<String>>(2)?.as_deref().map(parse_stored_id).transpose()?,
        role: stored_role(&row.get::<_, String>(3)?)?,
        patient: row.get::<_, Option<String>>(4)?.as_deref().map(parse_stored_id).transpose()?,
        started_at: parse_stored_instant(&row.get::<_, String>(5)?)?,
        expires_at: parse_stored_instant(&row.get::<_, String>(6)?)?,
        ended_at: parse_optional_instant(row.get(7)?)?,
        user_disabled: row.get(8)?,
    };
    Ok((info, row.get(9)?))
}

/// Columns of a service token without its hash, which a lookup by hash selects after them.
const TOKEN_COLUMNS: &str = "id, tenant_id, name, role, created_at, expires_at, revoked_at, \
     client_cert_sha256";

fn service_token_from_row(row: &Row<'_>) -> Result<ServiceTokenInfo> {
    Ok(ServiceTokenInfo {
        id: parse_stored_id(&row.get::<_, String>(0)?)?,
        tenant_id: parse_stored_id(&row.get::<_, String>(1)?)?,
        name: row.get(2)?,
        role: stored_role(&row.get::<_, String>(3)?)?,
        created_at: parse_stored_instant(&row.get::<_, String>(4)?)?,
        expires_at: parse_optional_instant(row.get(5)?)?,
        revoked_at: parse_optional_instant(row.get(6)?)?,
        client_cert: parse_stored_fingerprint(row.get(7)?)?,
    })
}

const USER_SUMMARY_COLUMNS: &str = "u.id, u.tenant_id, u.username, u.role, l.patient_id, \
     u.created_at, u.disabled, u.failed_logins, u.last_failed_login_at, u.last_login_at";

fn user_summary_from_row(row: &Row<'_>) -> Result<UserSummary> {
    Ok(UserSummary {
        id: parse_stored_id(&row.get::<_, String>(0)?)?,
        tenant_id: row.get::<_, Option<String>>(1)?.as_deref().map(parse_stored_id).transpose()?,
        username: row.get(2)?,
        role: stored_role(&row.get::<_, String>(3)?)?,
        patient: row.get::<_, Option<String>>(4)?.as_deref().map(parse_stored_id).transpose()?,
        created_at: parse_stored_instant(&row.get::<_, String>(5)?)?,
        disabled: row.get(6)?,
        failed_logins: row.get(7)?,
        last_failed_login_at: parse_optional_instant(row.get(8)?)?,
        last_login_at: parse_optional_instant(row.get(9)?)?,
    })
}

/// Parses a stored client certificate fingerprint.
pub(crate) fn parse_stored_fingerprint(
    stored: Option<String>,
) -> Result<Option<CertificateFingerprint>> {
    let Some(text) = stored else { return Ok(None) };
    CertificateFingerprint::from_hex(&text).map(Some).ok_or_else(|| {
        StoreError::Corrupt(
            "a service token's client certificate fingerprint is not 64 hex digits".into(),
        )
    })
}

/// Returns whether a stored hash equals `expected`, compared in constant time. The row was
/// found by this hash, so a mismatch means a damaged row, which is treated as no match.
pub(crate) fn stored_hash_matches(stored: &str, expected: &TokenHash) -> bool {
    TokenHash::from_hex(stored).is_some_and(|hash| hash.matches(expected))
}

/// Names the scope of a username in messages: the tenant's slug, or the platform.
pub(crate) fn username_scope(tenant: Option<&Tenant>) -> String {
    match tenant {
        Some(tenant) => format!("tenant {:?}", tenant.slug),
        None => "the platform operators".to_owned(),
    }
}

fn tenant_text(tenant: Option<TenantId>) -> Option<String> {
    tenant.map(|id| id.to_string())
}

impl SqliteStore {
    pub(crate) fn create_user_impl(&mut self, user: &NewUser<'_>, actor: &str) -> Result<UserId> {
        let username = check_new_user(user)?;
        let tenant_id = user.tenant.map(|tenant| tenant.id);
        let link = match (user.tenant, user.patient) {
            (Some(tenant), Some(patient)) => {
                Some(link_key(&self.conn, tenant.id, patient)?.ok_or_else(|| {
                    StoreError::PatientNotFound {
                        tenant: tenant.slug.clone(),
                        patient: patient.to_string(),
                    }
                })?)
            }
            _ => None,
        };
        let id = UserId::new();
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM user_accounts WHERE tenant_id IS ?1 AND username = ?2)",
            (tenant_text(tenant_id), &username),
            |row| row.get(0),
        )?;
        if taken {
            return Err(StoreError::UserExists { scope: username_scope(user.tenant) });
        }
        tx.execute(
            "INSERT INTO user_accounts (id, tenant_id, username, role, link_id, password_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            (
                id.to_string(),
                tenant_text(tenant_id),
                &username,
                user.role.as_str(),
                link,
                user.password_hash,
                format_instant(now),
            ),
        )?;
        let mut event =
            AuditEvent::new(actor, "user.create").subject(id).detail(format!("role {}", user.role));
        if let Some(tenant) = tenant_id {
            event = event.tenant(tenant);
        }
        if let Some(patient) = user.patient {
            event = event.subject(patient);
        }
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(id)
    }

    pub(crate) fn user_for_login_impl(
        &self,
        tenant_slug: Option<&str>,
        username: &str,
    ) -> Result<Option<LoginUser>> {
        let Some(username) = normalize_username(username) else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {LOGIN_COLUMNS} FROM user_accounts u
             LEFT JOIN tenants t ON t.id = u.tenant_id
             LEFT JOIN patient_links l ON l.id = u.link_id
             WHERE u.username = ?2
               AND ((?1 IS NULL AND u.tenant_id IS NULL) OR t.slug = ?1)"
        );
        let row = self
            .conn
            .query_row(&sql, (tenant_slug, &username), |row| Ok(login_user_from_row(row)))
            .optional()?;
        row.transpose()
    }

    pub(crate) fn list_users_impl(&self, tenant: Option<&Tenant>) -> Result<Vec<UserSummary>> {
        let sql = format!(
            "SELECT {USER_SUMMARY_COLUMNS} FROM user_accounts u
             LEFT JOIN patient_links l ON l.id = u.link_id
             WHERE u.tenant_id IS ?1
             ORDER BY u.username"
        );
        let tenant = tenant_text(tenant.map(|tenant| tenant.id));
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([tenant], |row| Ok(user_summary_from_row(row)))?;
        rows.map(|row| row?).collect()
    }

    pub(crate) fn record_login_failure_impl(&mut self, user: UserRef) -> Result<u32> {
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let count: Option<u32> = tx
            .query_row(
                "UPDATE user_accounts
                 SET failed_logins = failed_logins + 1, last_failed_login_at = ?3
                 WHERE id = ?1 AND tenant_id IS ?2 RETURNING failed_logins",
                (user.id.to_string(), tenant_text(user.tenant_id), format_instant(now)),
                |row| row.get(0),
            )
            .optional()?;
        let count = count.ok_or_else(|| StoreError::UserNotFound(user.id.to_string()))?;
        let event = login_event(user, "login.failed")
            .outcome(Outcome::Failure)
            .detail(format!("{count} failed logins since the last successful one"));
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(count)
    }

    pub(crate) fn record_login_success_impl(&mut self, user: UserRef) -> Result<()> {
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let changed = tx.execute(
            "UPDATE user_accounts SET failed_logins = 0, last_login_at = ?3
             WHERE id = ?1 AND tenant_id IS ?2",
            (user.id.to_string(), tenant_text(user.tenant_id), format_instant(now)),
        )?;
        if changed == 0 {
            return Err(StoreError::UserNotFound(user.id.to_string()));
        }
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, login_event(user, "login.success"))?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn set_user_disabled_impl(
        &mut self,
        user: UserRef,
        disabled: bool,
        actor: &str,
    ) -> Result<()> {
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let changed = tx.execute(
            "UPDATE user_accounts SET disabled = ?3 WHERE id = ?1 AND tenant_id IS ?2",
            (user.id.to_string(), tenant_text(user.tenant_id), disabled),
        )?;
        if changed == 0 {
            return Err(StoreError::UserNotFound(user.id.to_string()));
        }
        let action = if disabled { "user.disable" } else { "user.enable" };
        let mut event = AuditEvent::new(actor, action).subject(user.id);
        if disabled {
            // A stolen session must not come back when the account is enabled again.
            let ended = tx.execute(
                "UPDATE sessions SET ended_at = ?2
                 WHERE user_id = ?1 AND ended_at IS NULL AND expires_at > ?2",
                (user.id.to_string(), format_instant(now)),
            )?;
            event = event.detail(format!("sessions_ended {ended}"));
        }
        if let Some(tenant) = user.tenant_id {
            event = event.tenant(tenant);
        }
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn create_session_impl(
        &mut self,
        user: UserRef,
        token_hash: &TokenHash,
        started_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<SessionId> {
        let id = SessionId::new();
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let account: Option<(Option<i64>, bool)> = tx
            .query_row(
                "SELECT link_id, disabled FROM user_accounts WHERE id = ?1 AND tenant_id IS ?2",
                (user.id.to_string(), tenant_text(user.tenant_id)),
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let (link, disabled) =
            account.ok_or_else(|| StoreError::UserNotFound(user.id.to_string()))?;
        if disabled {
            return Err(StoreError::UserDisabled(user.id.to_string()));
        }
        tx.execute(
            "INSERT INTO sessions (id, tenant_id, user_id, link_id, token_hash, started_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            (
                id.to_string(),
                tenant_text(user.tenant_id),
                user.id.to_string(),
                link,
                token_hash.to_hex(),
                format_instant(started_at),
                format_instant(expires_at),
            ),
        )?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, login_event(user, "session.login").subject(id))?;
        audit.finish(&tx)?;
        tx.commit()?;
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
             WHERE s.token_hash = ?1"
        );
        let row = self
            .conn
            .prepare_cached(&sql)?
            .query_row([token_hash.to_hex()], |row| Ok(session_from_row(row)))
            .optional()?
            .transpose()?;
        Ok(row.and_then(|(info, stored)| stored_hash_matches(&stored, token_hash).then_some(info)))
    }

    pub(crate) fn end_session_impl(
        &mut self,
        tenant: Option<TenantId>,
        session: SessionId,
    ) -> Result<bool> {
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let found: Option<(Option<String>, Option<String>)> = tx
            .query_row(
                "SELECT user_id, ended_at FROM sessions WHERE id = ?1 AND tenant_id IS ?2",
                (session.to_string(), tenant_text(tenant)),
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((user, ended)) = found else {
            return Err(StoreError::SessionNotFound(session.to_string()));
        };
        if ended.is_some() {
            return Ok(false);
        }
        tx.execute(
            "UPDATE sessions SET ended_at = ?2 WHERE id = ?1",
            (session.to_string(), format_instant(now)),
        )?;
        let actor = match &user {
            Some(user) => format!("user:{user}"),
            None => "medconnect".to_owned(),
        };
        let mut event = AuditEvent::new(actor, "session.logout").subject(session);
        if let Some(tenant) = tenant {
            event = event.tenant(tenant);
        }
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(true)
    }

    pub(crate) fn create_service_token_impl(
        &mut self,
        token: &NewServiceToken<'_>,
        actor: &str,
    ) -> Result<ServiceTokenId> {
        check_new_service_token(token)?;
        let id = ServiceTokenId::new();
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO service_tokens
                 (id, tenant_id, name, role, token_hash, created_at, expires_at, client_cert_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            (
                id.to_string(),
                token.tenant.id.to_string(),
                token.name,
                token.role.as_str(),
                token.token_hash.to_hex(),
                format_instant(now),
                token.expires_at.map(format_instant),
                token.client_cert.map(|fingerprint| fingerprint.to_hex()),
            ),
        )?;
        let event = AuditEvent::new(actor, "token.create")
            .tenant(token.tenant.id)
            .subject(id)
            .detail(token_create_detail(token));
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(id)
    }

    pub(crate) fn service_token_by_hash_impl(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<ServiceTokenInfo>> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS}, token_hash FROM service_tokens WHERE token_hash = ?1");
        let read = |row: &Row<'_>| -> Result<(ServiceTokenInfo, String)> {
            Ok((service_token_from_row(row)?, row.get(8)?))
        };
        let row = self
            .conn
            .prepare_cached(&sql)?
            .query_row([token_hash.to_hex()], |row| Ok(read(row)))
            .optional()?
            .transpose()?;
        Ok(row.and_then(|(info, stored)| stored_hash_matches(&stored, token_hash).then_some(info)))
    }

    pub(crate) fn platform_sessions_due_impl(&self, ended_before: DateTime<Utc>) -> Result<u64> {
        let count: i64 = self.conn.query_row(
            "SELECT count(*) FROM sessions WHERE tenant_id IS NULL AND ends_at <= ?1",
            [format_instant(ended_before)],
            |row| row.get(0),
        )?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    pub(crate) fn purge_platform_sessions_impl(
        &mut self,
        ended_before: DateTime<Utc>,
        actor: &str,
        run_id: &str,
    ) -> Result<u64> {
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let mut purged: Vec<String> = {
            let mut statement = tx.prepare(
                "DELETE FROM sessions WHERE tenant_id IS NULL AND ends_at <= ?1 RETURNING id",
            )?;
            let rows = statement.query_map([format_instant(ended_before)], |row| row.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if purged.is_empty() {
            return Ok(0);
        }
        purged.sort_unstable();
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, session_purge_event(actor, run_id, ended_before, &purged))?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(purged.len() as u64)
    }

    pub(crate) fn list_service_tokens_impl(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<ServiceTokenSummary>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM service_tokens WHERE tenant_id = ?1
             ORDER BY created_at, id"
        );
        let mut statement = self.conn.prepare(&sql)?;
        let rows =
            statement.query_map([tenant.id.to_string()], |row| Ok(service_token_from_row(row)))?;
        rows.map(|row| row?).collect()
    }

    pub(crate) fn revoke_service_token_impl(
        &mut self,
        tenant: &Tenant,
        token: ServiceTokenId,
        actor: &str,
    ) -> Result<bool> {
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let revoked: Option<Option<String>> = tx
            .query_row(
                "SELECT revoked_at FROM service_tokens WHERE id = ?1 AND tenant_id = ?2",
                (token.to_string(), tenant.id.to_string()),
                |row| row.get(0),
            )
            .optional()?;
        match revoked {
            None => return Err(StoreError::ServiceTokenNotFound(token.to_string())),
            Some(Some(_)) => return Ok(false),
            Some(None) => {}
        }
        tx.execute(
            "UPDATE service_tokens SET revoked_at = ?2 WHERE id = ?1",
            (token.to_string(), format_instant(now)),
        )?;
        let event = AuditEvent::new(actor, "token.revoke").tenant(tenant.id).subject(token);
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        audit.append(&tx, event)?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(true)
    }
}

/// Describes a new service token for its `token.create` entry: the role and, for a storefront
/// token, the fingerprint of its client certificate, which is no secret.
pub(crate) fn token_create_detail(token: &NewServiceToken<'_>) -> String {
    match token.client_cert {
        Some(fingerprint) => {
            format!("role {}, client certificate sha256 {fingerprint}", token.role)
        }
        None => format!("role {}", token.role),
    }
}

/// Builds an entry that a user's own login or logout writes, with the user as actor.
pub(crate) fn login_event(user: UserRef, action: &str) -> AuditEvent {
    let mut event = AuditEvent::new(user_actor(user.id), action).subject(user.id);
    if let Some(tenant) = user.tenant_id {
        event = event.tenant(tenant);
    }
    event
}
