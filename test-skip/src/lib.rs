//! The one rule for a test that cannot run on this machine (a tool, root,
//! KVM or a cached build is missing), shared by every crate's tests.
//!
//! - **Strict mode** (`CI=true` or `AMPHI_TEST_STRICT=1`): the test fails,
//!   panicking with the reason. CI runs strict, so a green CI run means
//!   every test ran.
//! - Otherwise the test is skipped with a loud line on stderr, and when
//!   `AMPHI_SKIP_LOG` names a file (scripts/test sets it) a line
//!   `binary<TAB>test<TAB>reason` is appended to it (the binary's file name
//!   with cargo's hash), so that scripts/test
//!   can count the skips per test binary.
//!
//! `AMPHI_TEST_PRETEND_MISSING=tool1,tool2` makes [`have`] report those
//! tools as missing: a way to see the skip (or the strict failure) on a
//! machine that has everything.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

/// The variable that turns strict mode on besides `CI`.
pub const STRICT_VAR: &str = "AMPHI_TEST_STRICT";
/// The file that skips are appended to.
pub const LOG_VAR: &str = "AMPHI_SKIP_LOG";
/// Tools that [`have`] pretends are not installed (comma-separated).
pub const PRETEND_MISSING_VAR: &str = "AMPHI_TEST_PRETEND_MISSING";

/// Whether a test that cannot run here must fail instead of skipping.
pub fn strict() -> bool {
    strict_from(
        std::env::var("CI").ok().as_deref(),
        std::env::var(STRICT_VAR).ok().as_deref(),
    )
}

/// [`strict`] from the values of `CI` and `AMPHI_TEST_STRICT`: `CI` as CI
/// services set it (`true`, `1`), `AMPHI_TEST_STRICT` anything but empty,
/// `0` or `false`.
pub fn strict_from(ci: Option<&str>, amphi_strict: Option<&str>) -> bool {
    let on = |v: &str, lenient: bool| {
        let v = v.trim().to_ascii_lowercase();
        if lenient {
            !matches!(v.as_str(), "" | "0" | "false" | "no")
        } else {
            matches!(v.as_str(), "true" | "1" | "yes")
        }
    };
    ci.is_some_and(|v| on(v, false)) || amphi_strict.is_some_and(|v| on(v, true))
}

/// The current test cannot run here for `reason`: in strict mode this
/// panics (the test fails with the reason); otherwise it prints a loud
/// SKIP line on the real stderr (bypassing libtest's capture), records the
/// skip in `$AMPHI_SKIP_LOG`, and returns so the caller can return.
#[track_caller]
pub fn skip(reason: &str) {
    let test = test_name();
    if strict() {
        panic!(
            "{test}: would skip, and strict mode (CI=true or {STRICT_VAR}=1) does not allow it: {reason}"
        );
    }
    announce(&test, reason);
}

/// The current test checks something this kind of host does not have
/// (the PVM-only refusal of stock kernels, on hardware KVM): it is
/// announced and logged like a skip, with the reason prefixed by
/// `not applicable here:`, but never fails, strict or not. Not for a
/// missing tool, root, KVM or build: those are [`skip`].
pub fn not_applicable(reason: &str) {
    announce(&test_name(), &format!("not applicable here: {reason}"));
}

/// The loud SKIP line, and the line in `$AMPHI_SKIP_LOG`.
fn announce(test: &str, reason: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n******** SKIP {test}: {reason} ********\n"
    );
    if let Some(log) = std::env::var_os(LOG_VAR).filter(|v| !v.is_empty()) {
        record(Path::new(&log), &binary_name(), test, reason);
    }
}

/// `cond`, or else [`skip`] with `reason` and false: for
/// `if !require(have("podman"), "podman is not installed") { return; }`.
#[track_caller]
pub fn require(cond: bool, reason: &str) -> bool {
    if !cond {
        skip(reason);
    }
    cond
}

/// Whether `tool` is an executable file in a `$PATH` directory (and not
/// named in `$AMPHI_TEST_PRETEND_MISSING`).
pub fn have(tool: &str) -> bool {
    if pretend_missing(tool) {
        return false;
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool))))
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective\tsaved\tfs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn pretend_missing(tool: &str) -> bool {
    std::env::var(PRETEND_MISSING_VAR).is_ok_and(|list| list.split(',').any(|t| t.trim() == tool))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The running test: libtest runs each test on a thread named after it.
fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "(unknown test)".to_string(),
    }
}

/// The test binary's file name, cargo's hash suffix included
/// (`clients-0123456789abcdef`): what scripts/test matches against cargo's
/// `Running` lines. With the hash, the unit tests of a crate's library and
/// of its binary (both called `amphi-…`) stay apart.
fn binary_name() -> String {
    let exe = std::env::args_os().next().unwrap_or_default();
    Path::new(&exe)
        .file_name()
        .unwrap_or(OsStr::new("?"))
        .to_string_lossy()
        .into_owned()
}

/// Appends one `binary<TAB>test<TAB>reason` line (tabs and newlines in the
/// fields become spaces). One write of one line with O_APPEND, so lines of
/// tests running in parallel do not interleave.
fn record(log: &Path, binary: &str, test: &str, reason: &str) {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let line = format!("{}\t{}\t{}\n", clean(binary), clean(test), clean(reason));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        let _ = writeln!(
            std::io::stderr(),
            "cannot record the skip in {}: {e}",
            log.display()
        );
    }
}

/// Whether a unix stream socket listens on `path` in this network
/// namespace (`/proc/net/unix`, its `__SO_ACCEPTCON` flag): bound is not
/// enough, a connect between a daemon's `bind` and its `listen` is
/// refused.
pub fn unix_listening(path: &std::path::Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let path = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8
            && f[7] == path
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn strict_follows_ci_and_the_amphi_variable() {
        assert!(!strict_from(None, None));
        assert!(strict_from(Some("true"), None));
        assert!(strict_from(Some("1"), None));
        assert!(strict_from(Some("TRUE"), None));
        assert!(!strict_from(Some("false"), None));
        assert!(!strict_from(Some(""), None));
        assert!(strict_from(None, Some("1")));
        assert!(strict_from(None, Some("yes")));
        assert!(!strict_from(None, Some("0")));
        assert!(!strict_from(None, Some("")));
        assert!(!strict_from(Some("false"), Some("false")));
        assert!(strict_from(Some("false"), Some("1")));
    }

    #[test]
    fn have_finds_sh_and_honours_pretend_missing() {
        assert!(have("sh"), "sh is on every PATH this suite runs with");
        assert!(!have("amphi-no-such-tool"));
        // The pretend list is read from the environment: checked in a
        // child (this binary again) so no other test sees the variable.
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "tests::child_reports_have_sh",
                "--nocapture",
            ])
            .env(PRETEND_MISSING_VAR, "cpio, sh")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("have(sh) = false"), "{stdout}");
    }

    /// Run by `have_finds_sh_and_honours_pretend_missing` in a child.
    #[test]
    #[ignore = "run in a child process by have_finds_sh_and_honours_pretend_missing"]
    fn child_reports_have_sh() {
        println!("have(sh) = {}", have("sh"));
    }

    /// Runs `child_skips` in a child process with `env`; its output.
    fn skip_in_child(env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--ignored", "--exact", "tests::child_skips", "--nocapture"])
            .env_remove("CI")
            .env_remove(STRICT_VAR)
            .env_remove(LOG_VAR);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Run by the tests below in a child process.
    #[test]
    #[ignore = "run in a child process by the skip tests"]
    fn child_skips() {
        skip("frobnicator is not installed");
    }

    #[test]
    fn lenient_mode_skips_loudly_and_records_the_skip() {
        let dir = std::env::temp_dir().join(format!("amphi-test-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        let _ = std::fs::remove_file(&log);
        let out = skip_in_child(&[(LOG_VAR, log.to_str().unwrap())]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("SKIP tests::child_skips: frobnicator is not installed"),
            "{stderr}"
        );
        let logged = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let exe = std::env::current_exe().unwrap();
        let binary = exe.file_name().unwrap().to_str().unwrap();
        assert!(binary.starts_with("amphi_test_skip-"), "{binary}");
        assert_eq!(
            logged,
            format!("{binary}\ttests::child_skips\tfrobnicator is not installed\n")
        );
    }

    /// Run by `not_applicable_never_fails` in a child process.
    #[test]
    #[ignore = "run in a child process by not_applicable_never_fails"]
    fn child_not_applicable() {
        not_applicable("this host is not a teapot");
    }

    #[test]
    fn not_applicable_never_fails() {
        let log = std::env::temp_dir().join(format!("amphi-test-na-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "tests::child_not_applicable"])
            .env("CI", "true")
            .env(STRICT_VAR, "1")
            .env(LOG_VAR, &log)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains(
                "SKIP tests::child_not_applicable: not applicable here: this host is not a teapot"
            ),
            "{stderr}"
        );
        let logged = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        assert!(
            logged.ends_with(
                "\ttests::child_not_applicable\tnot applicable here: this host is not a teapot\n"
            ),
            "{logged}"
        );
    }

    #[test]
    fn strict_mode_fails_the_test_with_the_reason() {
        for env in [("CI", "true"), (STRICT_VAR, "1")] {
            let out = skip_in_child(&[env]);
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{env:?}: the skip must fail:\n{all}");
            assert!(all.contains("frobnicator is not installed"), "{all}");
            assert!(all.contains("strict mode"), "{all}");
        }
    }
}
