//! `user` and `token`: user accounts and service tokens of the HTTPS API.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use medconnect_domain::PatientId;

use crate::output::print_json;
use crate::Context;

/// Environment variable that `user create` reads the new password from.
const NEW_PASSWORD_VAR: &str = "MEDCONNECT_NEW_PASSWORD";

pub fn user(context: &Context, command: crate::cli::UserCommand) -> Result<ExitCode> {
    let crate::cli::UserCommand::Create { tenant, username, role, patient, json } = command;
    let role: medconnect_store::Role = role.parse()?;
    let patient = patient.as_deref().map(PatientId::parse).transpose()?;
    let password = new_password()?;
    medconnect_crypto::check_new_password(&password)?;
    let mut store = context.open_store()?;
    let tenant = tenant.as_deref().map(|slug| store.tenant_by_slug(slug)).transpose()?;
    let password_hash = medconnect_crypto::hash_password(&password)?;
    let new = medconnect_store::NewUser {
        tenant: tenant.as_ref(),
        username: &username,
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

pub fn token(context: &Context, command: crate::cli::TokenCommand) -> Result<ExitCode> {
    let crate::cli::TokenCommand::Create {
        tenant,
        name,
        role,
        client_cert,
        expires_in_days,
        no_expiry,
        json,
    } = command;
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
