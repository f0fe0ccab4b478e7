//! End-to-end tests of `user create` and `token create`: the real binary against a store in
//! a temporary directory, with the database checked afterwards.

#[allow(dead_code, reason = "each test binary uses part of the shared helpers")]
mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{CliOutput, TestStore};
use medconnect_api::testing::{ClientCertFiles, TestCa};
use medconnect_crypto::{verify_password, TokenHash};

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
