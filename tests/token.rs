//! A registry that demands bearer tokens, and the token server that issues
//! them: the Docker token protocol in miniature, for tests of `amphi pull`'s
//! token authentication.
//!
//! The token server lives in the test process (a thread on 127.0.0.1) and
//! signs RS256 JWTs with a throwaway self-signed key made by the `openssl`
//! CLI, which also does the signing. The registry (`scripts/registry` with a
//! `DIR/auth.yml`) trusts that certificate, which every token carries in its
//! `x5c` header.

use crate::{run_cmd, script, show, Registry};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `service` the registry names in its challenges (and tokens' `aud`).
pub const TOKEN_SERVICE: &str = "amphi-test";
/// The `iss` of every token, which the registry requires.
pub const TOKEN_ISSUER: &str = "amphi-test-issuer";

/// Base64 with the standard (`+/`, padded) or URL-safe (`-_`, unpadded) alphabet.
fn base64(data: &[u8], url_safe: bool) -> String {
    let alphabet: &[u8; 64] = if url_safe {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url_safe {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (a space) in a query-string component.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One token request the server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The user of the request's HTTP Basic credentials, if it had any.
    pub user: Option<String>,
    /// The requested scopes, e.g. `repository:demo/busybox:pull`.
    pub scopes: Vec<String>,
    /// Whether a token was issued (else the answer was 401).
    pub issued: bool,
}

struct TokenState {
    key: PathBuf,
    /// The certificate, base64 DER, as `x5c` carries it.
    cert_b64: String,
    /// `Basic ...` header value required for a token, if any.
    required: Option<String>,
    issued: AtomicUsize,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A Docker-protocol token server on 127.0.0.1, stopped on drop.
///
/// `GET /token?service=S&scope=repository:NAME:ACTIONS` answers
/// `{"token", "access_token", "expires_in"}` with a JWT granting every
/// requested action; with credentials required, a request without the right
/// HTTP Basic credentials gets 401 instead.
pub struct TokenServer {
    addr: SocketAddr,
    state: Arc<TokenState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a server signing with `key` (PEM, RSA) whose self-signed
    /// certificate is `cert` (PEM); `creds` = required (user, password).
    pub fn start(key: &Path, cert: &Path, creds: Option<(&str, &str)>) -> Self {
        let pem = std::fs::read_to_string(cert).unwrap();
        let cert_b64: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        assert!(!cert_b64.is_empty(), "no certificate in {}", cert.display());
        let state = Arc::new(TokenState {
            key: key.to_path_buf(),
            cert_b64,
            required: creds
                .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes(), false))),
            issued: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        // A broken client connection is the client's problem.
                        let _ = serve(&state, conn);
                    });
                }
            })
        };
        TokenServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The token endpoint, `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// How many tokens were issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Every token request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one HTTP/1.1 request on `conn`, then closes it.
fn serve(state: &TokenState, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, extra, body) = if method != "GET" || path != "/token" {
        (
            "404 Not Found",
            "",
            r#"{"errors":[{"code":"NOT_FOUND","message":"only GET /token"}]}"#.to_string(),
        )
    } else {
        answer(state, query, authorization.as_deref())
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// The status, extra headers and body answering a token request.
fn answer(
    state: &TokenState,
    query: &str,
    authorization: Option<&str>,
) -> (&'static str, &'static str, String) {
    let mut service = String::new();
    let mut scopes = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "service" => service = percent_decode(v),
            // Several scopes come as several parameters, or space-separated.
            "scope" => scopes.extend(
                percent_decode(v)
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    let user = authorization
        .and_then(|a| a.strip_prefix("Basic "))
        .map(|b| basic_user(b.trim()));
    let allowed = match &state.required {
        None => true,
        Some(want) => authorization == Some(want.as_str()),
    };
    state.requests.lock().unwrap().push(TokenRequest {
        user: user.clone(),
        scopes: scopes.clone(),
        issued: allowed,
    });
    if !allowed {
        return (
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"amphi-test\"\r\n",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                .to_string(),
        );
    }
    if service != TOKEN_SERVICE {
        return (
            "400 Bad Request",
            "",
            format!(
                r#"{{"errors":[{{"code":"DENIED","message":"unknown service {service:?}"}}]}}"#
            ),
        );
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>(),
            }))
        })
        .collect();
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    match jwt(state, user.as_deref().unwrap_or(""), access, n) {
        Ok(token) => (
            "200 OK",
            "",
            serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                .to_string(),
        ),
        Err(e) => {
            state.issued.fetch_sub(1, Ordering::SeqCst);
            (
                "500 Internal Server Error",
                "",
                serde_json::json!({"errors": [{"code": "UNKNOWN", "message": e}]}).to_string(),
            )
        }
    }
}

/// The user name in a Basic credential (base64 `user:password`), or the raw
/// credential when it does not decode.
fn basic_user(b64: &str) -> String {
    // Decode by hand: the alphabet's index of each character.
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in b64.bytes().take_while(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return b64.to_string(),
        };
        bits = bits << 6 | v as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    let s = String::from_utf8_lossy(&out).into_owned();
    s.split_once(':').map(|(u, _)| u.to_string()).unwrap_or(s)
}

/// An RS256 JWT for `sub` granting `access`, signed with `openssl dgst`.
fn jwt(
    state: &TokenState,
    sub: &str,
    access: Vec<serde_json::Value>,
    n: usize,
) -> Result<String, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let secs = now.as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [state.cert_b64]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": sub,
        "aud": TOKEN_SERVICE,
        "exp": secs + 300,
        "nbf": secs - 10,
        "iat": secs,
        "jti": format!("amphi-test-{n}-{}", now.as_nanos()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), true),
        base64(claims.to_string().as_bytes(), true)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&state.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(format!("{input}.{}", base64(&out.stdout, true)))
}

/// A registry that requires bearer tokens from its own [`TokenServer`],
/// with the registry stopped and the server shut down on drop.
pub struct TokenRegistry {
    // Dropped in this order: the registry first, then its token server.
    registry: Registry,
    server: TokenServer,
    creds: Option<String>,
}

impl TokenRegistry {
    /// A registry whose token server issues tokens to anyone who asks.
    pub fn anonymous() -> Self {
        Self::start(None)
    }

    /// A registry whose token server issues tokens only to `user:password`.
    pub fn with_creds(user: &str, password: &str) -> Self {
        Self::start(Some((user, password)))
    }

    fn start(creds: Option<(&str, &str)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("amphi-token-registry-")
            .tempdir()
            .unwrap();
        let (key, cert) = (
            dir.path().join("token-key.pem"),
            dir.path().join("token-cert.pem"),
        );
        let out = run_cmd(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
                .args([
                    "-days",
                    "2",
                    "-subj",
                    "/CN=amphi-test-token-issuer",
                    "-keyout",
                ])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        assert!(
            out.status.success(),
            "openssl could not make the token signing key:\n{}",
            show(&out)
        );
        let server = TokenServer::start(&key, &cert, creds);
        std::fs::write(
            dir.path().join("auth.yml"),
            format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                server.realm(),
                cert.display()
            ),
        )
        .unwrap();
        let out = run_cmd(
            Command::new(script("registry"))
                .arg("start")
                .arg(dir.path()),
        );
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "scripts/registry start (token auth) failed:\n{}\n--- registry log\n{log}",
            show(&out)
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        TokenRegistry {
            registry: Registry { dir, addr },
            server,
            creds: creds.map(|(u, p)| format!("{u}:{p}")),
        }
    }

    /// `127.0.0.1:PORT` of the registry.
    pub fn addr(&self) -> &str {
        self.registry.addr()
    }

    /// A full reference to `repo:tag` on this registry.
    pub fn reference(&self, repo_tag: &str) -> String {
        self.registry.reference(repo_tag)
    }

    /// The token server's realm URL, as the registry's challenges name it.
    pub fn realm(&self) -> String {
        self.server.realm()
    }

    /// How many tokens the token server issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.server.tokens_issued()
    }

    /// Every token request answered so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.server.requests()
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.registry.log()
    }

    /// Pushes the `latest` tag of an OCI layout as `repo:tag`, logging in
    /// with the required credentials if there are any.
    pub fn push(&self, layout: &Path, repo_tag: &str) {
        let mut cmd = Command::new(script("registry"));
        cmd.arg("push")
            .arg(self.registry.dir.path())
            .arg(layout)
            .arg(repo_tag);
        if let Some(creds) = &self.creds {
            cmd.arg(creds);
        }
        let out = run_cmd(&mut cmd);
        assert!(
            out.status.success(),
            "push of {} as {repo_tag} failed:\n{}\n--- registry log\n{}\n--- token requests\n{:?}",
            layout.display(),
            show(&out),
            self.log(),
            self.token_requests()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_both_alphabets() {
        assert_eq!(base64(b"", false), "");
        assert_eq!(base64(b"f", false), "Zg==");
        assert_eq!(base64(b"fo", false), "Zm8=");
        assert_eq!(base64(b"foo", false), "Zm9v");
        assert_eq!(base64(b"user:pass", false), "dXNlcjpwYXNz");
        assert_eq!(base64(&[0xfb, 0xff], false), "+/8=");
        assert_eq!(base64(&[0xfb, 0xff], true), "-_8");
        assert_eq!(basic_user("dXNlcjpwYXNz"), "user");
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            percent_decode("repository%3Ademo%2Fbusybox%3Apull%2Cpush"),
            "repository:demo/busybox:pull,push"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }
}
