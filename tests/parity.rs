//! amphi against runc on the same bundle (issue 20: where runc behaves one
//! way and amphi another, amphi is wrong).
//!
//! A [`Pair`] holds two copies of one busybox bundle, one per runtime, each
//! with its own `--root`. A test edits the config once, then runs both
//! runtimes the same way and compares what each one observably did: exit
//! status, state, what the process saw.

use crate::{amphi_bin, run_cmd, test_image};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The two runtimes compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Amphi,
    Runc,
}

/// Held for writing by a test that mounts or unmounts a cgroup hierarchy
/// (runc_parity's v1 hugetlb one, for crun), and for reading around every
/// runtime call: a runtime that sees a hierarchy as it starts must not
/// have it vanish under it (a cgroup.procs write then fails with ENOENT).
pub static CGROUP_LAYOUT: std::sync::RwLock<()> = std::sync::RwLock::new(());

impl Runtime {
    pub const BOTH: [Runtime; 2] = [Runtime::Amphi, Runtime::Runc];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Amphi => "amphi",
            Runtime::Runc => "runc",
        }
    }

    fn binary(self) -> PathBuf {
        match self {
            Runtime::Amphi => amphi_bin(),
            Runtime::Runc => PathBuf::from("runc"),
        }
    }
}

/// What one runtime call gave: its exit status and output, as text.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Outcome {
    fn from(o: Output) -> Self {
        Outcome {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// One side of a [`Pair`]: a bundle and a state root of its own.
pub struct Side {
    pub runtime: Runtime,
    bundle: tempfile::TempDir,
    root: tempfile::TempDir,
    pub id: String,
}

impl Side {
    pub fn bundle(&self) -> PathBuf {
        std::fs::canonicalize(self.bundle.path()).unwrap()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `<runtime> --root ROOT ARGS...`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.runtime.binary());
        c.arg("--root").arg(self.root()).args(args);
        c
    }

    pub fn call(&self, args: &[&str]) -> Outcome {
        // Not while a test changes the host's cgroup hierarchies (see
        // CGROUP_LAYOUT).
        let _layout = CGROUP_LAYOUT.read().unwrap_or_else(|p| p.into_inner());
        run_cmd(&mut self.cmd(args)).into()
    }

    /// `run --bundle B ID` in the foreground: the process's outcome.
    pub fn run(&self) -> Outcome {
        let b = self.bundle();
        let b = b.to_str().unwrap();
        self.call(&["run", "--bundle", b, &self.id])
    }

    /// `create --bundle B ID`.
    pub fn create(&self) -> Outcome {
        let b = self.bundle();
        let b = b.to_str().unwrap();
        self.call(&["create", "--bundle", b, &self.id])
    }

    /// The container's state JSON (Null when `state` fails).
    pub fn state(&self) -> Value {
        let o = self.call(&["state", &self.id]);
        serde_json::from_str(&o.stdout).unwrap_or(Value::Null)
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.bundle().join("config.json")).unwrap()).unwrap()
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = run_cmd(&mut self.cmd(&["delete", "--force", &self.id]));
    }
}

/// The same bundle for amphi and runc.
pub struct Pair {
    pub amphi: Side,
    pub runc: Side,
}

impl Pair {
    /// A busybox bundle with `amphi spec`'s config (runc's defaults), made
    /// non-interactive, edited by `edit`, for both runtimes. None with a
    /// skip notice when runc or umoci is missing (a failure under CI).
    pub fn new(tag: &str, edit: impl Fn(&mut Value)) -> Option<Pair> {
        Self::new_in(&std::env::temp_dir(), tag, edit)
    }

    /// As [`Pair::new`], with the bundles in directory `parent`, each
    /// traversable by every user (mode 0755: a user namespace's mapped
    /// root must reach the rootfs).
    pub fn new_in(parent: &Path, tag: &str, edit: impl Fn(&mut Value)) -> Option<Pair> {
        for tool in ["runc", "umoci"] {
            if !crate::have(tool) {
                crate::skip(&format!(
                    "{tool} is not installed: cannot compare amphi with runc"
                ));
                return None;
            }
        }
        let side = |runtime: Runtime| -> Side {
            let bundle = tempfile::Builder::new()
                .prefix(&format!("amphi-parity-{}-", runtime.name()))
                .tempdir_in(parent)
                .unwrap();
            std::fs::set_permissions(
                bundle.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
            let out = run_cmd(
                Command::new("umoci")
                    .args(["raw", "unpack", "--image"])
                    .arg(format!("{}:latest", test_image("busybox").display()))
                    .arg(bundle.path().join("rootfs")),
            );
            assert!(out.status.success(), "umoci: {}", Outcome::from(out).stderr);
            let out = run_cmd(
                Command::new(amphi_bin())
                    .arg("spec")
                    .arg("--bundle")
                    .arg(bundle.path()),
            );
            assert!(
                out.status.success(),
                "amphi spec: {}",
                Outcome::from(out).stderr
            );
            let p = bundle.path().join("config.json");
            let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            v["process"]["terminal"] = json!(false);
            v["root"]["readonly"] = json!(false);
            edit(&mut v);
            std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Side {
                runtime,
                bundle,
                root: tempfile::Builder::new()
                    .prefix("amphi-parity-root-")
                    .tempdir()
                    .unwrap(),
                id: format!("parity-{tag}-{}-{}-{n}", runtime.name(), std::process::id()),
            }
        };
        Some(Pair {
            amphi: side(Runtime::Amphi),
            runc: side(Runtime::Runc),
        })
    }

    pub fn sides(&self) -> [&Side; 2] {
        [&self.amphi, &self.runc]
    }

    /// Sets `process.args` to `sh -c SCRIPT` on both sides.
    pub fn script(&self, script: &str) {
        self.edit(|v| v["process"]["args"] = json!(["sh", "-c", script]));
    }

    /// Edits both configs.
    pub fn edit(&self, f: impl Fn(&mut Value)) {
        for s in self.sides() {
            let p = s.bundle().join("config.json");
            let mut v = s.config();
            f(&mut v);
            std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        }
    }

    /// `run` on both: (amphi's outcome, runc's).
    pub fn run(&self) -> (Outcome, Outcome) {
        (self.amphi.run(), self.runc.run())
    }

    /// Runs both and asserts the same exit status and stdout; returns
    /// amphi's outcome.
    pub fn run_same(&self) -> Outcome {
        let (a, r) = self.run();
        assert_eq!(
            (a.code, &a.stdout),
            (r.code, &r.stdout),
            "amphi and runc differ\n--- amphi stderr\n{}--- runc stderr\n{}",
            a.stderr,
            r.stderr
        );
        a
    }
}
