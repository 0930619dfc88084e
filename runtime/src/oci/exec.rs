//! `exec`: run another process in a running container, joining its
//! namespaces and cgroup, with runc's flags.

use super::{hang_up, write_pid_file, OciError, Result};
use crate::container::config;
use crate::container::launch::{launch, LaunchOptions};
use crate::container::state::{State, Status};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
use std::path::{Path, PathBuf};

/// `exec` options.
pub struct ExecOptions {
    pub id: String,
    /// A process.json (runc's --process), or the args.
    pub process: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub user: Option<(u32, u32)>,
    /// `-u NAME[:GROUP]`, resolved in the container (docker's exec).
    pub user_name: Option<String>,
    pub preserve_fds: i32,
    /// `--cap`: capabilities added to the process's sets (bounding,
    /// effective, permitted and ambient; not inheritable, as runc since
    /// CVE-2022-29162).
    pub caps: Vec<String>,
    /// `--cgroup SUB`: an existing sub-cgroup of the container's to run in.
    pub cgroup: Option<String>,
    /// `--ignore-paused`: exec into a paused container (the process stays
    /// frozen until `resume`).
    pub ignore_paused: bool,
    /// `--additional-gids`.
    pub additional_gids: Vec<u32>,
    /// `--no-new-privs`.
    pub no_new_privs: bool,
    /// `--apparmor` and `--process-label`: refused (see [`check_lsm`]).
    pub apparmor: Option<String>,
    pub process_label: Option<String>,
}

/// The LSMs the host runs (/sys/kernel/security/lsm), None when it does not
/// say (securityfs not mounted).
fn host_lsms() -> Option<Vec<String>> {
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .ok()
        .map(|s| s.trim().split(',').map(String::from).collect())
}

/// `--apparmor PROFILE` and `--process-label LABEL` (SELinux): amphi
/// applies neither, so both are refused, saying whether the host could
/// have honoured them at all.
pub fn check_lsm(flag: &str, lsm: &str, lsms: Option<&[String]>) -> Result<()> {
    let why = match lsms {
        None => "this host does not say which LSMs it runs (/sys/kernel/security/lsm is missing: securityfs not mounted)".to_string(),
        Some(l) if !l.iter().any(|x| x == lsm) => {
            format!("this host does not run {lsm} (/sys/kernel/security/lsm: {})", l.join(","))
        }
        Some(_) => format!("amphi does not apply {lsm} labels"),
    };
    Err(format!("{flag} is not supported: {why}").into())
}

/// `exec --cap`: adds `caps` (canonical names) to the process's bounding,
/// effective, permitted and ambient sets, as runc 1.1 does (not the
/// inheritable set: CVE-2022-29162).
fn add_caps(p: &mut oci_spec::runtime::Process, caps: &[String]) -> Result<()> {
    use oci_spec::runtime::Capability;
    let parsed: Vec<Capability> = caps
        .iter()
        .map(|c| {
            serde_json::from_value(serde_json::Value::from(c.as_str())).map_err(|_| {
                OciError::from(format!("--cap {c}: not a capability this runtime knows"))
            })
        })
        .collect::<Result<_>>()?;
    let mut set = p.capabilities().clone().unwrap_or_default();
    let add = |s: &Option<oci_spec::runtime::Capabilities>| {
        let mut s = s.clone().unwrap_or_default();
        s.extend(parsed.iter().copied());
        Some(s)
    };
    set.set_bounding(add(set.bounding()));
    set.set_effective(add(set.effective()));
    set.set_permitted(add(set.permitted()));
    set.set_ambient(add(set.ambient()));
    p.set_capabilities(Some(set));
    Ok(())
}

/// `env` with `extra`'s variables set: one of the same name is replaced
/// (in place), a new one appended; as runc's `exec --env`.
pub fn override_env(env: &mut Vec<String>, extra: &[String]) {
    for e in extra {
        let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
        match env
            .iter_mut()
            .find(|x| x.split_once('=').map_or(x.as_str(), |(n, _)| n) == name)
        {
            Some(x) => x.clone_from(e),
            None => env.push(e.clone()),
        }
    }
}

/// `exec`: run another process in a running container. Returns its exit
/// status (0 when detached).
pub fn exec(root: &Path, o: ExecOptions) -> Result<i32> {
    let r = exec_checked(root, &o);
    if matches!(r, Err(ExecError::BeforeLaunch(_))) {
        hang_up(o.console_socket.as_deref());
    }
    r.map_err(|e| match e {
        ExecError::BeforeLaunch(e) | ExecError::Launch(e) => e,
    })
}

enum ExecError {
    /// Before launch connected the console socket.
    BeforeLaunch(OciError),
    Launch(OciError),
}

impl<E: Into<OciError>> From<E> for ExecError {
    fn from(e: E) -> Self {
        ExecError::BeforeLaunch(e.into())
    }
}

fn exec_checked(root: &Path, o: &ExecOptions) -> std::result::Result<i32, ExecError> {
    if o.apparmor.is_some() {
        check_lsm("--apparmor", "apparmor", host_lsms().as_deref())?;
    }
    if o.process_label.is_some() {
        check_lsm("--process-label", "selinux", host_lsms().as_deref())?;
    }
    let st = State::load(root, &o.id).map_err(|e| e.to_string())?;
    check_status(root, &st, o)?;
    let caps: Vec<String> = o
        .caps
        .iter()
        .map(|c| crate::container::caps::parse(c))
        .collect::<std::result::Result<_, _>>()?;
    let cgroups_path = exec_cgroup(&st, o.cgroup.as_deref())?;
    let mut spec = config::load(&st.bundle)?;
    let mut process = exec_process(&spec, o, &caps)?;
    if o.tty {
        process.set_terminal(Some(true));
        // Without a console socket the new terminal has our terminal's
        // size before the process starts (the relay copies it again later,
        // which a process that reads its size at once, as `stty size`
        // does, would race), unless --process gave one.
        let given = o.process.is_some() && process.console_size().is_some();
        if o.console_socket.is_none() && !given {
            if let Some(size) = crate::spec::terminal_size() {
                process.set_console_size(Some(size));
            }
        }
    }
    spec.set_process(Some(process));
    join_container(&mut spec, &st, cgroups_path);
    spec.set_hooks(None);
    // As `docker exec`: the container's own user (recorded by `amphi
    // run -u` or the image), with the same capability rules, unless the
    // caller names one; its capabilities, seccomp profile and
    // no_new_privs come from the container's spec.
    let user_lookup = match (&o.user_name, o.user, &o.process) {
        (Some(u), _, _) => Some(u.clone()),
        (None, None, None) => spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::spec::USER_ANNOTATION))
            .cloned(),
        _ => None,
    };
    let template = serde_json::json!({"ociVersion": "1.2.0", "id": o.id, "status": "running", "bundle": st.bundle});
    let exec_id = format!("{}-exec-{}", o.id, std::process::id());
    let sigs = crate::sys::signal::block_forwarded();
    let l = launch(
        &spec,
        Path::new("/"),
        LaunchOptions {
            id: exec_id,
            exec_fifo: None,
            console_socket: o.console_socket.clone(),
            user_lookup,
            preserve_fds: o.preserve_fds,
            state_template: template,
            owns_cgroup: false,
            sealed: true,
            console_pty: false,
        },
    );
    let l = match l {
        Ok(l) => l,
        Err(e) => {
            crate::sys::signal::unblock(&sigs);
            return Err(ExecError::Launch(e.into()));
        }
    };
    if let Some(p) = &o.pid_file {
        write_pid_file(p, l.pid).map_err(ExecError::Launch)?;
    }
    if o.detach {
        crate::sys::signal::unblock(&sigs);
        return Ok(0);
    }
    let code = crate::run::pty_wait(l.pid, l.pty, &sigs);
    crate::sys::signal::unblock(&sigs);
    Ok(code)
}

/// The container runs (or is paused and `--ignore-paused` was given).
fn check_status(root: &Path, st: &State, o: &ExecOptions) -> std::result::Result<(), ExecError> {
    match st.status(root) {
        Status::Running => {}
        Status::Paused if o.ignore_paused => {}
        Status::Paused => {
            return Err(format!(
                "container {:?} is paused: cannot exec in it (use --ignore-paused to override)",
                o.id
            )
            .into())
        }
        _ => return Err(format!("container {:?} is not running: cannot exec in it", o.id).into()),
    }
    Ok(())
}

/// The cgroup the process joins: the container's, or `--cgroup`'s
/// existing sub-cgroup of it.
fn exec_cgroup(st: &State, sub: Option<&str>) -> std::result::Result<String, ExecError> {
    Ok(match sub {
        None => format!("/{}", st.cgroup.path),
        Some(sub) => {
            if sub.contains(':') {
                return Err(format!(
                    "--cgroup {sub:?}: the CONTROLLER:PATH form is not supported (amphi keeps one cgroup path for every controller); give PATH alone"
                )
                .into());
            }
            let sub = sub.trim_start_matches('/');
            if sub.is_empty() || sub.split('/').any(|c| c == ".." || c == ".") {
                return Err(format!(
                    "--cgroup {sub:?}: expected a sub-cgroup path of the container's cgroup"
                )
                .into());
            }
            let mut cg = st.cgroup.clone();
            cg.path = format!("{}/{sub}", st.cgroup.path);
            if let Some(d) = cg.dirs().into_iter().find(|d| !d.is_dir()) {
                return Err(format!("--cgroup {sub:?}: {} does not exist", d.display()).into());
            }
            format!("/{}", cg.path)
        }
    })
}

/// The process: `--process FILE`, or the container's with the command,
/// terminal, env, cwd, user, groups, no_new_privs and capabilities given.
fn exec_process(
    spec: &oci_spec::runtime::Spec,
    o: &ExecOptions,
    caps: &[String],
) -> std::result::Result<oci_spec::runtime::Process, ExecError> {
    Ok(match &o.process {
        Some(p) => {
            let data = std::fs::read(p)
                .map_err(|e| OciError::io(format_args!("--process {}", p.display()), e))?;
            let de = &mut serde_json::Deserializer::from_slice(&data);
            serde_path_to_error::deserialize::<_, oci_spec::runtime::Process>(de).map_err(|e| {
                format!(
                    "--process {}: invalid at `{}`: {}",
                    p.display(),
                    e.path(),
                    e.inner()
                )
            })?
        }
        None => {
            if o.args.is_empty() {
                return Err("exec needs a command (or --process FILE)".into());
            }
            let mut p = spec.process().clone().ok_or("config.json has no process")?;
            p.set_args(Some(o.args.clone()));
            p.set_terminal(Some(o.tty));
            let mut env = p.env().clone().unwrap_or_default();
            override_env(&mut env, &o.env);
            p.set_env(Some(env));
            if let Some(c) = &o.cwd {
                p.set_cwd(c.clone());
            }
            if let Some((u, g)) = o.user {
                let mut user = p.user().clone();
                user.set_uid(u);
                user.set_gid(g);
                p.set_user(user);
            }
            if !o.additional_gids.is_empty() {
                let mut user = p.user().clone();
                let mut gids = user.additional_gids().clone().unwrap_or_default();
                gids.extend(o.additional_gids.iter().copied());
                user.set_additional_gids(Some(gids));
                p.set_user(user);
            }
            if o.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if !caps.is_empty() {
                add_caps(&mut p, caps)?;
            }
            p
        }
    })
}

/// Every namespace of the running container joined by path, its cgroup
/// joined without resources of its own.
fn join_container(spec: &mut oci_spec::runtime::Spec, st: &State, cgroups_path: String) {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let joined: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            let name = match n.typ() {
                LinuxNamespaceType::Mount => "mnt",
                LinuxNamespaceType::Network => "net",
                t => t.as_ref_str(),
            };
            LinuxNamespaceBuilder::default()
                .typ(n.typ())
                .path(PathBuf::from(format!("/proc/{}/ns/{name}", st.pid)))
                .build()
                .expect("namespace")
        })
        .collect();
    linux.set_namespaces(Some(joined));
    linux.set_resources(None);
    linux.set_cgroups_path(Some(PathBuf::from(cgroups_path)));
    spec.set_linux(Some(linux));
}

trait NsName {
    fn as_ref_str(&self) -> &'static str;
}

impl NsName for LinuxNamespaceType {
    fn as_ref_str(&self) -> &'static str {
        match self {
            LinuxNamespaceType::Mount => "mnt",
            LinuxNamespaceType::Cgroup => "cgroup",
            LinuxNamespaceType::Uts => "uts",
            LinuxNamespaceType::Ipc => "ipc",
            LinuxNamespaceType::User => "user",
            LinuxNamespaceType::Pid => "pid",
            LinuxNamespaceType::Network => "net",
            LinuxNamespaceType::Time => "time",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_env_overrides_the_spec_by_name() {
        let mut env = vec!["PATH=/bin".to_string(), "A=1".into(), "B".into()];
        override_env(
            &mut env,
            &[
                "A=2".into(),
                "C=3".into(),
                "B=x".into(),
                "PATH=/usr/bin".into(),
            ],
        );
        assert_eq!(env, ["PATH=/usr/bin", "A=2", "B=x", "C=3"]);
    }

    #[test]
    fn lsm_flags_refused_with_the_reason() {
        let e = check_lsm("--apparmor", "apparmor", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/sys/kernel/security/lsm is missing"), "{e}");
        let l = ["lockdown".to_string(), "capability".into()];
        let e = check_lsm("--process-label", "selinux", Some(&l))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not run selinux") && e.contains("lockdown,capability"),
            "{e}"
        );
        let l = ["apparmor".to_string()];
        let e = check_lsm("--apparmor", "apparmor", Some(&l))
            .unwrap_err()
            .to_string();
        assert!(e.contains("amphi does not apply apparmor"), "{e}");
    }
}
