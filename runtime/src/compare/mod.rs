//! `amphi compare`: run one workload natively and in a microVM, and show
//! the difference: exit status, stdout/stderr (a diff when they differ),
//! wall time by phase, peak memory, and the kernel the workload saw.
//!
//! Each side is a real `amphi run --rm --isolation container|vm` of this
//! same binary, its output captured and its numbers taken from the run
//! report (`$AMPHI_RUN_REPORT`, see [`crate::run::report`]). The reports go
//! to a private directory ([`Scratch`]): made by mkdtemp (0700, a random
//! name), its files created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing
//! another user plants in the temp directory is followed or read.

use crate::run::report::{RunReport, REPORT_ENV};
use serde::Serialize;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The private temp directory of one `amphi compare`, removed on drop.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new directory `amphi-compare-XXXXXX` (0700) in `parent`.
    pub fn new_in(parent: &Path) -> Result<Scratch, String> {
        let dir = tempfile::Builder::new()
            .prefix("amphi-compare-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(|e| format!("making a private directory in {}: {e}", parent.display()))?;
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates the empty file `name` (0600) in the directory; refuses one
    /// that exists, a symlink included.
    pub fn create(&self, name: &str) -> Result<PathBuf, String> {
        let p = self.dir.path().join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }
}

/// Reads a run report without following a symlink, at most 1 MiB.
fn read_report(p: &Path) -> Option<RunReport> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .ok()?;
    let mut b = Vec::new();
    f.take(1 << 20).read_to_end(&mut b).ok()?;
    serde_json::from_slice(&b).ok()
}

/// One side of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub isolation: String,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The run report; missing when amphi failed before the workload ran.
    pub report: Option<RunReport>,
}

/// Both sides and what differs.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub image: String,
    pub command: Vec<String>,
    pub container: Side,
    pub vm: Side,
    /// The names of the rows that differ ("exit status", "stdout", ...).
    pub differences: Vec<String>,
    pub stdout_diff: Option<String>,
    pub stderr_diff: Option<String>,
}

/// Drops amphi's own notices (lines starting with "amphi: notice:") from
/// the captured stderr: they describe amphi, not the workload.
fn workload_stderr(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with("amphi: notice:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs one side: `amphi run --rm --isolation <iso> <flags> IMAGE CMD`,
/// its report in `scratch`.
pub fn run_side(
    exe: &Path,
    isolation: &str,
    run_flags: &[String],
    image: &str,
    command: &[String],
    scratch: &Scratch,
) -> Result<Side, String> {
    let report_path = scratch.create(&format!("{isolation}.json"))?;
    let out = Command::new(exe)
        .arg("run")
        .arg("--rm")
        .arg("--isolation")
        .arg(isolation)
        .args(run_flags)
        .arg(image)
        .args(command)
        .env(REPORT_ENV, &report_path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    let report = read_report(&report_path);
    let _ = std::fs::remove_file(&report_path);
    Ok(Side {
        isolation: isolation.into(),
        exit_code: out.status.code().unwrap_or(125),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: workload_stderr(&String::from_utf8_lossy(&out.stderr)),
        report,
    })
}

/// Puts the two sides together.
pub fn compare(image: &str, command: &[String], container: Side, vm: Side) -> Comparison {
    let mut differences = Vec::new();
    if container.exit_code != vm.exit_code {
        differences.push("exit status".to_string());
    }
    let kernel = |s: &Side| s.report.as_ref().map(|r| r.kernel.clone());
    if kernel(&container) != kernel(&vm) {
        differences.push("kernel".to_string());
    }
    let stdout_diff = (container.stdout != vm.stdout).then(|| {
        differences.push("stdout".to_string());
        unified_diff(&container.stdout, &vm.stdout, "container", "vm")
    });
    let stderr_diff = (container.stderr != vm.stderr).then(|| {
        differences.push("stderr".to_string());
        unified_diff(&container.stderr, &vm.stderr, "container", "vm")
    });
    Comparison {
        image: image.into(),
        command: command.to_vec(),
        container,
        vm,
        differences,
        stdout_diff,
        stderr_diff,
    }
}

/// A line diff (longest common subsequence) in unified style, without hunk
/// headers: ` ` common, `-` only in `a`, `+` only in `b`. Long inputs are
/// cut to their first 2000 lines.
pub fn unified_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    const MAX: usize = 2000;
    let a: Vec<&str> = a.lines().take(MAX).collect();
    let b: Vec<&str> = b.lines().take(MAX).collect();
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: LCS length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn msf(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v >= 1000.0 {
            format!("{:.2} s", v / 1000.0)
        } else {
            format!("{v:.0} ms")
        }
    })
}

fn first_line(s: &str) -> String {
    let l = s.lines().count();
    let first = s.lines().next().unwrap_or("").to_string();
    let first: String = first.chars().take(40).collect();
    match l {
        0 => "(empty)".into(),
        1 => first,
        _ => format!("{first} … ({l} lines)"),
    }
}

/// One row of the table: its name, the container's and the microVM's
/// value, and whether the two differ.
struct Row {
    name: &'static str,
    container: String,
    vm: String,
    differs: bool,
}

impl Row {
    fn new(name: &'static str, container: String, vm: String, differs: bool) -> Row {
        Row {
            name,
            container,
            vm,
            differs,
        }
    }
}

impl Comparison {
    /// The side-by-side table, with the diffs below it; `color` marks the
    /// rows that differ (for a terminal).
    pub fn render(&self, color: bool) -> String {
        let backend = self.vm.report.as_ref().and_then(|r| r.backend.as_deref());
        let mut out = table(&self.rows(), backend, color);
        for (what, d) in [("stdout", &self.stdout_diff), ("stderr", &self.stderr_diff)] {
            if let Some(d) = d {
                out.push_str(&diff_section(what, d, color));
            }
        }
        out.push_str(&self.summary());
        out
    }

    /// The rows of the table: what the workload did, then the times and
    /// the memory of each side.
    fn rows(&self) -> Vec<Row> {
        let (c, v) = (&self.container, &self.vm);
        let (cr, vr) = (c.report.as_ref(), v.report.as_ref());
        vec![
            Row::new(
                "exit status",
                c.exit_code.to_string(),
                v.exit_code.to_string(),
                self.differences.iter().any(|d| d == "exit status"),
            ),
            Row::new(
                "kernel",
                cr.map_or("-".into(), |r| r.kernel.clone()),
                vr.map_or("-".into(), |r| r.kernel.clone()),
                self.differences.iter().any(|d| d == "kernel"),
            ),
            Row::new(
                "stdout",
                first_line(&c.stdout),
                first_line(&v.stdout),
                self.stdout_diff.is_some(),
            ),
            Row::new(
                "stderr",
                first_line(&c.stderr),
                first_line(&v.stderr),
                self.stderr_diff.is_some(),
            ),
            Row::new(
                "setup",
                msf(cr.map(|r| r.setup_ms)),
                msf(vr.map(|r| r.setup_ms)),
                false,
            ),
            Row::new("boot", "-".into(), msf(vr.map(|r| r.boot_ms)), false),
            Row::new(
                "run",
                msf(cr.map(|r| r.run_ms)),
                msf(vr.map(|r| r.run_ms)),
                false,
            ),
            Row::new(
                "total",
                msf(cr.map(|r| r.total_ms)),
                msf(vr.map(|r| r.total_ms)),
                false,
            ),
            Row::new(
                "peak memory",
                mib(cr.and_then(|r| r.peak_memory)),
                mib(vr.and_then(|r| r.peak_memory)),
                false,
            ),
        ]
    }

    /// The last line: what differs, or that nothing does.
    fn summary(&self) -> String {
        if self.differences.is_empty() {
            "\nno differences in exit status, kernel or output\n".to_string()
        } else {
            format!("\ndiffers: {}\n", self.differences.join(", "))
        }
    }
}

/// The table itself: a header naming the sides (the microVM's with its
/// `backend`), then one line a row, aligned, the rows that differ marked
/// (and in colour with `color`).
fn table(rows: &[Row], backend: Option<&str>, color: bool) -> String {
    let w1 = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let w2 = rows
        .iter()
        .map(|r| r.container.chars().count())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut out = format!(
        "{:w1$}  {:w2$}  {}\n",
        "",
        "container",
        match backend {
            Some(b) => format!("microVM ({b})"),
            None => "microVM".into(),
        }
    );
    for Row {
        name,
        container: a,
        vm: b,
        differs,
    } in rows
    {
        let mark = if *differs { "≠" } else { " " };
        let line = format!("{name:w1$}  {a:w2$}  {b}  {mark}");
        if *differs && color {
            out.push_str(&format!("\x1b[1;33m{line}\x1b[0m\n"));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// The diff `d` of the stream `what`, under a heading; with `color`, its
/// removed lines red and its added lines green.
fn diff_section(what: &str, d: &str, color: bool) -> String {
    let mut out = format!("\n{what} differs:\n");
    for l in d.lines() {
        let colored = match l.chars().next() {
            Some('-') if color && !l.starts_with("---") => {
                format!("\x1b[31m{l}\x1b[0m")
            }
            Some('+') if color && !l.starts_with("+++") => {
                format!("\x1b[32m{l}\x1b[0m")
            }
            _ => l.to_string(),
        };
        out.push_str(&colored);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(iso: &str, code: i32, out: &str, kernel: &str) -> Side {
        Side {
            isolation: iso.into(),
            exit_code: code,
            stdout: out.into(),
            stderr: String::new(),
            report: Some(RunReport {
                isolation: iso.into(),
                exit_code: code,
                kernel: kernel.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn diff_marks_lines_on_each_side() {
        let d = unified_diff("a\nb\nc\n", "a\nx\nc\nd\n", "l", "r");
        assert_eq!(d, "--- l\n+++ r\n a\n-b\n+x\n c\n+d\n");
        assert_eq!(unified_diff("", "", "l", "r"), "--- l\n+++ r\n");
    }

    #[test]
    fn differences_are_named_and_highlighted() {
        let c = compare(
            "img",
            &["uname".into()],
            side("container", 0, "6.18.3\n", "6.18.3"),
            side("vm", 0, "6.12.117\n", "6.12.117"),
        );
        assert_eq!(c.differences, ["kernel", "stdout"]);
        assert!(c
            .stdout_diff
            .as_ref()
            .unwrap()
            .contains("-6.18.3\n+6.12.117"));
        let plain = c.render(false);
        assert!(plain.contains("kernel") && plain.contains("≠") && !plain.contains("\x1b["));
        assert!(c.render(true).contains("\x1b[1;33m"));
        let same = compare(
            "img",
            &[],
            side("container", 3, "x\n", "k"),
            side("vm", 3, "x\n", "k"),
        );
        assert!(same.differences.is_empty());
        assert!(same.render(false).contains("no differences"));
    }

    #[test]
    fn scratch_is_private_and_follows_no_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let victim = parent.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let s = Scratch::new_in(parent.path()).unwrap();
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
        assert!(s
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("amphi-compare-"));
        // A planted symlink is neither followed on create nor on read.
        std::os::unix::fs::symlink(&victim, s.path().join("vm.json")).unwrap();
        let e = s.create("vm.json").unwrap_err();
        assert!(e.contains("vm.json") && e.contains("exists"), "{e}");
        std::fs::write(&victim, br#"{"isolation":"vm","exit_code":0,"oom_killed":false,"kernel":"x","peak_memory":null,"setup_ms":0,"boot_ms":0,"run_ms":0,"total_ms":0}"#).unwrap();
        assert!(read_report(&victim).is_some());
        assert!(read_report(&s.path().join("vm.json")).is_none());
        let p = s.create("container.json").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dir = s.path().to_path_buf();
        drop(s);
        assert!(!dir.exists());
        assert!(victim.exists());
    }

    #[test]
    fn amphi_notices_are_not_workload_output() {
        assert_eq!(
            workload_stderr("amphi: notice: TCG\nreal error\n"),
            "real error\n"
        );
    }
}
