//! An OCI bundle's container in a microVM (`create` when the dispatcher
//! says microVM): the bundle's `root.path`, which the client (podman,
//! containerd) has already mounted, and the host paths its bind mounts
//! name, are shared into the guest with virtio-fs; the guest's container
//! engine applies the rest of the spec (process, mounts, env, user,
//! rlimits, the `linux` section) as a native run would.
//!
//! What a microVM cannot honour is refused before anything starts, with
//! the spec's path named: joining a namespace of the host
//! (`linux.namespaces[].path`), host devices (`linux.devices`).
//!
//! The translation, spec to guest spec:
//! - `root.path` becomes entry 0 of the volumes share: the guest's writes
//!   land in the client's rootfs, as they would natively (`root.readonly`
//!   is applied by the guest's engine, after it made the mount points);
//! - each bind mount's source becomes the next entry (read-only when the
//!   mount is `ro`): a file (podman's /etc/hosts, /etc/resolv.conf,
//!   /run/.containerenv) or a directory, live in both directions;
//! - a bind onto /dev/shm (podman's per-container shm) becomes a tmpfs in
//!   the guest: shared memory cannot cross the VM's boundary;
//! - hooks run on the host (the OCI runtime's `create`/`start`/`delete`),
//!   and are dropped from the guest's spec;
//! - the cgroup path is the guest's own (`linux.cgroupsPath` names a host
//!   cgroup);
//! - the network: a spec with a new network namespace gets a VM without a
//!   NIC (the workload sees only loopback, as natively); a spec without
//!   one (the host's network, `--network host`) gets the VM's own NIC
//!   through passt, shared by the workload, since a VM cannot share the
//!   host's network namespace;
//! - a CRI pod's container (`io.kubernetes.cri.container-type:
//!   container`) joins its sandbox's namespaces by path: in a microVM it
//!   gets the guest's own ipc, uts and pid namespaces instead, and the
//!   VM's own NIC for the network (outbound through passt; the pod's IP
//!   does not reach it). Every other namespace path is refused.

use super::virtiofs::{VolumeShare, GUEST_VOLUMES, VOLUME_TAG};
use crate::net::Network;
use crate::proto::channel::{GuestShare, StartRequest, StartRequestJson};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A bundle made ready for the guest.
#[derive(Debug)]
pub struct GuestBundle {
    /// The spec the guest's engine applies.
    pub spec: Value,
    /// The volumes share: the rootfs first, then the bind sources.
    pub shares: Vec<VolumeShare>,
    pub network: Network,
    /// `process.terminal`.
    pub terminal: bool,
    /// `linux.resources.memory.limit`, and the CPUs the quota allows.
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The guest's spec and shares for the bundle's `spec` (config.json as
/// read) with its rootfs at `rootfs`; an error names the spec path that a
/// microVM cannot honour.
pub fn translate(spec: &Value, rootfs: &Path) -> Result<GuestBundle, String> {
    let mut g = spec.clone();
    let readonly_root = spec
        .pointer("/root/readonly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Read-write on the host even for `root.readonly`: the guest's
    // engine makes the mount points first and then makes the root
    // read-only, as natively (the native runtime writes there too).
    let mut shares = vec![VolumeShare {
        host: rootfs.to_path_buf(),
        readonly: false,
    }];
    g["root"] = json!({ "path": format!("{GUEST_VOLUMES}/0"), "readonly": readonly_root });
    if let Some(obj) = g.as_object_mut() {
        obj.remove("hooks");
    }
    if let Some(linux) = g.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("cgroupsPath");
    }

    let mut network = Network::Private;
    let pod = spec
        .get("annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| {
            crate::dispatch::bundle::CONTAINER_TYPE_ANNOTATIONS
                .iter()
                .any(|k| a.get(*k).and_then(Value::as_str) == Some("container"))
        });
    let mut guest_nss = Vec::new();
    if let Some(nss) = spec.pointer("/linux/namespaces").and_then(Value::as_array) {
        for (i, ns) in nss.iter().enumerate() {
            let kind = str_at(ns, "type").unwrap_or("?");
            match str_at(ns, "path").filter(|p| !p.is_empty()) {
                // A pod's container joins its sandbox's namespaces: in a
                // microVM it gets the guest's own instead (more isolation,
                // not less), and for the network the VM's own NIC.
                Some(_) if pod && kind != "user" => {
                    if kind != "network" {
                        guest_nss.push(json!({ "type": kind }));
                    }
                }
                Some(p) => {
                    return Err(format!(
                        "linux.namespaces[{i}].path: the {kind} namespace {p} is the host's, and a microVM cannot join it (a microVM container needs new namespaces; with podman, use --network none or --network host, not a bridge network)"
                    ));
                }
                None => {
                    if kind == "network" {
                        network = Network::None;
                    }
                    guest_nss.push(ns.clone());
                }
            }
        }
        if let Some(linux) = g.get_mut("linux").and_then(Value::as_object_mut) {
            linux.insert("namespaces".into(), Value::Array(guest_nss));
        }
    }
    if let Some(p) = spec
        .pointer("/linux/seccomp/listenerPath")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    {
        return Err(format!(
            "linux.seccomp.listenerPath ({p}): a seccomp agent on the host cannot serve a guest's system calls"
        ));
    }
    if let Some(devs) = spec.pointer("/linux/devices").and_then(Value::as_array) {
        if let Some(d) = devs.first() {
            return Err(format!(
                "linux.devices[0] ({}): host devices cannot be passed into a microVM",
                str_at(d, "path").unwrap_or("?")
            ));
        }
    }

    if let Some(mounts) = g.get_mut("mounts").and_then(Value::as_array_mut) {
        for (i, m) in mounts.iter_mut().enumerate() {
            let options: Vec<String> = m
                .get("options")
                .and_then(Value::as_array)
                .map(|o| {
                    o.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let bind = str_at(m, "type") == Some("bind")
                || options.iter().any(|o| o == "bind" || o == "rbind");
            if !bind {
                continue;
            }
            let dest = str_at(m, "destination").unwrap_or("").to_string();
            if Path::new(&dest) == Path::new("/dev/shm") {
                *m = json!({
                    "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
                });
                continue;
            }
            let src = str_at(m, "source").unwrap_or("");
            let host = PathBuf::from(src);
            if !host.is_absolute() {
                return Err(format!(
                    "mounts[{i}].source {src:?} (bind onto {dest}): a microVM shares only absolute host paths"
                ));
            }
            let host = host
                .canonicalize()
                .map_err(|e| format!("mounts[{i}].source {src} (bind onto {dest}): {e}"))?;
            let readonly = options.iter().any(|o| o == "ro");
            m["source"] = format!("{GUEST_VOLUMES}/{}", shares.len()).into();
            shares.push(VolumeShare { host, readonly });
        }
    }

    let terminal = spec
        .pointer("/process/terminal")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let memory = spec
        .pointer("/linux/resources/memory/limit")
        .and_then(Value::as_i64)
        .filter(|l| *l > 0);
    let cpus = match (
        spec.pointer("/linux/resources/cpu/quota")
            .and_then(Value::as_i64),
        spec.pointer("/linux/resources/cpu/period")
            .and_then(Value::as_u64),
    ) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
        _ => None,
    };
    Ok(GuestBundle {
        spec: g,
        shares,
        network,
        terminal,
        memory,
        cpus,
    })
}

impl GuestBundle {
    /// The start request for the guest init.
    pub fn start_request(&self, id: &str) -> Result<StartRequestJson, String> {
        let net = match self.network {
            Network::Private => Some(crate::net::guest_address()?),
            _ => None,
        };
        Ok(StartRequestJson::new(&StartRequest {
            id: id.to_string(),
            spec: self.spec.clone(),
            user_lookup: None,
            files: Default::default(),
            stdin: true,
            host_time: None,
            console: false,
            shares: vec![GuestShare {
                tag: VOLUME_TAG.into(),
                target: GUEST_VOLUMES.into(),
            }],
            net,
        }))
    }
}

/// The name of a bundle VM's run directory (`<root>/vm/<name>`): an OCI
/// id may be short or long, so a digest of it.
pub fn run_name(id: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(id.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_podman_like_spec_becomes_the_guests() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/ignored"},
            "process": {"terminal": true, "args": ["sh"], "cwd": "/"},
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/shm", "type": "bind", "source": "/nonexistent/shm", "options": ["bind"]},
                {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["bind", "ro"]},
            ],
            "linux": {
                "cgroupsPath": "/machine/x",
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}],
                "resources": {"memory": {"limit": 268435456}, "cpu": {"quota": 150000, "period": 100000}},
            },
        });
        let g = translate(&spec, dir.path()).unwrap();
        assert_eq!(g.spec["root"]["path"], "/.amphi/vol/0");
        assert!(g.spec.get("hooks").is_none());
        assert!(g.spec["linux"].get("cgroupsPath").is_none());
        assert_eq!(g.spec["mounts"][1]["type"], "tmpfs");
        assert_eq!(g.spec["mounts"][2]["source"], "/.amphi/vol/1");
        assert_eq!(g.shares.len(), 2);
        assert!(g.shares[1].readonly && !g.shares[0].readonly);
        assert_eq!(g.network, Network::None);
        assert!(g.terminal);
        assert_eq!(g.memory, Some(268435456));
        assert_eq!(g.cpus, Some(1.5));

        // What a microVM cannot honour is named.
        let mut joins = spec.clone();
        joins["linux"]["namespaces"][1]["path"] = "/run/netns/x".into();
        let e = translate(&joins, dir.path()).unwrap_err();
        assert!(e.contains("linux.namespaces[1].path"), "{e}");
        let mut devs = spec.clone();
        devs["linux"]["devices"] =
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]);
        let e = translate(&devs, dir.path()).unwrap_err();
        assert!(e.contains("linux.devices[0] (/dev/fuse)"), "{e}");
        let mut agent = spec.clone();
        agent["linux"]["seccomp"] =
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"});
        let e = translate(&agent, dir.path()).unwrap_err();
        assert!(e.contains("linux.seccomp.listenerPath"), "{e}");
        let mut missing = spec.clone();
        missing["mounts"][2]["source"] = "/nonexistent/file".into();
        let e = translate(&missing, dir.path()).unwrap_err();
        assert!(e.contains("mounts[2].source"), "{e}");
        // No network namespace: the VM's own NIC.
        let mut host_net = spec.clone();
        host_net["linux"]["namespaces"] = json!([{"type": "pid"}]);
        assert_eq!(
            translate(&host_net, dir.path()).unwrap().network,
            Network::Private
        );
        // A CRI pod's container: the sandbox's namespaces become the
        // guest's own, the network the VM's NIC.
        let mut pod = host_net;
        pod["annotations"] = json!({"io.kubernetes.cri.container-type": "container"});
        pod["linux"]["namespaces"] = json!([
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "mount"},
        ]);
        let g = translate(&pod, dir.path()).unwrap();
        assert_eq!(g.network, Network::Private);
        assert_eq!(
            g.spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}])
        );
        pod["linux"]["namespaces"][0] = json!({"type": "user", "path": "/proc/42/ns/user"});
        assert!(translate(&pod, dir.path()).is_err());
        assert_eq!(run_name("abc").len(), 16);
    }
}
