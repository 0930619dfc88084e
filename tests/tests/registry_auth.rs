//! `amphi pull` against a registry that demands bearer tokens (Docker token
//! auth, distribution's `auth: token`), with tokens from a token server in
//! the test process: anonymous tokens, credentialed tokens, wrong passwords.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{run_cmd, test_image, Amphi, TokenRegistry, TOKEN_SERVICE};
use std::path::Path;
use std::process::{Command, Output};

const USER: &str = "amphi-user";
const PASSWORD: &str = "s3cret-Pa55";

/// Runs `amphi ARGS` with no credentials inherited from the environment.
fn amphi(a: &Amphi, args: &[&str]) -> Output {
    run_cmd(a.cmd(args).env_remove("AMPHI_REGISTRY_CREDS"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `amphi ARGS` succeeded, returns stdout.
fn ok(a: &Amphi, reg: &TokenRegistry, args: &[&str]) -> String {
    let out = amphi(a, args);
    assert!(
        out.status.success(),
        "amphi {} failed ({}):\n--- stdout\n{}--- stderr\n{}--- token requests\n{:?}\n--- registry log\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out),
        reg.token_requests(),
        reg.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts `amphi ARGS` failed cleanly (exit code, no panic), returns stderr.
fn fails(a: &Amphi, args: &[&str]) -> String {
    let out = amphi(a, args);
    let err = stderr(&out);
    assert!(
        out.status.code().is_some_and(|c| c != 0) && !err.contains("panicked at"),
        "amphi {} should have failed cleanly ({}):\n--- stdout\n{}--- stderr\n{err}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    err
}

fn is_empty_dir(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => rd.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// `curl` the registry's `/v2/` without credentials: (status, headers).
fn curl_v2(reg: &TokenRegistry) -> (String, String) {
    let out = run_cmd(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}"])
            .arg(format!("http://{}/v2/", reg.addr())),
    );
    assert!(out.status.success(), "curl failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().to_string(), headers.to_string())
}

/// `curl` the registry's `/v2/` with an `Authorization` header: the status.
fn curl_v2_with(reg: &TokenRegistry, authorization: &str) -> String {
    let out = run_cmd(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Authorization: {authorization}"))
            .arg(format!("http://{}/v2/", reg.addr())),
    );
    assert!(out.status.success(), "curl failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A token from the token server at `realm`, asked for anonymously.
fn curl_token(realm: &str) -> serde_json::Value {
    let out =
        run_cmd(Command::new("curl").args(["-fsS", &format!("{realm}?service={TOKEN_SERVICE}")]));
    assert!(
        out.status.success(),
        "curl {realm} failed: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The store holds no blob and no temporary file.
fn assert_store_clean(a: &Amphi) {
    let root = a.root();
    assert!(
        is_empty_dir(&root.join("blobs/sha256")),
        "blobs left behind: {:?}",
        std::fs::read_dir(root.join("blobs/sha256"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    assert!(
        is_empty_dir(&root.join("tmp")),
        "temporary files left behind: {:?}",
        std::fs::read_dir(root.join("tmp"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

#[test]
fn anonymous_bearer_token_pull() {
    let reg = TokenRegistry::anonymous();
    // The registry really enforces auth: no token, no access, and it sends
    // clients to our token server.
    let (code, headers) = curl_v2(&reg);
    assert_eq!(
        code, "401",
        "registry answered /v2/ without a token:\n{headers}"
    );
    let challenge = headers.to_ascii_lowercase();
    assert!(
        challenge.contains("www-authenticate: bearer")
            && challenge.contains(&format!("realm=\"{}\"", reg.realm())),
        "unexpected challenge:\n{headers}"
    );

    // A token from the token server is accepted; the same token with its
    // signature altered, or garbage, is not.
    let issued = curl_token(&reg.realm());
    assert_eq!(issued["expires_in"], 300);
    assert_eq!(issued["token"], issued["access_token"]);
    let token = issued["token"].as_str().unwrap();
    assert_eq!(
        curl_v2_with(&reg, &format!("Bearer {token}")),
        "200",
        "the registry refused our token; registry log:\n{}",
        reg.log()
    );
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{flipped}{}", &sig[1..]);
    assert_eq!(curl_v2_with(&reg, &format!("Bearer {forged}")), "401");
    assert_eq!(curl_v2_with(&reg, "Bearer bm90.YS50b2tlbg.bm9wZQ"), "401");

    reg.push(&test_image("busybox"), "demo/busybox:latest");
    let before = reg.tokens_issued();
    assert!(before > 1, "the push did not use the token server");

    let a = Amphi::new();
    let r = reg.reference("demo/busybox:latest");
    let id = ok(&a, &reg, &["pull", "-q", &r]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert!(
        reg.tokens_issued() > before,
        "amphi pulled without asking for a token: {:?}",
        reg.token_requests()
    );
    let pulls: Vec<_> = reg.token_requests().split_off(before);
    assert!(
        pulls.iter().all(|t| t.issued && t.user.is_none()),
        "amphi's token requests: {pulls:?}"
    );
    assert!(
        pulls
            .iter()
            .any(|t| t.scopes.iter().any(|s| s == "repository:demo/busybox:pull")),
        "no pull-scoped token request from amphi: {pulls:?}"
    );

    let table = ok(&a, &reg, &["images"]);
    assert!(
        table.contains(&format!("{}/demo/busybox", reg.addr())),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&a, &reg, &["images", "--json"])).unwrap();
    assert_eq!(json[0]["names"][0], r);
    assert_eq!(json[0]["config"].as_str(), Some(id.trim()), "{json}");
}

#[test]
fn credentialed_bearer_token_pull() {
    let reg = TokenRegistry::with_creds(USER, PASSWORD);
    let (code, _) = curl_v2(&reg);
    assert_eq!(code, "401");
    reg.push(&test_image("busybox"), "demo/busybox:latest");
    let r = reg.reference("demo/busybox:latest");

    // Without credentials: the token server refuses, so does the registry.
    let a = Amphi::new();
    let seen = reg.token_requests().len();
    let err = fails(&a, &["pull", "-q", &r]);
    let lower = err.to_lowercase();
    assert!(
        err.contains(reg.addr()),
        "the error does not name the registry: {err}"
    );
    assert!(
        lower.contains("auth") || lower.contains("unauthorized"),
        "the error does not say authentication failed: {err}"
    );
    assert!(
        err.contains("--creds"),
        "the error does not say how to give credentials: {err}"
    );
    let refused = reg.token_requests().split_off(seen);
    assert!(
        !refused.is_empty() && refused.iter().all(|t| !t.issued),
        "amphi's token requests without credentials: {refused:?}"
    );
    assert_store_clean(&a);
    assert_eq!(ok(&a, &reg, &["images", "-q"]).trim(), "");

    // With them: a token for the user, and the image.
    let before = reg.tokens_issued();
    let creds = format!("{USER}:{PASSWORD}");
    let id = ok(&a, &reg, &["pull", "-q", "--creds", &creds, &r]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert!(reg.tokens_issued() > before, "no token issued for the pull");
    let granted: Vec<_> = reg
        .token_requests()
        .into_iter()
        .skip(seen + refused.len())
        .collect();
    assert!(
        granted
            .iter()
            .any(|t| t.issued && t.user.as_deref() == Some(USER)),
        "no token issued to {USER}: {granted:?}"
    );
    let table = ok(&a, &reg, &["images"]);
    assert!(
        table.contains(&format!("{}/demo/busybox", reg.addr())),
        "{table}"
    );
}

#[test]
fn wrong_password_fails_cleanly() {
    let reg = TokenRegistry::with_creds(USER, PASSWORD);
    reg.push(&test_image("busybox"), "demo/busybox:latest");
    let r = reg.reference("demo/busybox:latest");
    let a = Amphi::new();
    let before = reg.tokens_issued();
    let seen = reg.token_requests().len();
    let err = fails(&a, &["pull", "-q", "--creds", &format!("{USER}:wrong"), &r]);
    let lower = err.to_lowercase();
    assert!(
        err.contains(reg.addr()),
        "the error does not name the registry: {err}"
    );
    assert!(
        lower.contains("auth") || lower.contains("unauthorized"),
        "the error does not say authentication failed: {err}"
    );
    assert!(
        !err.contains("wrong"),
        "the error shows the password: {err}"
    );
    assert!(
        err.contains("refused these credentials"),
        "the error does not say the credentials were refused: {err}"
    );
    assert_eq!(
        reg.tokens_issued(),
        before,
        "a token was issued for a wrong password"
    );
    let refused = reg.token_requests().split_off(seen);
    assert!(
        refused
            .iter()
            .any(|t| !t.issued && t.user.as_deref() == Some(USER)),
        "amphi did not present the credentials to the token server: {refused:?}"
    );
    assert_store_clean(&a);
    assert_eq!(ok(&a, &reg, &["images", "-q"]).trim(), "");
}
