//! Image config + `amphi run` flags → one OCI runtime spec, the same for
//! the native and the microVM paths.

use crate::container::caps::{self, DOCKER_DEFAULT};
use crate::container::rootfs::{OVERLAY_LOWER, OVERLAY_UPPER, OVERLAY_WORK};
use crate::container::seccomp;
use crate::image::manifest::ImageConfig;
use oci_spec::runtime::{
    get_default_mounts, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a runtime spec could not be built from the image and the run's flags.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A flag's or the image's value cannot be used; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// A value oci-spec refused.
    #[error(transparent)]
    Builder(#[from] oci_spec::OciSpecError),
    /// An argument or environment value with a NUL byte.
    #[error(transparent)]
    Nul(#[from] crate::sys::cstr::NulByte),
    /// The overlay's layer list cannot be written as mount options.
    #[error(transparent)]
    Overlay(#[from] crate::sys::overlay::OverlayError),
    /// A seccomp profile that cannot be used.
    #[error(transparent)]
    Seccomp(#[from] crate::container::seccomp::SeccompError),
    /// A `--cap-add`/`--cap-drop` name that is not a capability.
    #[error(transparent)]
    Caps(#[from] crate::container::caps::CapsError),
    /// A file the spec reads or writes.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl SpecError {
    fn io(what: impl std::fmt::Display, source: std::io::Error) -> SpecError {
        SpecError::Io {
            what: what.to_string(),
            source,
        }
    }
}

/// How the container's network is set up, and its published ports.
pub use crate::net::{Network, Publish};

/// Which seccomp profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    Default,
    Unconfined,
    File(PathBuf),
}

/// A `-v HOST:CTR[:ro]` bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub container: PathBuf,
    pub readonly: bool,
}

impl Volume {
    /// Parses `HOST:CTR[:ro|rw]`.
    pub fn parse(s: &str) -> Result<Volume, SpecError> {
        let parts: Vec<&str> = s.split(':').collect();
        let (h, c, ro) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            _ => {
                return Err(SpecError::Invalid(format!(
                    "invalid volume {s:?}: expected HOST:CONTAINER[:ro]"
                )))
            }
        };
        let host = PathBuf::from(h);
        if !host.is_absolute() {
            return Err(SpecError::Invalid(format!("invalid volume {s:?}: the host path must be absolute (named volumes are not supported)")));
        }
        if !Path::new(c).is_absolute() {
            return Err(SpecError::Invalid(format!(
                "invalid volume {s:?}: the container path must be absolute"
            )));
        }
        let host = std::fs::canonicalize(&host).map_err(|e| {
            SpecError::io(
                format_args!("volume {s:?}: host path {}", host.display()),
                e,
            )
        })?;
        Ok(Volume {
            host,
            container: PathBuf::from(c),
            readonly: ro,
        })
    }
}

/// Everything `amphi run` lets the user set.
#[derive(Debug, Clone)]
pub struct RunFlags {
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub read_only: bool,
    pub network: Network,
    /// `-p`: ports published on the host (a private network only).
    pub publish: Vec<Publish>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub seccomp: SeccompChoice,
    pub no_new_privileges: bool,
    pub volumes: Vec<Volume>,
    pub tty: bool,
    /// Run amphi as a reaping PID 1 in front of the workload.
    pub init: bool,
    /// Systemd mode (`--systemd`, resolved): set the container up for
    /// systemd as its init (see [`SYSTEMD_TMPFS`]).
    pub systemd: bool,
}

impl Default for RunFlags {
    fn default() -> Self {
        RunFlags {
            command: vec![],
            entrypoint: None,
            env: vec![],
            workdir: None,
            user: None,
            hostname: None,
            memory: None,
            cpus: None,
            pids_limit: None,
            read_only: false,
            network: Network::None,
            publish: vec![],
            cap_add: vec![],
            cap_drop: vec![],
            seccomp: SeccompChoice::Default,
            no_new_privileges: false,
            volumes: vec![],
            tty: false,
            init: false,
            systemd: false,
        }
    }
}

/// Whether a command line starts systemd, podman's rule for
/// `--systemd=true`: its first word is `/sbin/init`, `/usr/sbin/init` or
/// `/usr/local/sbin/init`, or its base name is `systemd`.
pub fn is_systemd_command(args: &[String]) -> bool {
    let Some(arg0) = args.first() else {
        return false;
    };
    matches!(
        arg0.as_str(),
        "/sbin/init" | "/usr/sbin/init" | "/usr/local/sbin/init"
    ) || Path::new(arg0).file_name() == Some(std::ffi::OsStr::new("systemd"))
}

/// Systemd mode's tmpfs mounts: systemd, without CAP_SYS_ADMIN, cannot
/// mount them itself, and wants /run and /run/lock to be tmpfs.
/// /var/log/journal gets one as podman does (the journal on the
/// container's writable layer would outlive nothing but cost its writes).
pub const SYSTEMD_TMPFS: &[(&str, &str)] = &[
    ("/run", "mode=755"),
    ("/run/lock", "mode=1777"),
    ("/tmp", "mode=1777"),
    ("/var/log/journal", "mode=2755"),
];

/// The signal that asks systemd to power off (halt in a container): the
/// stop signal of a container in systemd mode whose image names none.
pub const SYSTEMD_STOP_SIGNAL: &str = "SIGRTMIN+3";

/// The value of `container=` in systemd mode: how systemd and other
/// programs learn they run in a container (and under which manager).
pub const CONTAINER_ENV: &str = "container=amphi";

/// The signal `amphi stop` sends first: the image's `StopSignal`, else
/// systemd's in systemd mode, else none (SIGTERM).
pub fn stop_signal(image: &ImageConfig, flags: &RunFlags) -> Option<String> {
    image
        .config
        .as_ref()
        .and_then(|c| c.stop_signal.clone())
        .or_else(|| flags.systemd.then(|| SYSTEMD_STOP_SIGNAL.to_string()))
}

/// Systemd mode's mounts: [`SYSTEMD_TMPFS`] and the container's own
/// cgroup, writable, at /sys/fs/cgroup. The type `cgroup2` asks for the
/// unified hierarchy also on a hybrid host (where its cgroup is empty of
/// controllers), since systemd 256 and later refuse cgroup v1.
fn systemd_mounts() -> Result<Vec<oci_spec::runtime::Mount>, SpecError> {
    let mut mounts = Vec::new();
    for (dest, mode) in SYSTEMD_TMPFS {
        let mut options: Vec<String> = ["rw", "nosuid", "nodev", mode]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if *dest == "/run/lock" {
            options.push("noexec".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(dest))
                .typ("tmpfs")
                .source("tmpfs")
                .options(options)
                .build()?,
        );
    }
    mounts.push(
        MountBuilder::default()
            .destination(PathBuf::from("/sys/fs/cgroup"))
            .typ("cgroup2")
            .source("cgroup2")
            .options(
                ["rw", "nosuid", "noexec", "nodev"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .build()?,
    );
    Ok(mounts)
}

/// Where `--init` puts amphi inside the container.
pub const INIT_PATH: &str = "/dev/.amphi-init";

/// The annotation that records `-u` (or the image's user) for `exec`.
pub const USER_ANNOTATION: &str = "io.amphi.user";

/// Paths a container cannot read (docker's defaults): host hardware,
/// kernel memory and keys, timers that leak other processes' activity.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths a container can read but not write (docker's defaults).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// What is bind-mounted there (defined by container::setup, which
/// recognises it).
pub use crate::container::setup::INIT_SOURCE;

/// Where the container's root comes from.
pub struct RootfsPlan {
    /// The mount point of the rootfs.
    pub rootfs: PathBuf,
    /// Overlay lower dirs, bottom first (empty: use `rootfs` as is).
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Directory for generated files (hosts, hostname, resolv.conf).
    pub etc_dir: PathBuf,
}

/// Parses docker's memory sizes: `512m`, `1g`, `1048576`, `100k`, `1.5g`.
pub fn parse_memory(s: &str) -> Result<i64, SpecError> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.trim_end_matches('b').chars().last() {
        Some('k') => (&t[..t.trim_end_matches('b').len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 30),
        Some('t') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 40),
        _ => (t.trim_end_matches('b'), 1),
    };
    let v: f64 = num.parse().map_err(|_| {
        SpecError::Invalid(format!("invalid memory size {s:?}: use e.g. 512m or 2g"))
    })?;
    let bytes = (v * mult as f64) as i64;
    if bytes < 6 * 1024 * 1024 {
        return Err(SpecError::Invalid(format!(
            "memory limit {s:?} is below the minimum of 6m"
        )));
    }
    Ok(bytes)
}

/// Capabilities after `--cap-add`/`--cap-drop` (both take `ALL`).
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, SpecError> {
    let add: Vec<String> = add
        .iter()
        .map(|c| caps::parse(c))
        .collect::<Result<_, _>>()?;
    let drop: Vec<String> = drop
        .iter()
        .map(|c| caps::parse(c))
        .collect::<Result<_, _>>()?;
    let mut set: Vec<String> = if add.iter().any(|c| c == "CAP_ALL") {
        caps::all_names()
    } else {
        DOCKER_DEFAULT.iter().map(|s| s.to_string()).collect()
    };
    for c in add.iter().filter(|c| *c != "CAP_ALL") {
        if !set.contains(c) {
            set.push(c.clone());
        }
    }
    if drop.iter().any(|c| c == "CAP_ALL") {
        set.retain(|c| add.contains(c));
    } else {
        set.retain(|c| !drop.contains(c));
    }
    set.sort();
    Ok(set)
}

fn merge_env(image: &[String], flags: &[String]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut map: HashMap<String, String> = HashMap::new();
    for e in image.iter().chain(flags) {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            // `-e NAME` takes the value from amphi's own environment.
            None => match std::env::var(e) {
                Ok(v) => (e.clone(), v),
                Err(_) => continue,
            },
        };
        if !map.contains_key(&k) {
            order.push(k.clone());
        }
        map.insert(k, v);
    }
    if !map.contains_key("PATH") {
        order.insert(0, "PATH".into());
        map.insert(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", map[&k]))
        .collect()
}

/// The process arguments: entrypoint + command, with docker's override rules.
pub fn process_args(image: &ImageConfig, flags: &RunFlags) -> Result<Vec<String>, SpecError> {
    let cfg = image.config.clone().unwrap_or_default();
    let entry: Vec<String> = match &flags.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => cfg.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !flags.command.is_empty() {
        flags.command.clone()
    } else if flags.entrypoint.is_some() {
        vec![]
    } else {
        cfg.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::Invalid(
            "no command: the image has no Entrypoint or Cmd, give one after the image name".into(),
        ));
    }
    Ok(args)
}

/// The size of the terminal on our stdin or stdout, if any, as a
/// process's `consoleSize`: the pty gets it before the process starts.
pub fn terminal_size() -> Option<oci_spec::runtime::Box> {
    use std::os::fd::AsFd;
    for fd in [std::io::stdin().as_fd(), std::io::stdout().as_fd()] {
        if let Ok(ws) = rustix::termios::tcgetwinsize(fd) {
            if ws.ws_row > 0 {
                // Cannot fail: the builder defaults every field.
                return oci_spec::runtime::BoxBuilder::default()
                    .height(ws.ws_row)
                    .width(ws.ws_col)
                    .build()
                    .ok();
            }
        }
    }
    None
}

/// Builds the runtime spec. Returns it and the user to resolve inside the
/// container (names need the image's /etc/passwd).
pub fn build(
    image: &ImageConfig,
    flags: &RunFlags,
    id: &str,
    plan: &RootfsPlan,
) -> Result<(Spec, Option<String>), SpecError> {
    let hostname = hostname(flags, id);
    let (process, user, capset) = process(image, flags, &hostname)?;
    let mounts = mounts(flags, plan, &hostname)?;
    let linux = linux(flags, id, &capset)?;
    let annotations = annotations(plan, user.as_deref())?;
    let spec = SpecBuilder::default()
        .version("1.2.0")
        .root(
            RootBuilder::default()
                .path(plan.rootfs.clone())
                .readonly(flags.read_only)
                .build()?,
        )
        .hostname(hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations)
        .build()?;
    Ok((spec, user))
}

/// `--hostname`, else the container id's first 12 characters (as docker).
fn hostname(flags: &RunFlags, id: &str) -> String {
    flags
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12.min(id.len())].to_string())
}

/// The process: the image's command with the flags', its environment,
/// working directory and capabilities. Also returns the user to resolve
/// in the container and the capability names.
fn process(
    image: &ImageConfig,
    flags: &RunFlags,
    hostname: &str,
) -> Result<(oci_spec::runtime::Process, Option<String>, Vec<String>), SpecError> {
    let cfg = image.config.clone().unwrap_or_default();
    let mut args = process_args(image, flags)?;
    if flags.init && flags.systemd {
        return Err(SpecError::Invalid(format!(
            "--init and systemd mode both want PID 1 for themselves (the command is {:?}): drop --init, or give --systemd=false",
            args.join(" ")
        )));
    }
    if flags.init {
        let mut with_init = vec![INIT_PATH.to_string(), "init".to_string(), "--".to_string()];
        with_init.append(&mut args);
        args = with_init;
    }
    let env = merge_env(&cfg.env.clone().unwrap_or_default(), &flags.env);
    // Refused here, before anything is created, rather than cut short at exec.
    crate::sys::cstr::check_args(&args)?;
    crate::sys::cstr::check_env(&env)?;
    let cwd = flags
        .workdir
        .clone()
        .or_else(|| cfg.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::Invalid(format!(
            "working directory {cwd:?} is not an absolute path"
        )));
    }
    let user = flags
        .user
        .clone()
        .or_else(|| cfg.user.clone().filter(|u| !u.is_empty()));
    let capset = capabilities(&flags.cap_add, &flags.cap_drop)?;
    let caps: oci_spec::runtime::Capabilities = capset
        .iter()
        .filter_map(|c| serde_json::from_value(serde_json::Value::String(c.clone())).ok())
        .collect();
    let mut env = env;
    if flags.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    if flags.systemd && !env.iter().any(|e| e.starts_with("container=")) {
        env.push(CONTAINER_ENV.into());
    }
    env.push(format!("HOSTNAME={hostname}"));

    let mut process = ProcessBuilder::default();
    if flags.tty {
        if let Some(size) = terminal_size() {
            process = process.console_size(size);
        }
    }
    let process = process
        .terminal(flags.tty)
        .args(args)
        .env(env)
        .cwd(PathBuf::from(&cwd))
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps.clone())
                // Empty, as docker since CVE-2022-24769: a file's
                // inheritable capabilities must not be granted on exec.
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()?,
        )
        // no_new_privs: as asked (`--security-opt no-new-privileges`), and
        // whenever a seccomp filter applies and CAP_SYS_ADMIN is not kept:
        // installing a filter then needs it, so amphi's containers have
        // always run with it there; the spec says so rather than the
        // engine setting it behind the spec's back.
        .no_new_privileges(
            flags.no_new_privileges
                || (!matches!(flags.seccomp, SeccompChoice::Unconfined)
                    && !capset.iter().any(|c| c == "CAP_SYS_ADMIN")),
        )
        .rlimits(vec![])
        .build()?;

    Ok((process, user, capset))
}

/// The mounts: the defaults (/proc without setuid, device or executable
/// files), the /etc files docker generates, systemd mode's, --init's and
/// the volumes.
fn mounts(
    flags: &RunFlags,
    plan: &RootfsPlan,
    hostname: &str,
) -> Result<Vec<oci_spec::runtime::Mount>, SpecError> {
    let mut mounts = get_default_mounts();
    // /proc without setuid, device or executable files (as docker).
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/proc") {
            m.set_options(Some(vec![
                "nosuid".to_string(),
                "noexec".to_string(),
                "nodev".to_string(),
            ]));
        }
    }
    // Files docker generates for every container.
    std::fs::create_dir_all(&plan.etc_dir).map_err(|e| SpecError::io(plan.etc_dir.display(), e))?;
    let hosts = match flags.network {
        Network::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        Network::None | Network::Private => format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"),
    };
    let resolv = match flags.network {
        Network::Private => crate::net::resolv_conf(),
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    for (name, content) in [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv),
    ] {
        let p = plan.etc_dir.join(name);
        std::fs::write(&p, content).map_err(|e| SpecError::io(p.display(), e))?;
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from("/etc").join(name))
                .typ("bind")
                .source(p)
                .options(vec!["rbind".to_string(), "rprivate".to_string()])
                .build()?,
        );
    }
    if flags.systemd {
        // Its writable cgroup2 instead of the default read-only cgroup mount.
        mounts.retain(|m| m.destination() != Path::new("/sys/fs/cgroup"));
        mounts.extend(systemd_mounts()?);
    }
    if flags.init {
        // The running binary itself, which is a sealed read-only copy
        // (container::sealed), never the host's file.
        let exe = PathBuf::from(INIT_SOURCE);
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(INIT_PATH))
                .typ("bind")
                .source(exe)
                .options(vec![
                    "bind".to_string(),
                    "ro".to_string(),
                    "nosuid".to_string(),
                ])
                .build()?,
        );
    }
    for v in &flags.volumes {
        let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
        if v.readonly {
            opts.push("ro".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(v.container.clone())
                .typ("bind")
                .source(v.host.clone())
                .options(opts)
                .build()?,
        );
    }
    Ok(mounts)
}

/// Linux: namespaces, resources, masked and read-only paths, the cgroup,
/// seccomp.
fn linux(
    flags: &RunFlags,
    id: &str,
    capset: &[String],
) -> Result<oci_spec::runtime::Linux, SpecError> {
    let mut nss = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if flags.network != Network::Host {
        nss.push(LinuxNamespaceType::Network);
    }
    let namespaces = nss
        .into_iter()
        .map(|t| {
            LinuxNamespaceBuilder::default()
                .typ(t)
                .build()
                .map_err(SpecError::from)
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Default deny, and the devices every container has (the engine adds
    // these whatever a spec says; listed so the spec says what applies).
    let mut res =
        LinuxResourcesBuilder::default().devices(crate::container::devices::default_spec_rules());
    if let Some(m) = flags.memory {
        res = res.memory(LinuxMemoryBuilder::default().limit(m).build()?);
    }
    if let Some(c) = flags.cpus {
        if c <= 0.0 {
            return Err(SpecError::Invalid(format!(
                "--cpus {c}: must be more than 0"
            )));
        }
        let period = 100_000u64;
        res = res.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota((c * period as f64) as i64)
                .build()?,
        );
    }
    if let Some(p) = flags.pids_limit {
        res = res.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(res.build()?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .cgroups_path(PathBuf::from(format!("/amphi/{id}")));
    match &flags.seccomp {
        SeccompChoice::Default => linux = linux.seccomp(seccomp::docker_default(capset)),
        SeccompChoice::Unconfined => {}
        SeccompChoice::File(p) => {
            let data = std::fs::read(p)
                .map_err(|e| SpecError::io(format_args!("seccomp profile {}", p.display()), e))?;
            linux = linux.seccomp(seccomp::parse_profile(&data, &p.display().to_string())?);
        }
    }
    linux.build().map_err(SpecError::from)
}

/// The image overlay's layers and the user `amphi exec` runs as.
fn annotations(
    plan: &RootfsPlan,
    user: Option<&str>,
) -> Result<HashMap<String, String>, SpecError> {
    let mut annotations = HashMap::new();
    if !plan.lowers.is_empty() {
        let top_first: Vec<&PathBuf> = plan.lowers.iter().rev().collect();
        let lower = crate::sys::overlay::lowerdir(&top_first)?;
        annotations.insert(OVERLAY_LOWER.to_string(), lower);
        annotations.insert(
            OVERLAY_UPPER.to_string(),
            plan.upper.to_string_lossy().into_owned(),
        );
        annotations.insert(
            OVERLAY_WORK.to_string(),
            plan.work.to_string_lossy().into_owned(),
        );
    }
    // The user the process runs as, resolved in the container at start;
    // `amphi exec` runs as the same user unless told otherwise.
    if let Some(u) = user {
        annotations.insert(USER_ANNOTATION.to_string(), u.to_string());
    }
    Ok(annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entry: Option<Vec<&str>>, cmd: Option<Vec<&str>>) -> ImageConfig {
        ImageConfig {
            config: Some(crate::image::manifest::RunConfig {
                entrypoint: entry.map(|v| v.into_iter().map(String::from).collect()),
                cmd: cmd.map(|v| v.into_iter().map(String::from).collect()),
                env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn docker_argument_rules() {
        let f = RunFlags::default();
        assert_eq!(
            process_args(&image(Some(vec!["/e"]), Some(vec!["c"])), &f).unwrap(),
            ["/e", "c"]
        );
        let f = RunFlags {
            command: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(
            process_args(&image(Some(vec!["/e"]), Some(vec!["c"])), &f).unwrap(),
            ["/e", "x"]
        );
        let f = RunFlags {
            entrypoint: Some("/o".into()),
            ..Default::default()
        };
        assert_eq!(
            process_args(&image(Some(vec!["/e"]), Some(vec!["c"])), &f).unwrap(),
            ["/o"]
        );
        assert!(process_args(&image(None, None), &RunFlags::default()).is_err());
    }

    #[test]
    fn refuses_nul_bytes_from_the_image_config() {
        let plan = RootfsPlan {
            rootfs: "/nonexistent/rootfs".into(),
            lowers: Vec::new(),
            upper: "/nonexistent/upper".into(),
            work: "/nonexistent/work".into(),
            etc_dir: "/nonexistent/etc".into(),
        };
        let id = "0123456789abcdef";
        let flags = RunFlags::default();
        // The image's Cmd, after its Entrypoint: argument 2.
        let bad_cmd = image(Some(vec!["/bin/sh", "-c"]), Some(vec!["echo a\0b"]));
        let e = build(&bad_cmd, &flags, id, &plan).unwrap_err().to_string();
        assert_eq!(e, r#"process argument 2 ("echo a\0b") contains a NUL byte"#);
        // An image variable.
        let mut bad_env = image(Some(vec!["/bin/true"]), None);
        if let Some(c) = bad_env.config.as_mut() {
            c.env = Some(vec!["PATH=/bin".into(), "TOKEN=x\0y".into()]);
        }
        let e = build(&bad_env, &flags, id, &plan).unwrap_err().to_string();
        assert_eq!(
            e,
            r#"environment variable "TOKEN" (entry 1) contains a NUL byte"#
        );
        // A `-e` variable (after the image's two).
        let flags = RunFlags {
            env: vec!["B=1\0".into()],
            ..Default::default()
        };
        let e = build(&image(Some(vec!["/bin/true"]), None), &flags, id, &plan)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            r#"environment variable "B" (entry 2) contains a NUL byte"#
        );
        // The same image without the NUL builds.
        let good = image(Some(vec!["/bin/sh", "-c"]), Some(vec!["echo ab"]));
        build(&good, &RunFlags::default(), id, &plan).unwrap();
    }

    #[test]
    fn env_merges_in_order() {
        let e = merge_env(
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        );
        assert_eq!(e, ["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5G").unwrap(), 3 << 29);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("1k").is_err());
    }

    #[test]
    fn cap_add_drop() {
        let c = capabilities(&["NET_ADMIN".into()], &["chown".into()]).unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_CHOWN".to_string()));
        let c = capabilities(&["CAP_KILL".into()], &["ALL".into()]).unwrap();
        assert_eq!(c, ["CAP_KILL"]);
        assert!(capabilities(&["CAP_FLY".into()], &[]).is_err());
    }

    #[test]
    fn volumes() {
        let v = Volume::parse("/tmp:/data:ro").unwrap();
        assert!(v.readonly && v.container == Path::new("/data"));
        assert!(Volume::parse("rel:/data").is_err());
        assert!(Volume::parse("/tmp:data").is_err());
        assert!(Volume::parse("/definitely/not/here:/x").is_err());
    }
}
