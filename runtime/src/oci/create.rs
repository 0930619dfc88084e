//! `create`: a bundle's container set up, its process waiting for `start`.

use super::{hang_up, hang_up_listener, write_pid_file, OciError, Result};
use crate::container::config;
use crate::container::launch::{launch, LaunchOptions};
use crate::container::state::{self, State};
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};

/// `create` options.
#[derive(Clone)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: i32,
    /// amphi's store (its kernel catalog: a microVM's guest kernels).
    pub store_root: PathBuf,
}

/// The spec's annotations, and the state document hooks see while the
/// container is being created.
pub fn creating_state(
    spec: &Spec,
    id: &str,
    bundle: &Path,
) -> (
    std::collections::BTreeMap<String, String>,
    serde_json::Value,
) {
    let annotations: std::collections::BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let template = serde_json::json!({
        "ociVersion": "1.2.0", "id": id, "status": "creating", "bundle": bundle, "annotations": annotations,
    });
    (annotations, template)
}

pub fn bundle_rootfs(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or("config.json: `root` is missing")?;
    let p = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(format!("rootfs {} is not a directory", p.display()).into()),
        Err(e) => Err(format!("rootfs {} does not exist: {e}", p.display()).into()),
    }
}

/// Whether `create` or `run` still has to ask the dispatcher about the
/// bundle, or its caller already did and it runs natively (the decision
/// reads the policy, the host and the kernel catalog: once per command).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    Ask,
    Native,
}

/// `create`: set the container up; its process waits for `start`. A
/// bundle the dispatcher puts in a microVM is refused here (the microVM
/// path is `cli::oci_vm`'s).
pub fn create(root: &Path, o: CreateOptions) -> Result<()> {
    create_as(root, o, Dispatch::Ask)
}

/// [`create`], with the dispatcher asked already (`Dispatch::Native`) or
/// not.
pub fn create_as(root: &Path, o: CreateOptions, d: Dispatch) -> Result<()> {
    let r = create_checked(root, &o, d);
    if r.is_err() {
        // Launch connects the console socket first and closes it on its
        // own errors; a second connection after that is never accepted.
        hang_up(o.console_socket.as_deref());
        hang_up_listener(&o.bundle);
    }
    r
}

fn create_checked(root: &Path, o: &CreateOptions, d: Dispatch) -> Result<()> {
    state::check_id(&o.id)?;
    let bundle = std::fs::canonicalize(&o.bundle)
        .map_err(|e| OciError::io(format_args!("bundle {}", o.bundle.display()), e))?;
    let spec = config::load_bundle(&bundle)?;
    if d == Dispatch::Ask {
        refuse_microvm(&spec, &o.store_root)?;
    }
    let rootfs = bundle_rootfs(&spec, &bundle)?;
    let dir = new_state_dir(root, &o.id)?;
    let r = create_in(root, &dir, &bundle, &rootfs, &spec, o);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

/// The state directory of a new container `id` under `root` (made with
/// the root if need be); an id in use is an error saying so.
pub fn new_state_dir(root: &Path, id: &str) -> Result<PathBuf> {
    state::ensure_root(root)?;
    let dir = State::dir(root, id);
    match state::create_dir(root, id) {
        Ok(_) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(format!("container id {id:?} is already in use").into())
        }
        Err(e) => Err(format!("{}: {e}", dir.display()).into()),
    }
}

/// The exec fifo in a created container's state directory: `start`
/// opens it, which releases the process that holds its other end.
pub fn exec_fifo(dir: &Path) -> Result<PathBuf> {
    let fifo = dir.join("exec.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| OciError::io(format_args!("exec fifo {}", fifo.display()), e))?;
    Ok(fifo)
}

/// Where the bundle's container runs (see `dispatch::bundle`): the
/// dispatcher's decision from its annotations and the site policy.
pub fn target(
    annotations: &std::collections::HashMap<String, String>,
    store_root: &Path,
) -> Result<crate::dispatch::bundle::BundleTarget> {
    let policy = crate::dispatch::Policy::load(None).map_err(|e| e.to_string())?;
    Ok(crate::dispatch::bundle::decide_bundle(
        store_root,
        annotations,
        &policy,
    )?)
}

/// A container that must run in a microVM is refused here (the native
/// path), with the reason, rather than run natively against the policy.
/// The CLI's `create` and `run` decide first (`cli::oci_vm`) and send such
/// a bundle to the microVM path: this is the guard for a caller that did
/// not (`Dispatch::Ask`).
pub(super) fn refuse_microvm(spec: &Spec, store_root: &Path) -> Result<()> {
    match target(&spec.annotations().clone().unwrap_or_default(), store_root)? {
        crate::dispatch::bundle::BundleTarget::Container => Ok(()),
        crate::dispatch::bundle::BundleTarget::Vm { why, .. } => Err(format!(
            "this container must run in a microVM ({why}), and this is the native path: refused rather than run natively"
        )
        .into()),
    }
}

fn create_in(
    root: &Path,
    dir: &Path,
    bundle: &Path,
    rootfs: &Path,
    spec: &Spec,
    o: &CreateOptions,
) -> Result<()> {
    let fifo = exec_fifo(dir)?;
    let (annotations, template) = creating_state(spec, &o.id, bundle);
    // The runtime spec: when create fails (a hook, or anything after the
    // container began to exist), the container is destroyed and the
    // poststop hooks run.
    let failed = |e: OciError| -> OciError {
        let mut st = template.clone();
        st["status"] = "stopped".into();
        st["pid"] = 0.into();
        run_poststop(spec, &st.to_string());
        e
    };
    let l = launch(
        spec,
        rootfs,
        LaunchOptions {
            id: o.id.clone(),
            exec_fifo: Some(fifo),
            console_socket: o.console_socket.clone(),
            user_lookup: None,
            preserve_fds: o.preserve_fds,
            state_template: template.clone(),
            owns_cgroup: true,
            sealed: true,
            console_pty: false,
        },
    )
    .map_err(|e| failed(e.into()))?;
    let st = State {
        annotations,
        ..State::launched(
            &o.id,
            l.pid,
            bundle.to_path_buf(),
            rootfs.to_path_buf(),
            l.cgroup.clone(),
        )
    };
    let saved = st
        .save(root)
        .map_err(OciError::cause)
        .and_then(|()| match &o.pid_file {
            Some(p) => write_pid_file(p, l.pid),
            None => Ok(()),
        });
    if let Err(e) = saved {
        kill_and_reap(l.pid);
        let _ = l.cgroup.remove();
        return Err(failed(e));
    }
    Ok(())
}

/// Runs the poststop hooks; their failures are only warnings (runtime spec).
pub fn run_poststop(spec: &Spec, state: &str) {
    if let Some(h) = spec.hooks() {
        if let Err(e) = crate::container::hooks::run_all(h.poststop().as_ref(), "poststop", state) {
            tracing::warn!("{e}");
        }
    }
}

pub(super) fn kill_and_reap(pid: i32) {
    // SAFETY: signalling / reaping a pid we own.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
    }
}
