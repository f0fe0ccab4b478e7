//! `user` and `token`: user accounts and service tokens of the HTTPS API.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use medconnect_domain::model::Tenant;
use medconnect_domain::{PatientId, ServiceTokenId};
use medconnect_store::StoreError;

use crate::cli::{NewTokenArgs, TokenCommand, UserCommand, UserTarget};
use crate::output::{self, print_json};
use crate::Context;

/// Environment variable that `user create` reads the new password from.
const NEW_PASSWORD_VAR: &str = "MEDCONNECT_NEW_PASSWORD";

pub fn user(context: &Context, command: UserCommand) -> Result<ExitCode> {
    match command {
        UserCommand::Create { tenant, username, role, patient, json } => {
            create_user(context, tenant.as_deref(), &username, &role, patient.as_deref(), json)
        }
        UserCommand::List { tenant, json } => list_users(context, tenant.as_deref(), json),
        UserCommand::Disable(target) => set_user_disabled(context, &target, true),
        UserCommand::Enable(target) => set_user_disabled(context, &target, false),
    }
}

fn create_user(
    context: &Context,
    tenant: Option<&str>,
    username: &str,
    role: &str,
    patient: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let role: medconnect_store::Role = role.parse()?;
    let patient = patient.map(PatientId::parse).transpose()?;
    let password = new_password()?;
    medconnect_crypto::check_new_password(&password)?;
    let mut store = context.open_store()?;
    let tenant = tenant.map(|slug| store.tenant_by_slug(slug)).transpose()?;
    let password_hash = medconnect_crypto::hash_password(&password)?;
    let new = medconnect_store::NewUser {
        tenant: tenant.as_ref(),
        username,
        role,
        password_hash: &password_hash,
        patient,
    };
    let id = store.create_user(&new, &context.actor)?;
    let scope = tenant.as_ref().map_or("the platform", |tenant| tenant.slug.as_str());
    if json {
        print_json(&serde_json::json!({
            "user_id": id,
            "tenant": tenant.as_ref().map(|tenant| &tenant.slug),
            "role": role,
        }))?;
    } else {
        outln!("created user {id} with role {role} in {scope}");
    }
    Ok(ExitCode::SUCCESS)
}

fn list_users(context: &Context, tenant: Option<&str>, json: bool) -> Result<ExitCode> {
    let store = context.open_store()?;
    let tenant = tenant.map(|slug| store.tenant_by_slug(slug)).transpose()?;
    let users = store.list_users(tenant.as_ref())?;
    let slug = tenant.as_ref().map(|tenant| tenant.slug.as_str());
    if json {
        print_json(&output::users_json(&users, slug))?;
    } else {
        output::print_users(&users, slug);
    }
    Ok(ExitCode::SUCCESS)
}

/// Disables or enables the account that `target` names. An account already in that state is
/// left alone, with no audit entry.
fn set_user_disabled(context: &Context, target: &UserTarget, disabled: bool) -> Result<ExitCode> {
    let mut store = context.open_store()?;
    let tenant = target.tenant.as_deref().map(|slug| store.tenant_by_slug(slug)).transpose()?;
    let slug = tenant.as_ref().map(|tenant| tenant.slug.as_str());

    // The messages name the account by id and never repeat the username, as `user create`
    // does, because a username may be an email address.
    let Some(user) = store.user_for_login(slug, &target.username)? else {
        bail!("{}", unknown_user_message(slug));
    };

    let account = match slug {
        Some(slug) => format!("user {} of tenant {slug}", user.id),
        None => format!("platform operator {}", user.id),
    };
    let state = if disabled { "disabled" } else { "enabled" };
    if user.disabled == disabled {
        outln!("{account} is already {state}, so nothing changed");
        return Ok(ExitCode::SUCCESS);
    }

    store.set_user_disabled(user.user_ref(), disabled, &context.actor)?;
    if disabled {
        outln!("disabled {account}: it cannot log in, and its sessions have ended");
    } else {
        outln!("enabled {account}: it can log in again; sessions ended by the disable stay ended");
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the error for a username that names no account, with the command that lists them.
fn unknown_user_message(tenant: Option<&str>) -> String {
    match tenant {
        Some(slug) => format!(
            "no user of tenant {slug:?} has this username: list them with `medconnect user \
             list --tenant {slug}`"
        ),
        None => "no platform operator has this username: list them with `medconnect user \
                 list`, and pass --tenant SLUG for a user of a tenant"
            .to_owned(),
    }
}

/// Reads a new password from [`NEW_PASSWORD_VAR`] or, when it is unset, from the first line
/// of standard input. A terminal is rejected, because it would show the password as typed.
fn new_password() -> Result<medconnect_crypto::Zeroizing<String>> {
    use std::io::IsTerminal as _;

    if let Some(value) = std::env::var_os(NEW_PASSWORD_VAR) {
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{NEW_PASSWORD_VAR} is not valid UTF-8"))?;
        return Ok(medconnect_crypto::Zeroizing::new(value));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(
            "no password given: set {NEW_PASSWORD_VAR} or pipe the password into standard \
             input (a terminal would show it as typed)"
        );
    }
    let mut line = medconnect_crypto::Zeroizing::new(String::new());
    stdin.read_line(&mut line).context("reading the password from standard input")?;
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}

pub fn token(context: &Context, command: TokenCommand) -> Result<ExitCode> {
    match command {
        TokenCommand::Create(args) => create_token(context, args),
        TokenCommand::List { tenant, json } => list_tokens(context, &tenant, json),
        TokenCommand::Revoke { tenant, token_id } => revoke_token(context, &tenant, &token_id),
    }
}

/// Creates a service token and prints it once. A storefront token must be bound to a client
/// certificate, and no other role may be.
fn create_token(context: &Context, args: NewTokenArgs) -> Result<ExitCode> {
    let NewTokenArgs { tenant, name, role, client_cert, expires_in_days, no_expiry, json } = args;
    let role: medconnect_store::Role = role.parse()?;
    let client_cert = match (role, client_cert) {
        (medconnect_store::Role::Storefront, Some(path)) => {
            Some(medconnect_api::tls::client_certificate_fingerprint(&path)?)
        }
        (medconnect_store::Role::Storefront, None) => bail!(
            "a storefront token needs --client-cert FILE: pass the Storefront's client \
             certificate in PEM, issued by a CA of the server's --client-ca"
        ),
        (_, None) => None,
        (role, Some(_)) => {
            bail!("--client-cert applies only to storefront tokens: drop it for a {role} token")
        }
    };

    let mut store = context.open_store()?;
    let tenant = store.tenant_by_slug(&tenant)?;
    let expires_at =
        (!no_expiry).then(|| chrono::Utc::now() + chrono::Duration::days(expires_in_days.into()));
    let token = medconnect_crypto::SecretToken::generate()?;
    let new = medconnect_store::NewServiceToken {
        tenant: &tenant,
        name: &name,
        role,
        token_hash: token.hash(),
        expires_at,
        client_cert,
    };
    let id = store.create_service_token(&new, &context.actor)?;

    let expires = expires_at.map(medconnect_domain::time::format_instant);
    if json {
        print_json(&serde_json::json!({
            "token_id": id,
            "tenant": tenant.slug,
            "name": name,
            "role": role,
            "expires_at": expires,
            "client_cert_sha256": client_cert,
            "token": token.expose(),
        }))?;
    } else {
        let expires = expires.map_or("never expires".to_owned(), |at| format!("expires {at}"));
        outln!(
            "created service token {id} with role {role} in tenant {}; it {expires}",
            tenant.slug
        );
        if let Some(fingerprint) = client_cert {
            outln!("bound to the client certificate with SHA-256 {fingerprint}");
        }
        outln!("token (shown only now; store it in the client's secret store):");
        outln!("{}", token.expose());
    }
    Ok(ExitCode::SUCCESS)
}

fn list_tokens(context: &Context, tenant: &str, json: bool) -> Result<ExitCode> {
    let store = context.open_store()?;
    let tenant = store.tenant_by_slug(tenant)?;
    let tokens = store.list_service_tokens(&tenant)?;
    let now = chrono::Utc::now();
    if json {
        print_json(&output::tokens_json(&tokens, &tenant.slug, now))?;
    } else {
        output::print_tokens(&tokens, &tenant.slug, now);
    }
    Ok(ExitCode::SUCCESS)
}

/// Revokes one of the tenant's service tokens. A token revoked before is reported and left
/// alone. An id that names no token of this tenant fails, also when it names another
/// tenant's token.
fn revoke_token(context: &Context, tenant: &str, token_id: &str) -> Result<ExitCode> {
    // The value is not repeated: an operator may paste the token itself here by mistake.
    let Ok(id) = ServiceTokenId::parse(token_id) else {
        bail!(
            "invalid service token id: pass the token_id that `medconnect token list --tenant \
             {tenant}` prints, a UUID, not the token itself"
        );
    };
    let mut store = context.open_store()?;
    let tenant = store.tenant_by_slug(tenant)?;
    let revoked = match store.revoke_service_token(&tenant, id, &context.actor) {
        Err(StoreError::ServiceTokenNotFound(_)) => bail!("{}", unknown_token_message(&tenant, id)),
        other => other?,
    };

    let token = store.list_service_tokens(&tenant)?.into_iter().find(|token| token.id == id);
    let name = token.as_ref().map_or("?", |token| token.name.as_str());
    if revoked {
        outln!(
            "revoked service token {id} ({name}) of tenant {}: requests with it get 401 from now \
             on",
            tenant.slug
        );
    } else {
        let revoked_at = token.as_ref().and_then(|token| token.revoked_at);
        let at = revoked_at.map_or("?".to_owned(), output::instant);
        outln!(
            "service token {id} ({name}) of tenant {} was already revoked at {at}, so nothing \
             changed",
            tenant.slug
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn unknown_token_message(tenant: &Tenant, id: ServiceTokenId) -> String {
    format!(
        "service token {id} not found in tenant {:?}: list the tenant's tokens with `medconnect \
         token list --tenant {}`",
        tenant.slug, tenant.slug
    )
}
