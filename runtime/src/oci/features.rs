//! `features` and `spec`: what this runtime supports, and a starting
//! config.json.

use oci_spec::runtime::Spec;

/// `features`: what this runtime supports (runtime-spec features.md).
pub fn features() -> serde_json::Value {
    let caps = crate::container::caps::all_names();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
            "dirsync", "noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime", "strictatime",
            "nostrictatime", "mand", "nomand", "bind", "rbind", "private", "rprivate", "shared", "rshared",
            "slave", "rslave", "unbindable", "runbindable", "nosymfollow", "symfollow", "rro", "rrw",
            "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec", "rnodiratime", "rdiratime",
            "rrelatime", "rnorelatime", "rnoatime", "ratime", "rstrictatime", "rnostrictatime",
            "rnosymfollow", "rsymfollow"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {"io.amphi.version": env!("CARGO_PKG_VERSION")},
    })
}

/// `spec`: a starting config.json, like `runc spec`.
pub fn default_spec(rootless: bool) -> Spec {
    let mut s = Spec::default();
    s.set_hostname(Some("amphi".into()));
    if let Some(mut p) = s.process().clone() {
        p.set_terminal(Some(true));
        p.set_args(Some(vec!["sh".into()]));
        s.set_process(Some(p));
    }
    if rootless {
        s.set_uid_mappings(None);
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let rl = oci_spec::runtime::Linux::rootless(uid, gid);
        s.set_linux(Some(rl));
    }
    s
}
