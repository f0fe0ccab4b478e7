//! End-to-end tests of the `user` and `token` commands: the real binary against a store in
//! a temporary directory, with the database checked afterwards.

#[allow(dead_code, reason = "each test binary uses part of the shared helpers")]
mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{CliOutput, TestStore};
use medconnect_api::testing::{ClientCertFiles, TestCa};
use medconnect_crypto::{verify_password, TokenHash};
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";

/// Runs the binary on `store` with `env` set and `stdin` written to its standard input.
fn run_with(store: &TestStore, args: &[&str], env: &[(&str, &str)], stdin: &str) -> CliOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_medconnect"));
    command
        .arg("--data-dir")
        .arg(store.data_dir())
        .args(args)
        .env_remove("MEDCONNECT_DATA_DIR")
        .env_remove("MEDCONNECT_NEW_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("starting the medconnect binary");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("writing standard input");
    let output = child.wait_with_output().expect("waiting for medconnect");
    CliOutput {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn store_with_tenant() -> TestStore {
    let store = TestStore::init(false);
    store.run_ok(&["tenant", "create", "northwind"]);
    store
}

/// Returns the stored role, password hash and tenant slug of the one account named `username`.
fn account(store: &TestStore, username: &str) -> (String, String, Option<String>) {
    store
        .db()
        .query_row(
            "SELECT u.role, u.password_hash, t.slug FROM user_accounts u
             LEFT JOIN tenants t ON t.id = u.tenant_id WHERE u.username = ?1",
            [username],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .expect("account stored")
}

const CREATE_ADMIN: [&str; 8] = [
    "user",
    "create",
    "--tenant",
    "northwind",
    "--username",
    "Admin@Northwind.test",
    "--role",
    "tenant_admin",
];

#[test]
fn user_create_reads_stdin() {
    let store = store_with_tenant();
    let output = run_with(&store, &CREATE_ADMIN, &[], &format!("{PASSWORD}\n"));
    assert!(output.success(), "{output}");
    assert!(output.stdout.contains("tenant_admin"), "{output}");
    assert!(!output.all_text().contains(PASSWORD), "{output}");

    let (role, hash, tenant) = account(&store, "admin@northwind.test");
    assert_eq!(role, "tenant_admin");
    assert_eq!(tenant.as_deref(), Some("northwind"));
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    assert!(verify_password(PASSWORD, &hash).expect("hash checked"), "the newline is not part");
    assert_eq!(store.audit_count("user.create"), 1);
}

#[test]
fn user_create_reads_env() {
    let store = store_with_tenant();
    let mut args = CREATE_ADMIN.to_vec();
    args.push("--json");
    let env = [("MEDCONNECT_NEW_PASSWORD", PASSWORD)];
    let output = run_with(&store, &args, &env, "ignored standard input\n");
    assert!(output.success(), "{output}");
    let json = output.json();
    assert_eq!(json["tenant"], "northwind");
    assert_eq!(json["role"], "tenant_admin");
    assert!(json["user_id"].is_string(), "{json}");

    let (_, hash, _) = account(&store, "admin@northwind.test");
    assert!(verify_password(PASSWORD, &hash).expect("hash checked"));
}

#[test]
fn platform_operator_needs_no_tenant() {
    let store = TestStore::init(false);
    let args = ["user", "create", "--username", "ops", "--role", "platform_operator"];
    let output = run_with(&store, &args, &[("MEDCONNECT_NEW_PASSWORD", PASSWORD)], "");
    assert!(output.success(), "{output}");
    let (role, _, tenant) = account(&store, "ops");
    assert_eq!(role, "platform_operator");
    assert_eq!(tenant, None);
}

#[test]
fn user_create_rejects_bad_input() {
    let store = store_with_tenant();
    let mut bad_role = CREATE_ADMIN.to_vec();
    bad_role[7] = "clinician";
    let mut no_tenant = CREATE_ADMIN.to_vec();
    no_tenant.drain(2..4);
    let mut other_tenant = CREATE_ADMIN.to_vec();
    other_tenant[3] = "prairie";
    let cases: [(&[&str], &str, &str); 6] = [
        (&CREATE_ADMIN, "short pass1\n", "at least 12"),
        (&CREATE_ADMIN, "", "at least 12"),
        (&bad_role, "correct horse battery\n", "invalid role \"clinician\""),
        (&no_tenant, "correct horse battery\n", "needs a tenant"),
        (&other_tenant, "correct horse battery\n", "tenant \"prairie\" not found"),
        (&["user", "create", "--username", "x", "--role", "provider", PASSWORD], "", "unexpected"),
    ];
    for (args, stdin, expected) in cases {
        let output = run_with(&store, args, &[], stdin);
        assert!(!output.success(), "{output}");
        assert!(output.stderr.contains(expected), "expected {expected:?}:\n{output}");
    }
    assert_eq!(store.count("user_accounts"), 0);
    assert_eq!(store.audit_count("user.create"), 0);

    // A second account with the same username in another case is rejected.
    let env = [("MEDCONNECT_NEW_PASSWORD", PASSWORD)];
    assert!(run_with(&store, &CREATE_ADMIN, &env, "").success());
    let mut again = CREATE_ADMIN.to_vec();
    again[5] = "admin@northwind.TEST";
    let output = run_with(&store, &again, &env, "");
    assert!(!output.success(), "{output}");
    assert!(output.stderr.contains("already exists"), "{output}");
    assert!(!output.stderr.to_lowercase().contains("admin@northwind"), "{output}");
}

/// Issues the Storefront's client certificate into the store's scratch folder, from a new
/// test CA.
fn storefront_certificate(store: &TestStore) -> ClientCertFiles {
    let dir = store.scratch_path("certificates");
    std::fs::create_dir_all(&dir).expect("certificate folder");
    TestCa::create(&dir, "storefronts").issue_client("storefront")
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn token_create_prints_token_once() {
    let store = store_with_tenant();
    let cert = storefront_certificate(&store);
    let args = [
        "token",
        "create",
        "--tenant",
        "northwind",
        "--name",
        "storefront",
        "--client-cert",
        path_text(&cert.cert),
        "--json",
    ];
    let json = store.run_json(&args);
    let token = json["token"].as_str().expect("token printed");
    assert_eq!(token.len(), 64);
    assert_eq!(json["role"], "storefront");
    assert_eq!(json["tenant"], "northwind");
    assert_eq!(json["client_cert_sha256"], cert.sha256.to_string());
    assert!(json["expires_at"].is_string(), "{json}");

    let (stored, role, expires, client_cert): (String, String, Option<String>, Option<String>) =
        store
            .db()
            .query_row(
                "SELECT token_hash, role, expires_at, client_cert_sha256 FROM service_tokens",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .expect("token stored");
    let sent = TokenHash::of_token(token).expect("token parses");
    assert_eq!(stored, sent.to_hex(), "only the hash is stored");
    assert_eq!(role, "storefront");
    assert_eq!(expires.as_deref(), json["expires_at"].as_str());
    assert_eq!(client_cert, Some(cert.sha256.to_hex()), "the certificate's SHA-256 is stored");
    assert_eq!(store.audit_count("token.create"), 1);
    for (_, _, body) in store.audit_entries() {
        let text = body.to_string();
        assert!(!text.contains(token), "an audit entry contains the token");
        assert!(!text.contains(&stored), "an audit entry contains the token hash");
    }
}

#[test]
fn token_create_text_and_no_expiry() {
    let store = store_with_tenant();
    let cert = storefront_certificate(&store);
    // The certificate file also contains the key, as some tools write it; the key is never
    // read into the output.
    let combined = store.scratch_path("certificates/storefront-with-key.pem");
    let key = std::fs::read_to_string(&cert.key).expect("key");
    let pem = std::fs::read_to_string(&cert.cert).expect("certificate");
    std::fs::write(&combined, format!("{pem}{key}")).expect("combined file");
    let args = [
        "token",
        "create",
        "--tenant",
        "northwind",
        "--name",
        "shop",
        "--no-expiry",
        "--client-cert",
        path_text(&combined),
    ];
    let output = store.run_ok(&args);
    assert!(output.stdout.contains("never expires"), "{output}");
    let bound = format!("bound to the client certificate with SHA-256 {}", cert.sha256);
    assert!(output.stdout.contains(&bound), "{output}");
    let token = output.stdout.lines().last().expect("token line");
    assert!(TokenHash::of_token(token).is_some(), "last line is the token: {output}");
    assert_eq!(output.all_text().matches(token).count(), 1, "the token is printed once");
    for line in key.lines().filter(|line| !line.starts_with("-----")) {
        assert!(!output.all_text().contains(line), "a line of the key is printed: {output}");
    }
    let expires: Option<String> = store
        .db()
        .query_row("SELECT expires_at FROM service_tokens", [], |row| row.get(0))
        .expect("token stored");
    assert_eq!(expires, None);
}

#[test]
fn token_create_provider_needs_no_certificate() {
    let store = store_with_tenant();
    let args = ["token", "create", "--tenant", "northwind", "--name", "ehr", "--role", "provider"];
    let output = store.run_ok(&args);
    assert!(!output.stdout.contains("client certificate"), "{output}");
    let client_cert: Option<String> = store
        .db()
        .query_row("SELECT client_cert_sha256 FROM service_tokens", [], |row| row.get(0))
        .expect("token stored");
    assert_eq!(client_cert, None);
}

#[test]
fn token_create_rejects_bad_input() {
    let store = store_with_tenant();
    let cert = storefront_certificate(&store);
    let cert_path = path_text(&cert.cert).to_owned();
    let key_path = path_text(&cert.key).to_owned();
    let cases: [(&[&str], &str); 8] = [
        (&["--tenant", "northwind", "--name", "shop", "--role", "patient"], "cannot be given"),
        (
            &["--tenant", "northwind", "--name", "has space", "--client-cert", &cert_path],
            "letters, digits",
        ),
        (
            &["--tenant", "prairie", "--name", "shop", "--client-cert", &cert_path],
            "tenant \"prairie\" not found",
        ),
        (&["--tenant", "northwind", "--name", "shop", "--role", "admin"], "invalid role"),
        (
            &["--tenant", "northwind", "--name", "shop"],
            "a storefront token needs --client-cert FILE",
        ),
        (
            &[
                "--tenant",
                "northwind",
                "--name",
                "shop",
                "--role",
                "provider",
                "--client-cert",
                &cert_path,
            ],
            "--client-cert applies only to storefront tokens",
        ),
        (
            &["--tenant", "northwind", "--name", "shop", "--client-cert", &key_path],
            "contains no PEM certificate",
        ),
        (
            &["--tenant", "northwind", "--name", "shop", "--client-cert", "/nonexistent/cert.pem"],
            "reading client certificate file",
        ),
    ];
    let key = std::fs::read_to_string(&cert.key).expect("key");
    for (rest, expected) in cases {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(rest);
        let output = store.run(&args);
        assert!(!output.success(), "{output}");
        assert!(output.stderr.contains(expected), "expected {expected:?}:\n{output}");
        for line in key.lines().filter(|line| !line.starts_with("-----")) {
            assert!(!output.all_text().contains(line), "a line of the key is printed: {output}");
        }
    }
    assert_eq!(store.count("service_tokens"), 0);
    assert_eq!(store.audit_count("token.create"), 0);
}

/// Creates a service token with `args` after `token create`, and returns its id and token.
fn create_token(store: &TestStore, args: &[&str]) -> (String, String) {
    let json = store.run_json(&[&["token", "create"], args, &["--json"]].concat());
    let id = json["token_id"].as_str().expect("token id printed").to_owned();
    let token = json["token"].as_str().expect("token printed").to_owned();
    (id, token)
}

/// Returns the stored revocation time of the service token with this id.
fn revoked_at(store: &TestStore, token_id: &str) -> Option<String> {
    store
        .db()
        .query_row("SELECT revoked_at FROM service_tokens WHERE id = ?1", [token_id], |row| {
            row.get(0)
        })
        .expect("token stored")
}

#[test]
fn token_list_shows_tokens_of_one_tenant() {
    let store = store_with_tenant();
    store.run_ok(&["tenant", "create", "prairie"]);
    let cert = storefront_certificate(&store);
    let cert_path = path_text(&cert.cert);
    let (shop_id, shop_token) = create_token(
        &store,
        &["--tenant", "northwind", "--name", "shop", "--client-cert", cert_path],
    );
    let (ehr_id, ehr_token) = create_token(
        &store,
        &["--tenant", "northwind", "--name", "ehr", "--role", "provider", "--no-expiry"],
    );
    let (other_id, _) = create_token(
        &store,
        &["--tenant", "prairie", "--name", "shop", "--client-cert", cert_path],
    );

    let json = store.run_json(&["token", "list", "--tenant", "northwind", "--json"]);
    let tokens = json.as_array().expect("a list of tokens");
    let ids: Vec<&str> = tokens.iter().filter_map(|token| token["token_id"].as_str()).collect();
    assert_eq!(ids.len(), 2, "{json}");
    assert!(ids.contains(&shop_id.as_str()), "{json}");
    assert!(ids.contains(&ehr_id.as_str()), "{json}");
    let shop = tokens.iter().find(|token| token["token_id"] == shop_id.as_str()).expect("shop");
    assert_eq!(shop["tenant"], "northwind");
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["role"], "storefront");
    assert_eq!(shop["state"], "active");
    assert!(shop["created_at"].is_string(), "{shop}");
    assert!(shop["expires_at"].is_string(), "{shop}");
    assert!(shop["revoked_at"].is_null(), "{shop}");
    assert_eq!(shop["client_cert_sha256"], cert.sha256.to_string());
    let ehr = tokens.iter().find(|token| token["token_id"] == ehr_id.as_str()).expect("ehr");
    assert_eq!(ehr["role"], "provider");
    assert!(ehr["expires_at"].is_null(), "{ehr}");
    assert!(ehr["client_cert_sha256"].is_null(), "{ehr}");

    let text = store.run_ok(&["token", "list", "--tenant", "northwind"]);
    assert!(text.stdout.contains(&shop_id), "{text}");
    assert!(text.stdout.contains(&cert.sha256.to_string()), "{text}");
    assert!(text.stdout.contains("never"), "the provider token never expires: {text}");
    let all_output = format!("{json}\n{}", text.all_text());
    assert!(!all_output.contains(&other_id), "prairie's token is listed in northwind");
    for token in [&shop_token, &ehr_token] {
        let hash = TokenHash::of_token(token).expect("token parses").to_hex();
        assert!(!all_output.contains(token.as_str()), "a token is printed:\n{all_output}");
        assert!(!all_output.contains(&hash), "a token hash is printed:\n{all_output}");
    }

    let empty = TestStore::init(false);
    empty.run_ok(&["tenant", "create", "northwind"]);
    let output = empty.run_ok(&["token", "list", "--tenant", "northwind"]);
    assert!(output.stdout.contains("no service tokens"), "{output}");
    assert_eq!(empty.run_json(&["token", "list", "--tenant", "northwind", "--json"]), json!([]));
}

#[test]
fn token_revoke_twice_is_idempotent() {
    let store = store_with_tenant();
    let (id, _) =
        create_token(&store, &["--tenant", "northwind", "--name", "ehr", "--role", "provider"]);

    let args = ["--actor", "operator:oncall", "token", "revoke", "--tenant", "northwind", &id];
    let first = store.run_ok(&args);
    assert!(first.stdout.contains(&format!("revoked service token {id} (ehr)")), "{first}");
    let revoked = revoked_at(&store, &id).expect("revocation stored");
    assert_eq!(store.audit_count("token.revoke"), 1);
    let entry = store
        .audit_entries()
        .into_iter()
        .find(|(_, action, _)| action == "token.revoke")
        .expect("token.revoke entry");
    assert_eq!(entry.2["actor"], "operator:oncall", "the actor comes from --actor");
    assert_eq!(entry.2["subjects"][0], id.as_str());

    let second = store.run_ok(&args);
    assert!(second.stdout.contains("already revoked"), "{second}");
    assert!(second.stdout.contains(&revoked), "it names when: {second}");
    assert_eq!(revoked_at(&store, &id), Some(revoked), "the first revocation time stays");
    assert_eq!(store.audit_count("token.revoke"), 1, "the second revoke writes no entry");

    let json = store.run_json(&["token", "list", "--tenant", "northwind", "--json"]);
    assert_eq!(json[0]["state"], "revoked", "{json}");
    assert!(json[0]["revoked_at"].is_string(), "{json}");
}

#[test]
fn token_revoke_rejects_unknown_ids() {
    let store = store_with_tenant();
    store.run_ok(&["tenant", "create", "prairie"]);
    let (northwind_id, _) =
        create_token(&store, &["--tenant", "northwind", "--name", "ehr", "--role", "provider"]);
    let unknown = "3f6fd0bb-1c2d-4e5f-8a9b-0123456789ab";

    let cases = [
        ("prairie", northwind_id.as_str(), "token of another tenant"),
        ("northwind", unknown, "id of no token"),
    ];
    for (tenant, id, case) in cases {
        let output = store.run(&["token", "revoke", "--tenant", tenant, id]);
        assert_eq!(output.status.code(), Some(1), "{case}:\n{output}");
        assert!(output.stderr.contains(id), "{case}: the error names the id:\n{output}");
        let hint = format!("medconnect token list --tenant {tenant}");
        assert!(output.stderr.contains(&hint), "{case}: the error says what to run:\n{output}");
    }
    let invalid = store.run(&["token", "revoke", "--tenant", "northwind", "not-an-id"]);
    assert_eq!(invalid.status.code(), Some(1), "{invalid}");
    assert!(invalid.stderr.contains("invalid service token id"), "{invalid}");
    let secret = "9f3c".repeat(16);
    let pasted = store.run(&["token", "revoke", "--tenant", "northwind", &secret]);
    assert_eq!(pasted.status.code(), Some(1), "{pasted}");
    assert!(!pasted.stderr.contains(&secret), "a pasted token is not repeated:\n{pasted}");
    let missing_tenant = store.run(&["token", "revoke", "--tenant", "gamma", &northwind_id]);
    assert_eq!(missing_tenant.status.code(), Some(1), "{missing_tenant}");
    assert!(missing_tenant.stderr.contains("tenant \"gamma\" not found"), "{missing_tenant}");

    assert_eq!(revoked_at(&store, &northwind_id), None, "northwind's token is not revoked");
    assert_eq!(store.audit_count("token.revoke"), 0);
}

/// Creates an account with `args` after `user create`, with the password from the
/// environment, and returns its id.
fn create_account(store: &TestStore, args: &[&str]) -> String {
    let env = [("MEDCONNECT_NEW_PASSWORD", PASSWORD)];
    let output = run_with(store, &[&["user", "create"], args, &["--json"]].concat(), &env, "");
    assert!(output.success(), "{output}");
    output.json()["user_id"].as_str().expect("user id printed").to_owned()
}

/// Returns whether the stored account with this id is disabled.
fn disabled(store: &TestStore, user_id: &str) -> bool {
    store
        .db()
        .query_row("SELECT disabled FROM user_accounts WHERE id = ?1", [user_id], |row| row.get(0))
        .expect("account stored")
}

#[test]
fn user_list_shows_one_tenant_or_operators() {
    let store = store_with_tenant();
    store.run_ok(&["tenant", "create", "prairie"]);
    let admin = create_account(
        &store,
        &["--tenant", "northwind", "--username", "Admin@Northwind.test", "--role", "tenant_admin"],
    );
    let doctor = create_account(
        &store,
        &["--tenant", "northwind", "--username", "doctor", "--role", "provider"],
    );
    let other = create_account(
        &store,
        &["--tenant", "prairie", "--username", "doctor", "--role", "provider"],
    );
    let operator = create_account(&store, &["--username", "ops", "--role", "platform_operator"]);

    let json = store.run_json(&["user", "list", "--tenant", "northwind", "--json"]);
    let users = json.as_array().expect("a list of users");
    let ids: Vec<&str> = users.iter().filter_map(|user| user["user_id"].as_str()).collect();
    assert_eq!(ids, [admin.as_str(), doctor.as_str()], "ordered by username: {json}");
    assert_eq!(users[0]["tenant"], "northwind");
    assert_eq!(users[0]["username"], "admin@northwind.test");
    assert_eq!(users[0]["role"], "tenant_admin");
    assert_eq!(users[0]["disabled"], false);
    assert!(users[0]["patient_id"].is_null(), "{json}");
    assert!(users[0]["created_at"].is_string(), "{json}");
    assert!(users[0]["last_login_at"].is_null(), "{json}");
    assert_eq!(users[0]["failed_logins"], 0);
    assert!(users[0]["last_failed_login_at"].is_null(), "{json}");

    let operators = store.run_json(&["user", "list", "--json"]);
    let operator_ids: Vec<&str> = operators
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|u| u["user_id"].as_str())
        .collect();
    assert_eq!(operator_ids, [operator.as_str()], "{operators}");
    assert!(operators[0]["tenant"].is_null(), "{operators}");

    let text = store.run_ok(&["user", "list", "--tenant", "northwind"]);
    assert!(text.stdout.contains("admin@northwind.test"), "{text}");
    assert!(text.stdout.contains("enabled"), "{text}");
    let all_output = format!("{json}\n{operators}\n{}", text.all_text());
    assert!(!all_output.contains(&other), "prairie's user is listed:\n{all_output}");
    assert!(!all_output.contains("$argon2id$"), "a password hash is printed:\n{all_output}");
}

#[test]
fn user_disable_then_enable() {
    let store = store_with_tenant();
    let user = ["--tenant", "northwind", "--username", "admin@northwind.test"];
    let id = create_account(&store, &[&user[..], &["--role", "tenant_admin"]].concat());
    let disable = [&["--actor", "operator:oncall", "user", "disable"], &user[..]].concat();

    let output = store.run_ok(&disable);
    assert!(output.stdout.contains(&format!("disabled user {id} of tenant northwind")), "{output}");
    assert!(disabled(&store, &id));
    assert_eq!(store.audit_count("user.disable"), 1);
    let entry = store
        .audit_entries()
        .into_iter()
        .find(|(_, action, _)| action == "user.disable")
        .expect("user.disable entry");
    assert_eq!(entry.2["actor"], "operator:oncall", "the actor comes from --actor");
    assert_eq!(entry.2["subjects"][0], id.as_str());

    let again = store.run_ok(&disable);
    assert!(again.stdout.contains("already disabled"), "{again}");
    assert_eq!(store.audit_count("user.disable"), 1, "the second disable writes no entry");
    let listed = store.run_json(&["user", "list", "--tenant", "northwind", "--json"]);
    assert_eq!(listed[0]["disabled"], true, "{listed}");

    // Usernames are compared without regard to case, as at login.
    let enable = ["user", "enable", "--tenant", "northwind", "--username", "ADMIN@northwind.test"];
    let output = store.run_ok(&enable);
    assert!(output.stdout.contains(&format!("enabled user {id}")), "{output}");
    assert!(!disabled(&store, &id));
    assert_eq!(store.audit_count("user.enable"), 1);
}

#[test]
fn user_disable_rejects_unknown_user() {
    let store = store_with_tenant();
    store.run_ok(&["tenant", "create", "prairie"]);
    let user = ["--username", "admin@northwind.test"];
    let id = create_account(
        &store,
        &[&["--tenant", "northwind"], &user[..], &["--role", "tenant_admin"]].concat(),
    );
    let operator = create_account(&store, &["--username", "ops", "--role", "platform_operator"]);

    let cases: [(&[&str], &str); 4] = [
        (&["--tenant", "prairie"], "medconnect user list --tenant prairie"),
        (&[], "medconnect user list`"),
        (&["--tenant", "northwind", "--username", "nobody@northwind.test"], "user list"),
        (&["--tenant", "northwind", "--username", "ops"], "user list --tenant northwind"),
    ];
    for (rest, hint) in cases {
        for command in ["disable", "enable"] {
            let mut args = vec!["user", command];
            args.extend_from_slice(rest);
            if !rest.contains(&"--username") {
                args.extend_from_slice(&user);
            }
            let output = store.run(&args);
            assert_eq!(output.status.code(), Some(1), "{output}");
            assert!(output.stderr.contains(hint), "expected {hint:?}:\n{output}");
            // The username is not repeated, as `user create` does not repeat it either.
            assert!(!output.stderr.contains("northwind.test"), "{output}");
        }
    }
    let missing_tenant =
        store.run(&[&["user", "disable", "--tenant", "gamma"], &user[..]].concat());
    assert!(missing_tenant.stderr.contains("tenant \"gamma\" not found"), "{missing_tenant}");

    assert!(!disabled(&store, &id));
    assert!(!disabled(&store, &operator));
    assert_eq!(store.audit_count("user.disable"), 0);
    assert_eq!(store.audit_count("user.enable"), 0);
}
