//! User accounts, login sessions and service tokens through the `Store` trait on every
//! backend: lookups, tenant isolation, state of expired and ended credentials, audit entries
//! without secrets, and disposal by the session and PHI purges.

use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};
use medconnect_crypto::{hash_password, verify_password, MasterKey, SecretToken, TokenHash};
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{Category, ImportBatch, NewPatientProfile, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::{format_instant, parse_instant, sub_days};
use medconnect_domain::{PatientId, ServiceTokenId, SessionId, UserId};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{
    backend_tests, CertificateFingerprint, CredentialState, Disposal, DisposalContext,
    DisposalOutcome, NewServiceToken, NewUser, Role, StoreError, UserRef,
};

const ACTOR: &str = "operator:test";
const NOW: &str = "2024-01-01T00:00:00Z";
const PASSWORD: &str = "correct horse battery staple";
const USERNAME: &str = "Dr.Jones@Example.test";

backend_tests!(
    user_create_and_lookup,
    wrong_tenant_equals_missing_user,
    duplicate_username_rejected,
    account_input_checked,
    platform_operator_has_no_tenant,
    disabled_user_cannot_log_in,
    login_failures_counted,
    session_create_lookup_end,
    session_state_at_expiry,
    patient_session_names_patient,
    service_token_create_lookup_revoke,
    service_token_input_checked,
    storefront_token_bound_to_certificate,
    certificate_binding_checked,
    audit_entries_hold_no_secrets,
    tenant_a_credentials_stay_in_a,
    service_tokens_listed_per_tenant,
    users_listed_per_tenant,
    session_purge_disposes_login_sessions,
    phi_purge_removes_patient_account,
    platform_session_purge_edges,
    platform_session_purge_audited_once,
);

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

/// Returns one argon2id hash of [`PASSWORD`] for every test, because hashing takes a while.
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(PASSWORD).expect("password hashed"))
}

fn store(backend: Backend) -> TestStore {
    let mut store = backend.create(Box::new(FixedClock(at(NOW))));
    store.set_master_keys(MasterKey::from_bytes(1, &[9; 32]), None).expect("master key");
    store
}

fn staff(tenant: &Tenant, username: &'static str, role: Role) -> NewUser<'static> {
    // Leaking the tenant lets the helper return a NewUser without a lifetime parameter. Each
    // test leaks a few small values.
    let tenant: &'static Tenant = Box::leak(Box::new(tenant.clone()));
    NewUser { tenant: Some(tenant), username, role, password_hash: password_hash(), patient: None }
}

fn create_staff(store: &mut TestStore, tenant: &Tenant, username: &'static str) -> UserRef {
    let id = store.create_user(&staff(tenant, username, Role::Provider), ACTOR).expect("user");
    UserRef { id, tenant_id: Some(tenant.id) }
}

/// Imports one synthetic patient into `tenant` and returns its id.
fn import_patient(store: &mut TestStore, tenant: &Tenant, source_id: &str) -> PatientId {
    let batch = ImportBatch {
        source_system: "test".into(),
        patients: vec![NewPatientProfile {
            source_system: "test".into(),
            source_id: source_id.into(),
            given_name: "Test1".into(),
            family_name: "Patient1".into(),
            birth_date: "1970-01-01".into(),
            sex: "F".into(),
            address_line: "1 Main Street".into(),
            city: "Lincoln".into(),
            state: "NE".into(),
            postal_code: "68501".into(),
            ..NewPatientProfile::default()
        }],
        ..ImportBatch::default()
    };
    store.import(tenant, &batch, &Policy::builtin(), ACTOR).expect("import");
    store.find_patient(tenant, "test", source_id).expect("lookup").expect("imported")
}

/// Creates a session for `user` that expires in one hour, and returns its id and token.
fn login(store: &mut TestStore, user: UserRef) -> (SessionId, SecretToken) {
    let token = SecretToken::generate().expect("token");
    let started = at(NOW);
    let id = store
        .create_session(user, &token.hash(), started, started + Duration::hours(1))
        .expect("session created");
    (id, token)
}

/// Returns a fingerprint that stands for the Storefront's client certificate.
fn storefront_cert() -> CertificateFingerprint {
    CertificateFingerprint::of_der(b"storefront client certificate")
}

/// Returns a new token of `role`, bound to [`storefront_cert`] when the role is storefront.
fn new_token(tenant: &Tenant, role: Role, hash: TokenHash) -> NewServiceToken<'_> {
    NewServiceToken {
        tenant,
        name: "storefront-main",
        role,
        token_hash: hash,
        expires_at: Some(at("2025-01-01T00:00:00Z")),
        client_cert: (role == Role::Storefront).then(storefront_cert),
    }
}

fn user_create_and_lookup(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let user = create_staff(&mut store, &tenant, USERNAME);

    let found = store.user_for_login(Some("alpha"), USERNAME).expect("lookup").expect("found");
    assert_eq!(found.id, user.id);
    assert_eq!(found.tenant_id, Some(tenant.id));
    assert_eq!(found.role, Role::Provider);
    assert_eq!(found.patient, None);
    assert!(!found.disabled);
    assert_eq!(found.failed_logins, 0);
    assert!(verify_password(PASSWORD, &found.password_hash).expect("hash checked"));

    // Usernames are compared without regard to case.
    let lower = store.user_for_login(Some("alpha"), &USERNAME.to_lowercase()).expect("lookup");
    assert_eq!(lower.map(|user| user.id), Some(user.id));
}

fn wrong_tenant_equals_missing_user(backend: Backend) {
    let mut store = store(backend);
    let alpha = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    create_staff(&mut store, &alpha, USERNAME);

    let cases = [
        (Some("beta"), USERNAME, "user of another tenant"),
        (Some("gamma"), USERNAME, "tenant that does not exist"),
        (Some("alpha"), "nobody@example.test", "missing user"),
        (None, USERNAME, "tenant user asked for as platform operator"),
        (Some("alpha"), "", "empty username"),
    ];
    for (tenant, username, case) in cases {
        let found = store.user_for_login(tenant, username);
        assert!(matches!(found, Ok(None)), "{case}: {:?}", found.map(|user| user.map(|u| u.id)));
    }
}

fn duplicate_username_rejected(backend: Backend) {
    let mut store = store(backend);
    let alpha = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let beta = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    create_staff(&mut store, &alpha, USERNAME);

    let error = store
        .create_user(&staff(&alpha, "dr.jones@example.TEST", Role::TenantAdmin), ACTOR)
        .expect_err("same username in another case");
    assert!(matches!(error, StoreError::UserExists { .. }), "{error}");
    let message = error.to_string().to_lowercase();
    assert!(!message.contains("dr.jones"), "the message repeats the username: {message}");
    assert!(message.contains("alpha"), "{message}");

    let other = store.create_user(&staff(&beta, USERNAME, Role::Provider), ACTOR);
    assert!(other.is_ok(), "the same username in another tenant: {:?}", other.err());
}

fn account_input_checked(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let other = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    let patient = import_patient(&mut store, &other, "p-1");
    let hash = password_hash();
    let cases: Vec<(NewUser<'_>, &str)> = vec![
        (
            NewUser {
                tenant: Some(&tenant),
                username: "ops",
                role: Role::PlatformOperator,
                password_hash: hash,
                patient: None,
            },
            "platform operator with a tenant",
        ),
        (
            NewUser {
                tenant: None,
                username: "admin",
                role: Role::TenantAdmin,
                password_hash: hash,
                patient: None,
            },
            "tenant admin without a tenant",
        ),
        (
            NewUser {
                tenant: Some(&tenant),
                username: "pat",
                role: Role::Patient,
                password_hash: hash,
                patient: None,
            },
            "patient without a patient",
        ),
        (
            NewUser {
                tenant: Some(&tenant),
                username: "doc",
                role: Role::Provider,
                password_hash: hash,
                patient: Some(patient),
            },
            "provider naming a patient",
        ),
        (
            NewUser {
                tenant: Some(&tenant),
                username: "shop",
                role: Role::Storefront,
                password_hash: hash,
                patient: None,
            },
            "storefront user",
        ),
        (
            NewUser {
                tenant: Some(&tenant),
                username: "doc",
                role: Role::Provider,
                password_hash: PASSWORD,
                patient: None,
            },
            "plaintext password",
        ),
        (
            NewUser {
                tenant: Some(&tenant),
                username: " doc",
                role: Role::Provider,
                password_hash: hash,
                patient: None,
            },
            "leading space",
        ),
        (
            NewUser {
                tenant: Some(&tenant),
                username: "",
                role: Role::Provider,
                password_hash: hash,
                patient: None,
            },
            "empty username",
        ),
    ];
    for (user, case) in cases {
        let error = store.create_user(&user, ACTOR).expect_err(case);
        assert!(matches!(error, StoreError::InvalidAccount(_)), "{case}: {error}");
        assert!(!error.to_string().contains(PASSWORD), "{case}: {error}");
    }

    // The patient is linked to beta only.
    let user = NewUser {
        tenant: Some(&tenant),
        username: "pat",
        role: Role::Patient,
        password_hash: hash,
        patient: Some(patient),
    };
    let error = store.create_user(&user, ACTOR).expect_err("patient of another tenant");
    assert!(matches!(error, StoreError::PatientNotFound { .. }), "{error}");
}

fn platform_operator_has_no_tenant(backend: Backend) {
    let mut store = store(backend);
    store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let user = NewUser {
        tenant: None,
        username: "ops",
        role: Role::PlatformOperator,
        password_hash: password_hash(),
        patient: None,
    };
    let id = store.create_user(&user, ACTOR).expect("platform operator");
    let again = store.create_user(&user, ACTOR).expect_err("second platform operator ops");
    assert!(matches!(again, StoreError::UserExists { .. }), "{again}");

    let found = store.user_for_login(None, "ops").expect("lookup").expect("found");
    assert_eq!(found.id, id);
    assert_eq!(found.tenant_id, None);
    assert_eq!(found.role, Role::PlatformOperator);
    assert!(store.user_for_login(Some("alpha"), "ops").expect("lookup").is_none());

    let (session, token) = login(&mut store, found.user_ref());
    let info = store.session_by_token_hash(&token.hash()).expect("lookup").expect("found");
    assert_eq!(info.id, session);
    assert_eq!(info.tenant_id, None);
    assert_eq!(info.role, Role::PlatformOperator);
    assert!(store.end_session(None, session).expect("logout"));
}

fn disabled_user_cannot_log_in(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let user = create_staff(&mut store, &tenant, USERNAME);
    let (_, token) = login(&mut store, user);

    store.set_user_disabled(user, true, ACTOR).expect("disabled");
    let found = store.user_for_login(Some("alpha"), USERNAME).expect("lookup").expect("found");
    assert!(found.disabled);
    let refused = store.create_session(
        user,
        &TokenHash::of_token(&"ab".repeat(32)).expect("hash"),
        at(NOW),
        at(NOW) + Duration::hours(1),
    );
    assert!(matches!(refused, Err(StoreError::UserDisabled(_))), "{:?}", refused.err());
    // Disabling ends the account's sessions, so enabling it again brings none of them back.
    let info = store.session_by_token_hash(&token.hash()).expect("lookup").expect("found");
    assert_eq!(info.state(at(NOW)), CredentialState::Ended);
    let entries = store.audit_entries(0, u32::MAX).expect("entries");
    let disable = entries.iter().find(|e| e.body["action"] == "user.disable").expect("entry");
    assert_eq!(disable.body["detail"], "sessions_ended 1");

    store.set_user_disabled(user, false, ACTOR).expect("enabled");
    let info = store.session_by_token_hash(&token.hash()).expect("lookup").expect("found");
    assert_eq!(info.state(at(NOW)), CredentialState::Ended);
    let (_, fresh) = login(&mut store, user);
    let info = store.session_by_token_hash(&fresh.hash()).expect("lookup").expect("found");
    assert_eq!(info.state(at(NOW)), CredentialState::Active, "a new login works again");
}

fn login_failures_counted(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let user = create_staff(&mut store, &tenant, USERNAME);

    assert_eq!(store.record_login_failure(user).expect("failure"), 1);
    assert_eq!(store.record_login_failure(user).expect("failure"), 2);
    let found = store.user_for_login(Some("alpha"), USERNAME).expect("lookup").expect("found");
    assert_eq!(found.failed_logins, 2);
    assert_eq!(found.last_failed_login_at, Some(at(NOW)));
    assert_eq!(found.last_login_at, None);

    store.record_login_success(user).expect("success");
    let found = store.user_for_login(Some("alpha"), USERNAME).expect("lookup").expect("found");
    assert_eq!(found.failed_logins, 0);
    assert_eq!(found.last_login_at, Some(at(NOW)));
}

fn session_create_lookup_end(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let user = create_staff(&mut store, &tenant, USERNAME);
    let (session, token) = login(&mut store, user);

    let sent = TokenHash::of_token(token.expose()).expect("token parses");
    let info = store.session_by_token_hash(&sent).expect("lookup").expect("found");
    assert_eq!(info.id, session);
    assert_eq!(info.user_id, user.id);
    assert_eq!(info.tenant_id, Some(tenant.id));
    assert_eq!(info.role, Role::Provider);
    assert_eq!(info.patient, None);
    assert_eq!(info.started_at, at(NOW));
    assert_eq!(info.expires_at, at(NOW) + Duration::hours(1));
    assert_eq!(info.state(at(NOW)), CredentialState::Active);

    let unknown = SecretToken::generate().expect("token");
    assert!(store.session_by_token_hash(&unknown.hash()).expect("lookup").is_none());

    assert!(store.end_session(Some(tenant.id), session).expect("logout"));
    assert!(!store.end_session(Some(tenant.id), session).expect("second logout"));
    let info = store.session_by_token_hash(&sent).expect("lookup").expect("still found");
    assert_eq!(info.ended_at, Some(at(NOW)));
    assert_eq!(info.state(at(NOW)), CredentialState::Ended);
}

fn session_state_at_expiry(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let user = create_staff(&mut store, &tenant, USERNAME);
    let (_, token) = login(&mut store, user);
    let info = store.session_by_token_hash(&token.hash()).expect("lookup").expect("found");
    let expires = at(NOW) + Duration::hours(1);

    assert_eq!(info.state(expires - Duration::seconds(1)), CredentialState::Active);
    assert_eq!(info.state(expires), CredentialState::Expired);
    assert_eq!(info.state(expires + Duration::days(1)), CredentialState::Expired);
}

fn patient_session_names_patient(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let patient = import_patient(&mut store, &tenant, "p-1");
    let user = NewUser {
        tenant: Some(&tenant),
        username: "patient1@example.test",
        role: Role::Patient,
        password_hash: password_hash(),
        patient: Some(patient),
    };
    let id = store.create_user(&user, ACTOR).expect("patient account");
    let found = store
        .user_for_login(Some("alpha"), "patient1@example.test")
        .expect("lookup")
        .expect("found");
    assert_eq!(found.patient, Some(patient));

    let (_, token) = login(&mut store, UserRef { id, tenant_id: Some(tenant.id) });
    let info = store.session_by_token_hash(&token.hash()).expect("lookup").expect("found");
    assert_eq!(info.patient, Some(patient));
    assert_eq!(info.role, Role::Patient);
    let detail = store.patient_link(&tenant, patient).expect("link");
    assert_eq!(detail.counts.sessions, 1, "the session hangs off the patient's link");
}

fn service_token_create_lookup_revoke(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let token = SecretToken::generate().expect("token");
    let id = store
        .create_service_token(&new_token(&tenant, Role::Storefront, token.hash()), ACTOR)
        .expect("service token");

    let sent = TokenHash::of_token(token.expose()).expect("token parses");
    let info = store.service_token_by_hash(&sent).expect("lookup").expect("found");
    assert_eq!(info.id, id);
    assert_eq!(info.tenant_id, tenant.id);
    assert_eq!(info.name, "storefront-main");
    assert_eq!(info.role, Role::Storefront);
    assert_eq!(info.created_at, at(NOW));
    assert_eq!(info.state(at(NOW)), CredentialState::Active);
    assert_eq!(info.state(at("2025-01-01T00:00:00Z")), CredentialState::Expired);

    let unknown = SecretToken::generate().expect("token");
    assert!(store.service_token_by_hash(&unknown.hash()).expect("lookup").is_none());

    assert!(store.revoke_service_token(&tenant, id, ACTOR).expect("revoked"));
    assert!(!store.revoke_service_token(&tenant, id, ACTOR).expect("second revoke"));
    let info = store.service_token_by_hash(&sent).expect("lookup").expect("still found");
    assert_eq!(info.revoked_at, Some(at(NOW)));
    assert_eq!(info.state(at(NOW)), CredentialState::Revoked);

    let missing = store.revoke_service_token(&tenant, ServiceTokenId::new(), ACTOR);
    assert!(matches!(missing, Err(StoreError::ServiceTokenNotFound(_))), "{:?}", missing);
}

fn service_token_input_checked(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let hash = SecretToken::generate().expect("token").hash();
    for role in [Role::Patient, Role::PlatformOperator] {
        let error = store
            .create_service_token(&new_token(&tenant, role, hash), ACTOR)
            .expect_err("role rejected");
        assert!(matches!(error, StoreError::InvalidServiceToken(_)), "{role}: {error}");
    }
    for name in ["", "has space", "jane@example.test", &"x".repeat(65)] {
        let token = NewServiceToken { name, ..new_token(&tenant, Role::Storefront, hash) };
        let error = store.create_service_token(&token, ACTOR).expect_err("name rejected");
        assert!(matches!(error, StoreError::InvalidServiceToken(_)), "{name:?}: {error}");
    }
}

fn storefront_token_bound_to_certificate(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let storefront = SecretToken::generate().expect("token");
    let storefront_id = store
        .create_service_token(&new_token(&tenant, Role::Storefront, storefront.hash()), ACTOR)
        .expect("storefront token");
    let provider = SecretToken::generate().expect("token");
    store
        .create_service_token(&new_token(&tenant, Role::Provider, provider.hash()), ACTOR)
        .expect("provider token");

    let info = store.service_token_by_hash(&storefront.hash()).expect("lookup").expect("found");
    assert_eq!(info.client_cert, Some(storefront_cert()));
    let info = store.service_token_by_hash(&provider.hash()).expect("lookup").expect("found");
    assert_eq!(info.client_cert, None);

    // The audit entry names the fingerprint, which is no secret, and never the token.
    let entries = store.audit_entries(0, 1000).expect("audit entries");
    let created = entries
        .iter()
        .find(|entry| entry.body["subjects"][0] == storefront_id.to_string())
        .expect("token.create entry");
    let detail = created.body["detail"].as_str().expect("detail");
    assert!(detail.contains(&storefront_cert().to_string()), "{detail}");
    assert!(!detail.contains(storefront.expose()), "{detail}");
}

fn certificate_binding_checked(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let hash = SecretToken::generate().expect("token").hash();
    let unbound =
        NewServiceToken { client_cert: None, ..new_token(&tenant, Role::Storefront, hash) };
    let error = store.create_service_token(&unbound, ACTOR).expect_err("unbound storefront");
    assert!(matches!(error, StoreError::InvalidServiceToken(_)), "{error}");
    assert!(error.to_string().contains("client certificate"), "{error}");
    for role in [Role::Provider, Role::TenantAdmin] {
        let bound = NewServiceToken {
            client_cert: Some(storefront_cert()),
            ..new_token(&tenant, role, hash)
        };
        let error = store.create_service_token(&bound, ACTOR).expect_err("bound non-storefront");
        assert!(matches!(error, StoreError::InvalidServiceToken(_)), "{role}: {error}");
    }
    assert!(store.service_token_by_hash(&hash).expect("lookup").is_none(), "nothing stored");
    let entries = store.audit_entries(0, 1000).expect("audit entries");
    assert!(
        entries.iter().all(|entry| entry.body["action"] != "token.create"),
        "no token.create entry for a rejected token"
    );
}

fn audit_entries_hold_no_secrets(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let user = create_staff(&mut store, &tenant, USERNAME);
    store.record_login_failure(user).expect("failure");
    store.record_login_success(user).expect("success");
    let (session, session_token) = login(&mut store, user);
    store.end_session(Some(tenant.id), session).expect("logout");
    let service_token = SecretToken::generate().expect("token");
    let token_id = store
        .create_service_token(&new_token(&tenant, Role::Storefront, service_token.hash()), ACTOR)
        .expect("service token");
    store.revoke_service_token(&tenant, token_id, ACTOR).expect("revoked");

    let entries = store.audit_entries(0, 1000).expect("audit entries");
    let actions: Vec<String> = entries
        .iter()
        .map(|entry| entry.body["action"].as_str().unwrap_or("").to_owned())
        .collect();
    for action in [
        "user.create",
        "login.failed",
        "login.success",
        "session.login",
        "session.logout",
        "token.create",
        "token.revoke",
    ] {
        assert_eq!(
            actions.iter().filter(|found| *found == action).count(),
            1,
            "{action} in {actions:?}"
        );
    }
    let secrets = [
        ("password", PASSWORD.to_owned()),
        ("password hash", password_hash().to_owned()),
        ("username", USERNAME.to_lowercase()),
        ("session token", session_token.expose().to_owned()),
        ("session token hash", session_token.hash().to_hex()),
        ("service token", service_token.expose().to_owned()),
        ("service token hash", service_token.hash().to_hex()),
    ];
    for entry in &entries {
        let text = entry.body.to_string().to_lowercase();
        for (what, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "entry {} contains the {what}", entry.seq);
        }
    }
    let login = entries
        .iter()
        .find(|entry| entry.body["action"] == "session.login")
        .expect("session.login entry");
    let text = login.body.to_string();
    assert!(text.contains(&user.id.to_string()), "{text}");
    assert!(text.contains(&session.to_string()), "{text}");
    assert!(store.verify_audit().expect("verified").ok, "the chain verifies");
}

fn tenant_a_credentials_stay_in_a(backend: Backend) {
    let mut store = store(backend);
    let alpha = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let beta = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    let user = create_staff(&mut store, &alpha, USERNAME);
    let (session, token) = login(&mut store, user);
    let service = SecretToken::generate().expect("token");
    let service_id = store
        .create_service_token(&new_token(&alpha, Role::Storefront, service.hash()), ACTOR)
        .expect("service token");

    let info = store.session_by_token_hash(&token.hash()).expect("lookup").expect("found");
    assert_eq!(info.tenant_id, Some(alpha.id), "the session resolves to its own tenant");
    let info = store.service_token_by_hash(&service.hash()).expect("lookup").expect("found");
    assert_eq!(info.tenant_id, alpha.id);

    // Every change named with tenant B finds nothing of A.
    let as_beta = UserRef { id: user.id, tenant_id: Some(beta.id) };
    let ended = store.end_session(Some(beta.id), session);
    assert!(matches!(ended, Err(StoreError::SessionNotFound(_))), "{ended:?}");
    let revoked = store.revoke_service_token(&beta, service_id, ACTOR);
    assert!(matches!(revoked, Err(StoreError::ServiceTokenNotFound(_))), "{revoked:?}");
    let failed = store.record_login_failure(as_beta);
    assert!(matches!(failed, Err(StoreError::UserNotFound(_))), "{failed:?}");
    let disabled = store.set_user_disabled(as_beta, true, ACTOR);
    assert!(matches!(disabled, Err(StoreError::UserNotFound(_))), "{disabled:?}");
    let second = SecretToken::generate().expect("token");
    let created =
        store.create_session(as_beta, &second.hash(), at(NOW), at(NOW) + Duration::hours(1));
    assert!(matches!(created, Err(StoreError::UserNotFound(_))), "{:?}", created.err());
    let as_platform = UserRef { id: user.id, tenant_id: None };
    let failed = store.record_login_failure(as_platform);
    assert!(matches!(failed, Err(StoreError::UserNotFound(_))), "{failed:?}");

    // Nothing of A changed.
    let info = store.session_by_token_hash(&token.hash()).expect("lookup").expect("found");
    assert_eq!(info.state(at(NOW)), CredentialState::Active);
    let found = store.user_for_login(Some("alpha"), USERNAME).expect("lookup").expect("found");
    assert_eq!(found.failed_logins, 0);
    assert!(!found.disabled);
}

fn service_tokens_listed_per_tenant(backend: Backend) {
    let mut store = store(backend);
    let alpha = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let beta = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    let gamma = store.create_tenant("gamma", "Gamma", ACTOR).expect("tenant");
    let storefront = SecretToken::generate().expect("token");
    let storefront_id = store
        .create_service_token(&new_token(&alpha, Role::Storefront, storefront.hash()), ACTOR)
        .expect("storefront token");
    // A later creation time, so that the order of the list is known.
    store.set_clock(Box::new(FixedClock(at("2024-01-02T00:00:00Z"))));
    let provider = SecretToken::generate().expect("token");
    let provider_token = NewServiceToken {
        name: "ehr",
        expires_at: None,
        ..new_token(&alpha, Role::Provider, provider.hash())
    };
    let provider_id = store.create_service_token(&provider_token, ACTOR).expect("provider token");
    store.set_clock(Box::new(FixedClock(at("2024-01-03T00:00:00Z"))));
    store.revoke_service_token(&alpha, storefront_id, ACTOR).expect("revoked");
    let other = SecretToken::generate().expect("token");
    let other_id = store
        .create_service_token(&new_token(&beta, Role::Storefront, other.hash()), ACTOR)
        .expect("token of beta");

    let listed = store.list_service_tokens(&alpha).expect("tokens of alpha");
    let ids: Vec<ServiceTokenId> = listed.iter().map(|token| token.id).collect();
    assert_eq!(ids, [storefront_id, provider_id], "oldest first, revoked ones included");
    let first = &listed[0];
    assert_eq!(first.tenant_id, alpha.id);
    assert_eq!(first.name, "storefront-main");
    assert_eq!(first.role, Role::Storefront);
    assert_eq!(first.created_at, at(NOW));
    assert_eq!(first.expires_at, Some(at("2025-01-01T00:00:00Z")));
    assert_eq!(first.revoked_at, Some(at("2024-01-03T00:00:00Z")));
    assert_eq!(first.client_cert, Some(storefront_cert()));
    assert_eq!(first.state(at(NOW)), CredentialState::Revoked);
    let second = &listed[1];
    assert_eq!(second.name, "ehr");
    assert_eq!(second.role, Role::Provider);
    assert_eq!(second.created_at, at("2024-01-02T00:00:00Z"));
    assert_eq!(second.expires_at, None);
    assert_eq!(second.revoked_at, None);
    assert_eq!(second.client_cert, None);

    let listed_beta = store.list_service_tokens(&beta).expect("tokens of beta");
    let ids_beta: Vec<ServiceTokenId> = listed_beta.iter().map(|token| token.id).collect();
    assert_eq!(ids_beta, [other_id], "beta lists only its own token");
    assert!(store.list_service_tokens(&gamma).expect("tokens of gamma").is_empty());

    let text = serde_json::to_string(&listed).expect("serialized") + &format!("{listed:?}");
    for token in [&storefront, &provider] {
        assert!(!text.contains(token.expose()), "a listed token carries the token: {text}");
        assert!(!text.contains(&token.hash().to_hex()), "a listed token carries its hash");
    }
}

fn users_listed_per_tenant(backend: Backend) {
    let mut store = store(backend);
    let alpha = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let beta = store.create_tenant("beta", "Beta", ACTOR).expect("tenant");
    let patient = import_patient(&mut store, &alpha, "p-1");
    let provider = create_staff(&mut store, &alpha, USERNAME);
    let admin_id = store
        .create_user(&staff(&alpha, "admin@example.test", Role::TenantAdmin), ACTOR)
        .expect("tenant admin");
    let patient_user = NewUser {
        tenant: Some(&alpha),
        username: "patient1@example.test",
        role: Role::Patient,
        password_hash: password_hash(),
        patient: Some(patient),
    };
    let patient_id = store.create_user(&patient_user, ACTOR).expect("patient account");
    let other = create_staff(&mut store, &beta, USERNAME);
    let operator = NewUser {
        tenant: None,
        username: "ops",
        role: Role::PlatformOperator,
        password_hash: password_hash(),
        patient: None,
    };
    let operator_id = store.create_user(&operator, ACTOR).expect("platform operator");
    store.set_user_disabled(provider, true, ACTOR).expect("disabled");
    store.record_login_failure(provider).expect("failure");
    store.record_login_success(UserRef { id: admin_id, tenant_id: Some(alpha.id) }).expect("login");

    let listed = store.list_users(Some(&alpha)).expect("users of alpha");
    let ids: Vec<UserId> = listed.iter().map(|user| user.id).collect();
    assert_eq!(ids, [admin_id, provider.id, patient_id], "ordered by username");
    let admin = &listed[0];
    assert_eq!(admin.tenant_id, Some(alpha.id));
    assert_eq!(admin.username, "admin@example.test");
    assert_eq!(admin.role, Role::TenantAdmin);
    assert_eq!(admin.created_at, at(NOW));
    assert!(!admin.disabled);
    assert_eq!(admin.last_login_at, Some(at(NOW)));
    assert_eq!(admin.failed_logins, 0);
    let disabled = &listed[1];
    assert_eq!(disabled.username, USERNAME.to_lowercase(), "kept in lower case");
    assert!(disabled.disabled);
    assert_eq!(disabled.failed_logins, 1);
    assert_eq!(disabled.last_failed_login_at, Some(at(NOW)));
    assert_eq!(disabled.last_login_at, None);
    assert_eq!(disabled.patient, None);
    assert_eq!(listed[2].role, Role::Patient);
    assert_eq!(listed[2].patient, Some(patient));

    let listed_beta = store.list_users(Some(&beta)).expect("users of beta");
    let ids_beta: Vec<UserId> = listed_beta.iter().map(|user| user.id).collect();
    assert_eq!(ids_beta, [other.id], "beta lists only its own user");
    assert!(!listed_beta[0].disabled, "the same username in alpha was disabled, not this one");

    let operators = store.list_users(None).expect("platform operators");
    let operator_ids: Vec<UserId> = operators.iter().map(|user| user.id).collect();
    assert_eq!(operator_ids, [operator_id], "platform operators only");
    assert_eq!(operators[0].tenant_id, None);
    assert_eq!(operators[0].role, Role::PlatformOperator);

    let debug = format!("{listed:?}");
    assert!(!debug.contains("example.test"), "Debug shows a username: {debug}");
    assert!(!debug.contains("$argon2id$"), "Debug shows a password hash: {debug}");
}

/// Runs one disposal as of `as_of` and returns its outcome.
fn dispose_one(store: &mut TestStore, disposal: Disposal, as_of: &str) -> DisposalOutcome {
    let policy = Policy::builtin();
    let context =
        DisposalContext { policy: &policy, as_of: at(as_of), actor: ACTOR, run_id: "test-run" };
    let mut outcomes = store.dispose(&[disposal], &context).expect("dispose");
    outcomes.pop().expect("one outcome")
}

fn session_purge_disposes_login_sessions(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let user = create_staff(&mut store, &tenant, USERNAME);
    let (ended, ended_token) = login(&mut store, user);
    store.end_session(Some(tenant.id), ended).expect("logout");
    let (_, open_token) = login(&mut store, user);

    // Both end at NOW or NOW + 1 hour, so both are due 90 days later.
    let candidates = store.session_candidates(at("2024-04-01T00:00:00Z")).expect("candidates");
    let ids: Vec<&str> = candidates.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(candidates.len(), 2, "{ids:?}");
    assert!(ids.contains(&ended.to_string().as_str()), "{ids:?}");

    let disposal = Disposal {
        category: Category::Session,
        tenant_id: tenant.id,
        patient_id: None,
        record_id: ended.to_string(),
    };
    let outcome = dispose_one(&mut store, disposal, "2024-04-01T00:00:00Z");
    assert!(matches!(outcome, DisposalOutcome::Disposed { .. }), "{outcome:?}");
    assert!(store.session_by_token_hash(&ended_token.hash()).expect("lookup").is_none());
    assert!(store.session_by_token_hash(&open_token.hash()).expect("lookup").is_some());
    assert!(store.user_for_login(Some("alpha"), USERNAME).expect("lookup").is_some());
}

fn phi_purge_removes_patient_account(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let patient = import_patient(&mut store, &tenant, "p-1");
    let user = NewUser {
        tenant: Some(&tenant),
        username: "patient1@example.test",
        role: Role::Patient,
        password_hash: password_hash(),
        patient: Some(patient),
    };
    let id: UserId = store.create_user(&user, ACTOR).expect("patient account");
    let (_, token) = login(&mut store, UserRef { id, tenant_id: Some(tenant.id) });
    let staff_user = create_staff(&mut store, &tenant, USERNAME);

    // No encounter was recorded, so retention runs 7 years from the link's creation.
    let disposal = Disposal {
        category: Category::PatientRecords,
        tenant_id: tenant.id,
        patient_id: Some(patient),
        record_id: patient.to_string(),
    };
    let outcome = dispose_one(&mut store, disposal, "2040-01-01T00:00:00Z");
    assert!(matches!(outcome, DisposalOutcome::Disposed { .. }), "{outcome:?}");
    let found = store.user_for_login(Some("alpha"), "patient1@example.test").expect("lookup");
    assert!(found.is_none(), "the patient's account goes with the link");
    assert!(store.session_by_token_hash(&token.hash()).expect("lookup").is_none());
    let staff = store.user_for_login(Some("alpha"), USERNAME).expect("lookup");
    assert_eq!(staff.map(|user| user.id), Some(staff_user.id), "staff accounts stay");
}

/// The instant as of which the platform session purge tests purge.
const PURGE_AS_OF: &str = "2024-06-01T00:00:00Z";

/// Username of the platform operator in the platform session purge tests.
const OPERATOR_USERNAME: &str = "night.ops@example.test";

/// Creates the platform operator [`OPERATOR_USERNAME`] and returns it.
fn create_operator(store: &mut TestStore) -> UserRef {
    let user = NewUser {
        tenant: None,
        username: OPERATOR_USERNAME,
        role: Role::PlatformOperator,
        password_hash: password_hash(),
        patient: None,
    };
    let id = store.create_user(&user, ACTOR).expect("platform operator");
    UserRef { id, tenant_id: None }
}

/// Creates a session of `user` that was logged out `days` days before [`PURGE_AS_OF`], and
/// returns its id and token.
fn ended_days_before(store: &mut TestStore, user: UserRef, days: u32) -> (SessionId, SecretToken) {
    let end = sub_days(at(PURGE_AS_OF), days);
    store.set_clock(Box::new(FixedClock(end)));
    let token = SecretToken::generate().expect("token");
    let id = store
        .create_session(user, &token.hash(), end - Duration::hours(1), end + Duration::hours(1))
        .expect("session created");
    assert!(store.end_session(user.tenant_id, id).expect("logout"));
    store.set_clock(Box::new(FixedClock(at(PURGE_AS_OF))));
    (id, token)
}

/// Purges the platform sessions due as of `as_of` under the default 90 days, as a run does.
fn purge_as_of(store: &mut TestStore, as_of: DateTime<Utc>) -> u64 {
    let days = Policy::builtin().defaults.session_days;
    store.purge_platform_sessions(sub_days(as_of, days), ACTOR, "test-run").expect("purge")
}

fn exists(store: &TestStore, token: &SecretToken) -> bool {
    store.session_by_token_hash(&token.hash()).expect("lookup").is_some()
}

fn platform_session_purge_edges(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("alpha", "Alpha", ACTOR).expect("tenant");
    let operator = create_operator(&mut store);
    let staff_user = create_staff(&mut store, &tenant, USERNAME);
    let (_, ended_91) = ended_days_before(&mut store, operator, 91);
    let (_, ended_90) = ended_days_before(&mut store, operator, 90);
    let (_, ended_89) = ended_days_before(&mut store, operator, 89);
    let (tenant_session, tenant_91) = ended_days_before(&mut store, staff_user, 91);
    // Never logged out: started 120 days before and expired 89 days before the purge.
    let as_of = at(PURGE_AS_OF);
    let unended = SecretToken::generate().expect("token");
    store
        .create_session(operator, &unended.hash(), sub_days(as_of, 120), sub_days(as_of, 89))
        .expect("session created");

    let cutoff = sub_days(as_of, 90);
    assert_eq!(store.platform_sessions_due(cutoff).expect("due"), 2);
    assert_eq!(purge_as_of(&mut store, as_of), 2);
    assert!(!exists(&store, &ended_91), "ended 91 days before: purged");
    assert!(!exists(&store, &ended_90), "ended exactly 90 days before: purged");
    assert!(exists(&store, &ended_89), "ended 89 days before: kept");
    assert!(exists(&store, &unended), "expired 89 days before: kept");
    assert!(exists(&store, &tenant_91), "tenant sessions are left to the tenant purge");
    let candidates = store.session_candidates(cutoff).expect("candidates");
    let ids: Vec<&str> = candidates.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [tenant_session.to_string().as_str()]);
    assert_eq!(candidates[0].tenant_id, tenant.id);

    // The unended session is due 90 days after its expiry, one day after the ended_89 one.
    let day_later = as_of + Duration::days(1);
    assert_eq!(purge_as_of(&mut store, day_later - Duration::seconds(1)), 0);
    assert!(exists(&store, &ended_89));
    assert!(exists(&store, &unended));
    assert_eq!(purge_as_of(&mut store, day_later), 2);
    assert!(!exists(&store, &ended_89));
    assert!(!exists(&store, &unended));
    assert!(exists(&store, &tenant_91));
    assert_eq!(store.platform_sessions_due(sub_days(day_later, 90)).expect("due"), 0);
    let operator_login = store.user_for_login(None, OPERATOR_USERNAME).expect("lookup");
    assert!(operator_login.is_some(), "the purge deletes sessions, not the account");
}

fn platform_session_purge_audited_once(backend: Backend) {
    let mut store = store(backend);
    let operator = create_operator(&mut store);
    let (first, first_token) = ended_days_before(&mut store, operator, 100);
    let (second, second_token) = ended_days_before(&mut store, operator, 95);
    let before = store.audit_entries(0, 1000).expect("audit entries").len();

    assert_eq!(purge_as_of(&mut store, at(PURGE_AS_OF)), 2);
    let entries = store.audit_entries(0, 1000).expect("audit entries");
    assert_eq!(entries.len(), before + 1, "one entry per purge");
    let body = &entries.last().expect("the purge entry").body;
    assert_eq!(body["action"], "session.purge");
    assert_eq!(body["actor"], ACTOR);
    assert!(body["tenant_id"].is_null(), "{body}");
    let mut expected = vec![first.to_string(), second.to_string()];
    expected.sort();
    assert_eq!(body["subjects"], serde_json::json!(expected));
    let cutoff = format_instant(sub_days(at(PURGE_AS_OF), 90));
    assert_eq!(
        body["detail"],
        format!("run test-run: 2 platform sessions ended at or before {cutoff} purged")
    );
    let text = body.to_string().to_lowercase();
    assert!(!text.contains(&operator.id.to_string()), "the entry names the user: {text}");
    assert!(!text.contains(OPERATOR_USERNAME), "the entry names the username: {text}");
    for token in [&first_token, &second_token] {
        assert!(!text.contains(&token.hash().to_hex()), "the entry names a token hash");
        assert!(!text.contains(token.expose()), "the entry names a token");
    }

    // Nothing is left, so a second purge deletes nothing and writes no entry.
    assert_eq!(purge_as_of(&mut store, at(PURGE_AS_OF)), 0);
    let after = store.audit_entries(0, 1000).expect("audit entries").len();
    assert_eq!(after, before + 1, "an empty purge writes no entry");
    assert!(store.verify_audit().expect("verified").ok, "the chain verifies");
}
