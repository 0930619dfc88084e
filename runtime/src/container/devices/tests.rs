use super::*;
use std::process::Command;

fn rule(
    allow: bool,
    typ: &str,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let v = serde_json::json!({"allow": allow, "type": typ, "major": major, "minor": minor, "access": access});
    serde_json::from_value(v).unwrap()
}

#[test]
fn default_rules_deny_host_devices_and_allow_the_standard_ones() {
    let r = effective(None).unwrap();
    // The standard nodes.
    for (maj, min) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 2),
        (136, 4),
    ] {
        assert!(
            allows(&r, Kind::Char, maj, min, READ | WRITE),
            "c {maj}:{min}"
        );
    }
    // The host's disks, loop devices, loop-control, memory, kmsg.
    assert!(!allows(&r, Kind::Block, 253, 0, READ));
    assert!(!allows(&r, Kind::Block, 7, 0, READ | WRITE));
    assert!(!allows(&r, Kind::Char, 10, 237, READ));
    assert!(!allows(&r, Kind::Char, 1, 1, READ));
    assert!(!allows(&r, Kind::Char, 1, 11, WRITE));
    // mknod of anything, but no use of what was made.
    assert!(allows(&r, Kind::Block, 7, 0, MKNOD));
    assert!(!allows(&r, Kind::Block, 7, 0, MKNOD | READ));
}

#[test]
fn spec_rules_apply_in_order_and_the_defaults_come_last() {
    // podman --privileged style: allow everything.
    let all = effective(Some(&[rule(true, "a", None, None, "rwm")])).unwrap();
    assert!(allows(&all, Kind::Block, 253, 0, READ | WRITE));
    assert_eq!(all.len(), 1 + DEFAULT_ALLOWED.len(), "{all:?}");
    // A bundle that allows one device, then denies one minor of it.
    let spec = [
        rule(false, "a", None, None, "rwm"),
        rule(true, "c", Some(241), None, "rw"),
        rule(false, "c", Some(241), Some(5), "w"),
    ];
    let r = effective(Some(&spec)).unwrap();
    assert!(allows(&r, Kind::Char, 241, 4, READ | WRITE));
    assert!(allows(&r, Kind::Char, 241, 5, READ));
    assert!(!allows(&r, Kind::Char, 241, 5, WRITE));
    assert!(!allows(&r, Kind::Block, 241, 4, READ));
    // A spec cannot take /dev/null away (runc appends its allowlist).
    let r = effective(Some(&[rule(false, "c", Some(1), Some(3), "rwm")])).unwrap();
    assert!(allows(&r, Kind::Char, 1, 3, READ));
}

#[test]
fn bad_rules_are_refused_with_their_path() {
    let e = effective(Some(&[
        rule(true, "a", None, None, "rwm"),
        rule(true, "c", Some(1), None, "rx"),
    ]))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "linux.resources.devices[1]: access \"rx\": only r, w and m are allowed"
    );
    let e = effective(Some(&[rule(true, "c", Some(-7), None, "r")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "linux.resources.devices[0]: major -7 is not a device number"
    );
}

#[test]
fn v1_lines() {
    let r = effective(Some(&[rule(true, "b", Some(8), None, "rm")])).unwrap();
    let lines: Vec<String> = r.iter().map(|r| r.to_string()).collect();
    assert_eq!(lines[0], "a");
    assert_eq!(lines[1], "b 8:* rm");
    assert!(lines.contains(&"c 136:* rwm".to_string()));
    assert!(lines.contains(&"c *:* m".to_string()));
}

#[test]
fn spec_rules_round_trip() {
    let spec = default_spec_rules();
    assert!(!spec[0].allow());
    // amphi run's spec lists the defaults: the same rules, once each.
    let r = effective(Some(&spec)).unwrap();
    assert_eq!(r[0], DENY_ALL);
    assert_eq!(&r[1..], DEFAULT_ALLOWED);
}

/// A cgroup2 hierarchy of this host: /sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones.
fn cgroup2_root() -> PathBuf {
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if Path::new(p).join("cgroup.procs").exists()
            && Path::new(p).join("cgroup.subtree_control").exists()
        {
            return PathBuf::from(p);
        }
    }
    panic!("no cgroup2 hierarchy on this host: the device-program test needs one (and root)");
}

use std::path::PathBuf;

/// Nodes made (as root, outside the cgroup) for the probes: char and block
/// devices of the experimental majors 240-242 (no driver: an open that
/// passes the device check fails with ENXIO), plus /dev/null's.
fn make_nodes(dir: &Path) -> Vec<(String, Kind, u32, u32)> {
    let mut out = Vec::new();
    for (kind, k, t) in [
        ("c", Kind::Char, libc::S_IFCHR),
        ("b", Kind::Block, libc::S_IFBLK),
    ] {
        for (maj, min) in [(240, 0), (240, 1), (241, 4), (241, 5), (242, 9), (1, 3)] {
            if kind == "b" && maj == 1 {
                continue;
            }
            let name = format!("{kind}{maj}_{min}");
            let p = std::ffi::CString::new(dir.join(&name).to_str().unwrap()).unwrap();
            // SAFETY: mknod with a valid path.
            let r = unsafe { libc::mknod(p.as_ptr(), t | 0o600, libc::makedev(maj, min)) };
            assert_eq!(r, 0, "mknod {name}: {}", std::io::Error::last_os_error());
            out.push((name, k, maj, min));
        }
    }
    out
}

/// The kernel's answer for each node, from a shell inside the cgroup:
/// true when opening it for reading got past the device check.
fn probe(cgroup: &Path, dir: &Path, nodes: &[(String, Kind, u32, u32)]) -> Vec<bool> {
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").to_str().unwrap()).unwrap();
    let script = r#"for n in "$@"; do if err=$( { : < "$n"; } 2>&1 ); then echo "$n ok"; else echo "$n $err"; fi; done"#;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .current_dir(dir)
        .env("LC_ALL", "C");
    for (n, ..) in nodes {
        cmd.arg(n);
    }
    // SAFETY: only async-signal-safe calls (open, write, close) between
    // fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(e)
            }
        });
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    nodes
        .iter()
        .map(|(n, ..)| {
            let line = text
                .lines()
                .find(|l| l.split(' ').next() == Some(n.as_str()))
                .unwrap_or_else(|| panic!("no answer for {n}: {text}"));
            if line.ends_with(" ok") || line.contains("No such device") {
                true
            } else if line.contains("Operation not permitted") {
                false
            } else {
                panic!("unexpected answer: {line}")
            }
        })
        .collect()
}

/// The generated BPF program, attached to a real cgroup of this host's
/// kernel, gives the same answers as the rules' semantics ([`allows`]).
#[test]
fn the_bpf_program_enforces_the_rules_in_the_kernel() {
    let root = cgroup2_root();
    let dir = tempfile::tempdir().unwrap();
    let nodes = make_nodes(dir.path());
    let cases: Vec<Vec<LinuxDeviceCgroup>> = vec![
        vec![],
        vec![
            rule(true, "c", Some(241), None, "r"),
            rule(false, "c", Some(241), Some(5), "r"),
        ],
        vec![
            rule(true, "b", Some(240), Some(1), "rw"),
            rule(true, "c", None, Some(9), "r"),
        ],
        vec![rule(true, "a", None, None, "rwm")],
        vec![rule(true, "c", Some(240), None, "w")],
    ];
    for (i, spec) in cases.iter().enumerate() {
        let rules = effective(Some(spec)).unwrap();
        let cg = root.join(format!("amphi-devtest-{}-{i}", std::process::id()));
        std::fs::create_dir(&cg).unwrap();
        let got = apply_v2(&cg, &rules).map(|()| probe(&cg, dir.path(), &nodes));
        let _ = std::fs::remove_dir(&cg);
        let got = got.unwrap();
        for ((name, kind, maj, min), got) in nodes.iter().zip(got) {
            let want = allows(&rules, *kind, *maj, *min, READ);
            assert_eq!(got, want, "case {i} {spec:?}: {name}");
        }
    }
}

/// Cgroup v1: one descriptor per file, one write per rule, in the order
/// of the rules (later ones win); through the effects recorder, no root.
#[test]
fn v1_rules_are_written_one_per_write_to_allow_and_deny() {
    use crate::container::effects::record::{Call, Recorder};
    let dir = tempfile::tempdir().unwrap();
    for f in ["devices.allow", "devices.deny"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let fx = Recorder::new(dir.path());
    let rules = effective(Some(&[
        rule(true, "c", Some(4), None, "rw"),
        rule(false, "c", Some(4), Some(1), "w"),
        rule(true, "b", Some(8), Some(0), "r"),
    ]))
    .unwrap();
    apply_v1(&fx, dir.path(), &rules).unwrap();
    let calls = fx.calls();
    let w = |f: &str, d: &str| Call::Write {
        path: format!("/{f}").into(),
        data: d.into(),
    };
    assert_eq!(
        calls[..7],
        [
            Call::Open("/devices.deny".into()),
            w("devices.deny", "a"),
            Call::Open("/devices.allow".into()),
            w("devices.allow", "c 4:* rw"),
            w("devices.deny", "c 4:1 w"),
            w("devices.allow", "b 8:0 r"),
            w("devices.allow", "c *:* m"),
        ]
    );
    let opens = calls.iter().filter(|c| matches!(c, Call::Open(_))).count();
    assert_eq!(opens, 2, "{calls:?}");
    let writes = calls.len() - opens;
    assert_eq!(writes, rules.len());

    // A hierarchy without the files: the error names the file.
    let empty = tempfile::tempdir().unwrap();
    let e = apply_v1(&Recorder::new(empty.path()), empty.path(), &rules).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: {}",
            empty.path().join("devices.deny").display(),
            std::io::Error::from_raw_os_error(libc::ENOENT)
        )
    );
}
