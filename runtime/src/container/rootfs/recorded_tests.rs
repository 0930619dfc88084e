//! What the rootfs logic asks of the system, through the effects recorder
//! (container::effects::record): no root needed. The lookups are real, on
//! a temporary rootfs.

use super::*;
use crate::container::effects::record::{Call, Recorder};
use std::path::PathBuf;

/// A temporary rootfs, opened, with a recorder showing paths in it.
struct Root {
    dir: tempfile::TempDir,
    fd: OwnedFd,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_root(dir.path()).unwrap();
        Root { dir, fd }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    fn recorder(&self) -> Recorder {
        Recorder::new(self.dir.path())
    }
}

fn mount(v: serde_json::Value) -> Mount {
    serde_json::from_value(v).unwrap()
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn mkdir(s: &str) -> Call {
    Call::Mkdir(p(s))
}

fn fs_mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Call {
    Call::Mount {
        source: source.into(),
        target: p(target),
        fstype: fstype.into(),
        flags,
        data: data.into(),
    }
}

#[test]
fn a_tmpfs_gets_its_flags_and_data_on_a_new_directory() {
    let r = Root::new();
    let fx = r.recorder();
    let m = mount(serde_json::json!({
        "destination": "/run/lock", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777", "size=64k", "rw"],
    }));
    do_mount(&fx, &r.fd, &m, false).unwrap();
    assert_eq!(
        fx.calls(),
        [
            mkdir("/run"),
            mkdir("/run/lock"),
            fs_mount(
                "tmpfs",
                "/run/lock",
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
                "mode=1777,size=64k"
            ),
        ]
    );
    assert!(r.path("/run/lock").is_dir());
    // Made once: a second mount there creates nothing.
    fx.take();
    let m = mount(serde_json::json!({"destination": "/run/lock", "type": "mqueue"}));
    do_mount(&fx, &r.fd, &m, false).unwrap();
    assert_eq!(
        fx.calls(),
        [fs_mount("mqueue", "/run/lock", "mqueue", 0, "")],
        "no source: the type is the source"
    );
}

#[test]
fn a_read_only_rbind_is_bound_then_remounted_then_made_private() {
    let r = Root::new();
    let src = tempfile::tempdir().unwrap();
    let fx = r.recorder();
    let m = mount(serde_json::json!({
        "destination": "/data", "type": "bind", "source": src.path(),
        "options": ["rbind", "ro", "nosuid", "rprivate"],
    }));
    do_mount(&fx, &r.fd, &m, false).unwrap();
    assert_eq!(
        fx.calls(),
        [
            mkdir("/data"),
            Call::Bind {
                source: src.path().into(),
                target: p("/data"),
                recursive: true,
            },
            // A bind takes its flags only from a remount.
            fs_mount(
                "",
                "/data",
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                ""
            ),
            Call::Propagate {
                target: p("/data"),
                flags: libc::MS_PRIVATE | libc::MS_REC,
            },
        ]
    );
}

#[test]
fn a_file_is_bound_on_an_empty_file_and_a_plain_bind_is_not_remounted() {
    let r = Root::new();
    let src = tempfile::NamedTempFile::new().unwrap();
    let fx = r.recorder();
    // "bind" as an option, without the type.
    let m = mount(serde_json::json!({
        "destination": "/etc/hosts", "source": src.path(), "options": ["bind"],
    }));
    do_mount(&fx, &r.fd, &m, false).unwrap();
    assert_eq!(
        fx.calls(),
        [
            mkdir("/etc"),
            Call::CreateFile(p("/etc/hosts")),
            Call::Bind {
                source: src.path().into(),
                target: p("/etc/hosts"),
                recursive: false,
            },
        ]
    );
    assert!(r.path("/etc/hosts").is_file());
}

#[test]
fn recursive_attributes_go_to_mount_setattr_on_the_new_mount() {
    let r = Root::new();
    let src = tempfile::tempdir().unwrap();
    let fx = r.recorder();
    let m = mount(serde_json::json!({
        "destination": "/srv", "type": "bind", "source": src.path(),
        "options": ["rbind", "rro", "rnoexec"],
    }));
    do_mount(&fx, &r.fd, &m, false).unwrap();
    let calls = fx.calls();
    assert_eq!(
        calls.last(),
        Some(&Call::SetAttr {
            target: p("/srv"),
            set: attr::RDONLY | attr::NOEXEC,
            clr: 0,
        })
    );
    // rro is not MS_RDONLY: no remount.
    assert!(
        !calls.iter().any(|c| matches!(c, Call::Mount { .. })),
        "{calls:?}"
    );
}

#[test]
fn a_missing_bind_source_fails_before_anything_is_made() {
    let r = Root::new();
    let fx = r.recorder();
    let m = mount(serde_json::json!({
        "destination": "/x", "type": "bind", "source": "/nonexistent/amphi-src",
    }));
    let e = do_mount(&fx, &r.fd, &m, false).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "mount /x: bind source /nonexistent/amphi-src: {}",
            std::io::Error::from_raw_os_error(libc::ENOENT)
        )
    );
    assert_eq!(fx.calls(), []);
    assert!(!r.path("/x").exists());
}

#[test]
fn no_type_and_no_bind_is_refused() {
    let r = Root::new();
    let fx = r.recorder();
    let m = mount(serde_json::json!({"destination": "/x", "source": "none"}));
    let e = do_mount(&fx, &r.fd, &m, false).unwrap_err();
    assert_eq!(e.to_string(), "mount /x: no type and no bind option");
    assert_eq!(fx.calls(), []);
}

#[test]
fn proc_is_not_mounted_through_a_symlink() {
    let r = Root::new();
    std::os::unix::fs::symlink("/etc", r.path("/proc")).unwrap();
    let fx = r.recorder();
    let m = mount(serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}));
    let e = do_mount(&fx, &r.fd, &m, false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mount /proc: a symbolic link in the rootfs; a proc filesystem must be mounted on an ordinary directory"
    );
    assert_eq!(fx.calls(), []);
}

#[test]
fn a_failed_mount_names_type_and_options_except_mqueue_in_a_user_namespace() {
    let r = Root::new();
    let eperm = |c: &Call| matches!(c, Call::Mount { .. }).then_some(Errno::PERM);
    let fx = r.recorder().fail(eperm);
    let mq = mount(serde_json::json!({"destination": "/dev/mqueue", "type": "mqueue"}));
    do_mount(&fx, &r.fd, &mq, true).unwrap();
    let e = do_mount(&fx, &r.fd, &mq, false).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "mount /dev/mqueue (type mqueue, options \"\"): {}",
            std::io::Error::from_raw_os_error(libc::EPERM)
        )
    );
    let shm = mount(serde_json::json!({
        "destination": "/dev/shm", "type": "tmpfs", "options": ["size=1m"],
    }));
    assert!(matches!(
        do_mount(&fx, &r.fd, &shm, true),
        Err(RootfsError::Mount { .. })
    ));
}

#[test]
fn sysfs_in_a_user_namespace_falls_back_to_binding_the_hosts() {
    let r = Root::new();
    let fx = r.recorder().fail(|c| {
        matches!(c, Call::Mount { fstype, .. } if fstype == "sysfs").then_some(Errno::PERM)
    });
    let m = mount(serde_json::json!({
        "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"],
    }));
    do_mount(&fx, &r.fd, &m, true).unwrap();
    assert_eq!(
        fx.calls()[1..],
        [
            fs_mount("sysfs", "/sys", "sysfs", libc::MS_RDONLY, ""),
            Call::Bind {
                source: p("/sys"),
                target: p("/sys"),
                recursive: true,
            },
        ]
    );
}

#[test]
fn propagation_of_a_filesystem_mount_comes_after_it() {
    let r = Root::new();
    let fx = r.recorder();
    let m = mount(serde_json::json!({
        "destination": "/shared", "type": "tmpfs", "options": ["shared"],
    }));
    do_mount(&fx, &r.fd, &m, false).unwrap();
    assert_eq!(
        fx.calls()[1..],
        [
            fs_mount("tmpfs", "/shared", "tmpfs", 0, ""),
            Call::Propagate {
                target: p("/shared"),
                flags: libc::MS_SHARED,
            },
        ]
    );
}

fn spec(v: serde_json::Value) -> Spec {
    let mut base = serde_json::json!({"ociVersion": "1.2.0", "root": {"path": "rootfs"}});
    if let (Some(b), Some(v)) = (base.as_object_mut(), v.as_object()) {
        b.extend(v.clone());
    }
    serde_json::from_value(base).unwrap()
}

fn dev_calls(path: &str, kind: char, mode: u32, major: u32, minor: u32, uid: u32) -> [Call; 4] {
    [
        Call::Unlink(p(path)),
        Call::Mknod {
            path: p(path),
            kind,
            mode: mode & 0o777,
            major,
            minor,
        },
        Call::Chmod {
            path: p(path),
            mode,
        },
        Call::Chown {
            path: p(path),
            uid,
            gid: 0,
        },
    ]
}

fn dev_links() -> Vec<Call> {
    [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ]
    .map(|(l, t)| Call::Symlink {
        link: p(&format!("/dev/{l}")),
        target: p(t),
    })
    .into()
}

#[test]
fn dev_gets_the_default_nodes_then_the_specs_then_the_links() {
    let r = Root::new();
    let fx = r.recorder();
    let s = spec(serde_json::json!({"linux": {"devices": [
        // Replaces the default /dev/null.
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640},
        {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0, "uid": 1000},
        {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o4600},
    ]}}));
    setup_dev(&fx, &r.fd, &s, false).unwrap();
    let mut want = vec![mkdir("/dev")];
    for (path, min) in [
        ("/dev/zero", 5),
        ("/dev/full", 7),
        ("/dev/random", 8),
        ("/dev/urandom", 9),
    ] {
        want.extend(dev_calls(path, 'c', 0o666, 1, min, 0));
    }
    want.extend(dev_calls("/dev/tty", 'c', 0o666, 5, 0, 0));
    want.extend(dev_calls("/dev/null", 'c', 0o640, 1, 3, 0));
    want.extend(dev_calls("/dev/sda", 'b', 0o666, 8, 0, 1000));
    want.push(mkdir("/dev/net"));
    // The mode's setuid bit goes through chmod, mknod takes permissions only.
    want.extend(dev_calls("/dev/net/tun", 'c', 0o4600, 10, 200, 0));
    want.extend(dev_links());
    assert_eq!(fx.calls(), want);
}

#[test]
fn in_a_user_namespace_devices_are_the_hosts_bound_on_empty_files() {
    let r = Root::new();
    std::fs::create_dir_all(r.path("/dev/pts")).unwrap();
    std::fs::write(r.path("/dev/pts/ptmx"), "").unwrap();
    let fx = r.recorder();
    setup_dev(&fx, &r.fd, &spec(serde_json::json!({})), true).unwrap();
    let mut want = Vec::new();
    for (path, _, _) in default_devices() {
        want.push(Call::CreateFile(p(path)));
        want.push(Call::Bind {
            source: p(path),
            target: p(path),
            recursive: false,
        });
    }
    want.extend(dev_links());
    // devpts with its own instance: /dev/ptmx points into it.
    want.push(Call::Unlink(p("/dev/ptmx")));
    want.push(Call::Symlink {
        link: p("/dev/ptmx"),
        target: p("pts/ptmx"),
    });
    assert_eq!(fx.calls(), want);
    assert!(!fx.calls().iter().any(|c| matches!(c, Call::Mknod { .. })));
}

#[test]
fn masking_hides_files_under_dev_null_and_directories_under_an_empty_tmpfs() {
    let r = Root::new();
    std::fs::write(r.path("/kcore"), "").unwrap();
    std::fs::create_dir(r.path("/firmware")).unwrap();
    let paths = ["/kcore", "/firmware", "/missing"].map(|x| r.path(x).display().to_string());
    let fx = r.recorder();
    mask_paths(&fx, &paths).unwrap();
    assert_eq!(
        fx.calls(),
        [
            Call::Bind {
                source: p("/dev/null"),
                target: p("/kcore"),
                recursive: false,
            },
            fs_mount(
                "tmpfs",
                "/firmware",
                "tmpfs",
                libc::MS_RDONLY,
                "size=0k,mode=755"
            ),
        ],
        "a missing path is skipped"
    );
}

#[test]
fn read_only_paths_are_rebound_then_remounted_falling_back_to_read_only_alone() {
    let r = Root::new();
    std::fs::create_dir(r.path("/sys")).unwrap();
    let paths = ["/sys", "/missing"].map(|x| r.path(x).display().to_string());
    let strict = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    // The kernel refuses clearing a locked flag (as in a user namespace).
    let fx = r.recorder().fail(move |c| {
        matches!(c, Call::Mount { flags, .. } if *flags == strict).then_some(Errno::PERM)
    });
    readonly_paths(&fx, &paths).unwrap();
    assert_eq!(
        fx.calls(),
        [
            Call::Bind {
                source: r.path("/sys"),
                target: p("/sys"),
                recursive: true,
            },
            fs_mount("", "/sys", "", strict, ""),
            fs_mount(
                "",
                "/sys",
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                ""
            ),
        ]
    );
}

#[test]
fn the_root_is_an_overlay_or_a_bind_and_private_unless_the_spec_says() {
    let r = Root::new();
    let rootfs = r.path("/rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let fx = r.recorder();
    let overlay = spec(serde_json::json!({"annotations": {
        OVERLAY_LOWER: "/l2:/l1", OVERLAY_UPPER: "/c/upper", OVERLAY_WORK: "/c/work",
    }}));
    prepare_root(&fx, &overlay, &rootfs).unwrap();
    assert_eq!(
        fx.take(),
        [
            Call::Propagate {
                target: p("/"),
                flags: libc::MS_SLAVE | libc::MS_REC,
            },
            fs_mount(
                "overlay",
                "/rootfs",
                "overlay",
                0,
                &crate::sys::overlay::options(
                    &["/l2", "/l1"],
                    Some((Path::new("/c/upper"), Path::new("/c/work")))
                )
                .unwrap()
            ),
            Call::Propagate {
                target: p("/rootfs"),
                flags: libc::MS_PRIVATE,
            },
        ]
    );
    let shared = spec(serde_json::json!({"linux": {"rootfsPropagation": "rshared"}}));
    prepare_root(&fx, &shared, &rootfs).unwrap();
    assert_eq!(
        fx.take()[1..],
        [Call::Bind {
            source: rootfs.clone(),
            target: p("/rootfs"),
            recursive: true,
        }],
        "a bundle's rootfs is bound on itself; left as the spec's propagation will make it"
    );
    apply_root_propagation(&fx, &shared).unwrap();
    assert_eq!(
        fx.take(),
        [Call::Propagate {
            target: p("/"),
            flags: libc::MS_SHARED | libc::MS_REC,
        }]
    );
    let bad = spec(serde_json::json!({"linux": {"rootfsPropagation": "sideways"}}));
    let e = prepare_root(&fx, &bad, &rootfs).unwrap_err();
    assert_eq!(
        e.to_string(),
        "linux.rootfsPropagation: unknown value \"sideways\""
    );
    assert_eq!(fx.calls(), [], "refused before any mount");
}
