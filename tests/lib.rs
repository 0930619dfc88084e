//! Harness for amphi's end-to-end tests: run the built binary, build test images, run a registry.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod layout;
pub mod parity;
pub mod tiny_guest;
mod token;

pub use layout::{raw_tar, sha256_digest, BuiltLayout, Compression, LayoutBuilder, TarEntry};
pub use token::{TokenRegistry, TokenRequest, TokenServer, TOKEN_ISSUER, TOKEN_SERVICE};

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cargo workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of one of the repository's `scripts/`.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}

/// The amphi binary under test: `$AMPHI_BIN`, else the workspace's debug build.
pub fn amphi_bin() -> PathBuf {
    let bin = match std::env::var_os("AMPHI_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("x86_64-unknown-linux-gnu/debug/amphi"),
    };
    assert!(
        bin.is_file(),
        "{} is missing: build it first: cargo build -p amphi",
        bin.display()
    );
    bin
}

/// How long one command may run: `$AMPHI_TEST_TIMEOUT` seconds, default 300.
pub fn command_timeout() -> Duration {
    let secs = std::env::var("AMPHI_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(300))
}

/// Runs a command with stdin closed and output collected; panics if it outlives [`command_timeout`].
pub fn run_cmd(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, command_timeout())
}

/// Runs the shell command `inner` on a terminal of its own (script(1)),
/// with `envs`; its exit status and what the terminal showed. script's
/// stdin stays open until it ends: at EOF, script would type ^D into the
/// terminal and then hang it up, which a command still running sees.
/// Panics if it outlives [`command_timeout`].
pub fn in_terminal(inner: &str, envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("script");
    cmd.args(["-qec", inner, "/dev/null"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_inner(&mut cmd, command_timeout(), Stdio::piped())
}

fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run_inner(cmd, timeout, Stdio::null())
}

fn run_inner(cmd: &mut Command, timeout: Duration, stdin: Stdio) -> Output {
    // Files rather than pipes, so a daemon the command leaves behind cannot hold us up.
    let (mut out, mut err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    cmd.stdin(stdin)
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    // A piped stdin is held open until the command has ended.
    let _stdin = child.stdin.take();
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} timed out after {timeout:?}; stderr:\n{}",
                read_all(&mut err)
            );
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    let stdout = read_all(&mut out).into_bytes();
    let stderr = read_all(&mut err).into_bytes();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn read_all(file: &mut File) -> String {
    let mut buf = Vec::new();
    file.rewind().unwrap();
    file.read_to_end(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// A private amphi state directory (`$AMPHI_ROOT`) and helpers to run amphi against it.
pub struct Amphi {
    root: tempfile::TempDir,
}

impl Default for Amphi {
    fn default() -> Self {
        Self::new()
    }
}

impl Amphi {
    /// A fresh, empty `$AMPHI_ROOT` in a temporary directory, removed on drop.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("amphi-root-")
            .tempdir()
            .unwrap();
        // As amphi makes a store (a looser one it tightens, with a warning).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Amphi { root }
    }

    /// The `$AMPHI_ROOT` directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// An `amphi ARGS` command with `AMPHI_ROOT` set, for tests that need to tweak it.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(amphi_bin());
        cmd.args(args).env("AMPHI_ROOT", self.root());
        cmd
    }

    /// Loads the test image `name` (see [`test_image`]) into this store as `tag`.
    pub fn load_test_image(&self, name: &str, tag: &str) {
        let layout = test_image(name);
        self.ok(&["load", "-q", "--tag", tag, &layout.to_string_lossy()]);
    }

    /// Runs `amphi ARGS` to completion (see [`run_cmd`]).
    pub fn run(&self, args: &[&str]) -> Output {
        run_cmd(&mut self.cmd(args))
    }

    /// Runs `amphi ARGS`, asserts it succeeded and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!(
                "amphi {} failed ({}):\n{}",
                args.join(" "),
                out.status,
                show(&out)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `amphi ARGS`, asserts it failed cleanly (non-zero exit, no signal, no panic), returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let clean = out.status.code().is_some_and(|c| c != 0) && !stderr.contains("panicked at");
        if !clean {
            panic!(
                "amphi {} should have failed cleanly ({}):\n{}",
                args.join(" "),
                out.status,
                show(&out)
            );
        }
        stderr
    }
}

fn show(out: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Where `scripts/build-test-images` keeps its layouts: `$AMPHI_TEST_CACHE` or /var/cache/amphi/test-images.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("AMPHI_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/amphi/test-images"))
}

/// Path of the OCI layout of test image `name` (busybox, busybox-multi, minbase), built if needed.
pub fn test_image(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let layout = cache_dir().join(name);
    if built.contains(name) {
        return layout;
    }
    std::fs::create_dir_all(cache_dir()).unwrap();
    // Held until the end of this function: one builder at a time across test processes.
    let lock_path = cache_dir().join(".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .unwrap();
    assert_eq!(
        // SAFETY: flock only reads its arguments; `lock` is an open file that
        // outlives the call.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) },
        0,
        "flock"
    );
    let mut cmd = Command::new(script("build-test-images"));
    let out = run_with_timeout(cmd.arg(name), Duration::from_secs(1800));
    assert!(
        out.status.success(),
        "build-test-images {name} failed:\n{}",
        show(&out)
    );
    built.insert(name.to_string());
    layout
}

/// A throwaway local registry (`scripts/registry`), stopped on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    /// Starts a registry on a free 127.0.0.1 port with storage in a temporary directory.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("amphi-registry-")
            .tempdir()
            .unwrap();
        let out = run_cmd(
            Command::new(script("registry"))
                .arg("start")
                .arg(dir.path()),
        );
        assert!(
            out.status.success(),
            "scripts/registry start failed:\n{}",
            show(&out)
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Registry { dir, addr }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A full reference to `repo:tag` on this registry, e.g. `127.0.0.1:PORT/busybox:latest`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// Where the registry keeps its data (to corrupt it on purpose).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Pushes the `latest` tag of an OCI layout as `repo:tag` (digests preserved, all platforms).
    pub fn push(&self, layout: &Path, repo_tag: &str) {
        let mut cmd = Command::new(script("registry"));
        cmd.arg("push")
            .arg(self.dir.path())
            .arg(layout)
            .arg(repo_tag);
        let out = run_cmd(&mut cmd);
        assert!(
            out.status.success(),
            "push of {} as {repo_tag} failed:\n{}",
            layout.display(),
            show(&out)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(script("registry"))
            .arg("stop")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}

/// The rule for a test that cannot run here (a tool, root, KVM or a cached
/// build is missing): [`skip`] fails the test in strict mode (`CI=true` or
/// `AMPHI_TEST_STRICT=1`), otherwise announces the skip loudly and records
/// it in `$AMPHI_SKIP_LOG` for scripts/test's summary. [`have`] tells
/// whether a tool is on PATH; [`require`] is `cond` or a skip;
/// [`not_applicable`] is for a test this kind of host has nothing to check
/// for (announced and logged, never failing).
pub use amphi_test_skip::{have, is_root, not_applicable, require, skip, strict};

/// Copies the single-image OCI layout `src` to `dst`, with its image config
/// edited by `edit_config` and `annotations` added to its manifest (new
/// config and manifest blobs, digests recomputed): test images that ask
/// for a kernel, an isolation or another architecture.
pub fn derive_image(
    src: &Path,
    dst: &Path,
    edit_config: impl FnOnce(&mut serde_json::Value),
    annotations: &[(&str, &str)],
) {
    derive_image_with_layer(src, dst, edit_config, annotations, None)
}

/// [`derive_image`], plus `layer` (an uncompressed tar, e.g. from
/// [`raw_tar`]) stacked on top of the image's layers: test images that
/// carry an attacker's files.
pub fn derive_image_with_layer(
    src: &Path,
    dst: &Path,
    edit_config: impl FnOnce(&mut serde_json::Value),
    annotations: &[(&str, &str)],
    layer: Option<&[u8]>,
) {
    use sha2::Digest;
    let blobs = dst.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let to = blobs.join(e.file_name());
        if std::fs::hard_link(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
    std::fs::copy(src.join("oci-layout"), dst.join("oci-layout")).unwrap();
    let blob = |d: &str| {
        src.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |bytes: &[u8]| -> String {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let mdesc = &mut index["manifests"][0];
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(mdesc["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    edit_config(&mut config);
    if let Some(tar) = layer {
        let digest = put(tar);
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(digest.clone().into());
        manifest["layers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest,
                "size": tar.len(),
            }));
    }
    let cbytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = put(&cbytes).into();
    manifest["config"]["size"] = cbytes.len().into();
    if !annotations.is_empty() {
        let a = manifest
            .as_object_mut()
            .unwrap()
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        for (k, v) in annotations {
            a[*k] = (*v).into();
        }
    }
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    mdesc["digest"] = put(&mbytes).into();
    mdesc["size"] = mbytes.len().into();
    std::fs::write(dst.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn env_dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The build cache key of guest kernel `series` ("6.12", "6.1"), computed
/// here independently of amphi: sha256(fragment ++ recipe ++ "\n<tarball
/// size> <mtime>\n"), 12 hex digits; None when the source is not installed.
pub fn guest_kernel_recipe_hash(series: &str) -> Option<String> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let tarball =
        env_dir("AMPHI_LINUX_SOURCE_DIR", "/usr/src").join(format!("linux-source-{series}.tar.xz"));
    let meta = std::fs::metadata(tarball).ok()?;
    let mut h = sha2::Sha256::new();
    h.update(std::fs::read(workspace_root().join("guest-kernel/microvm.config")).unwrap());
    h.update(std::fs::read(workspace_root().join("guest-kernel/build.sh")).unwrap());
    h.update(format!("\n{} {}\n", meta.len(), meta.mtime()));
    Some(hex::encode(h.finalize())[..12].to_string())
}

/// Whether this host's cgroups are pure v2 (cgroup2 mounted at
/// /sys/fs/cgroup), as /proc/self/mounts shows it; hybrid and v1 hosts are
/// not.
pub fn host_cgroup_v2_only() -> bool {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap();
    m.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/cgroup" && f[2] == "cgroup2"
    })
}

/// amphi's finished build of guest kernel `series` in the machine's build
/// cache (`$AMPHI_KERNEL_CACHE`): its directory and the version it reports.
/// None when it is not built (see [`guest_kernel_build`] for the loud skip).
pub fn guest_kernel_build_quiet(series: &str) -> Option<(PathBuf, String)> {
    let hash = guest_kernel_recipe_hash(series)?;
    let dir =
        env_dir("AMPHI_KERNEL_CACHE", "/var/cache/amphi/kernels").join(format!("{series}-{hash}"));
    let version = std::fs::read_to_string(dir.join("version")).ok()?;
    Some((dir, version.trim().to_string()))
}

/// [`guest_kernel_build_quiet`], with a loud skip when it is missing.
pub fn guest_kernel_build(series: &str) -> Option<(PathBuf, String)> {
    let found = guest_kernel_build_quiet(series);
    if found.is_none() {
        skip(&format!(
            "guest kernel {series} is not built (or linux-source-{series} is not installed): run scripts/setup and `amphi kernel build --version {series}` (scripts/test does both)"
        ));
    }
    found
}

/// podman with its own storage, runtime = amphi, and a containers.conf
/// whose ulimits fit this host (podman's defaults exceed the hard limits
/// here and CAP_SYS_RESOURCE is not available to raise them).
pub struct Podman {
    /// Its private storage and configuration.
    pub dir: tempfile::TempDir,
}

impl Podman {
    /// A podman with private storage that has pulled the busybox test image.
    pub fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("amphi-podman-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        let p = Podman { dir };
        let out = run_cmd(&mut p.cmd(&[
            "pull",
            "-q",
            &format!("oci:{}:latest", test_image("busybox").display()),
        ]));
        assert!(
            out.status.success(),
            "podman pull oci: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    /// A `podman ARGS` command with the private storage and amphi as runtime.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            // Its own libpod tmpdir: two podmans must not share /run/libpod.
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs", "--runtime"])
            .arg(amphi_bin())
            .args(args);
        c
    }

    /// The ID of the pulled image.
    pub fn image(&self) -> String {
        let out = run_cmd(&mut self.cmd(&["images", "-q"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .to_string()
    }
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = run_cmd(&mut self.cmd(&["rm", "-af"]));
        let _ = run_cmd(&mut self.cmd(&["system", "reset", "-f"]));
    }
}

/// Names in a directory, sorted (empty when it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Live processes (not zombies) whose command line or environment contains
/// one of `needles`, as "PID: command line".
pub fn processes_mentioning(needles: &[String]) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for pid in dir_names(Path::new("/proc")) {
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let dir = Path::new("/proc").join(&pid);
        let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            continue; // a zombie or a kernel thread
        }
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let environ = String::from_utf8_lossy(&fs::read(dir.join("environ")).unwrap_or_default())
            .replace('\0', " ");
        if needles
            .iter()
            .any(|n| cmdline.contains(n.as_str()) || environ.contains(n.as_str()))
        {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// Receives one file descriptor sent with SCM_RIGHTS on `sock` (a console
/// socket's pty master, a seccomp listener). None when the peer closed
/// without sending one.
pub fn recv_fd(sock: std::os::fd::RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut data = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: a zeroed msghdr pointing at live local buffers; the cmsg
    // macros walk the control buffer the kernel filled in.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n == 0 || cmsg.is_null() {
            return None;
        }
        assert_eq!((*cmsg).cmsg_level, libc::SOL_SOCKET);
        assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const std::os::fd::RawFd);
        Some(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

/// GETs `url` with curl until it answers with a body, for at most
/// `limit`: the body (a server that never answers fails the test).
pub fn curl_until_served(url: &str, limit: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let c = std::process::Command::new("curl")
            .args(["-s", "-m", "5", url])
            .output()
            .unwrap();
        if c.status.success() && !c.stdout.is_empty() {
            return String::from_utf8_lossy(&c.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never answered within {limit:?}: {c:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The host kernel's release (`uname -r`), to tell a microVM's guest
/// kernel from it.
pub fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}
